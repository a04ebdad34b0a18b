"""``circulant_matmul``: products with a circulant or block-circulant matrix."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, fft

NAME = "circulant_matmul"


def _out_features(x, c):
    return c.shape[0] * c.shape[2] if c.ndim == 3 else c.shape[-1]


def _check(x, c):
    _validate.tensors(NAME, x=x, c=c)
    _validate.ndim(NAME, "c", c, (1, 3), "(n,) or (p, q, b)")
    _validate.nonempty(NAME, "c", c)
    n_in = c.shape[0] if c.ndim == 1 else c.shape[1] * c.shape[2]
    _validate.features(NAME, x, n_in, lambda: f"c.shape = {_validate.shape_str(c)}")


_op = define(NAME, ["c"], _out_features, _check)
register_reference(NAME, fft.circulant_forward, fft.circulant_backward,
                   lambda c: dense.block_circulant(c) if c.ndim == 3 else dense.circulant(c),
                   lambda gm, c: [dense.block_circulant_adjoint(gm, c.shape) if c.ndim == 3
                                  else dense.circulant_adjoint(gm)])
dispatch.set_cost_model(NAME, _speed.circulant)
_triton.register(NAME, "circulant", skip_auto=_speed.tile_width_rule(lambda x, c: x.shape[-1]))


def circulant_matmul(x: torch.Tensor, c: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with M circulant (``M[i, j] = c[(i - j) mod n]``, as ``scipy.linalg.circulant(c)``), or
    block-circulant when c is 3-D.

    Shapes:
        x: ``(..., n_in)`` — any leading dimensions, possibly zero-sized.
        c: ``(n,)`` — square: n_in = n_out = n. Or ``(p, q, b)`` — a (p x q) grid of b x b circulant blocks, block
        (P, Q) being ``circulant(c[P, Q])``: n_in = q*b, n_out = p*b.
        returns ``(..., n_out)`` in x's dtype.

    Half-precision x is computed in float32 and rounded once; c may be float32 while x is bfloat16. Differentiable
    with respect to x and c. ``backend`` is ``"auto"``, ``"fft"``, ``"dense"``, ``"triton"`` or ``"cuda"`` (see
    :mod:`surm_ops.dispatch`); ``"auto"`` honours the environment variable ``SURM_BACKEND``.

    Example::

        >>> x = torch.randn(4, 8)
        >>> c = torch.randn(8)
        >>> y = surm_ops.circulant_matmul(x, c)   # == x @ scipy.linalg.circulant(c).T
        >>> y.shape
        torch.Size([4, 8])
    """
    return _op(x, c, backend)
