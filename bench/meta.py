"""What a result row records about where it ran: device name, versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """``SURM_BENCH_COMMIT`` if set (a copy of the tree without .git, e.g. on a remote GPU machine), else the short
    HEAD with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    if os.environ.get("SURM_BENCH_COMMIT"):
        return os.environ["SURM_BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def cpu_name() -> str:
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


def environment(device) -> dict:
    """Device name and torch / triton / CUDA versions (empty where absent) for ``device`` (a torch.device)."""
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "",
            "threads": torch.get_num_threads()}


class CpuLoad:
    """How much CPU *other* processes use, sampled between two points of this run (Linux /proc/stat; elsewhere
    every reading is None).

    Busy CPUs make torch's threads wait for each other's next time slice, and timings swing by orders of magnitude,
    so the runner samples this around every case, not only before the run. ``others_cores`` is the average number
    of cores other work kept busy: all CPUs' busy time minus this process's own CPU time, over the wall time.

    Example::

        >>> load = CpuLoad()
        >>> mark = load.mark()
        >>> busy = load.others_cores(mark)   # e.g. 0.93 on a machine where a neighbour spins one core
    """

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def mark(self) -> tuple[float, float, float] | None:
        """(wall seconds, all CPUs' busy seconds, this process's CPU seconds), or None when unreadable."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait; guest time is inside user
        return time.monotonic(), busy / self._tick, time.process_time()

    def others_cores(self, start, end=None) -> float | None:
        """Cores other processes kept busy on average between ``start`` and ``end`` (default: now)."""
        end = end or self.mark()
        if start is None or end is None or end[0] - start[0] <= 0:
            return None
        others = (end[1] - start[1]) - (end[2] - start[2])
        return min(max(others / (end[0] - start[0]), 0.0), float(self.cores))


def cpu_busy(seconds: float) -> float | None:
    """The fraction of all CPUs that other work used over the next ``seconds`` (None off Linux)."""
    load = CpuLoad()
    start = load.mark()
    time.sleep(seconds)
    cores = load.others_cores(start)
    return None if cores is None else cores / load.cores
