"""The JIT build for real (surm_ops/_extension.py), with a CUDA torch and nvcc, no GPU needed: two processes
started together on an empty cache build the extension once with ninja (the file lock) and both load it; a third
process reuses the cache without compiling.

Needs a CUDA build of torch, which the CPU test venv lacks, so it skips there; the CUDA stage of CI
(.ci/cuda_wheel.sh) runs it in its CUDA venv with SURM_REQUIRE_CUDA_TORCH=1, which turns the skip into a failure.
One architecture only (sm_80), to keep the build near a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from surm_ops import _extension, _toolkit

ROOT = Path(__file__).resolve().parents[2]
ARCHS = "8.0"

# What the first CUDA call does (dispatch asks _extension.load() for the module), with the prebuilt surm_ops._C out
# of the way: the source tree has none, and this process imports surm_ops from it (PYTHONPATH below).
PROBE = """
import json, sys, time, torch
from surm_ops import _extension
t0 = time.perf_counter()
ok, reason = _extension.status()
names = sorted(s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("surm_ops_C::"))
print(json.dumps({"ok": ok, "reason": reason, "seconds": time.perf_counter() - t0, "schemas": names,
                  "module": getattr(_extension.load(), "__file__", None)}))
"""


def _cuda_torch_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA"
    try:
        _toolkit.find()
    except _toolkit.ToolkitError as exc:
        return str(exc)
    return None


@pytest.fixture
def cuda_torch():
    reason = _cuda_torch_reason()
    if reason is not None:
        if os.environ.get("SURM_REQUIRE_CUDA_TORCH") == "1":
            pytest.fail(f"SURM_REQUIRE_CUDA_TORCH=1: {reason}")
        pytest.skip(reason)


def _start(cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), _extension.ENV_CACHE_DIR: str(cache),
           "TORCH_CUDA_ARCH_LIST": ARCHS, "MAX_JOBS": "2"}
    env.pop(_extension.ENV_NO_JIT, None)
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=cache.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _ninja_outputs(directory: Path) -> list[str]:
    """Every target ninja built in `directory`, one entry per time it was built."""
    log = directory / ".ninja_log"
    return [line.split("\t")[3] for line in log.read_text().splitlines() if line and not line.startswith("#")]


def test_two_processes_build_once_and_a_third_reuses_the_cache(cuda_torch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    first, second = _start(cache), _start(cache)  # together: one builds under the lock, the other waits
    results = [_result(first), _result(second)]
    for r in results:
        assert r["ok"] and "JIT-built" in r["reason"], r
        assert r["schemas"] == ["surm_ops_C::conv_forward", "surm_ops_C::conv_grad_spectrum"], r
    [directory] = [p for p in cache.iterdir() if p.is_dir()]
    assert "sm80" in directory.name and Path(results[0]["module"]).parent == directory
    built = _ninja_outputs(directory)
    assert sorted(built) == sorted(set(built)), f"something was compiled twice: {built}"
    assert any(t.endswith(".so") for t in built) and any("conv_kernels" in t for t in built), built
    assert not (directory / "FAILED").exists()

    library = Path(results[0]["module"])
    stamp = library.stat().st_mtime_ns
    time.sleep(0.01)
    third = _result(_start(cache))
    assert third["ok"] and third["module"] == results[0]["module"]
    assert _ninja_outputs(directory) == built, "the cached build was compiled again"
    assert library.stat().st_mtime_ns == stamp
