// Launch configuration of the conv kernels: block size, shared memory, the parameter-gradient tiling and the
// number of partial sums. Host-only; used by the CUDA launcher and by the host emulation test, and mirrored by
// surm_ops/ops/_cuda.py (why_not), which a test checks against this file's numbers.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/cplx.h"
#include "common/exec.h"
#include "conv/shape.h"
#include "fft/plan.h"

namespace surm {

constexpr int kMaxThreads = 1024;
constexpr int kTargetPerThread = 8;  // elements per thread per staged phase when the block is not at its maximum
constexpr int kMaxBuffer = kMaxThreads * kStagedPerThread;  // complex values one FFT call may hold
// Bound on the parameter-gradient partials buffer; the number of partials depends on shapes only, so the
// reduction order (hence the result, bit for bit) is the same on every GPU.
constexpr int64_t kPartialBytes = int64_t(64) << 20;
constexpr int kMaxPartials = 1024;

inline int threads_for(int64_t elements) {
  int64_t t = (elements + kTargetPerThread - 1) / kTargetPerThread;
  t = (t + 31) / 32 * 32;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(t, 32), kMaxThreads));
}

inline int64_t twiddle_bytes(int length) { return int64_t(twiddle_entries(length)) * sizeof(cplx); }

// Forward (and grad-x) kernel: twiddles, the q input blocks, and the p output blocks unless p == q == 1 (in place).
inline int64_t forward_buffer(const ConvShape& s) { return int64_t(std::max(s.p, s.q)) * s.length; }
inline int64_t forward_smem(const ConvShape& s) {
  const int64_t blocks = (s.p == 1 && s.q == 1) ? 1 : int64_t(s.p) + s.q;
  return twiddle_bytes(s.length) + blocks * s.length * int64_t(sizeof(cplx));
}

// Parameter-gradient kernel handling pt output blocks: twiddles, q + pt blocks (transformed as two FFT calls, of
// q and pt blocks; grad_buffer is the larger), pt*q*F accumulators.
inline int64_t grad_buffer(const ConvShape& s, int pt) { return int64_t(std::max(s.q, pt)) * s.length; }
inline int64_t grad_smem(const ConvShape& s, int pt) {
  return twiddle_bytes(s.length) +
         ((int64_t(s.q) + pt) * s.length + int64_t(pt) * s.q * half_spectrum(s.length)) * int64_t(sizeof(cplx));
}

// The most output blocks one gradient block handles within the shared-memory limit; 0 if not even one fits.
inline int grad_tile(const ConvShape& s, int64_t smem_limit) {
  int pt = s.p;
  while (pt > 0 && (grad_smem(s, pt) > smem_limit || grad_buffer(s, pt) > kMaxBuffer)) --pt;
  return pt;
}

// Row pairs per partial and number of partials for `rows` rows (a function of shapes only, see kPartialBytes).
struct Chunks {
  int64_t pairs_per_chunk;
  int64_t chunks;
};
inline Chunks grad_chunks(int64_t rows, const ConvShape& s) {
  const int64_t pairs = (rows + 1) / 2;
  const int64_t per_partial = int64_t(s.p) * s.q * half_spectrum(s.length) * int64_t(sizeof(cplx));
  const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(kMaxPartials, kPartialBytes / per_partial));
  int64_t chunks = std::max<int64_t>(1, std::min(pairs, cap));
  const int64_t per = std::max<int64_t>(1, (pairs + chunks - 1) / chunks);
  chunks = std::max<int64_t>(1, (pairs + per - 1) / per);  // no empty partials
  return Chunks{per, chunks};
}

}  // namespace surm
