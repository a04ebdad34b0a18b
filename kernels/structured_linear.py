"""Triton backend of ``structured_linear``: ``x @ (W + M)^T + bias`` with M's tiles added to W's on chip.

The forward and the input gradient are one :func:`structured_mm` each (W, and W^T with M's transposed generator);
M's gradient is the same diagonal reduction as the plain ops' (Kronecker: the factored contractions); W's and the
bias's gradients, needed only when they are trained, are plain matmuls.
"""

from __future__ import annotations

import torch

from surm_ops.kernels._structured import Kronecker, Toeplitz, diag_corr, rows, structured_mm
from surm_ops.reference import factored
from surm_ops.structure import compute_dtype


def _generator(weight: torch.Tensor, params, dt: torch.dtype) -> Toeplitz | Kronecker:
    n_out, n_in = weight.shape
    if len(params) == 1:
        e = params[0]
        return Toeplitz(e.to(dt).unsqueeze(0).contiguous(), n_out // e.shape[0], n_in // e.shape[1])
    return Kronecker(*(p.to(dt).contiguous() for p in params))


def forward(x, weight, bias, *params):
    dt = compute_dtype(x, weight, bias, *params)
    y = structured_mm(rows(x), _generator(weight, params, dt), x.dtype, weight=weight, bias=bias, acc=dt)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def backward(grad, x, weight, bias, *rest):
    *params, needs = rest
    dt = compute_dtype(x, weight, bias, *params)
    gen = _generator(weight, params, dt)
    g2, x2 = rows(grad), rows(x)
    out = [None] * (3 + len(params))
    if needs[0]:
        out[0] = structured_mm(g2, gen.transposed(), x.dtype, weight=weight.t(), acc=dt).reshape(x.shape)
    if needs[1]:
        out[1] = (g2.to(dt).T @ x2.to(dt)).to(weight.dtype)
    if needs[2]:
        out[2] = g2.to(dt).sum(0).to(bias.dtype)
    if isinstance(gen, Toeplitz) and needs[3]:
        p, q = params[0].shape[:2]
        out[3] = diag_corr(g2, x2, p, q, gen.bo, gen.bi, acc=dt)[0].to(params[0].dtype)
    elif isinstance(gen, Kronecker) and any(needs[3:]):
        _, ga, gb = factored.kronecker_backward(grad, x, *params, [False, *needs[3:]])
        out[3:] = [ga, gb]
    return out
