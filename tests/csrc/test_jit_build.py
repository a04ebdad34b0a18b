"""The JIT build for real (surm_ops/_extension.py), with a CUDA torch and nvcc, no GPU needed: two processes
started together on an empty cache build the extension once with ninja (the file lock) and both load it; a third
process reuses the cache without compiling. Who compiled is read from ninja's own progress lines ("[1/3] ...",
printed with SURM_JIT_VERBOSE=1); a process that reuses a build prints none.

Needs a CUDA build of torch, which the CPU test venv lacks, so it skips there; the CUDA stage of CI
(.ci/cuda_wheel.sh) runs it in its CUDA venv with SURM_REQUIRE_CUDA_TORCH=1, which turns the skip into a failure.
One architecture only (sm_80), to keep the build near a minute on two cores.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
           "TORCH_CUDA_ARCH_LIST": ARCHS, "MAX_JOBS": "2", _extension.ENV_JIT_VERBOSE: "1"}
    env.pop(_extension.ENV_NO_JIT, None)
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=cache.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen) -> dict:
    """The probe's JSON, plus "steps": the build steps ninja ran in that process."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    lines = out.strip().splitlines()
    return {**json.loads(lines[-1]), "steps": [ln for ln in lines[:-1] + err.splitlines()
                                              if re.match(r"^\[\d+/\d+\] ", ln)]}


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
    builders = [r for r in results if r["steps"]]
    assert len(builders) == 1, [r["steps"] for r in results]
    steps = " ".join(builders[0]["steps"])
    assert "conv_kernels" in steps and "registration" in steps and ".so" in steps, steps
    assert not (directory / "FAILED").exists()

    library = Path(results[0]["module"])
    stamp = library.stat().st_mtime_ns
    third = _result(_start(cache))
    assert third["ok"] and third["module"] == results[0]["module"]
    assert third["steps"] == [], f"the cached build was compiled again: {third['steps']}"
    assert library.stat().st_mtime_ns == stamp
