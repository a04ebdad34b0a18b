"""Run the benchmarks on this machine's device (CUDA when available, else CPU) and print a report.

    python bench/run.py            # the default run (35–40 s on a busy 2-core CPU): one case per op, every adapter
                                   # layer; files in bench/out/ (untracked)
    python bench/run.py --full     # the whole suite: every op backend, mode and shape
    python bench/run.py --save     # publish: append to bench/results/{cpu,gpu}.csv, render the tables and plots
                                   # there and the README's table
    python bench/run.py --quick    # smoke run: three op cases and three layers, forward only
    python bench/run.py -k circulant --threads 2

What is measured is in bench/cases.py (ops) and bench/layers.py (adapter layers); how, in bench/timing.py: the
providers of one case are timed interleaved, round by round, and each row records a robust estimate (the median
over rounds of each visit's fastest call) next to the median and spread. Ceilings (bench/roofline.py) are
measured before and after the cases. How many cores other processes kept busy is sampled around every case
(bench/meta.py). The report prints a headline per structured method, the detailed tables, then where the files are.

On CPU the run uses one torch thread by default, timed by that thread's CPU time (bench/timing.py). With two
or more threads, one thread descheduled by a neighbour process stalls the others at every parallel region, and
on a busy 2-core machine a 300 µs op measured 15–25 ms; with one thread, time spent descheduled is simply not
counted. ``--threads N`` measures N threads by wall time (recorded in every row; trust it on an idle machine
only). ``SURM_BENCH_COMMIT`` overrides the commit recorded (for a copy of the tree without .git).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cases, csvio, layers, meta, render, roofline, timing  # noqa: E402

RESULTS = ROOT / "bench" / "results"   # checked in: written only with --save
LOCAL = ROOT / "bench" / "out"         # untracked (.gitignore): every other run
README = ROOT / "README.md"


def measure_ceilings(dev, dtypes, small: bool) -> roofline.Ceilings:
    """The ceilings as the best of three measurements (each already the best of several calls)."""
    tries = [roofline.measure_ceilings(dev, dtypes, lambda fn: timing.best_of(fn, dev), small=small)
             for _ in range(3)]
    out = tries[0]
    for other in tries[1:]:
        out = roofline.best(out, other)
    return out


def drift(start: roofline.Ceilings, end: roofline.Ceilings) -> float:
    """The largest relative difference between the two measurements of any ceiling."""
    pairs = [(start.copy_gbps, end.copy_gbps)]
    pairs += [(start.matmul_tflops[k], end.matmul_tflops[k]) for k in start.matmul_tflops if k in end.matmul_tflops]
    return max(abs(b - a) / max(a, b) for a, b in pairs)


def matches(label: str, k: str) -> bool:
    """Every word of ``k`` appears in ``label``, and no word written ``-word`` does ("circulant fwd -skew")."""
    return all((w[1:] not in label) if w.startswith("-") else (w in label) for w in k.split())


def select_groups(dev, scope: str, k: str | list[str] | None) -> list[cases.Group]:
    """The groups of ``scope`` whose label matches one of ``k`` (all of them when None)."""
    groups = [*cases.groups(dev, scope), *layers.groups(dev, scope)]
    if k:
        ks = [k] if isinstance(k, str) else k
        groups = [g for g in groups if any(matches(g.label, one) for one in ks)]
    return groups


def measure(groups: list[cases.Group], dev, rounds: int, visit_s: float) -> list[tuple[dict, timing.Timing, float]]:
    """Every group interleaved, with a progress bar (tqdm) naming the case and the time left."""
    try:
        from tqdm import tqdm
    except ImportError:  # an environment without the bench extra (a GPU image): one line per case instead
        tqdm = _PlainProgress
    load = meta.CpuLoad()
    out = []
    total = sum(len(g.fields) for g in groups)
    with tqdm(total=total, unit="timing", file=sys.stderr, dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]") as bar:
        for g in groups:
            bar.set_description(g.label)
            start = load.mark()
            timings = timing.interleaved(g.build(), dev, rounds=rounds, visit_s=visit_s)
            others = load.others_cores(start)
            out += [(g.fields[p], timings[p], others) for p in g.fields]
            bar.update(len(g.fields))
    return out


class _PlainProgress:
    def __init__(self, total: int, file, **_) -> None:
        self.total, self.done, self.file = total, 0, file

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        pass

    def set_description(self, text: str) -> None:
        print(f"[{self.done}/{self.total}] {text}", file=self.file, flush=True)

    def update(self, n: int) -> None:
        self.done += n


def publish(rows: list[dict], out: Path, stem: str, readme: Path | None) -> tuple[str, list[Path]]:
    csv_path = out / f"{stem}.csv"
    csvio.append(csv_path, rows)
    summary, written = render.render(csv_path, out, device=rows[0]["device"])
    written.insert(0, csv_path)
    if readme is not None and render.update_readme(readme, render.latest(csvio.load(csv_path), rows[0]["device"]),
                                                   stem):
        written.append(readme)
    return summary, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--full", action="store_true", help="the whole suite: every backend, mode and shape")
    scope.add_argument("--quick", action="store_true", help="smoke run: three op cases and three layers, forward")
    parser.add_argument("--save", action="store_true", help=f"publish: append to {_show(RESULTS)}/ and render the "
                        f"tables, plots and the README section (default: {_show(LOCAL)}/, untracked)")
    parser.add_argument("--out", type=Path, help="results folder instead of the default (not with --save)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="CPU: torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    parser.add_argument("--visit-ms", type=float, default=10.0, metavar="MS",
                        help="time one provider runs per round (default 10)")
    parser.add_argument("-k", metavar="WORDS", action="append",
                        help="only the cases whose label contains every word and none written -word, e.g. "
                        "'circulant fwd -skew' or 'layer'; repeat it for cases matching any of several")
    args = parser.parse_args(argv)
    if args.save and args.out:
        parser.error("--save writes to bench/results; --out picks another folder: give one of them")
    if args.threads < 1 or args.rounds < 1 or args.visit_ms <= 0:
        parser.error("--threads and --rounds must be at least 1, --visit-ms positive")
    started = time.monotonic()

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    scope = "full" if args.full else "quick" if args.quick else "default"
    groups = select_groups(device, scope, args.k)
    if not groups:
        parser.error(f"-k {args.k!r} matches no case")
    load = meta.CpuLoad()
    before = load.mark()
    time.sleep(0.3)
    idle_others = load.others_cores(before)
    run = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": meta.git_commit(), **meta.environment(device)}

    dtypes = tuple(sorted({c.dtype for c in cases.selected(device, scope)} | {layers.shape(device).dtype}, key=str))
    small = scope == "quick"
    start_ceilings = measure_ceilings(device, dtypes, small)
    measured = measure(groups, device, 3 if small else args.rounds, args.visit_ms / 1e3)
    end_ceilings = measure_ceilings(device, dtypes, small)
    ceilings = roofline.best(start_ceilings, end_ceilings)
    rows = [{**run, **roofline.complete_row(fields, t, ceilings), "others_cores": others,
             "ceiling_drift": drift(start_ceilings, end_ceilings)} for fields, t, others in measured]

    stem = "gpu" if device.type == "cuda" else "cpu"
    out = RESULTS if args.save else args.out or LOCAL
    summary, written = publish(rows, out, stem, README if args.save else None)
    print(f"\n{render.headline(render.latest(rows), idle_others)}\n")
    print(f"{summary}\n")
    print("Files: " + ", ".join(_show(p) for p in written))
    if not args.save:
        print(f"(untracked; `--save` publishes a run into {_show(RESULTS)}/ and the README)")
    print(f"{len(rows)} rows in {time.monotonic() - started:.0f} s.")
    return 0


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
