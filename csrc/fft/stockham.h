// A mixed-radix Stockham (self-sorting) complex FFT, in place in shared memory, over `batches` contiguous
// transforms of length plan.n. Forward sign (exp(-2 pi i ...)), unnormalised, natural order in and out.
//
// Stage s with radix r, after the radices before it multiplied to p (p = 1 at the start), maps src to dst as
//     dst[(i / p) * p * r + j' * p + k] = sum_{j < r} src[i + j * n / r] * W_{p r}^{j k} * W_r^{j j'},   k = i mod p
// for every butterfly i < n / r and j' < r. Written per output o instead (k = o mod p, j' = (o / p) mod r,
// i = (o / (p r)) * p + k), the two twiddles merge into W_{p r}^{j m} with m = o mod (p r) = k + j' p, so each
// output is one r-term sum with a twiddle index that steps by m * n / (p r) — the same code for every radix.
// The stage is staged through registers (Exec::staged), which lets dst and src be one buffer.
#pragma once

#include "common/cplx.h"
#include "fft/plan.h"

namespace surm {

template <class Exec>
SURM_HD void fft_inplace(const Exec& ex, cplx* buf, int batches, const FftPlan& plan, const cplx* twiddles,
                         int hi_entries) {
  const int n = plan.n;
  int p = 1;
  for (int s = 0; s < plan.stages; ++s) {
    const int r = plan.radix[s];
    const int pr = p * r;
    const int stride = n / r;
    const int unit = n / pr;  // exponent of W_n for one step of W_{p r}
    ex.staged(
        batches * n,
        [&](int og) {
          const int b = og / n;
          const int o = og - b * n;
          const cplx* src = buf + b * n;
          const int m = o % pr;
          const int i = (o / pr) * p + (m % p);
          const int step = m * unit;  // < n
          cplx acc = src[i];
          int t = 0;
          for (int j = 1; j < r; ++j) {
            t += step;
            if (t >= n) t -= n;
            acc = acc + src[i + j * stride] * twiddle(twiddles, hi_entries, t);
          }
          return acc;
        },
        [&](int og, cplx v) { buf[og] = v; });
    p = pr;
  }
}

}  // namespace surm
