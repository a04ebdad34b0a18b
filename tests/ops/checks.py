"""Comparison helpers: relative L2 error against the float64 oracle, with dtype-aware tolerances."""

from __future__ import annotations

import torch

from tests import oracle

HALF = (torch.float16, torch.bfloat16)
TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if want.numel() == 0:
        return 0.0
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def reference(case, x, params, grad):
    """Oracle output and gradients (x and every parameter) in float64 for the given upstream gradient."""
    x64 = x.detach().double().requires_grad_()
    p64 = [p.detach().double().requires_grad_() for p in params]
    y = oracle.apply(case.op, x64, *p64)
    grads = torch.autograd.grad(y, [x64, *p64], grad.double(), allow_unused=True)
    return y.detach(), [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, [x64, *p64])]


def half_baseline(case, x, params, grad):
    """The error of a plain low-precision dense product, the bar for half inputs (docs/contract.md §3): y and x's
    gradient."""
    m64 = oracle.matrices(case.op, x.shape[:-1], *[p.detach().double() for p in params])
    m = m64.to(x.dtype)
    y_ref = torch.einsum("...ij,...j->...i", m64, x.double())
    gx_ref = torch.einsum("...ij,...i->...j", m64, grad.double())
    if m.ndim == 2:
        y_low, gx_low = x @ m.T, grad @ m
    else:
        y_low = (m @ x.unsqueeze(-1)).squeeze(-1)
        gx_low = (grad.unsqueeze(-2) @ m).squeeze(-2)
    base = [rel_err(y_low, y_ref), rel_err(gx_low, gx_ref)]
    if case.op == "svd_matmul":
        # A rank-k update is computed factorised, as LoRA's two half GEMMs are: u, v and (x v) s each rounded to
        # half. That is the peer's error, and it can exceed the merged matrix's single rounding.
        u, s, v = (p.detach().double() for p in params)
        dt = x.dtype
        y_f = (((x @ v.to(dt)).double() * s).to(dt) @ u.to(dt).T)
        gx_f = (((grad @ u.to(dt)).double() * s).to(dt) @ v.to(dt).T)
        base = [max(base[0], rel_err(y_f, y_ref)), max(base[1], rel_err(gx_f, gx_ref))]
    return base[0], base[1]
