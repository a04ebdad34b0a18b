"""``structured_linear``: a frozen linear layer and its structured update in one product,
``y = x @ (weight + M)^T + bias``.

With the ``triton`` backend the tiles of M are generated on chip and added to the weight's tiles before each
``tl.dot``, so the update costs no extra pass over x or y in the forward and in the input gradient (only M's own
gradient needs one reduction over the tokens). The ``dense`` backend (the reference) materialises M.

Two structures, each registered as its own op (``surm_ops::structured_linear_toeplitz`` and
``surm_ops::structured_linear_kronecker``):

- ``"toeplitz"``, params ``(e,)``: M is block-Toeplitz with diagonals ``e: (p, q, bo + bi - 1)``, block (P, Q)
  ``bo x bi`` with ``M[P*bo + i, Q*bi + j] = e[P, Q, i - j + bi - 1]`` (bo = n_out / p, bi = n_in / q). This covers
  circulant (square, truncated and block) and Toeplitz updates.
- ``"kronecker"``, params ``(a, b)``: ``M = kron(a, b)``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from surm_ops import _validate, dispatch
from surm_ops.ops import _triton
from surm_ops.ops._registry import _plain, define
from surm_ops.reference import dense
from surm_ops.structure import compute_dtype

STRUCTURES = ("toeplitz", "kronecker")


def _toeplitz_matrix(e: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
    p, q, _ = e.shape
    return dense.from_diagonals(e, n_in // q).permute(0, 2, 1, 3).reshape(n_out, n_in)


def _toeplitz_adjoint(gm: torch.Tensor, p: int, q: int) -> torch.Tensor:
    n_out, n_in = gm.shape
    return dense.diagonal_sums(gm.reshape(p, n_out // p, q, n_in // q).permute(0, 2, 1, 3))


def _dense_forward(matrix):
    def forward(x, weight, bias, *ps):
        dt = compute_dtype(x, weight, bias, *ps)
        w = weight.to(dt) + matrix(*(p.to(dt) for p in ps), *weight.shape)
        return F.linear(x.to(dt), w, bias.to(dt)).to(x.dtype)
    return forward


def _dense_backward(matrix, adjoint):
    def backward(grad, x, weight, bias, *rest):
        *ps, needs = rest
        dt = compute_dtype(x, weight, bias, *ps)
        g = grad.to(dt).reshape(-1, weight.shape[0])
        x2 = x.to(dt).reshape(-1, weight.shape[1])
        out = [None] * (3 + len(ps))
        if needs[0]:
            w = weight.to(dt) + matrix(*(p.to(dt) for p in ps), *weight.shape)
            out[0] = (g @ w).reshape(x.shape).to(x.dtype)
        if needs[1] or any(needs[3:]):
            gm = g.T @ x2
            out[1] = gm.to(weight.dtype) if needs[1] else None
            for i, gp in enumerate(adjoint(gm, *(p.to(dt) for p in ps))):
                out[3 + i] = gp.to(ps[i].dtype) if needs[3 + i] else None
        out[2] = g.sum(0).to(bias.dtype) if needs[2] else None
        return out
    return backward


_ops = {
    "toeplitz": define("structured_linear_toeplitz", ["weight", "bias", "e"], lambda x, w, b, e: w.shape[0]),
    "kronecker": define("structured_linear_kronecker", ["weight", "bias", "a", "b"],
                        lambda x, w, bias, a, b: w.shape[0]),
}
dispatch.register("structured_linear_toeplitz", "dense", dispatch.Impl(
    _dense_forward(_toeplitz_matrix),
    _dense_backward(_toeplitz_matrix, lambda gm, e: [_toeplitz_adjoint(gm, *e.shape[:2])])))
dispatch.register("structured_linear_kronecker", "dense", dispatch.Impl(
    _dense_forward(lambda a, b, n_out, n_in: torch.kron(a, b)),
    _dense_backward(lambda a, b, n_out, n_in: torch.kron(a, b), dense.kronecker_adjoint)))
_triton.register("structured_linear_toeplitz", "structured_linear")
_triton.register("structured_linear_kronecker", "structured_linear")


def structured_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, structure: str,
                      *params: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``y = x @ (weight + M)^T + bias`` in one fused product (the adapted layer's forward, unmerged).

    Shapes:
        x: ``(..., n_in)``; weight: ``(n_out, n_in)`` (usually frozen); bias: ``(n_out,)`` or None.
        ``structure="toeplitz"``: params ``(e,)``, ``e: (p, q, bo + bi - 1)`` with p*bo = n_out, q*bi = n_in — the
        diagonals of a block-Toeplitz M (see the module docstring). ``structure="kronecker"``: params ``(a, b)``,
        ``a: (p, q)``, ``b: (u, v)`` with p*u = n_out, q*v = n_in; M = kron(a, b).
        Returns ``(..., n_out)`` in x's dtype. Differentiable with respect to every tensor.

    Backends: ``triton`` (fused; CUDA tensors) and ``dense`` (materialises M; the reference). Automatic mode picks
    triton on CUDA, dense otherwise.

    Example::

        >>> x, w, b = torch.randn(4, 6), torch.randn(3, 6), torch.zeros(3)
        >>> e = torch.randn(1, 1, 3 + 6 - 1)            # a 3 x 6 Toeplitz update
        >>> y = surm_ops.structured_linear(x, w, b, "toeplitz", e)
        >>> torch.allclose(y, x @ (w + surm_ops.reference.dense.toeplitz(e[0, 0, 5:], e[0, 0, :6].flip(0))).T)
        True
    """
    bias = _arguments(x, weight, bias, structure, params)
    return _ops[structure](x, weight, bias, *params, backend)


def backend_for(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, structure: str,
                *params: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`structured_linear` with these arguments would run (``"triton"``: the fused kernel), asked
    of dispatch exactly as the call will ask it: in eager mode the same remembered decision, so an adapter that
    checks first and the op that then runs cannot disagree. Raises as the call would on bad arguments."""
    bias = _arguments(x, weight, bias, structure, params)
    op, tensors = f"structured_linear_{structure}", (x, weight, bias, *params)
    if _plain(tensors):
        return dispatch.decide(op, backend, tensors)
    # Traced (torch.compile) or a tensor subclass: the rule the registered op applies at run time, without
    # measuring (timing cannot happen while tracing).
    name = dispatch.requested(dispatch.check_name(backend))
    return dispatch.choose_auto(op, x, tensors[1:]) if name == "auto" else name


def _arguments(x, weight, bias, structure, params):
    """Validate structured_linear's arguments; returns the bias (zeros for None)."""
    name = "structured_linear"
    if structure not in STRUCTURES:
        raise ValueError(f"{name}: structure must be one of {', '.join(map(repr, STRUCTURES))}; got {structure!r}")
    want = 1 if structure == "toeplitz" else 2
    if len(params) != want:
        raise ValueError(f"{name}: structure {structure!r} takes {want} parameter tensor(s); got {len(params)}")
    named = dict(zip(("e",) if want == 1 else ("a", "b"), params))
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    _validate.tensors(name, x=x, weight=weight, bias=bias, **named)
    _validate.ndim(name, "weight", weight, (2,), "(n_out, n_in)")
    _validate.ndim(name, "bias", bias, (1,), "(n_out,)")
    n_out, n_in = weight.shape
    _validate.features(name, x, n_in, lambda: f"weight.shape = {_validate.shape_str(weight)}")
    if bias.shape[0] != n_out:
        raise ValueError(f"{name}: bias has shape {_validate.shape_str(bias)}; weight.shape = "
                         f"{_validate.shape_str(weight)} needs ({n_out},)")
    if structure == "toeplitz":
        e = params[0]
        _validate.ndim(name, "e", e, (3,), "(p, q, bo + bi - 1)")
        p, q, length = e.shape
        if p == 0 or q == 0 or n_out % p or n_in % q or length != n_out // p + n_in // q - 1:
            raise ValueError(f"{name}: e has shape {_validate.shape_str(e)}; for weight.shape = "
                             f"{_validate.shape_str(weight)} it needs (p, q, n_out/p + n_in/q - 1) with p | {n_out} "
                             f"and q | {n_in}")
    else:
        a, b = params
        _validate.ndim(name, "a", a, (2,), "(p, q)")
        _validate.ndim(name, "b", b, (2,), "(u, v)")
        if a.shape[0] * b.shape[0] != n_out or a.shape[1] * b.shape[1] != n_in:
            raise ValueError(f"{name}: kron(a, b) has shape ({a.shape[0] * b.shape[0]}, {a.shape[1] * b.shape[1]}) "
                             f"(a.shape = {_validate.shape_str(a)}, b.shape = {_validate.shape_str(b)}); weight.shape "
                             f"= {_validate.shape_str(weight)}")
    return bias


