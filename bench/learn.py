"""Does it learn? A teacher-student regression on one frozen linear layer, for every adapter method.

    python bench/learn.py [--steps 400] [--dim 64] [--out bench/results/learn-cpu.md]

The student is a frozen random layer W0 plus one adapter; the teacher is ``W0 + dW*``. Two targets:
- ``toeplitz``: dW* = 0.5 * K with K[i, j] = 0.5^|i-j| (Kac-Murdock-Szego): full rank, smooth, local mixing — the
  kind of update the SURM paper argues structured matrices capture and low rank cannot;
- ``gaussian``: dW* with i.i.d. N(0, 1/d) entries: full rank with no structure, where no O(d)-parameter method
  should do much better than another (the control).
Loss: mean squared error on fresh Gaussian inputs, relative to the loss of the untrained student (1.0 = no
progress). Each method trains with Adam at every learning rate of a small grid and reports its best final loss,
so no method is handicapped by one shared learning rate.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time

import torch
from torch import nn

import surm_ops.adapters
from surm_ops.adapters.registry import METHODS

LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def methods(dim: int) -> list[tuple[str, str, dict]]:
    """(label, method, options) for every registered method; LoRA at several ranks for the budget comparison."""
    for mod in pkgutil.iter_modules(surm_ops.adapters.__path__):
        importlib.import_module(f"surm_ops.adapters.{mod.name}")
    rows = [(f"lora r={r}", "lora", {"r": r, "alpha": float(r)}) for r in (1, 2, 4, 8)]
    rows += [
        ("circulant", "circulant", {}),
        ("circulant factored", "circulant", {"factored": True}),
        ("toeplitz", "toeplitz", {}),
        ("toeplitz symmetric", "toeplitz", {"symmetric": True}),
        ("ldr r=1", "ldr", {"rank": 1}),
        ("ldr r=2", "ldr", {"rank": 2}),
        ("kronecker r=8", "kronecker", {"r": 8, "alpha": 8.0}),
        ("rmlora r=1 (no masking step)", "rmlora", {"r": 1, "alpha": 1.0, "random_rank": 1}),
        ("condlora r=1", "condlora", {"r": 1, "alpha": 1.0}),
        ("sara (threshold 0.5)", "sara", {}),
        ("sara rank=1", "sara", {"rank": 1}),
        ("mosara", "mosara", {}),
    ]
    return [row for row in rows if row[1] in METHODS]


def target(kind: str, dim: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "toeplitz":
        i = torch.arange(dim)
        return 0.5 * 0.5 ** (i[:, None] - i[None, :]).abs().double()
    return torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5


def train(method: str, options: dict, w0: torch.Tensor, dw: torch.Tensor, steps: int, lr: float, seed: int = 0):
    """Final relative loss and trainable parameter count for one method, target and learning rate."""
    torch.manual_seed(seed)
    dim = w0.shape[0]
    base = nn.Linear(dim, dim, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(w0)
    layer = METHODS[method](base, METHODS[method].config_class(**options), name="layer")
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    teacher = w0 + dw
    x_eval = torch.randn(1024, dim, generator=gen, dtype=torch.float64)

    def loss_on(x):
        return (layer(x) - x @ teacher.T).square().mean()

    with torch.no_grad():
        start = loss_on(x_eval).item()
    for _ in range(steps):
        x = torch.randn(256, dim, generator=gen, dtype=torch.float64)
        opt.zero_grad(set_to_none=True)
        loss_on(x).backward()
        opt.step()
    with torch.no_grad():
        final = loss_on(x_eval).item()
    return final / start, sum(p.numel() for p in params)


def run(dim: int = 64, steps: int = 400, targets=("toeplitz", "gaussian"), lrs=LRS):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5
    dws = {kind: target(kind, dim, gen) for kind in targets}
    results = []
    for label, method, options in methods(dim):
        row = {"label": label, "method": method}
        for kind, dw in dws.items():
            best = min((train(method, options, w0, dw, steps, lr) for lr in lrs), key=lambda r: r[0])
            row[kind], row["params"] = best
        results.append(row)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="bench/results/learn-cpu.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = run(args.dim, args.steps)
    lines = [f"Teacher-student regression, d = {args.dim}, {args.steps} Adam steps of 256 samples, best of lr in "
             f"{list(LRS)}, float64; final loss relative to the untrained student "
             f"(command: `python bench/learn.py --dim {args.dim} --steps {args.steps}`).", "",
             "| method | trainable params | loss, Toeplitz target | loss, Gaussian target |", "|---|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['params']} | {r['toeplitz']:.4f} | {r['gaussian']:.4f} |" for r in results]
    text = "\n".join(lines)
    print(text)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
