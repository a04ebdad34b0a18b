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


def cpu_busy(seconds: float) -> float | None:
    """The fraction of CPU time other work used over ``seconds`` (sampled from /proc/stat; None off Linux): busy
    CPUs make torch's threads wait for each other's next time slice, and timings swing by orders of magnitude."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)
