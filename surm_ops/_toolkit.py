"""Finds the CUDA toolkit that builds the extension: the one rule shared by setup.py and the JIT build
(surm_ops/_extension.py). Imports nothing outside the standard library, so setup.py can load it by path before
torch or surm_ops are importable.

torch's own guess (``torch.utils.cpp_extension.CUDA_HOME``) takes the parent of the directory of the first ``nvcc``
on PATH. Where that nvcc is a wrapper script or a symlink outside the toolkit (``/usr/local/bin/nvcc`` running
``/usr/local/cuda-13.0/bin/nvcc``), it guesses ``/usr/local``, which holds no CUDA libraries, and the build fails at
link time with ``cannot find -lcudart``. Here every candidate must hold ``bin/nvcc`` and libcudart before it is
used, and nvcc itself is asked where its toolkit is (``nvcc --dryrun`` prints ``TOP=<toolkit>/bin/..``).

Order: ``CUDA_HOME``, then ``CUDA_PATH`` (when set, it must be a valid toolkit: a wrong explicit setting is an
error, not something to skip silently); then the toolkit of the ``nvcc`` on PATH (its real path, then what it
reports); then ``/usr/local/cuda``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

LIB_DIRS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
DEFAULT_ROOT = "/usr/local/cuda"


class ToolkitError(RuntimeError):
    """No usable CUDA toolkit; the message names every place looked at and what each lacked."""


def _cudart_dir(root: Path) -> Path | None:
    for sub in LIB_DIRS:
        lib = root / sub
        if any(lib.glob("libcudart.so*")) or (lib / "cudart.lib").is_file():
            return lib
    return None


def problem(root: Path) -> str | None:
    """Why ``root`` is not a usable toolkit, or None when it is."""
    if not (root / "bin" / "nvcc").is_file():
        return f"{root}: no bin/nvcc"
    if _cudart_dir(root) is None:
        return f"{root}: no libcudart in {', '.join(LIB_DIRS)}"
    return None


def _nvcc_reported_root(nvcc: str) -> Path | None:
    """The toolkit an nvcc (possibly a wrapper script) runs from, from the TOP line of ``nvcc --dryrun``."""
    try:
        done = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    return None


def find(environ: dict | None = None) -> Path:
    """The CUDA toolkit root, checked to hold nvcc and libcudart; raises ToolkitError saying what was tried."""
    env = os.environ if environ is None else environ
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            root = Path(env[var]).resolve()
            why = problem(root)
            if why:
                raise ToolkitError(f"{var}={env[var]} is not a usable CUDA toolkit ({why}); unset it or point it at "
                                   "a toolkit root that holds bin/nvcc and lib64/libcudart.so")
            return root
    tried = []
    candidates = []
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
        reported = _nvcc_reported_root(nvcc)
        if reported is not None:
            candidates.append(reported)
    else:
        tried.append("no nvcc on PATH")
    candidates.append(Path(DEFAULT_ROOT).resolve())
    for root in dict.fromkeys(candidates):
        why = problem(root)
        if why is None:
            return root
        tried.append(why)
    raise ToolkitError("no CUDA toolkit found (looked at CUDA_HOME, CUDA_PATH, the nvcc on PATH and "
                       f"{DEFAULT_ROOT}: {'; '.join(tried)}); install the CUDA toolkit or set CUDA_HOME to its root")
