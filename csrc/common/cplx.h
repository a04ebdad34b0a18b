// A complex float with the few operations the kernels need, usable from host C++ (g++) and device code (nvcc).
// Own type rather than float2/cuComplex so the same headers compile in the host emulation test without CUDA.
#pragma once

#if defined(__CUDACC__)
#define SURM_HD __host__ __device__ __forceinline__
#else
#define SURM_HD inline
#endif

namespace surm {

struct alignas(8) cplx {
  float re, im;
};

SURM_HD cplx make_cplx(float re, float im) { return cplx{re, im}; }
SURM_HD cplx operator+(cplx a, cplx b) { return cplx{a.re + b.re, a.im + b.im}; }
SURM_HD cplx operator-(cplx a, cplx b) { return cplx{a.re - b.re, a.im - b.im}; }
SURM_HD cplx operator*(cplx a, cplx b) { return cplx{a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re}; }
SURM_HD cplx conj(cplx a) { return cplx{a.re, -a.im}; }
SURM_HD cplx scale(cplx a, float s) { return cplx{a.re * s, a.im * s}; }
// conj(a) * b, the correlation product of the parameter gradient.
SURM_HD cplx conj_mul(cplx a, cplx b) { return cplx{a.re * b.re + a.im * b.im, a.re * b.im - a.im * b.re}; }

}  // namespace surm
