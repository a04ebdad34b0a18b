"""Measured dispatch: automatic mode times the backends instead of trusting the cost model.

Off by default. On with ``SURM_AUTOTUNE=1`` (or :func:`enable`): the first automatic call of a shape class times
every backend that can run it (forward, the call's own tensors, best of a few rounds) and keeps the fastest; later
calls of the class reuse it. A shape class is (op, device, dtypes, parameter shapes, n_in, token count rounded up to
a power of two). With ``SURM_CACHE_DIR`` set (or ``enable(cache_dir=...)``) the choices are also kept on disk, in
``autotune.json`` there, and read back by a new process. ``python -m surm_ops.env`` lists what was chosen.

Timing happens at run time inside the op, so it works under ``torch.compile`` too. Every backend meets the op's
contract, so a choice changes results only within the backends' tolerances. On CPU the Triton interpreter (a test
tool) is never a candidate.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Sequence

import torch

ENV = "SURM_AUTOTUNE"
ENV_CACHE_DIR = "SURM_CACHE_DIR"
FILE = "autotune.json"
ROUNDS = 3
"""Timed rounds per backend (interleaved); the best round counts."""
ROUND_SECONDS = 2e-3
"""Roughly how long one round of one backend runs (the call is repeated to fill it)."""

_enabled: bool | None = None  # None: follow the environment
_cache_dir: str | None = None
_chosen: dict[str, str] = {}
_loaded_from: set[str] = set()
_lock = threading.Lock()


def enable(on: bool = True, cache_dir: str | os.PathLike | None = None) -> None:
    """Turn measured dispatch on (or off) for this process, overriding ``SURM_AUTOTUNE``; ``cache_dir`` keeps the
    choices on disk there (overriding ``SURM_CACHE_DIR``).

    Example::

        >>> surm_ops.autotune.enable(cache_dir="~/.cache/surm_ops")
        >>> y = surm_ops.circulant_matmul(x, c)      # times fft and dense once for this shape class
    """
    global _enabled, _cache_dir
    _enabled = bool(on)
    _cache_dir = None if cache_dir is None else os.path.expanduser(os.fspath(cache_dir))


def reset() -> None:
    """Forget the choices held in memory and the :func:`enable` override (the disk file stays)."""
    global _enabled, _cache_dir
    with _lock:
        _enabled, _cache_dir = None, None
        _chosen.clear()
        _loaded_from.clear()
    from surm_ops import dispatch

    dispatch.forget()  # decisions remembered per call signature may hold a forgotten choice


def state() -> tuple[bool | None, str | None]:
    """What :func:`enable` set (part of :func:`surm_ops.dispatch.decide`'s key)."""
    return _enabled, _cache_dir


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV, "0") not in ("", "0")


def cache_dir() -> str | None:
    if _cache_dir is not None:
        return _cache_dir
    d = os.environ.get(ENV_CACHE_DIR, "")
    return os.path.expanduser(d) if d else None


def choices() -> dict[str, str]:
    """The choices made so far (and read from disk): shape class -> backend."""
    _load()
    return dict(_chosen)


def shape_class(op: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> str:
    """The key one choice is kept under."""
    tokens = x.numel() // max(x.shape[-1], 1)
    bucket = 1 << max(tokens - 1, 0).bit_length()
    device = x.device.type
    if device == "cuda":
        device = torch.cuda.get_device_name(x.device)
    shapes = ",".join("x".join(map(str, p.shape)) + ":" + str(p.dtype).removeprefix("torch.") for p in params)
    return f"{op}|{device}|{str(x.dtype).removeprefix('torch.')}|n_in={x.shape[-1]}|tokens<={bucket}|{shapes}"


def choose(op: str, x: torch.Tensor, params: Sequence[torch.Tensor]) -> str:
    """The fastest backend for this call's shape class, timing the candidates on first sight."""
    from surm_ops import dispatch

    _load()
    key = shape_class(op, x, params)
    name = _chosen.get(key)
    if name is not None and not dispatch.reasons(op, name, x, params):
        return name
    candidates = [b for b in dispatch.BACKENDS if b in dispatch._IMPLS.get(op, {})
                  and (b != "triton" or x.device.type == "cuda") and not dispatch.reasons(op, b, x, params)]
    if not candidates:
        return dispatch.choose_auto(op, x, params)  # raises, listing every reason
    name = candidates[0] if len(candidates) == 1 else _fastest(op, candidates, x, params)
    with _lock:
        _chosen[key] = name
    _save(key, name)
    return name


def _fastest(op: str, candidates: list[str], x: torch.Tensor, params: Sequence[torch.Tensor]) -> str:
    from surm_ops import dispatch

    cuda = x.device.type == "cuda"
    runs = {b: functools.partial(dispatch.implementation(op, b).forward, x, *params) for b in candidates}
    best: dict[str, float] = {}
    reps: dict[str, int] = {}
    with torch.no_grad():
        for b in list(runs):
            try:
                one = _time(runs[b], 1, cuda)  # also the warm-up: compiles kernels, plans FFTs
                one = _time(runs[b], 1, cuda)
            except (RuntimeError, torch.cuda.OutOfMemoryError):  # e.g. dense out of memory: not a candidate
                del runs[b]
                continue
            reps[b] = max(1, min(1000, int(ROUND_SECONDS / max(one, 1e-7))))
            best[b] = float("inf")
        for _ in range(ROUNDS):
            for b, run in runs.items():
                best[b] = min(best[b], _time(run, reps[b], cuda) / reps[b])
    if not best:
        return candidates[0]
    return min(best, key=best.get)


def _time(run, reps: int, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _path() -> str | None:
    d = cache_dir()
    return None if d is None else os.path.join(d, FILE)


def _read(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # a damaged cache costs a re-measurement, never a wrong result
        import warnings

        warnings.warn(f"surm_ops.autotune: ignoring unreadable cache {path} ({err})", stacklevel=3)
        return {}
    from surm_ops import dispatch

    return {k: v for k, v in data.items() if isinstance(k, str) and v in dispatch.BACKENDS} \
        if isinstance(data, dict) else {}


def _load() -> None:
    path = _path()
    if path is None or path in _loaded_from:
        return
    with _lock:
        for k, v in _read(path).items():
            _chosen.setdefault(k, v)
        _loaded_from.add(path)


def _save(key: str, name: str) -> None:
    path = _path()
    if path is None:
        return
    with _lock:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read(path)  # another process may have added choices since
        data[key] = name
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
