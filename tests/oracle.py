"""An independent float64 oracle: every structured matrix built column by column, written separately from
surm_ops.reference.dense and checked against scipy in tests/test_oracle.py. Differentiable, so it gives the
reference gradients too."""

from __future__ import annotations

import torch


def circulant(c):
    n = c.shape[0]
    return torch.stack([torch.cat([c[n - j:], c[:n - j]]) for j in range(n)], dim=1)


def skew_circulant(c):
    n = c.shape[0]
    return torch.stack([torch.cat([-c[n - j:], c[:n - j]]) for j in range(n)], dim=1)


def block_circulant(c):
    return torch.cat([torch.cat([circulant(blk) for blk in row], dim=1) for row in c], dim=0)


def toeplitz(col, row):
    return torch.stack([torch.cat([row[1:j + 1].flip(0), col])[:col.shape[0]] for j in range(row.shape[0])], dim=1)


def ldr(g, h):
    return sum(circulant(gi) @ skew_circulant(hi) for gi, hi in zip(g, h))


def kronecker(a, b):
    (p, q), (u, v) = a.shape, b.shape
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(p * u, q * v)


def matrix(name, *params):
    """M for op ``name`` and its parameters (svd: s must be a plain (k,) vector)."""
    if name == "circulant_matmul":
        (c,) = params
        return block_circulant(c) if c.ndim == 3 else circulant(c)
    if name == "skew_circulant_matmul":
        return skew_circulant(*params)
    if name == "toeplitz_matmul":
        col, row = (params[0], params[0]) if len(params) == 1 else params  # row=None means row = col
        return toeplitz(col, row)
    if name == "ldr_matmul":
        return ldr(*params)
    if name == "kronecker_matmul":
        return kronecker(*params)
    if name == "svd_matmul":
        u, s, v = params
        return u @ torch.diag(s) @ v.T
    raise KeyError(name)


def matrices(name, lead, *params):
    """M, or one M per token (shape (*lead, n_out, n_in)) for svd_matmul with per-token s."""
    if name == "svd_matmul" and params[1].ndim > 1:
        u, s, v = params
        return torch.einsum("ik,...k,jk->...ij", u, s.expand(*lead, u.shape[1]), v)
    return matrix(name, *params)


def apply(name, x, *params):
    """y = x @ M.T in float64 (per token where M is)."""
    m = matrices(name, x.shape[:-1], *params)
    return torch.einsum("...ij,...j->...i", m, x)


def block_toeplitz(e, n_out, n_in):
    """``M[P*bo + i, Q*bi + j] = e[P, Q, i - j + bi - 1]`` for e (p, q, bo + bi - 1), column by column from the
    formula (the layout ``structured_linear`` documents)."""
    p, q, _ = e.shape
    bo, bi = n_out // p, n_in // q
    rows = torch.arange(n_out)
    cols = []
    for col in range(n_in):
        blk_q, j = divmod(col, bi)
        cols.append(e[rows // bo, blk_q, rows % bo - j + bi - 1])
    return torch.stack(cols, dim=1)
