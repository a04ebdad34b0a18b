"""Loads the optional compiled extension `surm_ops._C` once and says why it is missing.

The extension exists only where setup.py found a CUDA torch and nvcc, so its absence is the normal state of a
CPU-only install. Importing this module does nothing; torch and the extension are touched on the first `load()`.
"""

from __future__ import annotations

import importlib
import threading
import types
import warnings

_lock = threading.Lock()
_loaded = False
_module: types.ModuleType | None = None
_reason = ""


def _why_missing(exc: BaseException, torch_cuda: str | None) -> str:
    if torch_cuda is None:
        return "not built: this torch has no CUDA (torch.version.cuda is None)"
    if isinstance(exc, ModuleNotFoundError) and exc.name == "surm_ops._C":
        return "not built: csrc has no compiled extension in this install"
    # Present but unloadable: usually built against another torch or CUDA than the one installed.
    return f"failed to load: {type(exc).__name__}: {exc}"


def load() -> types.ModuleType | None:
    """The `surm_ops._C` module, or None when it is not available. Never raises; warns at most once."""
    global _loaded, _module, _reason
    if _loaded:
        return _module
    # torch first: the extension's shared library links against libtorch. torch is a hard dependency of surm_ops,
    # so this import cannot fail where surm_ops itself imported.
    import torch

    with _lock:
        if _loaded:
            return _module
        try:
            _module = importlib.import_module("surm_ops._C")
            _reason = f"loaded from {getattr(_module, '__file__', '?')}"
        except Exception as exc:  # any failure means "fall back", never "break import surm_ops"
            _module = None
            _reason = _why_missing(exc, torch.version.cuda)
            if torch.version.cuda is not None:
                warnings.warn(
                    f"surm_ops: the CUDA extension surm_ops._C is unavailable ({_reason}); "
                    "falling back to the Triton and torch.fft backends",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _loaded = True
    return _module


def status() -> tuple[bool, str]:
    """(whether `surm_ops._C` is loaded, a human-readable reason)."""
    module = load()
    return module is not None, _reason
