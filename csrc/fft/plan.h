// The FFT plan: a factorisation of the length into radices, and the twiddle tables.
//
// Any length whose prime factors are all <= kMaxRadix is supported (768 = 4^4*3, 5120 = 4^5*5,
// 11008 = 4^4*43): a radix is just the length of the short DFT one Stockham stage performs (fft/stockham.h).
// Radix 4 first because a stage costs about `radix` reads per element and radix 4 halves the number of stages
// (barriers) for the same total cost as radix 2; then one radix 2 if needed, then odd primes in increasing order.
#pragma once

#include <cmath>

#include "common/cplx.h"

namespace surm {

constexpr int kMaxStages = 16;   // 2^16 > the longest transform a block holds (conv/config.h)
constexpr int kMaxRadix = 127;   // a prime radix costs `radix` multiply-adds per element; beyond this, refuse
constexpr int kTwiddleLoBits = 6;  // W^t = hi[t >> 6] * lo[t & 63]: two small tables instead of n entries
constexpr int kTwiddleLo = 1 << kTwiddleLoBits;

struct FftPlan {
  int n;          // transform length
  int stages;     // number of radices; -1 when the length is unsupported
  int radix[kMaxStages];
};

// Host-side: factor n (see the file comment for the order). stages = -1 if a prime factor exceeds kMaxRadix or
// there are more than kMaxStages factors.
inline FftPlan make_plan(int n) {
  FftPlan plan{};
  plan.n = n;
  plan.stages = 0;
  if (n < 1) {
    plan.stages = -1;
    return plan;
  }
  int rest = n;
  auto push = [&](int r) {
    if (plan.stages < 0) return;
    if (plan.stages == kMaxStages || r > kMaxRadix) {
      plan.stages = -1;
      return;
    }
    plan.radix[plan.stages++] = r;
  };
  while (rest % 4 == 0) push(4), rest /= 4;
  if (rest % 2 == 0) push(2), rest /= 2;
  for (int f = 3; f * f <= rest; f += 2)
    while (rest % f == 0) push(f), rest /= f;
  if (rest > 1) push(rest);
  return plan;
}

SURM_HD int twiddle_hi_entries(int n) { return (n + kTwiddleLo - 1) / kTwiddleLo; }
SURM_HD int twiddle_entries(int n) { return twiddle_hi_entries(n) + kTwiddleLo; }

// W_n^t = exp(-2 pi i t / n), rounded once from double precision.
SURM_HD cplx unit_root(long long t, int n) {
  double s, c;
#if defined(__CUDA_ARCH__)
  sincospi(-2.0 * static_cast<double>(t) / n, &s, &c);
#else
  const double a = -2.0 * 3.14159265358979323846 * static_cast<double>(t) / n;
  s = std::sin(a);
  c = std::cos(a);
#endif
  return cplx{static_cast<float>(c), static_cast<float>(s)};
}

// The two tables: hi[i] = W_n^(64 i), lo[j] = W_n^j (laid out hi then lo in one array of twiddle_entries(n)).
template <class Exec>
SURM_HD void init_twiddles(const Exec& ex, cplx* table, int n, int hi_entries) {
  ex.for_each(hi_entries + kTwiddleLo, [&](int i) {
    table[i] = i < hi_entries ? unit_root(static_cast<long long>(i) << kTwiddleLoBits, n)
                              : unit_root(i - hi_entries, n);
  });
}

// W_n^t for 0 <= t < n; one complex product of two correctly rounded values (error ~1 ulp).
SURM_HD cplx twiddle(const cplx* table, int hi_entries, int t) {
  return table[t >> kTwiddleLoBits] * table[hi_entries + (t & (kTwiddleLo - 1))];
}

}  // namespace surm
