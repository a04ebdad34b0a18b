"""The one timing call every benchmark goes through, CPU or GPU: median, p20 and p80 of per-call times.

- CPU, inside pytest: pytest-benchmark's ``benchmark`` fixture runs the rounds (calibrated iterations per round,
  warm-up, gc off, as bench/run.py configures it); the quantiles come from its per-round times.
- GPU: ``triton.testing.do_bench`` with quantiles (CUDA-event timed; it zeroes a 256 MB buffer before every rep,
  so L2 is cold), or, without triton, the same loop with CUDA events here. pytest-benchmark cannot time
  asynchronous CUDA work, so run.py disables it on GPU; the fixture then makes one untimed call.
- No fixture (smoke tests, the ceilings): a plain ``perf_counter`` loop on CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2


@dataclass(frozen=True)
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    timer: str  # "pytest-benchmark", "do_bench", "cuda-events" or "perf_counter"

    @classmethod
    def from_samples(cls, samples: list[float], timer: str) -> Timing:
        if len(samples) >= 2:
            cuts = statistics.quantiles(samples, n=5, method="inclusive")  # p20, p40, p60, p80
            return cls(statistics.median(samples), cuts[0], cuts[3], timer)
        return cls(samples[0], samples[0], samples[0], timer)


def _do_bench(fn: Callable[[], object], quick: bool) -> Timing:
    warmup, rep = (5, 20) if quick else (25, 100)  # milliseconds
    try:
        from triton.testing import do_bench
    except ImportError:
        return _cuda_events(fn, warmup, rep)
    med, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return Timing(med / 1e3, p20 / 1e3, p80 / 1e3, "do_bench")


def _cuda_events(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> Timing:
    """do_bench's method without triton: estimate, warm up, then one event pair per call after an L2 flush."""
    flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(5, int(rep_ms / estimate))
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in pairs:
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return Timing.from_samples([s.elapsed_time(e) / 1e3 for s, e in pairs], "cuda-events")


def _perf_counter(fn: Callable[[], object], quick: bool) -> Timing:
    fn()
    samples, budget, t_end = [], 0.01 if quick else 0.05, None
    while len(samples) < 5 or (time.perf_counter() < t_end and len(samples) < 1000):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        t_end = t_end or t0 + budget
    return Timing.from_samples(samples, "perf_counter")


def measure(fn: Callable[[], object], device: torch.device, benchmark=None, quick: bool = False) -> Timing | None:
    """Time ``fn`` on ``device``; None when pytest-benchmark is disabled on CPU (nothing was timed)."""
    if device.type == "cuda":
        if benchmark is not None:
            benchmark(fn)  # disabled by run.py on GPU: one untimed call that also marks the fixture used
        return _do_bench(fn, quick)
    if benchmark is None:
        return _perf_counter(fn, quick)
    if quick:
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    else:
        benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: fn ran once, untimed
        return None
    return Timing.from_samples(list(stats.stats.data), "pytest-benchmark")


def best_of(fn: Callable[[], object], device: torch.device, rounds: int = 5) -> float:
    """Fastest of ``rounds`` calls in seconds, after one warm-up (the ceilings: the best the device did)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(rounds):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return min(times)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
