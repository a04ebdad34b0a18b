"""The speed rules: every "predicted faster" threshold automatic dispatch uses, in one file (the one a GPU tuning
session edits). Rules about what a backend *can* run live with the backend; these only say which one that can run
is expected to be faster. Measured dispatch (:mod:`surm_ops.autotune`) replaces them with timings when on.

1. On CUDA tensors, automatic mode tries ``cuda``, then ``triton``, passing over either where a rule below predicts
   the structured path faster (``CUDA_DENSE_MAX_FEATURES``, ``TRITON_MAX_TILE_WIDTH``, ``KRONECKER_MAX_TILE_WIDTH``).
2. Between the references, ``dense`` or ``fft``: a small cost model per op, in units of one multiply-add of the dense
   matmul:

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
from collections.abc import Callable

# -- GPU kernels: when generated tiles stop paying --------------------------------------------------------------------

TRITON_MAX_TILE_WIDTH = 8192
"""Generated tiles cost 2 n FLOPs per output element on tensor cores, about n/527 times the H100 memory floor,
against ~17x for the torch.fft path: break-even near n = 8192. A prediction, not a measurement (no GPU has timed
this yet); bench/ on a GPU is how to move it."""

KRONECKER_MAX_TILE_WIDTH = 1024
"""Generated kron tiles cost 2 n_in FLOPs per output, the factored product 2 (q + u): the tiles only pay off while
n_in is small (the fused structured_linear is where Kronecker tiles are worth it: they ride on W0's tiles)."""

SVD_TRITON_MAX_RANK = 128
"""The svd kernel keeps a (tokens x k) tile in registers; wider ranks would spill (the factored path runs them)."""

CUDA_DENSE_MAX_FEATURES = 1024
"""Up to this many features, dense tiles generated on the fly (Triton) are predicted to beat the extension's fused
FFT, which wins from about 2048 on. A prediction, not a measurement (nothing has run on a GPU yet)."""


def tile_width_rule(width: Callable[..., int], limit: int = TRITON_MAX_TILE_WIDTH) -> Callable[..., str | None]:
    """A ``skip_auto`` for triton: pass it over when ``width(x, *params)`` (the reduction length of the generated
    tiles per output element) exceeds ``limit``."""

    def skip(x, *params):
        n = width(x, *params)
        if n > limit:
            return (f"generated tiles would reduce over {n} > {limit} inputs per output; the structured "
                    "(fft/factored) path is predicted faster")
        return None

    return skip


def cuda_fused_fft(n_in: int, n_out: int) -> str | None:
    """The ``skip_auto`` rule of the extension's fused FFT kernels."""
    if max(n_in, n_out) <= CUDA_DENSE_MAX_FEATURES:
        return (f"n = {max(n_in, n_out)} <= {CUDA_DENSE_MAX_FEATURES}: dense tiles generated on the fly are "
                "predicted faster than the fused FFT (a prediction, not a measurement)")
    return None


# -- the references on any device: dense or fft -----------------------------------------------------------------------

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
    # Its fft path is three torch calls with nothing around them (no padding, slicing or kernel to build): that
    # fixed cost is no more than dense's (materialise M, then the matmul), so the two fixed costs cancel.
    # bench/crossover.py: fft faster at 1-64 tokens x n = 16-256 (15.6 vs 19.8 µs at 8 x 64) but near ties.
    return _prefer_dense(x, n, n, [n, n], calls=0)


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
