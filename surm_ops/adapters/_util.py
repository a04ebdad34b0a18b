"""Small helpers shared by the adapter layers."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def adapter_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype adapters keep and compute in next to a layer of ``dtype``: float32 (so half models train their
    updates in float32, cast once), float64 next to a float64 layer (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_positive(method: str, **values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{method}: {name} must be positive; got {v!r}")


def check_choice(method: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{method}: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def pad_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the last dimension of x to n (the truncated rectangular form, docs/methods.md §1.2(a))."""
    return x if x.shape[-1] == n else F.pad(x, (0, n - x.shape[-1]))


def block_size_for(method: str, layer: str, d_in: int, d_out: int, block: int | None) -> int:
    if block is None:
        raise ValueError(f"{method}: layer {layer!r} ({d_in} -> {d_out}) needs block_size for the block layout")
    if d_in % block or d_out % block:
        raise ValueError(f"{method}: block_size={block} must divide both dimensions of layer {layer!r} "
                         f"({d_in} -> {d_out})")
    return block


_HALF = (torch.float16, torch.bfloat16)


def apply_keeping_float(module: torch.nn.Module, fn, recurse: bool, parent_apply) -> torch.nn.Module:
    """``nn.Module._apply`` for a module holding adapter tensors: a half-dtype cast (``model.to(torch.bfloat16)``,
    ``.half()``) reaches its children (the frozen base) but leaves the module's own float32/float64 parameters and
    buffers in their dtype (they still follow device moves), as PEFT's ``autocast_adapter_dtype`` keeps adapters
    float32. Any other conversion applies as usual."""
    held = []
    for store in (module._parameters, module._buffers):
        for name, t in store.items():
            if t is not None and t.dtype in (torch.float32, torch.float64):
                held.append((store, name, t))
                store[name] = None  # nn.Module._apply skips None entries
    try:
        parent_apply(fn, recurse)
    finally:
        with torch.no_grad():
            for store, name, t in held:
                new = fn(t)
                if new.dtype in _HALF:
                    new = t.to(device=new.device)
                if isinstance(t, torch.nn.Parameter):
                    t.data = new
                    if t.grad is not None:
                        g = fn(t.grad)
                        t.grad = t.grad.to(device=g.device) if g.dtype in _HALF else g
                    store[name] = t
                else:
                    store[name] = new
    return module
