"""Registers the Triton kernels (``surm_ops.kernels.<op>``) as each op's ``triton`` backend.

The kernel modules import triton, which costs time and may be absent, so they are imported on the first call that
runs them. Automatic mode prefers this backend for CUDA tensors; on CPU it runs only when forced, through Triton's
interpreter (``TRITON_INTERPRET=1``, the test suite's setting).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from surm_ops import dispatch

# Generated tiles cost 2 n FLOPs per output element on tensor cores; docs/performance.md §1 puts that at n/527 times the
# H100 memory floor, against ~17x for the torch.fft path: break-even near n = 8192. A prediction, not a
# measurement (no GPU has timed this yet); bench/ on a GPU is how to move it.
MAX_TILE_WIDTH = 8192


def tile_width_rule(width: Callable[..., int], limit: int = MAX_TILE_WIDTH) -> Callable[..., str | None]:
    """A ``skip_auto`` that passes over triton when ``width(x, *params)`` (the reduction length of the generated
    tiles per output element) exceeds ``limit``."""

    def skip(x, *params):
        n = width(x, *params)
        if n > limit:
            return (f"generated tiles would reduce over {n} > {limit} inputs per output; the structured "
                    "(fft/factored) path is predicted faster")
        return None

    return skip


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
