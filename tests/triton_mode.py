"""Whether the triton backend runs on CPU tensors in this test session (the interpreter; tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def skip_unless_interpreted(backend: str) -> None:
    """CPU-tensor tests of the triton backend need the interpreter; on a GPU machine the compiled kernels are
    checked by the gpu-marked tests instead."""
    if backend == "triton" and not INTERPRETED:
        pytest.skip("triton compiles for the GPU in this session; the gpu-marked tests check it on CUDA tensors")
