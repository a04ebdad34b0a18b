"""Automatic choice between the ``dense`` and ``fft`` backends: a two-term cost model per op.

dense ~ n_out * n_in * (tokens + MATERIALISE) + build   one matmul, plus building M once (build: LDR's r
                                                       n x n products)
fft   ~ FFT * tokens * (sum of FFT lengths * log2)       the structured path

The constants were fitted to timings on the 2-core CPU machine (see README, "Choosing a backend"); on a GPU the
faster kernels (triton, cuda) are tried first, and among the references the same rule applies.
"""

from __future__ import annotations

import math

MATERIALISE = 1.0
FFT = 7.0


def _tokens(x, n_in):
    return x.numel() // max(n_in, 1)


def _fft_work(lengths):
    return sum(n * max(math.log2(n), 1.0) for n in lengths)


def _prefer_dense(x, n_out, n_in, fft_lengths, fft_scale=1.0, build=0.0):
    t = _tokens(x, n_in)
    return n_out * n_in * (t + MATERIALISE) + build <= FFT * fft_scale * t * _fft_work(fft_lengths)


def circulant(x, c):
    if c.ndim == 3:
        p, q, b = c.shape
        # q forward transforms, p inverse, and a (q x p) complex contraction per frequency.
        return _prefer_dense(x, p * b, q * b, [b] * (p + q), fft_scale=1.0 + p * q / (p + q))
    n = c.shape[-1]
    return _prefer_dense(x, n, n, [n, n])


def skew_circulant(x, c):
    from surm_ops.reference.fft import good_size

    n = c.shape[-1]
    return _prefer_dense(x, n, n, [good_size(2 * n - 1)] * 2)


def toeplitz(x, col, row):
    from surm_ops.reference.fft import good_size

    length = good_size(col.shape[-1] + row.shape[-1] - 1)
    return _prefer_dense(x, col.shape[-1], row.shape[-1], [length] * 2)


def ldr(x, g, h):
    from surm_ops.reference.fft import good_size

    r, n = g.shape
    length = good_size(2 * n - 1)
    return _prefer_dense(x, n, n, [length] * (r + 1) + [n] * (r + 1), build=2.0 * r * n**3)


def kronecker(x, a, b):
    (p, q), (u, v) = a.shape, b.shape
    t = _tokens(x, q * v)
    factored = t * min(p * v * (q + u), q * u * (v + p))
    return p * u * q * v * (t + MATERIALISE) <= factored


def svd(x, u, s, v):
    n_out, k = u.shape
    n_in = v.shape[0]
    t = _tokens(x, n_in)
    return n_out * n_in * (t + MATERIALISE) + n_out * n_in * k <= t * k * (n_in + n_out)
