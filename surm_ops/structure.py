"""The structure algebra every backend shares: how a (block-)Toeplitz-family matrix is laid out by its diagonals,
the adjoints of those layouts, the dtype a product computes in, and the FFT lengths that transform fast.

A Toeplitz matrix M (n_out x n_in) is described by its n_out + n_in - 1 diagonals ``e``: ``M[i, j] =
e[i - j + n_in - 1]`` (:func:`from_diagonals`). A circulant is the Toeplitz matrix with ``e = cat(c[1:], c)``, a
skew-circulant negates the wrapped half. The dense backend, the Triton kernels and the adapters' fused layers all
build their matrices or tiles from these layouts; the test oracle (tests/oracle.py) does not use them.
"""

from __future__ import annotations

import functools

import torch


def compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any argument is float64, else float32: half inputs are computed in float32 (docs/contract.md §2.2)."""
    for t in ts:  # a loop, not any(<generator>): this runs on every call, and the generator costs ~0.5 µs
        if t.dtype == torch.float64:
            return torch.float64
    return torch.float32


@functools.cache
def good_size(m: int) -> int:
    """The smallest even 2^a 3^b 5^c 7^d >= m: lengths that MKL, pocketfft and cuFFT transform fast (odd lengths
    such as 63 measured 2-4x slower than 64 on CPU)."""
    n = max(m, 2) + max(m, 2) % 2
    while True:
        r = n
        for f in (2, 3, 5, 7):
            while r % f == 0:
                r //= f
        if r == 1:
            return n
        n += 2


def from_diagonals(e: torch.Tensor, n_in: int) -> torch.Tensor:
    """The Toeplitz matrix whose diagonal d = i - j holds ``e[..., d + n_in - 1]``.

    e: (..., n_out + n_in - 1) -> (..., n_out, n_in). Row i is a reversed window of e, so M is a flipped strided
    view of e's reversal, copied once: no n^2 index tensor is built.
    """
    return e.flip(-1).unfold(-1, n_in, 1).flip(-2)

def diagonal_sums(gm: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`from_diagonals`: ``out[..., d + n_in - 1] = sum over i - j = d of gm[..., i, j]``.

    Flipping columns turns diagonals into anti-diagonals; padding each row with n_out zeros and re-reading the
    buffer with rows one element shorter shifts row i right by i, so each anti-diagonal becomes a column.
    """
    n_out, n_in = gm.shape[-2:]
    width = n_out + n_in - 1
    flat = torch.nn.functional.pad(gm.flip(-1), (0, n_out)).flatten(-2)[..., :n_out * width]
    return flat.reshape(*gm.shape[:-2], n_out, width).sum(-2)

def circulant_diagonals(c: torch.Tensor) -> torch.Tensor:
    """The diagonals of ``circulant(c)`` (the layout of :func:`from_diagonals`): (..., n) -> (..., 2n - 1)."""
    return torch.cat([c[..., 1:], c], dim=-1)

def circulant_diagonals_adjoint(ge: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`circulant_diagonals`: (..., 2n - 1) -> (..., n)."""
    n = (ge.shape[-1] + 1) // 2
    gc = ge[..., n - 1:].clone()
    gc[..., 1:] += ge[..., :n - 1]
    return gc

def skew_circulant_diagonals(c: torch.Tensor) -> torch.Tensor:
    return torch.cat([-c[..., 1:], c], dim=-1)

def skew_circulant_diagonals_adjoint(ge: torch.Tensor) -> torch.Tensor:
    n = (ge.shape[-1] + 1) // 2
    gc = ge[..., n - 1:].clone()
    gc[..., 1:] -= ge[..., :n - 1]
    return gc

def toeplitz_diagonals(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """(n_out,), (n_in,) -> (n_out + n_in - 1,); row[0] is not used."""
    return torch.cat([row[1:].flip(0), col])

def toeplitz_diagonals_adjoint(ge: torch.Tensor, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ge[n_in - 1:].clone(), torch.cat([ge.new_zeros(1), ge[:n_in - 1].flip(0)])
