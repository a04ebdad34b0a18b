"""Every Triton kernel variant compiled ahead of time for sm_90 and sm_80, without a GPU.

The interpreter accepts programs the GPU compiler rejects (tl.dot shapes, dtype mixes, shared-memory overflow), so
each variant the launchers can produce is lowered to SASS by ptxas (tests/kernels/aot.py, in two subprocesses: the
suite's TRITON_INTERPRET=1 turns @triton.jit into uncompilable interpreted functions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.aot import variants

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
VARIANTS = sorted(variants())


@pytest.fixture(scope="module")
def compiled() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    halves = [VARIANTS[0::2], VARIANTS[1::2]]  # two cores: two compilers
    procs = [subprocess.Popen([sys.executable, "-m", "tests.kernels.aot", *ids], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ids in halves]
    results = {}
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-4000:]
        results.update(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_for_gpu(variant, compiled):
    assert compiled[variant] == "ok", compiled[variant]
