"""Dense materialisation of every structured matrix M, and the ``dense`` backend built on it.

These functions define what each op means (docs/contract.md §2.1): ``y = x @ M.T``. They are the test oracle in float64
and the fastest backend at small sizes (one matmul). Every materialiser accepts batched parameters with leading
dimensions where noted, returns M in the parameters' dtype, and is differentiable with autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from surm_ops.structure import (
    circulant_diagonals,
    circulant_diagonals_adjoint,
    compute_dtype,
    diagonal_sums,
    from_diagonals,
    skew_circulant_diagonals,
    skew_circulant_diagonals_adjoint,
    toeplitz_diagonals,
    toeplitz_diagonals_adjoint,
)


def circulant(c: torch.Tensor) -> torch.Tensor:
    """``M[i, j] = c[(i - j) mod n]`` (``scipy.linalg.circulant``).

    c: (..., n) -> (..., n, n) for a batch of circulants.
    """
    return from_diagonals(circulant_diagonals(c), c.shape[-1])


def block_circulant(c: torch.Tensor) -> torch.Tensor:
    """c: (p, q, b) -> (p*b, q*b); block (P, Q) is ``circulant(c[P, Q])``."""
    p, q, b = c.shape
    return circulant(c).permute(0, 2, 1, 3).reshape(p * b, q * b)


def skew_circulant(c: torch.Tensor) -> torch.Tensor:
    """``M[i, j] = c[i - j]`` if i >= j else ``-c[n + i - j]``. c: (..., n) -> (..., n, n)."""
    return from_diagonals(skew_circulant_diagonals(c), c.shape[-1])


def toeplitz(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``scipy.linalg.toeplitz(col, row)``: ``M[i, j] = col[i - j]`` if i >= j else ``row[j - i]`` (row[0] unused).

    col: (n_out,), row: (n_in,) -> (n_out, n_in).
    """
    return from_diagonals(toeplitz_diagonals(col, row), row.shape[-1])


def circulant_adjoint(gm: torch.Tensor) -> torch.Tensor:
    """The gradient of c given the gradient of ``circulant(c)``: (..., n, n) -> (..., n)."""
    return circulant_diagonals_adjoint(diagonal_sums(gm))


def block_circulant_adjoint(gm: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    p, q, b = shape
    return circulant_adjoint(gm.reshape(p, b, q, b).permute(0, 2, 1, 3))


def skew_circulant_adjoint(gm: torch.Tensor) -> torch.Tensor:
    return skew_circulant_diagonals_adjoint(diagonal_sums(gm))


def toeplitz_adjoint(gm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return toeplitz_diagonals_adjoint(diagonal_sums(gm), gm.shape[-1])


def ldr(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``sum_i circulant(g[i]) @ skew_circulant(h[i])``. g, h: (r, n) -> (n, n)."""
    return (circulant(g) @ skew_circulant(h)).sum(0)


def ldr_adjoint(gm: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of g and h given the gradient of ``ldr(g, h)``: each term C(g_i) S(h_i) is a product."""
    return (circulant_adjoint(gm @ skew_circulant(h).mT),
            skew_circulant_adjoint(circulant(g).mT @ gm))


def kronecker(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.kron(a, b)``. a: (p, q), b: (u, v) -> (p*u, q*v)."""
    return torch.kron(a, b)


def kronecker_adjoint(gm: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g4 = gm.reshape(a.shape[0], b.shape[0], a.shape[1], b.shape[1])
    return torch.einsum("puqv,uv->pq", g4, b), torch.einsum("puqv,pq->uv", g4, a)


def svd(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u @ diag(s) @ v.T``. u: (n_out, k), s: (k,), v: (n_in, k) -> (n_out, n_in)."""
    return (u * s) @ v.T


def svd_adjoint(gm: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor):
    gmv = gm @ v
    gs = (gmv * u).sum(0)  # (k,); s itself may be (k,), (1, k) or a broadcast scalar
    gs = gs.reshape(s.shape) if s.numel() == gs.numel() else gs.sum().reshape(s.shape)
    return gmv * s, gs, gm.T @ (u * s)


def forward(materialise: Callable[..., torch.Tensor], x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x @ M.T`` with M materialised in the compute dtype; the result in x's dtype."""
    dt = compute_dtype(x, *params)
    m = materialise(*(p.to(dt) for p in params))
    return (x.to(dt) @ m.T).to(x.dtype)


def backward(materialise: Callable[..., torch.Tensor], adjoint: Callable[..., Sequence[torch.Tensor]],
             grad: torch.Tensor, x: torch.Tensor, params: Sequence[torch.Tensor],
             needs: Sequence[bool]) -> list[torch.Tensor | None]:
    """Gradients of ``x @ M.T``: ``grad @ M`` for x; for the parameters, ``adjoint(grad^T x, *params)`` — the
    transpose of the materialisation, which is linear in each parameter."""
    dt = compute_dtype(x, *params)
    params_dt = [p.to(dt) for p in params]
    m = materialise(*params_dt)
    g = grad.to(dt)
    out: list[torch.Tensor | None] = [(g @ m).to(x.dtype) if needs[0] else None]
    if any(needs[1:]):
        gm = g.reshape(-1, m.shape[0]).T @ x.to(dt).reshape(-1, m.shape[1])
        out += [gp.to(p.dtype) if need else None for gp, p, need in zip(adjoint(gm, *params_dt), params, needs[1:])]
    else:
        out += [None] * len(params)
    return out
