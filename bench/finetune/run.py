"""Fine-tune every adapter method end to end on real data, offline, on the CPU, and print one table per case.

    python bench/finetune/run.py                  # both cases (~4 min on 2 cores); writes bench/results/finetune-cpu.md
    python bench/finetune/run.py --quick          # smoke run: every method, few steps, a test subset (< 30 s)
    python bench/finetune/run.py --case text      # or digits; prints only (add --out PATH to write)
    python bench/finetune/run.py --case text --lr-grid --out bench/results/finetune-text-lr-grid-cpu.md
    python bench/finetune/run.py --methods "head only" lora circulant   # labels or method names

Per method and case: test (and validation) accuracy, median time of a training step, peak RSS added by training,
trainable adapter parameters and the size of the ``adapter.safetensors`` that ``surm_ops.save_adapters`` writes.
Learning rates: ``digits`` picks each method's from its grid (``tasks.DIGITS_GRID``) by validation accuracy, mean
over 3 seeds, on every run (cheap); ``text`` uses the per-method rates that its grid (``tasks.TEXT_GRID``) picked on
its validation split, stored in ``tasks.TEXT_LRS`` (``--lr-grid`` redoes that search: ~4x the time, ~9 min).
``--quick`` and ``--no-lr-grid`` use the stored rates of both cases. See bench/finetune/__init__.py for the cases.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make `bench` and an uninstalled `surm_ops` importable
    sys.path.insert(0, str(ROOT))

# The checkpoint is read from the installed package's files; make sure nothing tries the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from bench import meta  # noqa: E402
from bench.finetune.tasks import TASKS, Task, select  # noqa: E402
from bench.finetune.train import Result, run_spec  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "finetune-cpu.md"
QUICK_EVAL = 256  # --quick: accuracy on a fixed subset of at most this many entries per split


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for name in ("transformers", "sklearn"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    import surm_ops

    return (f"{cpu}, {torch.get_num_threads()} threads; {', '.join(versions)}, surm_ops {surm_ops.__version__}; "
            f"commit {_commit()}; {datetime.date.today().isoformat()}")


def cpu_busy(seconds: float = 1.0) -> str:
    """How busy the CPUs were over ``seconds`` before the run (:func:`bench.meta.cpu_busy`)."""
    busy = meta.cpu_busy(seconds)
    return "unknown" if busy is None else f"{100 * busy:.0f}%"


# ------------------------------------------------------------------------------------------------------- table


def _options(opts: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in opts.items()) or "defaults"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _acc(values: list[float]) -> str:
    if len(values) == 1:
        return _pct(values[0])
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{_pct(mean)} ± {_pct(std)}"


def table(results: list[Result], grid: bool) -> str:
    head = ["method", "options", "adapted modules", "lr", "test acc %", "val acc %", "adapter params",
            "ms / step", "peak RSS Δ MiB", "adapter.safetensors bytes"]
    if grid:
        head.append("val acc % per lr")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in results:
        where = "-" if r.method is None else f"{r.where} ({r.targets})"
        row = [r.label, "-" if r.method is None else _options(r.options), where,
               f"{r.lr:g}", _acc(r.test_accs), _acc(r.val_accs), f"{r.adapter_params:,}", f"{r.ms_per_step:.1f}",
               f"{r.peak_mib:.1f}", "-" if r.adapter_bytes is None else f"{r.adapter_bytes:,}"]
        if grid:
            row.append(", ".join(f"{lr:g}: {_pct(acc)}" for lr, acc in sorted(r.grid.items())))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def section(task: Task, results: list[Result], steps: int, seeds: list[int], grid: bool, seconds: float,
            quick: bool) -> str:
    r0 = results[0]
    lr_text = (f"each method's lr picked from {list(task.lr_grid)} by validation accuracy (mean over the seeds)" if grid
               else f"each method's lr as stored in tasks.py, picked from {list(task.lr_grid)} by validation accuracy "
                    f"({task.grid_source})")
    seeds_text = (f"seed {seeds[0]}" if len(seeds) == 1 else
                  f"seeds {', '.join(map(str, seeds))} (head init, adapter init, batch order; mean ± std over seeds)")
    notes = [
        task.describe(),
        f"Training: {steps} steps of batch {task.batch_size}, AdamW (weight decay 0) over the adapters and the head "
        f"({r0.head_params:,} head parameters in every row, not counted in 'adapter params'), lr decaying linearly "
        f"to 0, gradients clipped to norm 1; {lr_text}; {seeds_text}. Majority-class test accuracy: "
        f"{_pct(task.majority())}%." + (f" --quick: accuracy on at most {QUICK_EVAL} entries per split." if quick
                                        else ""),
    ]
    return (f"## {task.name}\n\n" + "\n\n".join(notes) + "\n\n" + table(results, grid) +
            f"\n\n({seconds:.0f} s for this case)\n")


FOOTER = """\
Columns: *ms / step* is the median wall time of one training step (forward, backward, clipping, optimizer step)
over the run. *peak RSS Δ* is the peak resident set size during the training steps minus the RSS just before them,
with the model already built (Linux VmHWM, reset before each run through /proc/self/clear_refs; the same quantity
as `resource.getrusage().ru_maxrss`; not tracemalloc, which does not see torch's allocations): the memory that
training adds (activations, gradients, optimizer state). *adapter params* counts the trainable adapter tensors
(`surm_ops.adapters.trainable_parameters` on the injected encoder); *adapter.safetensors bytes* is the file
`surm_ops.save_adapters` writes (the tensors plus a JSON header with the adapter config), the head not included.
"""


def stall_note(results: list[Result], ratio: float = 1.5) -> str:
    """A warning naming the rows whose mean step time exceeds ``ratio`` x their median: the machine stalled (another
    load on the host) during them, which the median step time hides but the wall times include."""
    slow = [f"{r.case}/{r.label} ({r.mean_ms_per_step / r.ms_per_step:.1f}x)" for r in results
            if r.ms_per_step > 0 and r.mean_ms_per_step > ratio * r.ms_per_step]
    if not slow:
        return ""
    return ("\nStalls: in " + ", ".join(slow) + " the mean step took more than "
            f"{ratio}x the median: the machine was busy or stalled then; the medians above are less affected.\n")


# -------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, one seed, a test subset (< 30 s)")
    ap.add_argument("--case", choices=["text", "digits", "all"], default="all")
    ap.add_argument("--methods", nargs="+", default=None, help="row labels or method names ('head' = head only)")
    ap.add_argument("--lr-grid", action=argparse.BooleanOptionalAction, default=None,
                    help="pick each method's lr from the case's grid by validation accuracy (default: digits yes, "
                         "text no)")
    ap.add_argument("--steps", type=int, default=None, help="override the case's number of training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="override the case's training seeds")
    ap.add_argument("--out", default=None, help="write the Markdown here (default: "
                    f"{DEFAULT_OUT.relative_to(ROOT)} for a full run of both cases, nothing otherwise)")
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    command = "python bench/finetune/run.py" + "".join(" " + shlex.quote(a) for a in (argv if argv is not None
                                                                                        else sys.argv[1:]))
    header = (f"# Fine-tuning with every adapter method, CPU\n\nCommand: `{command}`\n\nMachine: {_machine()}; "
              f"CPU busy in the second before the run: {cpu_busy()}\n")
    print(header, flush=True)
    sections = []
    all_results: list[Result] = []
    for name in (["text", "digits"] if args.case == "all" else [args.case]):
        t_case = time.perf_counter()
        task = TASKS[name]()
        if args.quick:
            task.limit_eval(QUICK_EVAL)
        specs = select(task.specs(), args.methods)
        steps = args.steps or (task.quick_steps if args.quick else task.steps)
        seeds = args.seeds or ([0] if args.quick else task.seeds)
        grid = (task.default_grid and not args.quick) if args.lr_grid is None else args.lr_grid
        results = []
        all_results += results
        for spec in specs:
            r = run_spec(task, spec, steps, seeds, task.lr_grid if grid else None)
            results.append(r)
            print(f"  {name}: {r.label}: test {_acc(r.test_accs)}%, {r.ms_per_step:.1f} ms/step, "
                  f"{r.seconds:.1f} s", file=sys.stderr, flush=True)
        text = section(task, results, steps, seeds, grid, time.perf_counter() - t_case, args.quick)
        print(text, flush=True)
        sections.append(text)
    total = time.perf_counter() - t_all
    footer = FOOTER + stall_note(all_results) + f"\nTotal: {total:.0f} s.\n"
    print(footer)
    out = args.out or (DEFAULT_OUT if args.case == "all" and not args.quick and not args.methods
                       and args.steps is None and args.seeds is None and args.lr_grid is None else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(header + "\n" + "\n".join(sections) + "\n" + footer)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
