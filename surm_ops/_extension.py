"""Loads the optional compiled extension `surm_ops._C` once and says why it is missing.

Order: the prebuilt `surm_ops._C` (built by setup.py where torch had CUDA and nvcc); else, where torch has CUDA and
a CUDA toolkit is present, a JIT build of the packaged csrc/ sources with `torch.utils.cpp_extension.load` (ninja)
into a per-version cache directory, on first use; else nothing, and dispatch falls back to the other backends.
Importing this module does nothing; torch and the extension are touched on the first `load()`.

Environment (also in csrc/README.md):
    SURM_NO_JIT=1         never JIT-build the extension
    SURM_CACHE_DIR        JIT build cache root (default $XDG_CACHE_HOME/surm_ops or ~/.cache/surm_ops)
    SURM_JIT_VERBOSE=1    show the compiler output of the JIT build
    TORCH_CUDA_ARCH_LIST  architectures of the JIT build (default: those of the visible GPUs, else 8.0;9.0)
    CUDA_HOME, CUDA_PATH  the CUDA toolkit (default: found from the nvcc on PATH, see surm_ops/_toolkit.py)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import sys
import threading
import types
import warnings
from pathlib import Path

from surm_ops import _toolkit

ENV_NO_JIT = "SURM_NO_JIT"
ENV_CACHE_DIR = "SURM_CACHE_DIR"
ENV_JIT_VERBOSE = "SURM_JIT_VERBOSE"
JIT_NAME = "surm_ops_C_jit"
# Architectures of a JIT build with no GPU visible and no TORCH_CUDA_ARCH_LIST: the wheel's (setup.py).
DEFAULT_JIT_ARCHS = "8.0;9.0"
_FAILED_MARKER = "FAILED"

_lock = threading.Lock()
_loaded = False
_module: types.ModuleType | None = None
_reason = ""


class _Unavailable(Exception):
    """The extension cannot be had; str() is the reason. `warn` says whether the user should hear about it."""

    def __init__(self, reason: str, warn: bool):
        super().__init__(reason)
        self.warn = warn


def _why_missing(exc: BaseException, torch_cuda: str | None) -> str:
    if torch_cuda is None:
        return "not built: this torch has no CUDA (torch.version.cuda is None)"
    if isinstance(exc, ModuleNotFoundError) and exc.name == "surm_ops._C":
        return "not built: csrc has no compiled extension in this install"
    # Present but unloadable: usually built against another torch or CUDA than the one installed.
    return f"failed to load: {type(exc).__name__}: {exc}"


def _import_prebuilt() -> types.ModuleType:
    return importlib.import_module("surm_ops._C")


def csrc_dir() -> Path | None:
    """The CUDA sources: packaged as surm_ops/csrc in a wheel or sdist install, csrc/ beside the package in a
    source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "registration.cpp").is_file():
            return candidate
    return None


def _sources(root: Path) -> list[Path]:
    return sorted(p for ext in ("*.cu", "*.cpp") for p in root.rglob(ext))


def _cuda_home() -> str | None:
    """The CUDA toolkit root (surm_ops/_toolkit.py's rule), or None; the reason is kept for the warning."""
    global _toolkit_problem
    try:
        return str(_toolkit.find())
    except _toolkit.ToolkitError as exc:
        _toolkit_problem = str(exc)
        return None


_toolkit_problem = ""


def jit_archs() -> str:
    """The architectures a JIT build compiles for, as TORCH_CUDA_ARCH_LIST spells them: that variable when set,
    else the compute capabilities of every visible GPU, else DEFAULT_JIT_ARCHS."""
    import torch

    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if explicit and explicit != "native":
        return explicit
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps) or DEFAULT_JIT_ARCHS


def build_dir(root: Path, archs: str | None = None) -> Path:
    """One directory per torch, CUDA, Python, architecture list and source version, so that nothing built for
    another torch, toolkit or GPU is ever loaded."""
    import torch

    archs = jit_archs() if archs is None else archs
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".cu", ".cpp", ".h", ".cuh")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    base = os.environ.get(ENV_CACHE_DIR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "surm_ops")
    arch_tag = "sm" + "_".join(re.sub(r"[^0-9A-Za-z]+", "", a) for a in re.split(r"[;, ]+", archs) if a)
    tag = (f"torch{torch.__version__.replace('+', '_')}-cu{torch.version.cuda}-"
           f"py{sys.version_info.major}{sys.version_info.minor}-{arch_tag}-{digest.hexdigest()[:12]}")
    return Path(base) / tag


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes building into the same directory. fcntl.flock rather than
    torch's FileBaton: the OS drops it when its holder dies, so a killed build never leaves a stale lock behind.
    Without fcntl (Windows) torch's own baton inside cpp_extension.load still serialises the build."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environ(**values: str):
    """os.environ with `values` set, restored afterwards (the JIT build runs under the file lock)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _jit_compile(sources: list[Path], include: Path, directory: Path, archs: str, cuda_home: str) -> types.ModuleType:
    from torch.utils import cpp_extension

    # torch fixed its CUDA_HOME when cpp_extension was first imported, from its own guess (the parent of the nvcc
    # on PATH, which may hold no libraries); the build must use the toolkit found and checked here.
    cpp_extension.CUDA_HOME = cuda_home
    with _environ(TORCH_CUDA_ARCH_LIST=archs, CUDA_HOME=cuda_home):
        return cpp_extension.load(
            name=JIT_NAME, sources=[str(s) for s in sources], extra_include_paths=[str(include)],
            extra_cflags=["-O3"], extra_cuda_cflags=["-O3", "-lineinfo"], build_directory=str(directory),
            verbose=os.environ.get(ENV_JIT_VERBOSE) == "1", is_python_module=True)


def _jit_load(torch_cuda: str | None) -> types.ModuleType:
    """Build (or reuse) the JIT extension, or raise _Unavailable saying why not."""
    if torch_cuda is None:
        raise _Unavailable("not built: this torch has no CUDA (torch.version.cuda is None)", warn=False)
    if os.environ.get(ENV_NO_JIT) == "1":
        raise _Unavailable(f"not built: no prebuilt extension, and {ENV_NO_JIT}=1 disables the JIT build", warn=True)
    root = csrc_dir()
    if root is None:
        raise _Unavailable("not built: no prebuilt extension, and the csrc sources are not in this install", warn=True)
    cuda_home = _cuda_home()
    if cuda_home is None:
        raise _Unavailable("not built: no prebuilt extension, and no CUDA toolkit (nvcc) for a JIT build; "
                           f"set CUDA_HOME or put nvcc on PATH ({_toolkit_problem})", warn=True)
    archs = jit_archs()
    directory = build_dir(root, archs)
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / _FAILED_MARKER
    with _file_lock(directory / "surm.lock"):
        if marker.exists():  # a failed build is not retried by every process; delete the marker to retry
            raise _Unavailable(f"JIT build failed earlier (delete {marker} to retry): {marker.read_text()[:500]}",
                               warn=True)
        # cpp_extension.load takes torch's own FileBaton (a "lock" file in the build directory), which a killed
        # build leaves behind, making every later build wait forever. Holding our flock, no other build of this
        # directory is running, so a baton present now is stale.
        (directory / "lock").unlink(missing_ok=True)
        try:
            return _jit_compile(_sources(root), root, directory, archs, cuda_home)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            marker.write_text(detail)
            raise _Unavailable(f"JIT build failed in {directory}: {detail}", warn=True) from exc


def load() -> types.ModuleType | None:
    """The compiled extension module, or None when it is not available. Never raises; warns at most once."""
    global _loaded, _module, _reason
    if _loaded:
        return _module
    # torch first: the extension's shared library links against libtorch. torch is a hard dependency of surm_ops,
    # so this import cannot fail where surm_ops itself imported.
    import torch

    with _lock:
        if _loaded:
            return _module
        warn = False
        try:
            _module = _import_prebuilt()
            _reason = f"loaded from {getattr(_module, '__file__', '?')}"
        except Exception as exc:  # any failure means "fall back", never "break import surm_ops"
            _module = None
            _reason = _why_missing(exc, torch.version.cuda)
            warn = torch.version.cuda is not None
            if isinstance(exc, ModuleNotFoundError) and exc.name == "surm_ops._C":
                try:
                    _module = _jit_load(torch.version.cuda)
                    _reason = f"JIT-built in {Path(_module.__file__).parent}"
                    warn = False
                except _Unavailable as why:
                    _reason, warn = str(why), why.warn
                except Exception as err:  # the extension loaded but its import failed: still only a fallback
                    _reason, warn = f"JIT build unusable: {type(err).__name__}: {err}", True
        if warn:
            warnings.warn(f"surm_ops: the CUDA extension is unavailable ({_reason}); "
                          "falling back to the Triton and torch.fft backends", RuntimeWarning, stacklevel=2)
        _loaded = True
    return _module


def status() -> tuple[bool, str]:
    """(whether the compiled extension is loaded, a human-readable reason)."""
    module = load()
    return module is not None, _reason


def _reset() -> None:
    """Forget the outcome of `load()` (tests only)."""
    global _loaded, _module, _reason
    with _lock:
        _loaded, _module, _reason = False, None, ""
