"""Build script: the Python packages always, the CUDA extension `surm_ops._C` only where it can be built.

Metadata lives in pyproject.toml. This file exists for what pyproject.toml cannot say: mapping the top-level
`kernels/` directory to `surm_ops.kernels`, shipping csrc/ inside the package as `surm_ops/csrc` (the sources of
the JIT build, surm_ops/_extension.py), a local version tag for CUDA wheels, and deciding at build time whether to
compile csrc/.

The extension is built against Python's limited API (``py_limited_api``, an abi3 wheel): csrc/ uses only the
dispatcher (TORCH_LIBRARY) and a bare module init, never pybind11 or libtorch_python, so one wheel per torch x CUDA
pair serves CPython 3.10 and later.
"""

import importlib.util
import os
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0"
# The oldest CPython the abi3 extension loads in; torch's BuildExtension defines Py_LIMITED_API to the same 3.10.
ABI3_TAG = "cp310"
CSRC_PATTERNS = ["*.cu", "*.cpp", "*.h", "*.cuh", "README.md"]


def _csrc_package_data() -> list[str]:
    """csrc/ files relative to csrc/, for the `surm_ops.csrc` data package (it has no __init__.py on purpose)."""
    return sorted(str(p.relative_to(ROOT / "csrc")) for pat in CSRC_PATTERNS for p in (ROOT / "csrc").rglob(pat))


def _version_kwargs() -> dict:
    """SURM_LOCAL_VERSION=cu130torch2.11 makes the version 0.1.0+cu130torch2.11 (scripts/build_wheel.sh sets it).
    Through egg_info's tag_build because the version itself is static metadata in pyproject.toml."""
    local = os.environ.get("SURM_LOCAL_VERSION", "").strip()
    if not local:
        return {}
    if not re.fullmatch(r"[A-Za-z0-9]+([.][A-Za-z0-9]+)*", local):
        raise SystemExit(f"SURM_LOCAL_VERSION={local!r} is not a valid local version label (PEP 440)")
    return {"options": {"egg_info": {"tag_build": f"+{local}"}}}


def _cuda_sources() -> list[str]:
    # setuptools wants paths relative to setup.py, or it refuses to put them in an sdist.
    return sorted(str(p.relative_to(ROOT)) for ext in ("*.cu", "*.cpp") for p in (ROOT / "csrc").rglob(ext))


def _gencode_flags(archs: str) -> list[str]:
    """SASS for every listed arch ("8.0;9.0"), plus PTX for the newest so later GPUs can JIT it."""
    codes = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";") if a.strip()]
    if not codes:
        raise SystemExit(f"SURM_CUDA_ARCHS={archs!r} names no architecture")
    flags = [f"-gencode=arch=compute_{c},code=sm_{c}" for c in codes]
    newest = max(codes, key=lambda c: int("".join(ch for ch in c if ch.isdigit())))
    return flags + [f"-gencode=arch=compute_{newest},code=compute_{newest}"]


def _toolkit():
    """surm_ops/_toolkit.py, loaded by path: the package itself cannot be imported before it is built."""
    spec = importlib.util.spec_from_file_location("_surm_toolkit", ROOT / "surm_ops" / "_toolkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extension_skip_reason(sources: list[str]) -> str | None:
    if os.environ.get("SURM_SKIP_CUDA_BUILD") == "1":
        return "SURM_SKIP_CUDA_BUILD=1"
    if not sources:
        return "csrc/ has no .cu/.cpp sources"
    try:
        import torch
    except ImportError:
        return "torch is not importable (install torch first and build with --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA"
    toolkit = _toolkit()
    try:
        home = toolkit.find()
    except toolkit.ToolkitError as exc:
        return str(exc)
    # torch.utils.cpp_extension reads CUDA_HOME once, when it is first imported (just below): its own guess from
    # the nvcc on PATH can name a directory without the CUDA libraries (see surm_ops/_toolkit.py).
    os.environ["CUDA_HOME"] = str(home)
    print(f"surm_ops: CUDA toolkit {home}")
    return None


def _extension_kwargs() -> dict:
    sources = _cuda_sources()
    reason = _extension_skip_reason(sources)
    if reason is not None:
        if os.environ.get("SURM_REQUIRE_CUDA") == "1":
            raise SystemExit(f"surm_ops: SURM_REQUIRE_CUDA=1 but the CUDA extension cannot be built: {reason}")
        print(f"surm_ops: not building the CUDA extension surm_ops._C: {reason}")
        return {}
    # Imported here only: a machine without torch must still be able to build the sdist and a pure wheel.
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # in case something imported cpp_extension before us
    # torch >= 2.6 compiles a py_limited_api extension with Py_LIMITED_API and without libtorch_python; older torch
    # would tag the wheel abi3 without building it so, hence a version-specific wheel there.
    abi3 = getattr(cpp_extension, "min_supported_cpython", None) is not None

    archs = os.environ.get("SURM_CUDA_ARCHS", DEFAULT_ARCHS)
    print(f"surm_ops: building the CUDA extension surm_ops._C for {archs} from {len(sources)} sources")
    ext = CUDAExtension(
        name="surm_ops._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        # No -std: BuildExtension passes the standard torch's headers need (C++20 from torch 2.10; csrc is C++17).
        # No --use_fast_math: the hot loop has no transcendental (twiddles are tabulated once in double) and
        # flushing denormals would only change small results. -lineinfo costs nothing at run time and lets
        # compute-sanitizer and Nsight point at source lines.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *_gencode_flags(archs)]},
        py_limited_api=abi3,
    )
    if not abi3:
        print("surm_ops: this torch cannot build limited-API extensions (torch < 2.6): a CPython-specific wheel")
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension},
            "options": {"bdist_wheel": {"py_limited_api": ABI3_TAG}} if abi3 else {}}


def _merged(*kwargs: dict) -> dict:
    """Keyword arguments for setup(); the "options" of each part are merged, not replaced."""
    out: dict = {}
    for part in kwargs:
        for key, value in part.items():
            if key == "options":
                for command, opts in value.items():
                    out.setdefault("options", {}).setdefault(command, {}).update(opts)
            else:
                out[key] = value
    return out


setup(
    packages=find_packages(include=["surm_ops", "surm_ops.*"])
    + ["surm_ops.kernels"]
    + [f"surm_ops.kernels.{p}" for p in find_packages(where="kernels")]
    + ["surm_ops.csrc"],
    package_dir={"surm_ops.kernels": "kernels", "surm_ops.csrc": "csrc"},
    package_data={"surm_ops.csrc": _csrc_package_data()},
    **_merged(_version_kwargs(), _extension_kwargs()),
)
