"""The benchmark's conclusions hold on a busy machine: with a competing CPU-bound process on one core, two runs
agree on the headline ratios within 15%, and two copies of one provider measure within 10% of each other.

It times the headline rows of the circulant method (bench/cases.py, bench/layers.py) the way ``bash scripts/dev.sh
bench`` does (bench/timing.py: interleaved shuffled rounds, one torch thread timed by its CPU time): once as the
machine is, then twice while a spinning process is pinned to core 0, each group's two loaded runs back to back.
Asserted: the two loaded runs agree (the issue's "of each other across two loaded runs": a shared CI machine is
not idle, so there is no idle run to hold them to), and the copies agree in all three runs. The as-is run is
printed beside them (``-s``), with how busy other processes kept the machine. 15–40 s on 2 cores (twice that when
the first attempt misses and it measures again).

Measured on the 2-core machine while 4 other sessions kept 1.5–1.8 of its 2 cores busy (load average 7–10): it
passed 6 of 10 runs; the failures were the ``auto`` circulant forward+backward ratios 15–17% apart between the two
loaded runs, or a copy 10–12% off. At load average 5–6, with an earlier version (loaded runs one after the other,
glibc trimming the heap), 7 of 8. The as-is run moved up to 20–40% from the loaded ones in single ratios, most often
surm_ops' ``auto`` forward+backward, whose own cost rises on a busy machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from bench import cases, layers, meta, timing

CPU = torch.device("cpu")
_SPIN = "import os\nif hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {0})\nwhile True: pass\n"


def _groups() -> list[dict]:
    """The headline rows of one method, each group with a second, separately built copy of its first provider."""
    case = cases.circulant(768)
    shp = layers.shape(CPU)
    specs = {s.label: s for s in layers.LAYERS}
    out = []
    for mode in ("fwd", "full"):
        out.append({p: cases.build(case, p.removesuffix(" again"), mode, CPU)
                    for p in ("auto", "auto again", "torch", "lora-r16")})
        out.append({p: layers.build(specs[p.removesuffix(" again")], mode, CPU, shp)[0]
                    for p in ("circulant", "circulant again", "frozen", "lora-r16")})
    return out


def _ratios(groups: list[dict], runs: int = 1) -> list[tuple[dict[str, float], dict[str, float]]]:
    """``runs`` times (headline ratios, copy ÷ original), timed as the runner times them; the runs of one group are
    measured back to back, so a change in the machine's other load between groups hits every run alike."""
    out = [({}, {}) for _ in range(runs)]
    for i, fns in enumerate(groups):
        first, base, lora = list(fns)[0], list(fns)[2], "lora-r16"
        for ratios, copies in out:
            t = {name: v.robust_s for name, v in timing.interleaved(fns, CPU).items()}
            ratios[f"{i}: {first} ÷ {base}"] = t[first] / t[base]
            ratios[f"{i}: {first} ÷ {lora}"] = t[first] / t[lora]
            ratios[f"{i}: {lora} ÷ {base}"] = t[lora] / t[base]
            copies[f"{i}: {first}"] = t[f"{first} again"] / t[first]
    return out


def _attempt(groups) -> tuple[list[str], str]:
    """One as-is run and two loaded runs: (the bars they miss, the report)."""
    started = time.monotonic()
    load = meta.CpuLoad()
    mark = load.mark()
    ((quiet, quiet_copies),) = _ratios(groups)
    others = load.others_cores(mark)
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        time.sleep(0.2)
        loaded_start = time.monotonic()
        (loaded, loaded_copies), (again, again_copies) = _ratios(groups, runs=2)
        loaded_wall = time.monotonic() - loaded_start
    finally:
        spinner.kill()
        _, _, usage = os.wait4(spinner.pid, 0)
    took = time.monotonic() - started
    report = "\n".join(f"  {k}: {quiet[k]:.3f} as is, {loaded[k]:.3f} / {again[k]:.3f} loaded" for k in quiet)
    report += "\n" + "\n".join(f"  copy {k}: {quiet_copies[k]:.3f} as is, {loaded_copies[k]:.3f} / "
                               f"{again_copies[k]:.3f} loaded" for k in quiet_copies)
    report += f"\n  other processes kept {others or 0:.1f} of {load.cores} cores busy during the as-is run"
    report += (f"\n  spinner used {usage.ru_utime:.1f} CPU-s in the loaded runs' {loaded_wall:.1f} s; "
               f"{took:.0f} s in all")
    missed = []
    # the load was real: the spinner ran for a good part of the loaded measurements (less only where the machine
    # was already fully busy, and then it still competed with us)
    if usage.ru_utime <= 0.2 * loaded_wall:
        missed.append("the competing process barely ran")
    missed += [f"{k} differs between two loaded runs" for k in quiet
               if again[k] != pytest.approx(loaded[k], rel=0.15)]
    missed += [f"copies of {k} disagree" for k in quiet_copies
               if any(c[k] != pytest.approx(1, abs=0.10) for c in (quiet_copies, loaded_copies, again_copies))]
    return missed, report


@pytest.mark.slow
def test_ratios_hold_under_one_core_of_load():
    """Measured twice at most, as the runner re-measures a wide case: a burst of outside load during one attempt
    is the machine's noise; a method whose ratios move under load misses in both attempts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench/run.py does by default
    try:
        groups = _groups()
        missed, report = _attempt(groups)
        if missed:
            print(f"attempt 1 missed: {missed}\n{report}")
            missed, report = _attempt(groups)
    finally:
        torch.set_num_threads(threads)
    assert not missed, f"{missed}\n{report}"
    print(report)
