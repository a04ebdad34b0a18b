"""``kronecker_matmul``: products with a Kronecker product ``kron(a, b)``, never materialised by default."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, factored

NAME = "kronecker_matmul"

def _check(x, a, b):
    _validate.tensors(NAME, x=x, a=a, b=b)
    _validate.ndim(NAME, "a", a, (2,), "(p, q)")
    _validate.ndim(NAME, "b", b, (2,), "(u, v)")
    _validate.nonempty(NAME, "a", a)
    _validate.nonempty(NAME, "b", b)
    _validate.features(NAME, x, a.shape[1] * b.shape[1], lambda: (
        f"a.shape = {_validate.shape_str(a)} and b.shape = {_validate.shape_str(b)} (n_in = q*v)"))


_op = define(NAME, ["a", "b"], lambda x, a, b: a.shape[0] * b.shape[0], _check)
register_reference(NAME, factored.kronecker_forward, factored.kronecker_backward, dense.kronecker,
                   dense.kronecker_adjoint)
dispatch.set_cost_model(NAME, _speed.kronecker)
_triton.register(NAME, "kronecker",
                 skip_auto=_speed.tile_width_rule(lambda x, a, b: x.shape[-1], limit=_speed.KRONECKER_MAX_TILE_WIDTH))


def kronecker_matmul(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with ``M = torch.kron(a, b)``, computed as ``a @ X @ b.T`` with x reshaped to X (q, v).

    Shapes:
        x: ``(..., q*v)``; a: ``(p, q)``; b: ``(u, v)``; returns ``(..., p*u)`` in x's dtype.

    The ``fft`` backend of this op is the factored product (no FFT is involved); ``dense`` materialises
    ``kron(a, b)``. Dtypes, gradients and ``backend`` as in :func:`surm_ops.circulant_matmul`.

    Example::

        >>> x, a, b = torch.randn(4, 12), torch.randn(2, 3), torch.randn(5, 4)
        >>> surm_ops.kronecker_matmul(x, a, b).shape
        torch.Size([4, 10])
    """
    return _op(x, a, b, backend)
