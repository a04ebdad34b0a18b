"""Triton backend of ``kronecker_matmul``: tiles of ``kron(a, b)`` generated from a and b; the parameter
gradients are the factored reference's (two small contractions over the tokens)."""

from __future__ import annotations

import torch

from surm_ops.kernels._structured import Kronecker, rows, structured_mm
from surm_ops.reference import factored
from surm_ops.structure import compute_dtype


def generator(a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> Kronecker:
    return Kronecker(a.to(dt).contiguous(), b.to(dt).contiguous())


def forward(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, a, b)
    gen = generator(a, b, dt)
    return structured_mm(rows(x), gen, x.dtype, acc=dt).reshape(*x.shape[:-1], gen.shape[0])


def backward(grad, x, a, b, needs):
    dt = compute_dtype(x, a, b)
    gx = None
    if needs[0]:
        gx = structured_mm(rows(grad), generator(a, b, dt).transposed(), x.dtype, acc=dt).reshape(x.shape)
    _, ga, gb = factored.kronecker_backward(grad, x, a, b, [False, needs[1], needs[2]])
    return [gx, ga, gb]
