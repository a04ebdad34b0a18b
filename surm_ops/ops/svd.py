"""``svd_matmul``: products with a matrix in truncated singular-value form ``u diag(s) v^T`` (SARA, Mo-SARA)."""

from __future__ import annotations

import torch

from surm_ops import _validate, dispatch
from surm_ops.ops import _speed, _triton
from surm_ops.ops._registry import define, register_reference
from surm_ops.reference import dense, factored

NAME = "svd_matmul"


def _dense_why_not(x, u, s, v):
    if s.ndim > 1 and s.shape[:-1].numel() > 1:
        return [f"s has per-token values (s.shape = {_validate.shape_str(s)}); dense materialises one matrix "
                "for all tokens"]
    return []


def _check(x, u, s, v):
    _validate.tensors(NAME, x=x, u=u, s=s, v=v)
    _validate.ndim(NAME, "u", u, (2,), "(n_out, k)")
    _validate.ndim(NAME, "v", v, (2,), "(n_in, k)")
    if u.shape[1] != v.shape[1]:
        raise ValueError(f"{NAME}: u and v must have the same number of columns k; got u.shape = "
                         f"{_validate.shape_str(u)} and v.shape = {_validate.shape_str(v)}")
    _validate.features(NAME, x, v.shape[0], lambda: f"v.shape = {_validate.shape_str(v)}")
    k = u.shape[1]
    target = (*x.shape[:-1], k)
    # A plain check: torch.broadcast_shapes costs ~15 µs, as much as a small call's whole kernel time.
    ok = s.ndim <= len(target) and all(d == 1 or d == t for d, t in zip(reversed(s.shape), reversed(target)))
    if not ok:
        raise ValueError(f"{NAME}: s must have shape (k,) = ({k},) or be broadcastable to (..., k) = "
                         f"{tuple(target)}; got s.shape = {_validate.shape_str(s)}")


_op = define(NAME, ["u", "s", "v"], lambda x, u, s, v: u.shape[0], _check)
register_reference(NAME, factored.svd_forward, factored.svd_backward,
                   lambda u, s, v: dense.svd(u, s.reshape(-1), v), dense.svd_adjoint, _dense_why_not)
dispatch.set_cost_model(NAME, _speed.svd)
_triton.register(NAME, "svd", lambda x, u, s, v: [
    f"rank k = {u.shape[1]} > {_speed.SVD_TRITON_MAX_RANK}: the kernel keeps a (tokens x k) tile in registers; "
    "wider ranks would spill"] if u.shape[1] > _speed.SVD_TRITON_MAX_RANK else [])


def svd_matmul(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor,
               backend: str = "auto") -> torch.Tensor:
    """``y = x @ M.T`` with ``M = u @ diag(s) @ v.T``, computed as ``((x @ v) * s) @ u.T``.

    Shapes:
        x: ``(..., n_in)``; u: ``(n_out, k)``; v: ``(n_in, k)``; s: ``(k,)``, or any shape broadcastable to
        ``(..., k)`` for per-token singular values (Mo-SARA's mixture); returns ``(..., n_out)`` in x's dtype.

    The ``fft`` backend of this op is the factored product; ``dense`` materialises M and cannot take per-token s.
    Dtypes, gradients and ``backend`` as in :func:`surm_ops.circulant_matmul`.

    Example::

        >>> x, u, s, v = torch.randn(4, 6), torch.randn(5, 2), torch.randn(2), torch.randn(6, 2)
        >>> surm_ops.svd_matmul(x, u, s, v).shape
        torch.Size([4, 5])
    """
    return _op(x, u, s, v, backend)
