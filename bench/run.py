"""Run the benchmarks on this machine's device (CUDA when available, else CPU) and report them.

    python bench/run.py            # the default suite: appends bench/results/{cpu,gpu}.csv, renders
                                   # {cpu,gpu}-latest.md, -ops.png and -layers.png there, prints the tables
    python bench/run.py --quick    # smoke run: three op cases and three layers, results in a temporary folder
    python bench/run.py --no-save  # print only
    python bench/run.py --device cpu -k 'circulant and fwd'   # force a device; select tests with pytest -k

It runs ``pytest bench/test_ops.py bench/test_layers.py`` in a subprocess. On CPU pytest-benchmark times every
test (each: warm-up, then at least 5 rounds and about --max-time seconds, gc off); on a GPU pytest-benchmark is
disabled and every test times itself with ``triton.testing.do_bench`` (bench/timing.py). Each test writes one row
(median, p20, p80, bytes, FLOPs, and the copy-bandwidth and matmul ceilings measured at the start of the same
session: bench/roofline.py); this script adds date, commit and versions, appends the rows to the CSV
(bench/csvio.py) and calls bench/render.py on it. ``SURM_BENCH_COMMIT`` overrides the commit recorded (for a
copy of the tree without .git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import csvio, meta, render  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TESTS = ("bench/test_ops.py", "bench/test_layers.py")
_TABLE_START = re.compile(r"^-+ benchmark")
_TABLE_END = "  OPS: Operations Per Second"


def pytest_command(gpu: bool, max_time: float, k: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider"]
    if gpu:  # pytest-benchmark cannot time asynchronous CUDA work; the tests use do_bench
        cmd.append("--benchmark-disable")
    else:
        cmd += ["--benchmark-only", "--benchmark-min-rounds=5", f"--benchmark-max-time={max_time}",
                "--benchmark-warmup=on", "--benchmark-warmup-iterations=3", "--benchmark-disable-gc"]
    return cmd + (["-k", k] if k else [])


def run_pytest(cmd: list[str], env: dict) -> int:
    """Run pytest, echoing its output except pytest-benchmark's own tables (our tables follow)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    skipping = False
    for line in proc.stdout:
        if _TABLE_START.match(line):
            skipping = True
        if not skipping:
            print(line, end="", flush=True)
        if skipping and line.startswith(_TABLE_END):
            skipping = False
    return proc.wait()


def busy_warning(seconds: float = 0.5) -> str | None:
    """A warning when other processes keep the CPUs busy right before the run (:func:`bench.meta.cpu_busy`)."""
    busy = meta.cpu_busy(seconds)
    if busy is None or busy < 0.2:
        return None
    return (f"Warning: the CPUs were {busy:.0%} busy with other work just before this run; timings may be noisy "
            "(compare ratios within a run, or rerun on an idle machine).")


def read_rows(path: Path, run: dict) -> list[dict]:
    """The session's rows with its meta line (device, versions, ceilings) and ``run`` (date, commit) merged in."""
    if not path.exists():
        return []
    session, rows = {}, []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        kind = record.pop("kind")
        if kind == "meta":
            session = record
        else:
            rates = session.get("matmul_tflops", {})
            rows.append({**run, **{k: v for k, v in session.items() if k in csvio.COLUMNS}, **record,
                         "matmul_tflops": rates.get(record["dtype"])})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (same as SURM_BENCH_QUICK=1); results go "
                        "to a temporary folder unless --out is given")
    parser.add_argument("--no-save", action="store_true", help="print the tables only; keep no files")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--max-time", type=float, default=0.5, metavar="S",
                        help="CPU: pytest-benchmark's --benchmark-max-time per test (default 0.5)")
    parser.add_argument("-k", metavar="EXPR", help="pytest -k expression selecting tests, e.g. 'circulant and fwd'")
    args = parser.parse_args(argv)
    started = time.monotonic()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    env = {**os.environ, "SURM_BENCH_DEVICE": device}
    if args.quick:
        env["SURM_BENCH_QUICK"] = "1"
    run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": meta.git_commit()}
    busy = busy_warning() if device == "cpu" else None
    if busy:
        print(busy, file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "rows.jsonl"
        env["SURM_BENCH_OUT"] = str(rows_path)
        rc = run_pytest(pytest_command(device == "cuda", args.max_time, args.k), env)
        rows = read_rows(rows_path, run)
        if not rows:
            print(f"run.py: pytest exited with {rc} and recorded no rows", file=sys.stderr)
            return rc or 1
        if args.no_save:
            out = Path(tmp) / "results"
        elif args.out:
            out = args.out
        elif args.quick:
            out = Path(tempfile.mkdtemp(prefix="surm-bench-quick-"))
        else:
            out = RESULTS
        csv_path = out / ("gpu.csv" if device == "cuda" else "cpu.csv")
        csvio.append(csv_path, rows)
        summary, written = render.render(csv_path, out, device=rows[0]["device"], note=busy or "")
        print(f"\n{summary}\n")
        if not args.no_save:
            print(f"run.py: appended {len(rows)} rows to {csv_path}; wrote " + ", ".join(str(p) for p in written))
    failed = f"; pytest exited with {rc}" if rc else ""
    print(f"run.py: {len(rows)} rows in {time.monotonic() - started:.0f} s{failed}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
