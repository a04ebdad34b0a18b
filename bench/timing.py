"""The one timing method every benchmark goes through, CPU or GPU: the providers of one case measured interleaved.

Why interleaved: on a shared machine (a laptop, a CI runner, a server with neighbours) another process can take a
core for seconds at a time. Timing provider A for a second and then provider B for a second lets such a burst land
on one of them only, and a ratio flips. Here the providers of one case take turns: every *round* visits each
provider once, in a fresh (seeded) random order each round, and a burst hits them alike. The order is shuffled, not
rotated: rotating keeps every provider right behind the same neighbour, and a provider that runs after a copy of
itself finds caches and branch predictors warm for its code (two copies of one provider measured 5–14% apart
that way on the 2-core machine; shuffled, within a few %).

One *visit* times a provider several times back to back (enough calls to fill about ``visit_s``) and keeps that
visit's minimum, p20, median and p80 per call:

- CPU: one clock reading before and after each call, after a warm-up visit. With one torch thread (the runner's
  default) the clock is the thread's CPU time (``time.thread_time``): torch then runs every kernel, forward and
  backward, on the calling thread, so time the thread spent descheduled while a neighbour ran is not counted,
  and a call of several milliseconds is measured right even when no 10 ms stretch of the machine is free (on an
  idle machine the two clocks agree). With more threads the clock is wall time (``time.perf_counter``): CPU
  time would add the threads up;
- GPU: ``triton.testing.do_bench`` (CUDA events, a 256 MB buffer zeroed before every call so L2 is cold) with
  quantiles; without triton, the same method with CUDA events here.

Over the rounds a provider's **robust estimate** is the median of its visits' minimums: the minimum of a visit is
what the code costs when nothing else ran during one of its calls, and the median over rounds discards a round that
was unusually lucky or slowed all the way through. The row's median, p20 and p80 are the medians over rounds of the
visits' own. The **spread** is the interquartile range of the visit minimums over the robust estimate; a case whose
widest spread exceeds :data:`WIDE` is measured again (more rounds, pooled with the first), and a provider still
wider than that is flagged in the tables.

While timing, garbage collection is off and glibc's malloc keeps freed memory (:func:`keep_freed_memory`), so
neither a collection nor the heap's page faults land on whichever provider happens to run at the time.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

WIDE = 0.15
"""Relative spread above which a case is measured again, and a provider that stays above it is flagged."""

_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2


@dataclass(frozen=True)
class Visit:
    """One provider's calls within one round: per-call seconds."""

    min_s: float
    p20_s: float
    median_s: float
    p80_s: float

    @classmethod
    def from_samples(cls, samples: list[float]) -> Visit:
        if len(samples) < 2:
            return cls(samples[0], samples[0], samples[0], samples[0])
        cuts = statistics.quantiles(samples, n=5, method="inclusive")  # p20, p40, p60, p80
        return cls(min(samples), cuts[0], statistics.median(samples), cuts[3])


@dataclass(frozen=True)
class Timing:
    """A provider's result over all rounds of one interleaved measurement (seconds per call)."""

    robust_s: float   # median over rounds of the visits' minimums: the number ratios and × floor use
    median_s: float
    p20_s: float
    p80_s: float
    spread: float     # interquartile range of the visit minimums ÷ robust_s
    rounds: int
    calls: int        # calls per visit
    timer: str        # "thread-cpu-time", "perf_counter", "do_bench" or "cuda-events"

    @property
    def wide(self) -> bool:
        return self.spread > WIDE

    @classmethod
    def from_visits(cls, visits: list[Visit], calls: int, timer: str) -> Timing:
        mins = [v.min_s for v in visits]
        robust = statistics.median(mins)
        if len(mins) >= 4:
            q1, _, q3 = statistics.quantiles(mins, n=4, method="inclusive")
            spread = (q3 - q1) / robust
        else:
            spread = (max(mins) - min(mins)) / robust
        return cls(robust, statistics.median(v.median_s for v in visits), statistics.median(v.p20_s for v in visits),
                   statistics.median(v.p80_s for v in visits), spread, len(visits), calls, timer)


def _gpu_timer() -> Callable[[Callable[[], object], float], Visit]:
    """do_bench when triton is importable, else the same method with CUDA events here."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return _cuda_events

    def visit(fn, visit_s):
        ms = visit_s * 1e3
        q0, q20, q50, q80 = do_bench(fn, warmup=max(1.0, ms / 4), rep=ms, quantiles=[0.0, 0.2, 0.5, 0.8])
        return Visit(q0 / 1e3, q20 / 1e3, q50 / 1e3, q80 / 1e3)

    visit.timer = "do_bench"
    return visit


def _cuda_events(fn: Callable[[], object], visit_s: float) -> Visit:
    """do_bench's method without triton: estimate, warm up, then one event pair per call after an L2 flush."""
    flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 3, 1e-3)
    n = max(5, int(visit_s * 1e3 / estimate_ms))
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in pairs:
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return Visit.from_samples([s.elapsed_time(e) / 1e3 for s, e in pairs])


_cuda_events.timer = "cuda-events"


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (Linux; elsewhere a no-op returning False).

    By default glibc shrinks the heap when its top is free and grows it again on the next allocation: around every
    call of a benchmark that allocates a few MB, the pages come back as minor page faults, 0–200 per call at
    256 × 768 depending on which provider ran before (the heap's history), and page faults cost more CPU time
    while other processes run. That would be a property of the harness, not of the code timed, so the runner
    switches it off for every provider alike: no trimming, no mmap below 32 MB, 64 MB of top padding."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in (
        (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 * 2**20), (m_mmap_threshold, 32 * 2**20)))


def cpu_clock() -> tuple[Callable[[], float], str]:
    """The CPU clock and its name: the thread's CPU time with one torch thread, else wall time (module docstring)."""
    if torch.get_num_threads() == 1:
        return time.thread_time, "thread-cpu-time"
    return time.perf_counter, "perf_counter"


def _cpu_visit(fn: Callable[[], object], calls: int, clock: Callable[[], float]) -> Visit:
    samples = []
    for _ in range(calls):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return Visit.from_samples(samples)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int = 7,
                visit_s: float = 0.01, extra_rounds: int | None = None) -> dict[str, Timing]:
    """Time every callable of ``fns`` (one case's providers) in ``rounds`` interleaved rounds.

    Each visit lasts about ``visit_s`` (at least 3 calls on CPU). When some provider's spread exceeds
    :data:`WIDE`, ``extra_rounds`` more rounds (default: as many again) are run and pooled with the first.

    Example::

        >>> t = interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(1000))}, torch.device("cpu"))
        >>> t["a"].robust_s > 0 and t["a"].rounds >= 7
        True
    """
    if not fns:
        return {}
    names = list(fns)
    if device.type == "cuda":
        gpu_visit = _gpu_timer()
        timer = gpu_visit.timer
        for fn in fns.values():  # compile / plan caches before any timed visit
            fn()
        torch.cuda.synchronize()
        calls = dict.fromkeys(names, 0)

        def visit(name):
            return gpu_visit(fns[name], visit_s)
    else:
        keep_freed_memory()
        clock, timer = cpu_clock()
        calls = {}
        for name, fn in fns.items():  # warm-up visit, which also sizes the timed ones
            fn()
            calls[name] = max(3, min(10_000, math.ceil(visit_s / max(_cpu_visit(fn, 3, clock).min_s, 1e-7))))

        def visit(name):
            return _cpu_visit(fns[name], calls[name], clock)

    visits: dict[str, list[Visit]] = {n: [] for n in names}

    order = random.Random(0)  # seeded: a rerun visits in the same orders

    def run(count: int) -> None:
        for _ in range(count):
            for name in order.sample(names, len(names)):
                visits[name].append(visit(name))

    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection would land on whichever provider happened to allocate past the threshold
    try:
        run(rounds)
        result = {n: Timing.from_visits(visits[n], calls[n], timer) for n in names}
        if any(t.wide for t in result.values()):
            run(rounds if extra_rounds is None else extra_rounds)
            result = {n: Timing.from_visits(visits[n], calls[n], timer) for n in names}
    finally:
        if gc_was_enabled:
            gc.enable()
    return result


def best_of(fn: Callable[[], object], device: torch.device, rounds: int = 5) -> float:
    """Fastest of ``rounds`` calls in seconds, after one warm-up (the ceilings: the best the device did); on CPU
    with :func:`cpu_clock`."""
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
    return _cpu_visit(fn, rounds, cpu_clock()[0]).min_s
