// How one thread block runs a "phase": every thread handles the elements o = tid, tid + nthreads, ... of a range,
// then the block synchronises. The algorithms in fft/ and conv/ are written against this interface only, so the
// host emulation test (HostExec) runs exactly the index math the GPU kernel (DeviceExec) runs.
#pragma once

#include "common/cplx.h"

namespace surm {

// Upper bound on elements one thread holds in registers during a staged (read-all, sync, write-all) phase.
// Launch configurations guarantee total <= kStagedPerThread * nthreads (conv/config.h).
constexpr int kStagedPerThread = 12;

#if defined(__CUDACC__)
struct DeviceExec {
  // f(o) for every o in [0, total), then a barrier.
  template <class F>
  __device__ __forceinline__ void for_each(int total, F f) const {
    for (int o = static_cast<int>(threadIdx.x); o < total; o += static_cast<int>(blockDim.x)) f(o);
    __syncthreads();
  }

  // In-place update of a shared buffer: v[o] = compute(o) for all o (reading the old contents), then commit(o, v).
  // Values are held in registers across the barrier, so one buffer serves as source and destination.
  template <class Compute, class Commit>
  __device__ __forceinline__ void staged(int total, Compute compute, Commit commit) const {
    cplx v[kStagedPerThread];
    const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
#pragma unroll
    for (int e = 0; e < kStagedPerThread; ++e) {
      const int o = tid + e * nt;
      if (o < total) v[e] = compute(o);
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kStagedPerThread; ++e) {
      const int o = tid + e * nt;
      if (o < total) commit(o, v[e]);
    }
    __syncthreads();
  }
};
#endif

}  // namespace surm
