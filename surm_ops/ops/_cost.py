"""Automatic choice between the ``dense`` and ``fft`` backends: a small cost model per op, in units of one
multiply-add of the dense matmul.

dense ~ n_out * n_in * (tokens + MATERIALISE) + build
        one matmul plus writing M once (build: LDR's r products of n x n matrices)
fft   ~ FFT * tokens * sum(L log2 L over the transforms) * (CACHE if the transforms leave the CPU cache)
        + CALL * (number of FFT calls)

Fitted to `python bench/crossover.py` on the 2-core CPU machine (README, "Choosing a backend"): materialising M
costs about as much as 14 tokens of matmul, each FFT call has a fixed cost of ~2 µs, and transforms over more than
2^22 values per call ran 3-6x slower per element there (MKL leaving cache). Mispicks are left at near-ties
(within ~20%). On CUDA the Triton/CUDA kernels are tried first; among the references the same rule applies
without the cache term.
"""

from __future__ import annotations

import math

MATERIALISE = 14.0
FFT = 7.0
CALL = 160e3
CACHE = 4.0
CACHE_VALUES = 1 << 22


def _tokens(x, n_in):
    return x.numel() // max(n_in, 1)


def _prefer_dense(x, n_out, n_in, fft_lengths, calls, fft_scale=1.0, build=0.0):
    t = _tokens(x, n_in)
    work = FFT * fft_scale * t * sum(n * max(math.log2(n), 1.0) for n in fft_lengths)
    if x.device.type == "cpu" and t * max(fft_lengths) >= CACHE_VALUES:
        work *= CACHE
    return n_out * n_in * (t + MATERIALISE) + build <= work + CALL * calls


def circulant(x, c):
    if c.ndim == 3:
        p, q, b = c.shape
        # q forward transforms, p inverse, and a (q x p) complex contraction per frequency.
        return _prefer_dense(x, p * b, q * b, [b] * (p + q), calls=3, fft_scale=1.0 + p * q / (p + q))
    n = c.shape[-1]
    return _prefer_dense(x, n, n, [n, n], calls=3)


def skew_circulant(x, c):
    from surm_ops.structure import good_size

    n = c.shape[-1]
    return _prefer_dense(x, n, n, [good_size(2 * n - 1)] * 2, calls=3)


def toeplitz(x, col, row):
    from surm_ops.structure import good_size

    length = good_size(col.shape[-1] + row.shape[-1] - 1)
    return _prefer_dense(x, col.shape[-1], row.shape[-1], [length] * 2, calls=3)


def ldr(x, g, h):
    from surm_ops.structure import good_size

    r, n = g.shape
    length = good_size(2 * n - 1)
    return _prefer_dense(x, n, n, [length] * (r + 1) + [n] * (r + 1), calls=6, build=2.0 * r * n**3)


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
