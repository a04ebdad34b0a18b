"""Smoke tests of the benchmark code in bench/ (the README's test command covers it; the timed runs are
``bash scripts/dev.sh bench``): every layer and op case builds and runs, the quick layer/step path produces
complete rows, the CSV migrates and appends, and render.py turns a synthetic CSV into the expected tables and PNGs.
"""

from __future__ import annotations

import csv
import sys

import pytest
import torch

from bench import cases, csvio, layers, meta, render, roofline, timing
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
    """The quick layers timed interleaved and completed into rows: estimates ordered, floors and ceilings kept."""
    specs = [s for s in layers.LAYERS if s.label in layers.QUICK_LABELS]
    for mode in layers.MODES:
        fns = {s.label: layers.build(s, mode, CPU, TINY)[0] for s in specs}
        measured = timing.interleaved(fns, CPU, rounds=3, visit_s=0.002)
        assert list(measured) == list(layers.QUICK_LABELS)
        rows = [roofline.complete_row(layers.fields(s, mode, TINY), measured[s.label], CEILINGS) for s in specs]
        for r in rows:
            assert 0 < r["robust_us"] <= r["median_us"] and r["p20_us"] <= r["median_us"] <= r["p80_us"]
            assert r["rounds"] >= 3 and r["spread"] >= 0
            assert r["floor_us"] > 0 and r["x_floor"] == pytest.approx(r["robust_us"] / r["floor_us"])
            assert r["copy_gbps"] == 10.0 and r["matmul_tflops"] == 0.1
    frozen = roofline.complete_row(layers.fields(specs[0], "fwd", TINY), measured["frozen"], CEILINGS)
    assert frozen["bytes"] == 4 * 8 * 128 + 4 * 64 * 64 and frozen["flops"] == 2 * 8 * 64 * 64
    assert "params" not in frozen  # a layer's parameter count comes from building it (layers.groups does)
    groups = layers.groups(CPU, "quick")
    groups[0].build()
    assert [groups[0].fields[p]["params"] for p in layers.QUICK_LABELS] == [0, 16 * 1536, 768]


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


def test_scopes():
    """quick: three cases, forward; default: one case per op with the headline providers, fwd and full; full:
    the whole suite. The torch provider is the raw reference path, not a dispatch backend."""
    for dev_name, suite in (("cpu", cases.CPU_CASES), ("cuda", cases.GPU_CASES)):
        dev = torch.device(dev_name)
        assert len(cases.selected(dev, "quick")) == 3
        default = cases.selected(dev, "default")
        assert len(default) == 7 and len({c.name for c in default}) == 7
        assert cases.selected(dev, "full") == suite
    assert {c.dtype for c in cases.GPU_CASES} == {torch.bfloat16, torch.float32}
    groups = cases.groups(CPU, "default")
    assert len(groups) == 14 and {g.label.split()[-1] for g in groups} == {"fwd", "full"}
    circ = next(g for g in groups if g.label == "circulant-256x768x768-float32 fwd")
    assert set(circ.fields) == {"auto", "torch", "lora-r16", *(["peft-c3a"] if cases.peft_available() else [])}
    full = cases.groups(CPU, "full")
    assert len(full) == 3 * len(cases.CPU_CASES) and "dense" in full[0].fields and "lora-r8" in full[0].fields
    assert [g.label.split()[-1] for g in layers.groups(CPU, "default")] == ["fwd", "full"]


def test_torch_provider_is_the_reference_path():
    """``torch`` computes what ``fft`` computes (forward and every gradient), without the op's wrapper."""
    case = cases.toeplitz(48, 40).with_(tokens=3)
    y_ref = cases.build(case, "fft", "fwd", CPU)()
    torch.testing.assert_close(cases.build(case, "torch", "fwd", CPU)(), y_ref)
    for mode in ("bwd", "full"):
        for got, want in zip(cases.build(case, "torch", mode, CPU)(), cases.build(case, "fft", mode, CPU)()):
            torch.testing.assert_close(got, want)


def test_counting():
    """docs/performance.md §1: a bf16 circulant at d moves 4·B·d bytes forward, 6·B·d backward, 10·B·d in all
    (plus the float32 filter)."""
    b, d = 16384, 4096
    case = cases.circulant(d).with_(tokens=b, dtype=torch.bfloat16)
    assert case.bytes_moved("fft", "fwd") == 4 * b * d + 4 * d
    assert case.bytes_moved("fft", "bwd") == 6 * b * d + 8 * d
    assert case.bytes_moved("fft", "full") == 10 * b * d + 12 * d
    assert case.flops("dense", "full") == 3 * case.flops("fft", "fwd")  # every op provider gets the op's count
    assert case.flops("lora-r16", "fwd") == 2 * 16 * 2 * d * b
    ceil = roofline.Ceilings(copy_gbps=3000.0, matmul_tflops={"bfloat16": 790.0})
    assert ceil.floor_us(4 * b * d, 0, "bfloat16") == pytest.approx(89.5, abs=0.1)  # docs/performance.md's number


def _row(date, device, provider, mode, robust, suite="op", op="circulant", params=768.0, flags=""):
    """A row as the runner writes it; its median is 10% above its robust estimate, so a table showing medians
    would show other numbers than the ones asserted."""
    return {"date": date, "commit": "abc1234", "device": device, "copy_gbps": 10.0, "matmul_tflops": 0.2,
            "torch": "2.13.0", "threads": 1, "suite": suite, "op": op, "provider": provider,
            "backend": "fft" if provider == "auto" else provider, "dtype": "float32", "shape": "256x768->768",
            "mode": mode, "robust_us": robust, "median_us": robust * 1.1, "p20_us": robust, "p80_us": robust * 1.2,
            "spread": 0.3 if flags else 0.05, "rounds": 7, "others_cores": 0.9 if suite == "op" else 1.1,
            "flags": flags, "ceiling_drift": 0.04, "timer": "thread-cpu-time", "params": params, "bytes": 1e6,
            "flops": 1e7, "gbps": 1.0, "gflops": 1.0, "floor_us": 50.0, "x_floor": robust / 50.0}


def _synthetic(path, new="2026-11-24T10:00:00+00:00"):
    old = "2026-11-20T10:00:00+00:00"
    rows = [_row(old, "CPU A", "fft", "fwd", 999.0)]
    for mode, scale in (("fwd", 1), ("full", 3)):
        rows += [_row(new, "CPU A", "fft", mode, 200.0 * scale),
                 _row(new, "CPU A", "dense", mode, 1000.0 * scale, flags="wide" if mode == "fwd" else ""),
                 _row(new, "CPU A", "auto", mode, 210.0 * scale), _row(new, "CPU A", "torch", mode, 150.0 * scale),
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
    # robust estimates (not medians), the raw torch path, LoRA at equal parameters (r1: 1,536 vs 768), the wide
    # row marked ~, and ratios of estimates
    assert "| circulant | 256x768->768 | float32 | fwd | 200.0 | 1,000~ | fft 210.0 | 150.0 | 400.0 | r1: 30.0 | " \
           "2,000 | 4.0 | 1.33 | 2.00 | 10.00 |" in summary
    assert "| circulant | 256x768->768 | float32 | full | 600.0 | 3,000 | fft 630.0 | 450.0 | 1,200 | r1: 90.0 |" \
        in summary
    assert "999" not in summary and "CPU B" not in summary.split("\n")[0]  # only the latest run of one device
    assert "| circulant | 768 | 1,100 | 1.10 | 0.85 | 3,300 | 1.10 | 0.85 | 66.0 |" in summary
    assert "| frozen | 0 | 1,000 | 1.00 | 0.77 |" in summary
    assert "1.0 cores busy on average while cases ran (0.9–1.1 per case)" in summary
    assert "1 torch thread;" in summary and "differ by ≤ 4%" in summary
    md = (tmp_path / "cpu-latest.md").read_text()
    assert "## Every row" in md and "auto → fft" in md and "Other devices in cpu.csv" in md
    assert "| 30.0 | 33.0 | 30.0–36.0 | 5% | 7 | 0.9 |" in md  # lora-r1 fwd: robust, median, p20–p80, spread...
    assert "0.60 (error: below floor)" in md                    # ... and its × floor < 1 reported as an error
    b_summary, _ = render.render(path, tmp_path / "b", device="cpu b")
    assert "CPU B" in b_summary and "| circulant | 256x768->768 | float32 | fwd | 5.0 |" in b_summary
    readme = render.readme_section(render.latest(csvio.load(path)), "cpu")
    assert "| bwd |" not in readme and "cpu-layers.png" in readme
    pytest.importorskip("matplotlib")
    for name in ("cpu-ops.png", "cpu-layers.png"):
        png = tmp_path / name
        assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline(tmp_path):
    path = tmp_path / "cpu.csv"
    _synthetic(path)
    text = render.headline(render.latest(csvio.load(path)), before=0.5)
    lines = text.splitlines()
    assert lines[1] == "Load by other processes: 1.0 cores busy on average while cases ran (0.9–1.1 per case; 0.5 " \
        "just before the run)."
    # auto ÷ torch, ÷ LoRA r16, ÷ C3A; forward, then forward+backward
    assert "| circulant (→ fft) | 210.0 | 1.40 | 0.53 | 0.10 | 630.0 | 1.40 | 0.53 | 0.10 |" in lines
    # layers ÷ frozen, ÷ LoRA r16, ÷ C3A (no C3A layer in this run); baselines are not headline rows
    assert "| circulant | 1.10 | 0.85 | - | 1.10 | 0.85 | - |" in lines
    assert not any(line.startswith(("| frozen", "| lora-r16")) for line in lines)
    assert "1 row(s) kept a wide spread" in text and "1 row(s) measured below their floor" in text


def test_readme_update(tmp_path):
    path = tmp_path / "cpu.csv"
    _synthetic(path)
    rows = render.latest(csvio.load(path))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- bench:cpu:begin -->\nold table\n<!-- bench:cpu:end -->\nafter\n")
    assert render.update_readme(readme, rows, "cpu")
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n<!-- bench:cpu:begin -->\nHeadline")
    assert "| circulant (→ fft) | 210.0 |" in text and text.endswith("<!-- bench:cpu:end -->\nafter\n")
    assert render.update_readme(readme, rows, "cpu") and readme.read_text() == text  # idempotent
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not render.update_readme(plain, rows, "cpu") and plain.read_text() == "no markers\n"


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
    assert len(csvio.load(path)) == 1 + 22


def test_timing_estimates():
    """The robust estimate is the median of the visits' minimums; spread their IQR over it; wide above WIDE."""
    visits = [timing.Visit(m, m * 1.1, m * 1.2, m * 1.5) for m in (1.0, 1.1, 1.2, 5.0, 1.05)]
    t = timing.Timing.from_visits(visits, calls=4, timer="x")
    assert t.robust_s == 1.1 and t.median_s == pytest.approx(1.2 * 1.1) and t.p80_s == pytest.approx(1.1 * 1.5)
    assert t.spread == pytest.approx((1.2 - 1.05) / 1.1) and not t.wide and t.rounds == 5
    assert timing.Timing.from_visits(visits[:3] + [timing.Visit(2.0, 2, 2, 2)] * 2, 4, "x").wide


def test_interleaved_shuffles_and_remeasures(monkeypatch):
    """Every round visits every provider once, in an order that changes from round to round, so no provider
    always runs right after the same neighbour; a wide case gets more rounds."""
    order = []
    monkeypatch.setattr(timing, "_cpu_visit", lambda fn, calls, clock: (order.append(fn()),
                                                                       timing.Visit(1.0, 1, 1, 1))[1])
    timing.interleaved({"a": lambda: "a", "b": lambda: "b", "c": lambda: "c", "d": lambda: "d"}, CPU, rounds=8)
    rounds = ["".join(order[i:i + 4]) for i in range(4, len(order), 4)]  # after one sizing visit per provider
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    before_a = {r[r.index("a") - 1] for r in rounds if not r.startswith("a")}
    assert len(before_a) >= 2, rounds  # a rotation would always put the same provider (or none) before "a"
    noisy = iter([9.0, 1.0, 3.0, 1.0, 2.0, 1.0] * 10)
    monkeypatch.setattr(timing, "_cpu_visit", lambda fn, calls, clock: timing.Visit(*[next(noisy)] * 4))
    assert timing.interleaved({"a": lambda: 0}, CPU, rounds=4)["a"].rounds == 8


def test_gpu_path_uses_do_bench(monkeypatch):
    """On a GPU every visit is one ``triton.testing.do_bench`` call with quantiles (min, p20, median, p80, in ms),
    interleaved like the CPU path (no GPU here: do_bench and the synchronisation are stand-ins)."""
    import types

    calls = []

    def do_bench(fn, warmup, rep, quantiles):
        calls.append((fn(), warmup, rep, tuple(quantiles)))
        base = {"a": 1.0, "b": 2.0}[calls[-1][0]]
        return [base, base * 1.1, base * 1.2, base * 1.5]

    triton = types.ModuleType("triton")
    triton.testing = types.SimpleNamespace(do_bench=do_bench)
    monkeypatch.setitem(sys.modules, "triton", triton)
    monkeypatch.setitem(sys.modules, "triton.testing", triton.testing)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    out = timing.interleaved({"a": lambda: "a", "b": lambda: "b"}, torch.device("cuda"), rounds=3, visit_s=0.02)
    assert {c[1:] for c in calls} == {(5.0, 20.0, (0.0, 0.2, 0.5, 0.8))}  # warm-up ms, rep ms, quantiles
    assert sorted(c[0] for c in calls) == ["a"] * 3 + ["b"] * 3
    assert out["a"].timer == "do_bench" and out["a"].robust_s == pytest.approx(1e-3)
    assert out["b"].median_s == pytest.approx(2.4e-3) and out["b"].p80_s == pytest.approx(3e-3)


def test_below_floor_and_best_ceilings():
    slow = roofline.Ceilings(copy_gbps=5.0, matmul_tflops={"float32": 0.1})
    fast = roofline.Ceilings(copy_gbps=8.0, matmul_tflops={"float32": 0.05, "bfloat16": 0.2})
    best = roofline.best(slow, fast)
    assert best.copy_gbps == 8.0 and best.matmul_tflops == {"float32": 0.1, "bfloat16": 0.2}
    t = timing.Timing(robust_s=1e-4, median_s=2e-4, p20_s=1e-4, p80_s=3e-4, spread=0.5, rounds=7, calls=3, timer="x")
    fields = {"dtype": "float32", "bytes": 8e5, "flops": 1e6}
    row = roofline.complete_row(fields, t, best)  # floor: max(100 µs memory, 10 µs compute) = 100 µs
    assert row["x_floor"] == pytest.approx(1.0) and row["flags"] == "wide"
    row = roofline.complete_row({**fields, "bytes": 1.6e6}, t, best)
    assert row["x_floor"] == pytest.approx(0.5) and row["flags"] == "wide below-floor"


def test_others_cores_subtracts_own_time():
    load = meta.CpuLoad()
    # 10 s of wall time; all CPUs busy for 15 CPU-seconds, 6 of them ours: others kept 0.9 cores busy
    assert load.others_cores((100.0, 50.0, 1.0), (110.0, 65.0, 7.0)) == pytest.approx(0.9)
    assert load.others_cores(None) is None
    live = load.others_cores(load.mark())
    assert live is None or 0 <= live <= load.cores


def test_main_command_writes_only_where_told(tmp_path, monkeypatch, capsys):
    """Default: files in the untracked folder, none in the published one; --save: CSV appended there and the
    README section rendered; the report prints the headline, then the tables, then the files."""
    local, published = tmp_path / "out", tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:cpu:begin -->\n<!-- bench:cpu:end -->\n")
    monkeypatch.setattr(bench_run, "LOCAL", local)
    monkeypatch.setattr(bench_run, "RESULTS", published)
    monkeypatch.setattr(bench_run, "README", readme)
    threads = torch.get_num_threads()
    try:
        assert bench_run.main(["--quick", "-k", "svd", "--device", "cpu"]) == 0
        report = capsys.readouterr().out
        assert not published.exists() and (local / "cpu.csv").exists() and (local / "cpu-latest.md").exists()
        head, tables, files = report.index("# Headline"), report.index("| op | shape |"), report.index("Files: ")
        assert head < tables < files and "| svd k16 (→ fft) |" in report
        monkeypatch.setitem(sys.modules, "tqdm", None)  # without tqdm (no bench extra): plain progress lines
        assert bench_run.main(["--quick", "-k", "svd", "--device", "cpu", "--save"]) == 0
        assert "[0/3] svd-256x768x768-k16-float32 fwd" in capsys.readouterr().err
        assert len(csvio.load(published / "cpu.csv")) == len(csvio.load(local / "cpu.csv")) == 3
        assert "| svd k16 (→ fft) |" in readme.read_text()
    finally:
        torch.set_num_threads(threads)
