"""Triton backend of ``circulant_matmul`` (square and block): the circulant as a (block-)Toeplitz generator."""

from __future__ import annotations

import torch

from surm_ops.kernels._structured import Toeplitz, rows, structured_mm, toeplitz_grads
from surm_ops.structure import circulant_diagonals, circulant_diagonals_adjoint, compute_dtype


def generator(c: torch.Tensor, dt: torch.dtype) -> Toeplitz:
    """c (n,) or (p, q, b) -> the tile generator of M in dtype ``dt``."""
    e = circulant_diagonals(c.to(dt))
    return Toeplitz(e.reshape(1, *c.shape[:-1] or (1, 1), -1).contiguous(), c.shape[-1], c.shape[-1])


def forward(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, c)
    gen = generator(c, dt)
    return structured_mm(rows(x), gen, x.dtype, acc=dt).reshape(*x.shape[:-1], gen.shape[0])


def backward(grad, x, c, needs):
    dt = compute_dtype(x, c)
    gx, ge = toeplitz_grads(grad, x, generator(c, dt), needs[0], needs[1], dt)
    return [gx, circulant_diagonals_adjoint(ge).reshape(c.shape).to(c.dtype) if needs[1] else None]
