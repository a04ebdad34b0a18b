"""Run the CPU benchmarks and report them.

    python bench/run.py            # all cases; prints a Markdown table, appends bench/results/cpu.csv and
                                   # rewrites bench/results/cpu-latest.md
    python bench/run.py --quick    # a few cases (same as SURM_BENCH_QUICK=1), for smoke testing
    python bench/run.py --no-save  # print only

Runs ``pytest bench/test_ops.py --benchmark-only`` in a subprocess with short timing settings (each test: warmup up
to --max-time, then at least 5 rounds and about --max-time seconds), reads its JSON and prints, per case and mode,
each provider's median with its speed relative to dense LoRA with the op's parameter count ("LoRA@eq") and to LoRA
r=16: LoRA's median divided by the provider's, so above 1 means faster than that LoRA.

Standard library only; the benchmarks themselves need torch and pytest-benchmark.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CSV_PATH = RESULTS / "cpu.csv"
MD_PATH = RESULTS / "cpu-latest.md"
CSV_COLUMNS = ("date", "commit", "device", "torch", "op", "provider", "dtype", "shape", "mode",
               "median_us", "p20_us", "p80_us", "params", "gbps")
MODE_ORDER = ("fwd", "full")


def pytest_command(json_path: Path, max_time: float, k: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "bench/test_ops.py", "-q", "-p", "no:cacheprovider",
           "--benchmark-only", f"--benchmark-json={json_path}", "--benchmark-save-data", "--benchmark-quiet",
           "--benchmark-min-rounds=5", f"--benchmark-max-time={max_time}", "--benchmark-warmup=on",
           "--benchmark-disable-gc"]
    return cmd + (["-k", k] if k else [])


def git_commit() -> str:
    """Short HEAD, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def device() -> str:
    """CPU model and the cores this process may use, e.g. ``Intel(R) Xeon(R) Processor (2 cores)``."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


def busy_warning(seconds: float = 0.5) -> str | None:
    """A warning when other processes keep the CPUs busy right before the run (sampled from /proc/stat; Linux
    only): torch's threads then wait for each other's next time slice and timings swing by orders of magnitude."""

    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    if busy < 0.2:
        return None
    return (f"Warning: the CPUs were {busy:.0%} busy with other work just before this run; timings may be noisy "
            "(compare ratios within a run, or rerun on an idle machine).")


def percentiles(stats: dict) -> tuple[float, float]:
    """p20 and p80 in seconds from the per-round data; q1 and q3 (p25, p75) when there is too little data."""
    data = stats.get("data") or []
    if len(data) >= 5:
        cuts = statistics.quantiles(data, n=5, method="inclusive")
        return cuts[0], cuts[3]
    return stats["q1"], stats["q3"]


def load_rows(json_path: Path) -> list[dict]:
    """One dict per benchmark: extra_info plus median/p20/p80 in µs and GB/s."""
    rows = []
    for bench in json.loads(json_path.read_text())["benchmarks"]:
        info, stats = dict(bench["extra_info"]), bench["stats"]
        p20, p80 = percentiles(stats)
        info.update(median_us=stats["median"] * 1e6, p20_us=p20 * 1e6, p80_us=p80 * 1e6,
                    gbps=info["bytes"] / stats["median"] / 1e9)
        rows.append(info)
    rows.sort(key=lambda r: (r["case_index"], MODE_ORDER.index(r["mode"]), r["provider_index"]))
    return rows


def speedup(rows_by_key: dict, row: dict, provider: str) -> str:
    ref = rows_by_key.get((row["case"], row["mode"], provider))
    return f"{ref['median_us'] / row['median_us']:.2f}" if ref else "-"


def markdown(rows: list[dict]) -> str:
    by_key = {(r["case"], r["mode"], r["provider"]): r for r in rows}
    lines = ["| op | shape | mode | provider | median µs | vs LoRA@eq | vs LoRA r16 |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        provider, eq = r["provider"], f"lora-r{r['lora_eq_rank']}"
        if provider == "auto":
            provider = f"auto → {r['backend']}"
        elif provider == eq:
            provider += " (=params)"
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {provider} | {r['median_us']:.1f} | "
                     f"{speedup(by_key, r, eq)} | {speedup(by_key, r, 'lora-r16')} |")
    return "\n".join(lines)


def csv_rows(rows: list[dict], meta: dict) -> list[dict]:
    return [{**meta, "torch": r["torch"], "op": r["op"], "provider": r["provider"], "dtype": r["dtype"],
             "shape": r["shape"], "mode": r["mode"], "median_us": f"{r['median_us']:.3f}",
             "p20_us": f"{r['p20_us']:.3f}", "p80_us": f"{r['p80_us']:.3f}", "params": r["params"],
             "gbps": f"{r['gbps']:.3f}"} for r in rows]


def append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise SystemExit(f"run.py: {path} has columns {header}, expected {list(CSV_COLUMNS)}; not appending")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only (same as SURM_BENCH_QUICK=1)")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {CSV_PATH.relative_to(ROOT)} "
                        f"or {MD_PATH.relative_to(ROOT)}")
    parser.add_argument("--max-time", type=float, default=0.05, metavar="S",
                        help="pytest-benchmark's --benchmark-max-time per test (default 0.05)")
    parser.add_argument("-k", metavar="EXPR", help="pytest -k expression selecting tests, e.g. 'circulant and fwd'")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.quick:
        env["SURM_BENCH_QUICK"] = "1"
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "device": device()}

    busy = busy_warning()
    if busy:
        print(busy, file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "bench.json"
        rc = subprocess.run(pytest_command(json_path, args.max_time, args.k), cwd=ROOT, env=env).returncode
        if not json_path.exists():
            print(f"run.py: pytest exited with {rc} and wrote no results", file=sys.stderr)
            return rc or 1
        rows = load_rows(json_path)
    if not rows:
        print("run.py: no benchmarks ran", file=sys.stderr)
        return rc or 1

    settings = (f"float32, min 5 rounds, max time {args.max_time} s per test, warmup on, gc off"
                + (", quick" if args.quick or env.get("SURM_BENCH_QUICK", "") not in ("", "0") else ""))
    header = (f"CPU benchmarks — {meta['date']}, commit {meta['commit']}, {meta['device']}, torch {rows[0]['torch']} "
              f"({rows[0]['threads']} threads), {settings}.\n\n"
              "Median of each provider; \"vs LoRA\" columns are LoRA's median / this median at the same case and "
              "mode (above 1: faster than that LoRA). LoRA@eq is dense LoRA with the op's parameter count, marked "
              "(=params); auto → X is the backend automatic dispatch ran."
              + (f"\n\n{busy}" if busy else ""))
    table = markdown(rows)
    print(f"\n{header}\n\n{table}")

    if not args.no_save:
        append_csv(CSV_PATH, csv_rows(rows, meta))
        MD_PATH.write_text(f"# CPU benchmarks, latest run\n\n{header}\n\n{table}\n")
        print(f"\nrun.py: appended {len(rows)} rows to {CSV_PATH.relative_to(ROOT)}, "
              f"wrote {MD_PATH.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
