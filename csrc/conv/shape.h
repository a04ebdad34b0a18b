// The one shape every kernel here handles: a (p x q) grid of length-L cyclic convolutions, with input blocks of
// in_len <= L values (zero-padded to L) and output blocks of out_len <= L values (the first ones):
//     y[P*out_len + s] = sum_Q (k[P,Q] (*) pad(x[Q*in_len : (Q+1)*in_len]))[s]      s < out_len
// circulant:       p = q = 1, L = in_len = out_len = n
// block-circulant: (p, q), L = in_len = out_len = b
// Toeplitz:        p = q = 1, L >= n_in + n_out - 1, in_len = n_in, out_len = n_out (k as in reference/fft.py)
// and every backward for x is the same shape transposed, with the conjugate spectrum.
#pragma once

#include "common/cplx.h"

namespace surm {

struct ConvShape {
  int p, q;     // output and input blocks
  int length;   // L, the cyclic convolution (FFT) length
  int in_len;   // values per input block (<= L)
  int out_len;  // values per output block (<= L)
};

// Frequencies kept of a real signal's spectrum: 0 .. L/2.
SURM_HD int half_spectrum(int length) { return length / 2 + 1; }

}  // namespace surm
