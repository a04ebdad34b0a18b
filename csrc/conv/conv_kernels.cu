// The fused FFT-convolution kernels (forward / grad-x, and the parameter-gradient partials) and their CUDA
// launchers, registered as surm_ops_C::conv_forward and surm_ops_C::conv_grad_spectrum.
//
// One thread block per pair of rows: x is read once, transformed, multiplied by the parameter spectrum,
// transformed back and written once; everything in between stays in shared memory. The algorithms themselves are
// in conv/block_conv.h (shared with the host emulation test); this file only maps rows to blocks and dtypes to
// float.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/exec.h"
#include "common/once.h"
#include "conv/block_conv.h"
#include "conv/config.h"

namespace surm {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    conv_forward_kernel(const scalar_t* __restrict__ x, const cplx* __restrict__ spec, scalar_t* __restrict__ y,
                        int64_t rows, ConvShape sh, FftPlan plan) {
  extern __shared__ cplx smem[];
  const int64_t in_stride = int64_t(sh.q) * sh.in_len, out_stride = int64_t(sh.p) * sh.out_len;
  forward_block(
      DeviceExec{}, smem, blockIdx.x, rows, sh, plan, spec,
      [&](int64_t row, int col) { return static_cast<float>(x[row * in_stride + col]); },
      [&](int64_t row, int col, float v) { y[row * out_stride + col] = static_cast<scalar_t>(v); });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    conv_grad_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g, cplx* __restrict__ partials,
                     int64_t rows, ConvShape sh, FftPlan plan, int pt, int64_t pairs_per_chunk) {
  extern __shared__ cplx smem[];
  const int64_t in_stride = int64_t(sh.q) * sh.in_len, out_stride = int64_t(sh.p) * sh.out_len;
  grad_block(
      DeviceExec{}, smem, blockIdx.x, static_cast<int>(blockIdx.y), rows, sh, plan, pt, pairs_per_chunk,
      [&](int64_t row, int col) { return static_cast<float>(x[row * in_stride + col]); },
      [&](int64_t row, int col) { return static_cast<float>(g[row * out_stride + col]); }, partials);
}

#define SURM_DISPATCH_CASES(...)                       \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__)

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "surm_ops_C: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), "surm_ops_C: ", name, " must be a contiguous 2-D tensor; got ",
              t.sizes());
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, "surm_ops_C: ", name,
              " must be float32, float16 or bfloat16; got ", dt);
}

FftPlan checked_plan(int64_t length) {
  TORCH_CHECK(length >= 1 && length <= kMaxBuffer, "surm_ops_C: FFT length ", length, " is outside [1, ",
              kMaxBuffer, "]");
  const FftPlan plan = make_plan(static_cast<int>(length));
  TORCH_CHECK(plan.stages >= 0, "surm_ops_C: FFT length ", length, " has a prime factor above ", kMaxRadix);
  return plan;
}

int64_t smem_limit(int device) {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return optin;
}

// Above the default 48 KiB of dynamic shared memory a kernel must opt in, per kernel and per device. The limit is
// raised once per (kernel, device) to the device's whole opt-in figure, so that every later launch fits whatever
// its shape, and no launch pays the driver call again.
template <class Kernel>
void allow_smem(Kernel kernel, int device) {
  kernel_setup().run(reinterpret_cast<const void*>(kernel), device, [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_limit(device))));
  });
}

// x: (rows, q * in_len); spec: (p, q, L, 2) float32, the full DFT of each real kernel k[P, Q]
// -> y: (rows, p * out_len) in x's dtype.
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& spec, int64_t in_len, int64_t out_len) {
  check_input(x, "x");
  TORCH_CHECK(spec.is_cuda() && spec.device() == x.device(), "surm_ops_C: spec must be on x's device");
  TORCH_CHECK(spec.scalar_type() == at::kFloat && spec.dim() == 4 && spec.size(3) == 2 && spec.is_contiguous(),
              "surm_ops_C: spec must be a contiguous float32 (p, q, L, 2) tensor; got ", spec.sizes());
  const int64_t p = spec.size(0), q = spec.size(1), L = spec.size(2);
  const FftPlan plan = checked_plan(L);
  TORCH_CHECK(in_len >= 1 && in_len <= L && out_len >= 1 && out_len <= L, "surm_ops_C: block lengths ", in_len,
              " and ", out_len, " must lie in [1, L = ", L, "]");
  TORCH_CHECK(x.size(1) == q * in_len, "surm_ops_C: x has ", x.size(1), " columns; expected q * in_len = ",
              q * in_len);
  const ConvShape sh{static_cast<int>(p), static_cast<int>(q), static_cast<int>(L), static_cast<int>(in_len),
                     static_cast<int>(out_len)};
  TORCH_CHECK(forward_buffer(sh) <= kMaxBuffer, "surm_ops_C: max(p, q) * L = ", forward_buffer(sh),
              " exceeds ", kMaxBuffer);
  const int64_t rows = x.size(0);
  at::Tensor y = at::empty({rows, p * out_len}, x.options());
  if (rows == 0) return y;

  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t smem = forward_smem(sh);
  TORCH_CHECK(smem <= smem_limit(x.get_device()), "surm_ops_C: needs ", smem, " bytes of shared memory per block");
  const int threads = threads_for(forward_buffer(sh));
  const int64_t blocks = (rows + 1) / 2;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(x.scalar_type(), "surm_ops_C::conv_forward", SURM_DISPATCH_CASES([&] {
    auto kernel = conv_forward_kernel<scalar_t>;
    allow_smem(kernel, x.get_device());
    kernel<<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
        x.data_ptr<scalar_t>(), reinterpret_cast<const cplx*>(spec.data_ptr<float>()), y.data_ptr<scalar_t>(), rows,
        sh, plan);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }));
  return y;
}

// x: (rows, q * in_len), grad: (rows, p * out_len), same dtype -> partials (chunks, p, q, L/2 + 1, 2) float32,
// whose sum over dim 0 is sum_rows conj(rfft(x_Q, L)) * rfft(grad_P, L).
at::Tensor conv_grad_spectrum(const at::Tensor& x, const at::Tensor& grad, int64_t length, int64_t in_len,
                              int64_t out_len) {
  check_input(x, "x");
  check_input(grad, "grad");
  TORCH_CHECK(grad.device() == x.device() && grad.scalar_type() == x.scalar_type() && grad.size(0) == x.size(0),
              "surm_ops_C: grad must match x's device, dtype and rows");
  const FftPlan plan = checked_plan(length);
  TORCH_CHECK(in_len >= 1 && in_len <= length && out_len >= 1 && out_len <= length, "surm_ops_C: block lengths ",
              in_len, " and ", out_len, " must lie in [1, L = ", length, "]");
  TORCH_CHECK(x.size(1) % in_len == 0 && grad.size(1) % out_len == 0,
              "surm_ops_C: x and grad widths must be multiples of in_len and out_len");
  const ConvShape sh{static_cast<int>(grad.size(1) / out_len), static_cast<int>(x.size(1) / in_len),
                     static_cast<int>(length), static_cast<int>(in_len), static_cast<int>(out_len)};
  const int64_t rows = x.size(0);
  const Chunks chunks = grad_chunks(rows, sh);
  const int F = half_spectrum(sh.length);
  at::Tensor partials = at::empty({chunks.chunks, sh.p, sh.q, F, 2}, x.options().dtype(at::kFloat));

  const c10::cuda::CUDAGuard guard(x.device());
  const int pt = grad_tile(sh, smem_limit(x.get_device()));
  TORCH_CHECK(pt >= 1, "surm_ops_C: the parameter gradient needs ", grad_smem(sh, 1),
              " bytes of shared memory per block and (q + 1) * L <= ", kMaxBuffer);
  const int64_t smem = grad_smem(sh, pt);
  const int threads = threads_for(grad_buffer(sh, pt));
  const dim3 grid(static_cast<unsigned>(chunks.chunks), static_cast<unsigned>((sh.p + pt - 1) / pt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(x.scalar_type(), "surm_ops_C::conv_grad_spectrum", SURM_DISPATCH_CASES([&] {
    auto kernel = conv_grad_kernel<scalar_t>;
    allow_smem(kernel, x.get_device());
    kernel<<<grid, threads, smem, stream>>>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                            reinterpret_cast<cplx*>(partials.data_ptr<float>()), rows, sh, plan, pt,
                                            chunks.pairs_per_chunk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }));
  return partials;
}

}  // namespace
}  // namespace surm

TORCH_LIBRARY_IMPL(surm_ops_C, CUDA, m) {
  m.impl("conv_forward", &surm::conv_forward);
  m.impl("conv_grad_spectrum", &surm::conv_grad_spectrum);
}
