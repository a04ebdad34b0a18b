"""``skew_circulant_matmul``: products with a skew-circulant matrix."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, fft

NAME = "skew_circulant_matmul"

def _check(x, c):
    _validate.tensors(NAME, x=x, c=c)
    _validate.ndim(NAME, "c", c, (1,), "(n,)")
    _validate.nonempty(NAME, "c", c)
    _validate.features(NAME, x, c.shape[0], lambda: f"c.shape = {_validate.shape_str(c)}")


_op = define(NAME, ["c"], lambda x, c: c.shape[-1], _check)
register_reference(NAME, fft.skew_circulant_forward, fft.skew_circulant_backward, dense.skew_circulant,
                   lambda gm, c: [dense.skew_circulant_adjoint(gm)])
dispatch.set_cost_model(NAME, _speed.skew_circulant)
_triton.register(NAME, "skew_circulant", skip_auto=_speed.tile_width_rule(lambda x, c: x.shape[-1]))


def skew_circulant_matmul(x: torch.Tensor, c: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with M skew-circulant: ``M[i, j] = c[i - j]`` if i >= j else ``-c[n + i - j]``.

    Shapes:
        x: ``(..., n)``; c: ``(n,)``; returns ``(..., n)`` in x's dtype.

    Dtypes, gradients and ``backend`` as in :func:`surm_ops.circulant_matmul`.

    Example::

        >>> x, c = torch.randn(4, 8), torch.randn(8)
        >>> surm_ops.skew_circulant_matmul(x, c).shape
        torch.Size([4, 8])
    """
    return _op(x, c, backend)
