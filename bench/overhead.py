"""The fixed cost of one surm_ops call: ``circulant_matmul`` forward against the bare ``torch.fft`` it wraps.

    python bench/overhead.py [--shapes 8x64 256x768] [--rounds 30] [--calls N] [--clock wall|cpu] [--threads T]

For each shape (tokens x n, float32, inputs not requiring grad) three callables are timed, interleaved round by
round so that machine noise hits them alike, and each one's best round (per-call time, minimum over rounds) is kept:

- ``raw``:   ``irfft(rfft(x) * rfft(c), n)`` — the arithmetic the fft backend does, with no validation or dispatch;
- ``fft``:   ``surm_ops.circulant_matmul(x, c, backend="fft")`` — validation, dispatch, the op, no choice to make;
- ``auto``:  ``surm_ops.circulant_matmul(x, c)`` — the same with the automatic choice (warm: after the first call).

It prints the times and the ratios to ``raw``. ``--clock cpu`` times with this process's CPU time (all threads)
instead of the wall clock: on a machine shared with other work it leaves out the time the process waited for a
core, which the wall clock counts and which swamps a 15 µs call there. Use it with ``--threads 1``: idle intra-op
worker threads spin for a while after each op, which the CPU clock would count. ``auto`` may pick ``dense`` (the
cost model's call); its ratio then compares against a different kernel, so the backend it picked is printed too.
"""

from __future__ import annotations

import argparse
import time

import torch

import surm_ops
from surm_ops import dispatch

_clock = time.perf_counter


def _per_call(fn, calls: int) -> float:
    start = _clock()
    for _ in range(calls):
        fn()
    return (_clock() - start) / calls


def measure(tokens: int, n: int, rounds: int, calls: int = 0) -> dict[str, float]:
    """Best per-call seconds of raw / fft / auto for a (tokens x n) float32 forward; ``calls`` per round (0: about
    5 ms of raw calls)."""
    x, c = torch.randn(tokens, n), torch.randn(n)
    fns = {
        "raw": lambda: torch.fft.irfft(torch.fft.rfft(x) * torch.fft.rfft(c), n=n),
        "fft": lambda: surm_ops.circulant_matmul(x, c, backend="fft"),
        "auto": lambda: surm_ops.circulant_matmul(x, c),
    }
    best = dict.fromkeys(fns, float("inf"))
    for fn in fns.values():  # warm: plans, caches, the auto decision
        _per_call(fn, 10)
    calls = calls or max(5, int(5e-3 / _per_call(fns["raw"], 20)))
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], _per_call(fn, calls))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["8x64", "256x768"], help="tokens x n")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=0, help="calls per round (default: ~5 ms worth)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global _clock
    _clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 forward, "
          f"min over {args.rounds} interleaved rounds, {args.clock} clock")
    print("| tokens x n | raw µs | fft µs | auto µs (picks) | fft / raw | auto / raw |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        tokens, n = map(int, shape.lower().split("x"))
        t = measure(tokens, n, args.rounds, args.calls)
        pick = dispatch.resolve("circulant_matmul", "auto", torch.empty(tokens, n), [torch.empty(n)])
        print(f"| {tokens} x {n} | {t['raw'] * 1e6:.1f} | {t['fft'] * 1e6:.1f} | {t['auto'] * 1e6:.1f} ({pick}) | "
              f"{t['fft'] / t['raw']:.2f} | {t['auto'] / t['raw']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
