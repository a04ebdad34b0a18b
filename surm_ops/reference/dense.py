"""Dense materialisation of every structured matrix M, and the ``dense`` backend built on it.

These functions define what each op means (design.md §2.1): ``y = x @ M.T``. They are the test oracle in float64
and the fastest backend at small sizes (one matmul). Every materialiser accepts batched parameters with leading
dimensions where noted, returns M in the parameters' dtype, and is differentiable with autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from surm_ops._validate import compute_dtype


def _from_diagonals(e: torch.Tensor, n_in: int) -> torch.Tensor:
    """The Toeplitz matrix whose diagonal d = i - j holds ``e[..., d + n_in - 1]``.

    e: (..., n_out + n_in - 1) -> (..., n_out, n_in). Row i is a reversed window of e, so M is a flipped strided
    view of e's reversal, copied once: no n^2 index tensor is built.
    """
    return e.flip(-1).unfold(-1, n_in, 1).flip(-2)


def circulant(c: torch.Tensor) -> torch.Tensor:
    """``M[i, j] = c[(i - j) mod n]`` (``scipy.linalg.circulant``).

    c: (..., n) -> (..., n, n) for a batch of circulants.
    """
    return _from_diagonals(torch.cat([c[..., 1:], c], dim=-1), c.shape[-1])


def block_circulant(c: torch.Tensor) -> torch.Tensor:
    """c: (p, q, b) -> (p*b, q*b); block (P, Q) is ``circulant(c[P, Q])``."""
    p, q, b = c.shape
    return circulant(c).permute(0, 2, 1, 3).reshape(p * b, q * b)


def skew_circulant(c: torch.Tensor) -> torch.Tensor:
    """``M[i, j] = c[i - j]`` if i >= j else ``-c[n + i - j]``. c: (..., n) -> (..., n, n)."""
    return _from_diagonals(torch.cat([-c[..., 1:], c], dim=-1), c.shape[-1])


def toeplitz(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``scipy.linalg.toeplitz(col, row)``: ``M[i, j] = col[i - j]`` if i >= j else ``row[j - i]`` (row[0] unused).

    col: (n_out,), row: (n_in,) -> (n_out, n_in).
    """
    return _from_diagonals(torch.cat([row[1:].flip(0), col]), row.shape[-1])


def ldr(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``sum_i circulant(g[i]) @ skew_circulant(h[i])``. g, h: (r, n) -> (n, n)."""
    return (circulant(g) @ skew_circulant(h)).sum(0)


def kronecker(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.kron(a, b)``. a: (p, q), b: (u, v) -> (p*u, q*v)."""
    return torch.kron(a, b)


def svd(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u @ diag(s) @ v.T``. u: (n_out, k), s: (k,), v: (n_in, k) -> (n_out, n_in)."""
    return (u * s) @ v.T


def forward(materialise: Callable[..., torch.Tensor], x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x @ M.T`` with M materialised in the compute dtype; the result in x's dtype."""
    dt = compute_dtype(x, *params)
    m = materialise(*(p.to(dt) for p in params))
    return (x.to(dt) @ m.T).to(x.dtype)


def backward(materialise: Callable[..., torch.Tensor], grad: torch.Tensor, x: torch.Tensor,
             params: Sequence[torch.Tensor], needs: Sequence[bool]) -> list[torch.Tensor | None]:
    """Gradients of ``x @ M.T``: ``grad @ M`` for x; the materialisation's adjoint applied to ``grad^T x`` for
    the parameters (M is linear in each parameter, so this is exact)."""
    dt = compute_dtype(x, *params)
    params_dt = [p.to(dt) for p in params]
    m, pullback = torch.func.vjp(materialise, *params_dt)
    g = grad.to(dt)
    out: list[torch.Tensor | None] = [(g @ m).to(x.dtype) if needs[0] else None]
    if any(needs[1:]):
        gm = g.reshape(-1, m.shape[0]).T @ x.to(dt).reshape(-1, m.shape[1])
        out += [gp.to(p.dtype) if need else None for gp, p, need in zip(pullback(gm), params, needs[1:])]
    else:
        out += [None] * len(params)
    return out
