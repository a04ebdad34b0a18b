// The per-block algorithms of the fused kernels, written once against an Exec (common/exec.h) so the GPU kernel
// and the host emulation test share every index.
//
// Two real rows go through one complex FFT (row0 as the real part, row1 as the imaginary part): the kernel k is
// real, so convolving x0 + i x1 with k gives (x0 (*) k) + i (x1 (*) k) and no real-FFT pre/post-processing is
// needed. The inverse FFT is the forward one conjugated: ifft(W) = conj(fft(conj(W))) / L.
#pragma once

#include <cstdint>

#include "common/cplx.h"
#include "conv/shape.h"
#include "fft/plan.h"
#include "fft/stockham.h"

namespace surm {

// Shared memory of one block, carved from one array: twiddles, then the buffers.
struct Workspace {
  cplx* twiddles;
  int hi_entries;
};

// Rows r0 (and r1 when has_r1) of the input, zero-padded per block, into buf[Q * L + s]; load(row, col) -> float.
template <class Exec, class Load>
SURM_HD void load_pair(const Exec& ex, cplx* buf, int blocks, int length, int len, int block0, bool has_r1,
                       Load load) {
  ex.for_each(blocks * length, [&](int e) {
    const int blk = e / length;
    const int s = e - blk * length;
    cplx v{0.f, 0.f};
    if (s < len) {
      const int col = (block0 + blk) * len + s;
      v.re = load(0, col);
      if (has_r1) v.im = load(1, col);
    }
    buf[e] = v;
  });
}

// Forward product for one pair of rows: y = M x (with spectrum spec[(P * q + Q) * L + f], the full length-L DFT
// of k[P, Q]). xb holds q*L values; yb p*L values and may alias xb only when p == q == 1 (each element is then
// read and written by the same thread in the same phase). store(row, col, value).
template <class Exec, class Load, class Store>
SURM_HD void conv_pair(const Exec& ex, const ConvShape& sh, const FftPlan& plan, const Workspace& ws,
                       const cplx* spec, cplx* xb, cplx* yb, bool has_r1, Load load, Store store) {
  const int L = sh.length, p = sh.p, q = sh.q;
  load_pair(ex, xb, q, L, sh.in_len, 0, has_r1, load);
  fft_inplace(ex, xb, q, plan, ws.twiddles, ws.hi_entries);
  ex.for_each(p * L, [&](int e) {
    const int P = e / L;
    const int f = e - P * L;
    cplx acc{0.f, 0.f};
    for (int Q = 0; Q < q; ++Q) acc = acc + spec[(P * q + Q) * L + f] * xb[Q * L + f];
    yb[e] = conj(acc);  // conjugated: the next forward FFT then computes the inverse
  });
  fft_inplace(ex, yb, p, plan, ws.twiddles, ws.hi_entries);
  const float inv = 1.0f / static_cast<float>(L);
  const int out_len = sh.out_len;
  ex.for_each(p * out_len, [&](int e) {
    const int P = e / out_len;
    const int s = e - P * out_len;
    const cplx v = yb[P * L + s];
    store(0, e, v.re * inv);
    if (has_r1) store(1, e, -v.im * inv);
  });
}

// The spectra of the two real rows packed in Z = FFT(x0 + i x1), at frequency f:
// X0 = (Z[f] + conj(Z[-f])) / 2, X1 = (Z[f] - conj(Z[-f])) / (2i).
SURM_HD void unpack_pair(const cplx* z, int length, int f, cplx& x0, cplx& x1) {
  const cplx a = z[f];
  const cplx b = conj(z[f == 0 ? 0 : length - f]);
  const cplx sum = a + b, diff = a - b;
  x0 = scale(sum, 0.5f);
  x1 = cplx{0.5f * diff.im, -0.5f * diff.re};
}

// Parameter-gradient partial for one pair of rows: acc[(P' * q + Q) * F + f] += sum over the two rows of
// conj(X_Q[f]) * G_{P0+P'}[f] for P' < pt, f < F = L/2 + 1. xgb holds (q + pt) * L values (x blocks then g
// blocks). Each acc element is owned by one thread (its index modulo the block
// size), so accumulation needs no atomics and its order is fixed.
template <class Exec, class LoadX, class LoadG>
SURM_HD void grad_pair(const Exec& ex, const ConvShape& sh, const FftPlan& plan, const Workspace& ws, int P0, int pt,
                       cplx* xgb, cplx* acc, bool has_r1, LoadX load_x, LoadG load_g) {
  const int L = sh.length, q = sh.q, F = half_spectrum(L);
  cplx* gb = xgb + q * L;
  load_pair(ex, xgb, q, L, sh.in_len, 0, has_r1, load_x);
  load_pair(ex, gb, pt, L, sh.out_len, P0, has_r1, load_g);
  // Two calls, not one over q + pt blocks: each call's values must fit the registers of one staged phase.
  fft_inplace(ex, xgb, q, plan, ws.twiddles, ws.hi_entries);
  fft_inplace(ex, gb, pt, plan, ws.twiddles, ws.hi_entries);
  ex.for_each(pt * q * F, [&](int a) {
    const int P = a / (q * F);
    const int rem = a - P * q * F;
    const int Q = rem / F;
    const int f = rem - Q * F;
    cplx x0, x1, g0, g1;
    unpack_pair(xgb + Q * L, L, f, x0, x1);
    unpack_pair(gb + P * L, L, f, g0, g1);
    acc[a] = acc[a] + conj_mul(x0, g0) + conj_mul(x1, g1);
  });
}

// ---- whole thread blocks: what one CUDA block of each kernel does, given its block index ----------------------
// load(row, col) / store(row, col, value) address the global row index; smem is the block's dynamic shared memory
// (conv/config.h gives its size).

// Forward kernel, block `block`: rows 2*block and 2*block + 1 (if it exists).
template <class Exec, class Load, class Store>
SURM_HD void forward_block(const Exec& ex, cplx* smem, int64_t block, int64_t rows, const ConvShape& sh,
                           const FftPlan& plan, const cplx* spec, Load load, Store store) {
  const int L = sh.length;
  const Workspace ws{smem, twiddle_hi_entries(L)};
  init_twiddles(ex, smem, L, ws.hi_entries);
  cplx* xb = smem + twiddle_entries(L);
  cplx* yb = (sh.p == 1 && sh.q == 1) ? xb : xb + sh.q * L;
  const int64_t r0 = 2 * block;
  conv_pair(
      ex, sh, plan, ws, spec, xb, yb, r0 + 1 < rows, [&](int row, int col) { return load(r0 + row, col); },
      [&](int row, int col, float v) { store(r0 + row, col, v); });
}

// Parameter-gradient kernel, block (chunk, tile): row pairs [chunk * per, (chunk + 1) * per) in order, output
// blocks [tile * pt, tile * pt + pt); writes partials[chunk, P, Q, f] (complex) for those P.
template <class Exec, class LoadX, class LoadG>
SURM_HD void grad_block(const Exec& ex, cplx* smem, int64_t chunk, int tile, int64_t rows, const ConvShape& sh,
                        const FftPlan& plan, int pt, int64_t pairs_per_chunk, LoadX load_x, LoadG load_g,
                        cplx* partials) {
  const int L = sh.length, q = sh.q, F = half_spectrum(L);
  const Workspace ws{smem, twiddle_hi_entries(L)};
  init_twiddles(ex, smem, L, ws.hi_entries);
  const int P0 = tile * pt;
  const int ptile = pt < sh.p - P0 ? pt : sh.p - P0;
  cplx* xgb = smem + twiddle_entries(L);
  cplx* acc = xgb + (q + pt) * L;
  const int entries = ptile * q * F;
  ex.for_each(entries, [&](int a) { acc[a] = cplx{0.f, 0.f}; });
  const int64_t pairs = (rows + 1) / 2;
  const int64_t stop = (chunk + 1) * pairs_per_chunk;
  const int64_t end = stop < pairs ? stop : pairs;
  for (int64_t pair = chunk * pairs_per_chunk; pair < end; ++pair) {  // a fixed order: deterministic sums
    const int64_t r0 = 2 * pair;
    grad_pair(
        ex, sh, plan, ws, P0, ptile, xgb, acc, r0 + 1 < rows, [&](int row, int col) { return load_x(r0 + row, col); },
        [&](int row, int col) { return load_g(r0 + row, col); });
  }
  cplx* out = partials + (chunk * sh.p + P0) * int64_t(q) * F;
  ex.for_each(entries, [&](int a) { out[a] = acc[a]; });
}

}  // namespace surm
