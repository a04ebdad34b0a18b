"""Backend selection for every surm_ops op.

A backend is a named implementation (forward and backward) of one op. Each backend answers "can I run this call,
and if not, why" (:func:`reasons`); automatic selection takes the first backend in priority order that can run, and
a forced backend that cannot run raises :class:`BackendUnavailableError` listing every reason.

Priority in automatic mode: ``cuda`` (the compiled extension), ``triton``, then ``fft`` or ``dense`` — whichever the
op's cost model predicts is faster for the call's shape (dense materialisation wins at small sizes). With autotuning
on (``SURM_AUTOTUNE=1`` or :func:`surm_ops.autotune.enable`), automatic mode times the backends that can run instead
and keeps the fastest per shape class (:mod:`surm_ops.autotune`).

A call's decision (validation passed, backend chosen) depends only on its signature — each tensor's shape, dtype
and device, the backend asked for, and the two environment variables — so :func:`decide` keeps it per signature:
a repeated call costs one dictionary lookup instead of the checks (see bench/overhead.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from surm_ops import autotune

BACKENDS = ("cuda", "triton", "fft", "dense")
"""Every backend name, in automatic priority order."""

ENV_BACKEND = "SURM_BACKEND"
ENV_AUTOTUNE = "SURM_AUTOTUNE"
_GPU_BACKENDS = ("cuda", "triton")
MIN_CAPABILITY = (8, 0)
"""Oldest GPU the cuda and triton backends run on: their kernels use bfloat16 tensor-core products (Ampere)."""


class BackendUnavailableError(ValueError):
    """A backend was forced (argument or ``SURM_BACKEND``) but cannot run this call; the message lists why."""


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op.

    ``forward(x, *params) -> y``; ``backward(grad, x, *params, needs) -> grads`` returns one tensor (or ``None``
    where ``needs`` is False) per input; ``why_not(x, *params) -> list[str]`` lists call-specific reasons this
    implementation cannot run (empty when it can). ``skip_auto(x, *params) -> str | None`` says why automatic mode
    should pass over a backend that *can* run the call (another one is predicted faster for this shape); a forced
    backend ignores it.
    """

    forward: Callable[..., torch.Tensor]
    backward: Callable[..., Sequence[torch.Tensor | None]]
    why_not: Callable[..., list[str]] | None = None
    skip_auto: Callable[..., str | None] | None = None


_IMPLS: dict[str, dict[str, Impl]] = {}
_PREFER_DENSE: dict[str, Callable[..., bool]] = {}


@functools.cache
def _triton_reasons() -> list[str]:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return [f"triton is not importable ({err})"]
    return []


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def register(op: str, backend: str, impl: Impl) -> None:
    """Make ``impl`` the ``backend`` implementation of ``op`` (later Triton/CUDA backends plug in here)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _IMPLS.setdefault(op, {})[backend] = impl
    _DECIDED.clear()


def set_cost_model(op: str, prefer_dense: Callable[..., bool]) -> None:
    """``prefer_dense(x, *params) -> bool`` decides between ``dense`` and ``fft`` in automatic mode."""
    _PREFER_DENSE[op] = prefer_dense


def check_name(backend: object, what: str = "backend") -> str:
    """Validate a backend name given as an argument (or through the environment) and return it."""
    if backend == "auto" or backend in BACKENDS:
        return backend  # type: ignore[return-value]
    raise ValueError(f"{what} must be 'auto' or one of {', '.join(BACKENDS)}; got {backend!r}")


def reasons(op: str, backend: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> list[str]:
    """Why ``backend`` cannot run ``op`` on these arguments; an empty list means it can."""
    why = []
    impl = _IMPLS.get(op, {}).get(backend)
    if backend in _GPU_BACKENDS and x.device.type != "cuda" and not (backend == "triton" and _interpreting()):
        why.append(f"{backend} runs on CUDA tensors only; x is on {x.device}"
                   + (" (or on CPU with TRITON_INTERPRET=1)" if backend == "triton" else ""))
    too_old = False
    if backend in _GPU_BACKENDS and x.device.type == "cuda":
        cap = _capability(x.device.index if x.device.index is not None else torch.cuda.current_device())
        too_old = tuple(cap) < MIN_CAPABILITY
        if too_old:
            why.append(f"{backend} needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer; "
                       f"{x.device} is sm_{cap[0]}{cap[1]} (the fft and dense backends run there)")
    if backend == "triton":
        why += _triton_reasons()
    if backend == "cuda" and not too_old:  # an unusable device must not load, or JIT-build, the extension
        from surm_ops import _extension

        ok, status = _extension.status()
        if not ok:
            why.append(f"the compiled extension surm_ops._C is unavailable ({status})")
    if impl is None:
        why.append(f"surm_ops has no {backend} implementation of {op}")
    elif impl.why_not is not None and not why:
        why += impl.why_not(x, *params)
    return why


try:  # CPython's os.environ keeps the encoded variables in a dict: reading it skips a ~1-2 µs encode/decode
    _ENV_DATA, _env_key = os.environ._data, os.environ.encodekey  # type: ignore[attr-defined]
except AttributeError:  # another os.environ: read through the mapping (slower, same values)
    _ENV_DATA, _env_key = os.environ, str
_KEYS = (_env_key(ENV_BACKEND), _env_key(ENV_AUTOTUNE))

_DECIDED: dict[tuple, str] = {}
_DECIDED_MAX = 4096  # signatures kept; varying token counts must not grow it without bound


def decide(op: str, backend: str, tensors: Sequence[torch.Tensor], check: Callable[..., None] | None = None) -> str:
    """The backend that runs ``op`` on ``tensors`` (x first, then the parameters) — after ``check(*tensors)``
    (the op's argument validation) and the backend name's check — remembered per call signature.

    Only plain ``torch.Tensor`` (or ``nn.Parameter``) arguments may come here (the caller checks; another
    subclass's shape may lie). Decisions that a test may patch around (the Triton interpreter on CPU) are not
    remembered.
    """
    key = (op, backend, _ENV_DATA.get(_KEYS[0]), _ENV_DATA.get(_KEYS[1]), autotune.state(),
           *[a for t in tensors for a in (t.shape, t.dtype, t.device)])
    name = _DECIDED.get(key)
    if name is not None:
        return name
    if check is not None:
        check(*tensors)
    name = resolve(op, check_name(backend), tensors[0], tensors[1:])
    if name != "triton" or tensors[0].device.type == "cuda":
        if len(_DECIDED) >= _DECIDED_MAX:
            _DECIDED.clear()
        _DECIDED[key] = name
    return name


def forget() -> None:
    """Drop every remembered decision (after changing what the backends report, e.g. in tests)."""
    _DECIDED.clear()


def implementation(op: str, backend: str) -> Impl:
    """The registered ``backend`` implementation of ``op`` (a name :func:`resolve` returned)."""
    return _IMPLS[op][backend]


def requested(backend: str) -> str:
    """The backend a call asks for: its argument, else ``SURM_BACKEND``, else ``'auto'``."""
    if backend != "auto":
        return backend
    return check_name(os.environ.get(ENV_BACKEND, "auto") or "auto", what=f"environment variable {ENV_BACKEND}")


def resolve(op: str, backend: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> str:
    """The name of the backend that runs this call (see the module docstring for the rules)."""
    name = requested(backend)
    if name == "auto":
        if autotune.enabled():
            return autotune.choose(op, x, params)
        return choose_auto(op, x, params)
    why = reasons(op, name, x, params)
    if why:
        forced = "argument backend" if backend != "auto" else f"{ENV_BACKEND}={name}"
        raise BackendUnavailableError(f"{op}: backend {name!r} ({forced}) cannot run this call: " + "; ".join(why))
    return name


def select(op: str, backend: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> Impl:
    """The implementation that runs this call."""
    return _IMPLS[op][resolve(op, backend, x, params)]


def choose_auto(op: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> str:
    """The backend automatic mode picks for this call."""
    impls = _IMPLS[op]
    if _on_gpu(x):
        for name in _GPU_BACKENDS:
            # skip_auto first: reasons() of the cuda backend may load (or JIT-build) the extension.
            if name in impls and not _skipped(impls[name], x, params) and not reasons(op, name, x, params):
                return name
    prefer_dense = _PREFER_DENSE.get(op)
    order = ("dense", "fft") if prefer_dense is not None and prefer_dense(x, *params) else ("fft", "dense")
    for name in order:
        if name in impls and not reasons(op, name, x, params):
            return name
    raise BackendUnavailableError(f"{op}: no backend can run this call: " + "; ".join(
        f"{name}: {', '.join(reasons(op, name, x, params))}" for name in BACKENDS))


def _on_gpu(x: torch.Tensor) -> bool:
    return x.device.type == "cuda"


def _skipped(impl: Impl, x: torch.Tensor, params: Sequence[torch.Tensor]) -> bool:
    return impl.skip_auto is not None and impl.skip_auto(x, *params) is not None


def available(op: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> dict[str, list[str]]:
    """For each backend, the reasons it cannot run this call (empty list: it can)."""
    return {name: reasons(op, name, x, params) for name in BACKENDS}
