"""scripts/gpu_session.sh cannot rot between GPU loans: its `run --rehearse` goes through the same stages on CPU
(tiny shapes, the Triton interpreter, the fft backend standing in for cuda) and leaves the same files in $OUT; and a
failing test leaves its case as a .pt file (tests/failed_cases.py)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rehearsal is the CPU stand-in for a GPU run")
def test_rehearsal_runs_every_stage_and_writes_its_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SURM_GPU_BUDGET_S": "400"}
    done = subprocess.run(["bash", str(SCRIPT), "run", "--rehearse"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert done.returncode == 0, summary + done.stdout[-3000:] + done.stderr[-3000:]
    stages = {line.split()[0]: line.split()[1] for line in summary.splitlines()[1:] if not line.startswith("total")}
    assert stages == {name: "0" for name in ("extension", "device", "tests", "bench-circulant", "bench-block",
                                             "bench-svd", "bench-layers")}, summary
    assert "rehearse" in (out / "extension.txt").read_text()
    assert "torch" in (out / "device.txt").read_text() and "_C" in (out / "env.txt").read_text()
    assert 'failures="0"' in (out / "gpu-tests.xml").read_text() and "passed" in (out / "gpu-tests.log").read_text()
    with open(out / "bench" / "cpu.csv") as handle:
        rows = list(csv.DictReader(handle))
    suites_ops = {(r["suite"], r["op"]) for r in rows}
    assert {("op", "circulant"), ("op", "block_circulant"), ("op", "svd")} <= suites_ops, suites_ops
    assert any(r["suite"] == "layer" for r in rows)


def test_a_failing_test_leaves_its_case_behind(tmp_path):
    (tmp_path / "test_planted.py").write_text(textwrap.dedent("""
        import pytest, torch

        @pytest.mark.parametrize("backend", ["fft"])
        def test_planted(backend):
            x = torch.arange(6.0).reshape(2, 3)
            got, want = x * 2, x * 2 + 1
            torch.testing.assert_close(got, want)
    """))
    cases = tmp_path / "cases"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SURM_FAILED_CASES_DIR": str(cases)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.failed_cases", "-p", "no:cacheprovider",
                           str(tmp_path / "test_planted.py")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout
    [saved] = list(cases.glob("*.pt"))
    case = torch.load(saved, weights_only=False)
    assert case["params"] == {"backend": "fft"} and "test_planted" in case["nodeid"]
    assert case["locals"]["backend"] == "fft" and "mismatched" in case["error"].lower()
    torch.testing.assert_close(case["locals"]["want"] - case["locals"]["got"], torch.ones(2, 3))
    torch.testing.assert_close(case["locals"]["x"], torch.arange(6.0).reshape(2, 3))
