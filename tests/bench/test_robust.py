"""The benchmark's conclusions hold on a busy machine: with a competing CPU-bound process on one core, two runs
agree on the headline ratios within 15%, and two copies of one provider measure within 10% of each other.

It times the headline rows of the circulant method (bench/cases.py, bench/layers.py) the way ``bash scripts/dev.sh
bench`` does (bench/timing.py's interleaved rounds, one torch thread): once as the machine is, then twice while a
spinning process is pinned to core 0. Asserted: the two loaded runs agree (the issue's "of each other across two
loaded runs"), and the copies agree in all three runs. The as-is run is printed beside them (``-s``), not held to
15%: a shared CI machine is not idle, and a provider whose own cost depends on the load (page faults, below) moves
for real. About 20–35 s on 2 cores.

Why one provider's cost can move: surm_ops' ``auto`` circulant forward+backward takes minor page faults on every
call (4–17 at 256 × 768, counted with getrusage; the raw torch path takes none), and page faults cost more CPU
time while other processes allocate memory; under one added core of load on an already busy 2-core machine its
ratio to the raw torch path went from 1.4–1.6 to 1.6–1.8 while every other headline ratio stayed within 10%.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from bench import cases, layers, timing

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


def _ratios(groups: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """(headline ratios, copy ÷ original) of every group, timed as the runner times them."""
    ratios, copies = {}, {}
    for i, fns in enumerate(groups):
        t = {name: v.robust_s for name, v in timing.interleaved(fns, CPU).items()}
        first, base, lora = list(fns)[0], list(fns)[2], "lora-r16"
        ratios[f"{i}: {first} ÷ {base}"] = t[first] / t[base]
        ratios[f"{i}: {first} ÷ {lora}"] = t[first] / t[lora]
        ratios[f"{i}: {lora} ÷ {base}"] = t[lora] / t[base]
        copies[f"{i}: {first}"] = t[f"{first} again"] / t[first]
    return ratios, copies


@pytest.mark.slow
def test_ratios_hold_under_one_core_of_load():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench/run.py does by default
    try:
        groups = _groups()
        started = time.monotonic()
        quiet, quiet_copies = _ratios(groups)
        spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
        try:
            time.sleep(0.2)
            loaded_start = time.monotonic()
            loaded, loaded_copies = _ratios(groups)
            loaded_wall = time.monotonic() - loaded_start
            again, again_copies = _ratios(groups)
        finally:
            spinner.kill()
            _, _, usage = os.wait4(spinner.pid, 0)
        took = time.monotonic() - started
    finally:
        torch.set_num_threads(threads)
    report = "\n".join(f"  {k}: {quiet[k]:.3f} as is, {loaded[k]:.3f} / {again[k]:.3f} loaded" for k in quiet)
    report += "\n" + "\n".join(f"  copy {k}: {quiet_copies[k]:.3f} as is, {loaded_copies[k]:.3f} / "
                               f"{again_copies[k]:.3f} loaded" for k in quiet_copies)
    report += (f"\n  spinner used {usage.ru_utime:.1f} CPU-s in the first loaded run's {loaded_wall:.1f} s; "
               f"{took:.0f} s in all")
    # the load was real: the spinner ran for a good part of the loaded measurements (less only where the machine
    # was already fully busy, and then it still competed with us)
    assert usage.ru_utime > 0.2 * loaded_wall, report
    for k in quiet:
        assert again[k] == pytest.approx(loaded[k], rel=0.15), f"{k} differs between two loaded runs:\n{report}"
    for k in quiet_copies:
        for copies in (quiet_copies, loaded_copies, again_copies):
            assert copies[k] == pytest.approx(1, abs=0.10), f"copies of {k} disagree:\n{report}"
    print(report)
