"""``ldr_matmul``: products with a low-displacement-rank matrix ``sum_i C(g_i) S(h_i)``."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, fft

NAME = "ldr_matmul"

def _check(x, g, h):
    _validate.tensors(NAME, x=x, g=g, h=h)
    _validate.ndim(NAME, "g", g, (2,), "(r, n)")
    _validate.ndim(NAME, "h", h, (2,), "(r, n)")
    _validate.nonempty(NAME, "g", g)
    if h.shape != g.shape:
        raise ValueError(f"{NAME}: g and h must have the same shape (r, n); got g.shape = "
                         f"{_validate.shape_str(g)} and h.shape = {_validate.shape_str(h)}")
    _validate.features(NAME, x, g.shape[1], lambda: f"g.shape = {_validate.shape_str(g)}")


_op = define(NAME, ["g", "h"], lambda x, g, h: g.shape[-1], _check)
register_reference(NAME, fft.ldr_forward, fft.ldr_backward, dense.ldr, dense.ldr_adjoint)
dispatch.set_cost_model(NAME, _speed.ldr)
_triton.register(NAME, "ldr", skip_auto=_speed.tile_width_rule(lambda x, g, h: 2 * g.shape[0] * x.shape[-1]))


def ldr_matmul(x: torch.Tensor, g: torch.Tensor, h: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with ``M = sum_i circulant(g[i]) @ skew_circulant(h[i])`` — displacement rank r with
    respect to (Z_1, Z_-1).

    Shapes:
        x: ``(..., n)``; g, h: ``(r, n)``; returns ``(..., n)`` in x's dtype.

    Dtypes, gradients and ``backend`` as in :func:`surm_ops.circulant_matmul`.

    Example::

        >>> x, g, h = torch.randn(4, 8), torch.randn(2, 8), torch.randn(2, 8)
        >>> surm_ops.ldr_matmul(x, g, h).shape
        torch.Size([4, 8])
    """
    return _op(x, g, h, backend)
