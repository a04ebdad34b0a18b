"""Measures where ``dense`` stops beating ``fft`` on this machine, per op, forward and forward+backward.

    python bench/crossover.py [--tokens 1 16 256 4096] [--sizes 16 32 64 128 256 512 1024 2048]

Prints, for each op and token count, the timings of both backends and what automatic dispatch picks, so the cost
model in surm_ops/ops/_speed.py can be checked against the machine (the README quotes this table).
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as tb

import surm_ops
from surm_ops import dispatch


def _params(op, n):
    return {
        "circulant_matmul": [torch.randn(n)],
        "skew_circulant_matmul": [torch.randn(n)],
        "toeplitz_matmul": [torch.randn(n), torch.randn(n)],
        "ldr_matmul": [torch.randn(2, n), torch.randn(2, n)],
        "svd_matmul": [torch.randn(n, 16), torch.randn(16), torch.randn(n, 16)],
    }[op]


def _time(fn) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.05).median * 1e6


def _step(fn, x, params, backend, full):
    if not full:
        return lambda: fn(x, *params, backend=backend)
    leaves = [x.requires_grad_(), *(p.requires_grad_() for p in params)]

    def run():
        torch.autograd.grad(fn(x, *params, backend=backend).sum(), leaves)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="+", default=["circulant_matmul", "skew_circulant_matmul", "toeplitz_matmul",
                                                 "ldr_matmul"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 256, 4096])
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--full", action="store_true", help="time forward+backward instead of forward")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mode {'fwd+bwd' if args.full else 'fwd'}")
    print("| op | tokens | n | fft µs | dense µs | faster | auto picks |")
    print("|---|---:|---:|---:|---:|---|---|")
    for op in args.ops:
        fn = getattr(surm_ops, op)
        for t in args.tokens:
            for n in args.sizes:
                x, params = torch.randn(t, n), _params(op, n)
                times = {b: _time(_step(fn, x.clone(), [p.clone() for p in params], b, args.full))
                         for b in ("fft", "dense")}
                pick = dispatch.resolve(op, "auto", x, params)
                faster = min(times, key=times.get)
                print(f"| {op} | {t} | {n} | {times['fft']:.1f} | {times['dense']:.1f} | {faster} | {pick}"
                      f"{'' if pick == faster else ' ✗'} |", flush=True)


if __name__ == "__main__":
    main()
