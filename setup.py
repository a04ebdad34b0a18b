"""Build script: the Python packages always, the CUDA extension `surm_ops._C` only where it can be built.

Metadata lives in pyproject.toml. This file exists for what pyproject.toml cannot say: mapping the top-level
`kernels/` directory to `surm_ops.kernels`, and deciding at build time whether to compile csrc/.
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0"


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
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    return None


def _extension_kwargs() -> dict:
    sources = _cuda_sources()
    reason = _extension_skip_reason(sources)
    if reason is not None:
        print(f"surm_ops: not building the CUDA extension surm_ops._C: {reason}")
        return {}
    # Imported here only: a machine without torch must still be able to build the sdist and a pure wheel.
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs = os.environ.get("SURM_CUDA_ARCHS", DEFAULT_ARCHS)
    print(f"surm_ops: building the CUDA extension surm_ops._C for {archs} from {len(sources)} sources")
    ext = CUDAExtension(
        name="surm_ops._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", *_gencode_flags(archs)]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    packages=find_packages(include=["surm_ops", "surm_ops.*"])
    + ["surm_ops.kernels"]
    + [f"surm_ops.kernels.{p}" for p in find_packages(where="kernels")],
    package_dir={"surm_ops.kernels": "kernels"},
    **_extension_kwargs(),
)
