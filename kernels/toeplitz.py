"""Triton backend of ``toeplitz_matmul`` (rectangular): a Toeplitz generator with diagonals ``cat(row[1:]^R, col)``."""

from __future__ import annotations

import torch

from surm_ops.kernels._structured import Toeplitz, rows, structured_mm, toeplitz_grads
from surm_ops.structure import compute_dtype, toeplitz_diagonals, toeplitz_diagonals_adjoint


def generator(col: torch.Tensor, row: torch.Tensor, dt: torch.dtype) -> Toeplitz:
    e = toeplitz_diagonals(col.to(dt), row.to(dt))
    return Toeplitz(e.reshape(1, 1, 1, -1).contiguous(), col.shape[0], row.shape[0])


def forward(x: torch.Tensor, col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, col, row)
    return structured_mm(rows(x), generator(col, row, dt), x.dtype, acc=dt).reshape(*x.shape[:-1], col.shape[0])


def backward(grad, x, col, row, needs):
    dt = compute_dtype(x, col, row)
    gx, ge = toeplitz_grads(grad, x, generator(col, row, dt), needs[0], needs[1] or needs[2], dt)
    gcol = grow = None
    if needs[1] or needs[2]:
        gcol, grow = toeplitz_diagonals_adjoint(ge[0, 0], row.shape[0])
        gcol, grow = gcol.to(col.dtype) if needs[1] else None, grow.to(row.dtype) if needs[2] else None
    return [gx, gcol, grow]
