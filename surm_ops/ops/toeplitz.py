"""``toeplitz_matmul``: products with a general (rectangular) Toeplitz matrix."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, fft

NAME = "toeplitz_matmul"

def _check(x, col, row):
    # row=None reaches here as row = col (the same tensor): the messages then speak of col.
    _validate.tensors(NAME, x=x, col=col, **({} if row is col else {"row": row}))
    _validate.ndim(NAME, "col", col, (1,), "(n_out,)")
    _validate.ndim(NAME, "row", row, (1,), "(n_in,)")
    _validate.nonempty(NAME, "col", col)
    _validate.nonempty(NAME, "row", row)
    _validate.features(NAME, x, row.shape[0], lambda: (
        f"row.shape = {_validate.shape_str(row)}" if row is not col
        else f"col.shape = {_validate.shape_str(col)} (row=None means row = col)"))


_op = define(NAME, ["col", "row"], lambda x, col, row: col.shape[-1], _check)
register_reference(NAME, fft.toeplitz_forward, fft.toeplitz_backward, dense.toeplitz,
                   lambda gm, col, row: dense.toeplitz_adjoint(gm))
dispatch.set_cost_model(NAME, _speed.toeplitz)
_triton.register(NAME, "toeplitz", skip_auto=_speed.tile_width_rule(lambda x, col, row: x.shape[-1]))


def toeplitz_matmul(x: torch.Tensor, col: torch.Tensor, row: torch.Tensor | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with ``M = scipy.linalg.toeplitz(col, row)``: ``M[i, j] = col[i - j]`` if i >= j else
    ``row[j - i]``.

    Shapes:
        x: ``(..., n_in)``; col: ``(n_out,)`` (the first column); row: ``(n_in,)`` (the first row; ``row[0]`` is
        ignored, as in scipy, and gets a zero gradient). ``row=None`` means ``row = col`` (square, symmetric).
        Returns ``(..., n_out)`` in x's dtype.

    Dtypes, gradients and ``backend`` as in :func:`surm_ops.circulant_matmul`.

    Example::

        >>> x, col, row = torch.randn(4, 6), torch.randn(3), torch.randn(6)
        >>> surm_ops.toeplitz_matmul(x, col, row).shape
        torch.Size([4, 3])
    """
    return _op(x, col, col if row is None else row, backend)
