"""Triton backend of ``skew_circulant_matmul``: a Toeplitz generator with diagonals ``cat(-c[1:], c)``."""

from __future__ import annotations

import torch

from surm_ops.kernels._structured import Toeplitz, rows, structured_mm, toeplitz_grads
from surm_ops.structure import compute_dtype, skew_circulant_diagonals, skew_circulant_diagonals_adjoint


def generator(c: torch.Tensor, dt: torch.dtype) -> Toeplitz:
    """c (..., n) -> the generator of M (a group per leading index), in dtype ``dt``."""
    n = c.shape[-1]
    return Toeplitz(skew_circulant_diagonals(c.to(dt)).reshape(-1, 1, 1, 2 * n - 1).contiguous(), n, n)


def forward(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, c)
    return structured_mm(rows(x), generator(c, dt), x.dtype, acc=dt).reshape(x.shape)


def backward(grad, x, c, needs):
    dt = compute_dtype(x, c)
    gx, ge = toeplitz_grads(grad, x, generator(c, dt), needs[0], needs[1], dt)
    return [gx, skew_circulant_diagonals_adjoint(ge[0, 0]).to(c.dtype) if needs[1] else None]
