"""Registers the Triton kernels (``surm_ops.kernels.<op>``) as each op's ``triton`` backend.

The kernel modules import triton, which costs time and may be absent, so they are imported on the first call that
runs them. Automatic mode prefers this backend for CUDA tensors; on CPU it runs only when forced, through Triton's
interpreter (``TRITON_INTERPRET=1``, the test suite's setting).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from surm_ops import dispatch


def register(op: str, module: str, why_not: Callable[..., list[str]] | None = None,
             skip_auto: Callable[..., str | None] | None = None) -> None:
    """Make ``surm_ops.kernels.<module>``'s ``forward``/``backward`` the ``triton`` backend of ``op``; ``why_not``
    and ``skip_auto`` as in :class:`surm_ops.dispatch.Impl` (they must not import triton)."""

    def kernels():
        return importlib.import_module(f"surm_ops.kernels.{module}")

    dispatch.register(op, "triton", dispatch.Impl(
        lambda x, *ps: kernels().forward(x, *ps),
        lambda grad, x, *rest: kernels().backward(grad, x, *rest),
        why_not, skip_auto))
