"""Triton backend of ``ldr_matmul``: ``y = sum_i C(g_i) S(h_i) x`` as two grouped generator products.

The r intermediate products ``z_i = S(h_i) x`` stay in the accumulation dtype (float32 for half inputs) so the
chain rounds once; the backward recomputes them rather than saving r copies of x. The backward's products that feed
the parameter gradients (z for g's, ``grad C(g)`` for h's) take full-precision operands: rounding float32 g and h to
half there would cost the gradients about 1e-3 (bf16) of relative error.
"""

from __future__ import annotations

import torch

from surm_ops.kernels import skew_circulant
from surm_ops.kernels._structured import Toeplitz, diag_corr, rows, structured_mm
from surm_ops.structure import (
    circulant_diagonals,
    circulant_diagonals_adjoint,
    compute_dtype,
    skew_circulant_diagonals_adjoint,
)


def _generators(g: torch.Tensor, h: torch.Tensor, dt: torch.dtype) -> tuple[Toeplitz, Toeplitz]:
    r, n = g.shape
    gen_g = Toeplitz(circulant_diagonals(g.to(dt)).reshape(r, 1, 1, 2 * n - 1).contiguous(), n, n)
    return gen_g, skew_circulant.generator(h, dt)


def forward(x: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, g, h)
    gen_g, gen_h = _generators(g, h, dt)
    z = structured_mm(rows(x), gen_h, dt, groups_out=g.shape[0], acc=dt)
    return structured_mm(z, gen_g, x.dtype, sum_groups=True, acc=dt).reshape(x.shape)


def backward(grad, x, g, h, needs):
    dt = compute_dtype(x, g, h)
    r, n = g.shape
    gen_g, gen_h = _generators(g, h, dt)
    g2, x2 = rows(grad), rows(x)
    gx = gg = gh = None
    if needs[1]:
        z = structured_mm(x2, gen_h, dt, groups_out=r, acc=dt, exact=True)
        gg = circulant_diagonals_adjoint(diag_corr(g2, z, 1, 1, n, n, acc=dt)[:, 0, 0]).to(g.dtype)
    if needs[0] or needs[2]:
        gz = structured_mm(g2, gen_g.transposed(), dt, groups_out=r, acc=dt, exact=needs[2])
        if needs[0]:
            gx = structured_mm(gz, gen_h.transposed(), x.dtype, sum_groups=True, acc=dt).reshape(x.shape)
        if needs[2]:
            gh = skew_circulant_diagonals_adjoint(diag_corr(gz, x2, 1, 1, n, n, acc=dt)[:, 0, 0]).to(h.dtype)
    return [gx, gg, gh]
