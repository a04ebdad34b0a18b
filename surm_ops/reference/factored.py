"""The factored reference path of the ops whose structure is a product of small matrices (the ``fft`` backend
of ``kronecker_matmul`` and ``svd_matmul``): never materialises M.

Kronecker: with a (p, q), b (u, v) and x reshaped to X (q, v) row-major, ``kron(a, b) @ vec(X) = vec(a X b^T)``.
SVD form: ``y = ((x @ v) * s) @ u^T``; s may be per token.
"""

from __future__ import annotations

import torch

from surm_ops.structure import compute_dtype


def _out(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y.to(dtype).contiguous()


def _sandwich(a: torch.Tensor, xm: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """``a @ xm @ bt`` for a batch of xm, multiplied in the cheaper order."""
    p, q = a.shape
    v, u = bt.shape
    return (a @ xm) @ bt if p * v * (q + u) <= q * u * (v + p) else a @ (xm @ bt)


def kronecker_forward(x, a, b):
    dt = compute_dtype(x, a, b)
    (p, q), (u, v) = a.shape, b.shape
    xm = x.to(dt).reshape(*x.shape[:-1], q, v)
    return _out(_sandwich(a.to(dt), xm, b.to(dt).T).reshape(*x.shape[:-1], p * u), x.dtype)


def kronecker_backward(grad, x, a, b, needs):
    dt = compute_dtype(x, a, b)
    (p, q), (u, v) = a.shape, b.shape
    a_, b_ = a.to(dt), b.to(dt)
    gm = grad.to(dt).reshape(-1, p, u)
    gx = ga = gb = None
    if needs[0]:
        gx = _out(_sandwich(a_.T, gm, b_).reshape(x.shape), x.dtype)
    if needs[1] or needs[2]:
        xm = x.to(dt).reshape(-1, q, v)
        if needs[1]:
            ga = torch.einsum("tpu,tqu->pq", gm, xm @ b_.T).to(a.dtype)
        if needs[2]:
            gb = torch.einsum("tpu,tpv->uv", gm, a_ @ xm).to(b.dtype)
    return [gx, ga, gb]


def svd_forward(x, u, s, v):
    dt = compute_dtype(x, u, s, v)
    t = (x.to(dt) @ v.to(dt)).mul_(s.to(dt))
    return _out(t @ u.to(dt).T, x.dtype)


def svd_backward(grad, x, u, s, v, needs):
    dt = compute_dtype(x, u, s, v)
    n_out, k = u.shape
    u_, s_, v_ = u.to(dt), s.to(dt), v.to(dt)
    g = grad.to(dt)
    t = x.to(dt) @ v_
    gw = g @ u_
    gx = gu = gs = gv = None
    if needs[2]:
        gs = (gw * t).sum_to_size(s.shape).to(s.dtype)
    if needs[1]:
        gu = (g.reshape(-1, n_out).T @ (t * s_).reshape(-1, k)).to(u.dtype)
    gt = gw.mul_(s_)
    if needs[0]:
        gx = _out(gt @ v_.T, x.dtype)
    if needs[3]:
        gv = (x.to(dt).reshape(-1, v.shape[0]).T @ gt.reshape(-1, k)).to(v.dtype)
    return [gx, gu, gs, gv]
