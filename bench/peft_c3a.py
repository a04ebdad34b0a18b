"""PEFT's C3A layer against the same layer after ``surm_ops.peft.accelerate``, timed interleaved in one process.

    python -m bench.peft_c3a [--rounds 30] [--tokens 256] [--d 768] [--block 64] [--threads 1]

Both layers are bench/layers.py's (same seed, so the same frozen weight and the same kernel values); per round each
provider runs ``iters`` calls of the forward (``fwd``, no grad) and of a training step (``full``: the forward and
the gradients of x and the kernel), the two providers alternating, so a slow phase of a shared machine hits both.
Prints the median per-call time of each and the median of the per-round ratios ``peft / accelerated``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import layers


def _per_call(fn, iters: int, dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 is steadier on a shared machine, where a descheduled "
                         "second thread stalls every op")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = layers.LayerShape(args.tokens, args.d, getattr(torch, args.dtype))
    specs = [layers.LayerSpec("peft-c3a", "peft-c3a", {"block_size": args.block}),
             layers.LayerSpec("accelerated", "peft-c3a-accelerated", {"block_size": args.block})]
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} shape={shape.label} "
          f"dtype={args.dtype} block={args.block} rounds={args.rounds}")
    for mode in layers.MODES:
        fns = [layers.build(spec, mode, dev, shape)[0] for spec in specs]
        if mode == "fwd":
            with torch.no_grad():
                torch.testing.assert_close(fns[1](), fns[0](), rtol=1e-4, atol=1e-4)
        for fn in fns:  # warm-up, and calibrate iterations to ~20 ms per round
            fn()
        iters = max(1, int(0.02 / max(_per_call(fns[0], 2, dev), 1e-6)))
        times: list[list[float]] = [[], []]
        for _ in range(args.rounds):
            for i, fn in enumerate(fns):
                times[i].append(_per_call(fn, iters, dev))
        ratios = [a / b for a, b in zip(*times)]
        med = [statistics.median(t) * 1e6 for t in times]
        print(f"{mode:>4}: peft-c3a {med[0]:9.1f} us  accelerated {med[1]:9.1f} us  "
              f"ratio peft/accelerated median {statistics.median(ratios):.2f} "
              f"(p20 {statistics.quantiles(ratios, n=5)[0]:.2f}, p80 {statistics.quantiles(ratios, n=5)[3]:.2f}), "
              f"{iters} calls/round")


if __name__ == "__main__":
    main()
