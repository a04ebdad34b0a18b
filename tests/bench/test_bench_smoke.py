"""Smoke tests of the benchmark code in bench/ (the README's test command covers it; the timed runs are
``bash scripts/dev.sh bench``): every layer and op case builds and runs, the quick layer/step path produces
complete rows, the CSV migrates and appends, and render.py turns a synthetic CSV into the expected tables and PNGs.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from bench import cases, csvio, layers, render, roofline, timing
from bench import run as bench_run

CPU = torch.device("cpu")
TINY = layers.LayerShape(tokens=8, d=64, dtype=torch.float32)
CEILINGS = roofline.Ceilings(copy_gbps=10.0, matmul_tflops={"float32": 0.1, "bfloat16": 0.05})


def _specs():
    return [s for s in layers.LAYERS if not (s.method or "").startswith("peft-") or cases.peft_available()]


@pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.label)
def test_every_layer_builds_and_steps(spec):
    for mode in layers.MODES:
        fn, n_params = layers.build(spec, mode, CPU, TINY)
        out = fn()
        assert (n_params == 0) == (spec.method is None)
        if mode == "fwd":
            assert out.shape == (TINY.tokens, TINY.d)
        else:
            assert all(torch.isfinite(g).all() for g in out)


def test_layer_quick_path_rows():
    rows = []
    for spec in (s for s in layers.LAYERS if s.label in layers.QUICK_LABELS):
        for mode in layers.MODES:
            fn, n_params = layers.build(spec, mode, CPU, TINY)
            measured = timing.measure(fn, CPU, quick=True)
            rows.append(roofline.complete_row({**layers.fields(spec, mode, TINY), "params": n_params}, measured,
                                              CEILINGS))
    assert [(r["provider"], r["mode"]) for r in rows] == [(p, m) for p in layers.QUICK_LABELS for m in layers.MODES]
    for r in rows:
        assert 0 < r["p20_us"] <= r["median_us"] <= r["p80_us"]
        assert r["floor_us"] > 0 and r["x_floor"] == pytest.approx(r["median_us"] / r["floor_us"])
        assert r["copy_gbps"] == 10.0 and r["matmul_tflops"] == 0.1
    frozen_fwd = rows[0]
    assert frozen_fwd["bytes"] == 4 * 8 * 128 + 4 * 64 * 64 and frozen_fwd["flops"] == 2 * 8 * 64 * 64


@pytest.mark.parametrize("device_cases", ["cpu", "gpu"])
def test_op_cases_build_and_run(device_cases):
    """Every case of both suites at a few tokens on CPU (the GPU shapes too: their sizes must suit their ops);
    the dense backend only where it is cheap here."""
    suite = cases.CPU_CASES if device_cases == "cpu" else cases.GPU_CASES
    for case in dict.fromkeys(c.with_(tokens=2) for c in suite):
        for provider in case.providers(CPU):
            if provider == "dense" and case.n_in > 1024:
                continue
            modes = roofline.MODES if case.n_in <= 1024 else ("fwd",)
            for mode in modes:
                out = cases.build(case, provider, mode, CPU)()
                first = out if mode == "fwd" else out[0]
                assert first.shape == ((2, case.n_out) if mode == "fwd" else (2, case.n_in))
                assert first.dtype == case.dtype


def test_quick_sets():
    assert len([c for c in cases.CPU_CASES if c.id in cases.QUICK_IDS]) == 3
    assert len([c for c in cases.GPU_CASES if c.id in cases.QUICK_IDS]) == 3
    assert {c.dtype for c in cases.GPU_CASES} == {torch.bfloat16, torch.float32}


def test_counting():
    """performance.md §1: a bf16 circulant at d moves 4·B·d bytes forward, 6·B·d backward, 10·B·d in all
    (plus the float32 filter)."""
    b, d = 16384, 4096
    case = cases.circulant(d).with_(tokens=b, dtype=torch.bfloat16)
    assert case.bytes_moved("fft", "fwd") == 4 * b * d + 4 * d
    assert case.bytes_moved("fft", "bwd") == 6 * b * d + 8 * d
    assert case.bytes_moved("fft", "full") == 10 * b * d + 12 * d
    assert case.flops("dense", "full") == 3 * case.flops("fft", "fwd")  # every op provider gets the op's count
    assert case.flops("lora-r16", "fwd") == 2 * 16 * 2 * d * b
    ceil = roofline.Ceilings(copy_gbps=3000.0, matmul_tflops={"bfloat16": 790.0})
    assert ceil.floor_us(4 * b * d, 0, "bfloat16") == pytest.approx(89.5, abs=0.1)  # performance.md's number


def _row(date, device, provider, mode, median, suite="op", op="circulant", params=768.0):
    return {"date": date, "commit": "abc1234", "device": device, "copy_gbps": 10.0, "matmul_tflops": 0.2,
            "torch": "2.13.0", "threads": 2, "suite": suite, "op": op, "provider": provider,
            "backend": "fft" if provider == "auto" else provider, "dtype": "float32", "shape": "256x768->768",
            "mode": mode, "median_us": median, "p20_us": median * 0.9, "p80_us": median * 1.1,
            "timer": "pytest-benchmark", "params": params, "bytes": 1e6, "flops": 1e7, "gbps": 1.0, "gflops": 1.0,
            "floor_us": 50.0, "x_floor": median / 50.0}


def _synthetic(path, new="2026-11-24T10:00:00+00:00"):
    old = "2026-11-20T10:00:00+00:00"
    rows = [_row(old, "CPU A", "fft", "fwd", 999.0)]
    for mode, scale in (("fwd", 1), ("full", 3)):
        rows += [_row(new, "CPU A", "fft", mode, 200.0 * scale), _row(new, "CPU A", "dense", mode, 1000.0 * scale),
                 _row(new, "CPU A", "auto", mode, 210.0 * scale),
                 _row(new, "CPU A", "lora-r1", mode, 30.0 * scale, params=1536.0),
                 _row(new, "CPU A", "lora-r16", mode, 400.0 * scale, params=24576.0),
                 _row(new, "CPU A", "peft-c3a", mode, 2000.0 * scale)]
        rows += [_row(new, "CPU A", p, mode, m * scale, suite="layer", op="linear", params=n)
                 for p, m, n in (("frozen", 1000.0, 0.0), ("lora-r16", 1300.0, 24576.0), ("circulant", 1100.0, 768.0))]
    rows.append(_row("2026-11-22T10:00:00+00:00", "CPU B", "fft", "fwd", 5.0))
    csvio.append(path, rows)


def test_render_tables_and_plots(tmp_path):
    path = tmp_path / "cpu.csv"
    _synthetic(path)
    summary, written = render.render(path, tmp_path)
    assert "| circulant | 256x768->768 | float32 | fwd | 200.0 | 1,000 | fft 210.0 | 400.0 | r1: 30.0 | 2,000 | " \
           "4.0 | 2.00 | 10.00 |" in summary
    assert "| circulant | 256x768->768 | float32 | full | 600.0 | 3,000 | fft 630.0 | 1,200 | r1: 90.0 |" in summary
    assert "999" not in summary and "CPU B" not in summary.split("\n")[0]  # only the latest run of one device
    assert "| circulant | 768 | 1,100 | 1.10 | 0.85 | 3,300 | 1.10 | 0.85 | 66.00 |" in summary
    assert "| frozen | 0 | 1,000 | 1.00 | 0.77 |" in summary
    md = (tmp_path / "cpu-latest.md").read_text()
    assert "## Every row" in md and "auto → fft" in md and "Other devices in cpu.csv" in md
    b_summary, _ = render.render(path, tmp_path / "b", device="cpu b")
    assert "CPU B" in b_summary and "| circulant | 256x768->768 | float32 | fwd | 5.0 |" in b_summary
    readme = render.readme_section(render.latest(csvio.load(path)), "cpu")
    assert "| bwd |" not in readme and "cpu-layers.png" in readme
    pytest.importorskip("matplotlib")
    for name in ("cpu-ops.png", "cpu-layers.png"):
        png = tmp_path / name
        assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_migrates_old_header(tmp_path):
    path = tmp_path / "cpu.csv"
    old = ["date", "commit", "device", "torch", "op", "provider", "dtype", "shape", "mode", "median_us", "p20_us",
           "p80_us", "params", "gbps"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(old)
        writer.writerow(["2026-11-01T00:00:00+00:00", "738d6f2", "CPU A", "2.13.0+cpu", "circulant", "fft", "float32",
                         "256x64->64", "fwd", "67.9", "66.2", "71.5", "64", "1.930"])
    _synthetic(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == csvio.COLUMNS
        first = next(reader)
    assert first["median_us"] == "67.9" and first["x_floor"] == "" and first["suite"] == ""
    assert len(csvio.load(path)) == 1 + 20


def test_run_reads_session_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [{"kind": "meta", "device": "GPU X", "torch": "2.11", "triton": "3.6", "cuda": "13.0", "threads": 16,
              "copy_gbps": 3000.0, "matmul_tflops": {"bfloat16": 790.0, "float32": 50.0}, "quick": False},
             {"kind": "row", "suite": "op", "op": "svd", "provider": "fft", "dtype": "float32", "median_us": 1.0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (row,) = bench_run.read_rows(path, {"date": "D", "commit": "C"})
    assert row["device"] == "GPU X" and row["matmul_tflops"] == 50.0 and row["date"] == "D" and "quick" not in row
    assert bench_run.pytest_command(True, 0.1, None)[-1] == "--benchmark-disable"
