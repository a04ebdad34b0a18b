"""Small helpers shared by the adapter layers."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def check_positive(method: str, **values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{method}: {name} must be positive; got {v!r}")


def check_choice(method: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{method}: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def pad_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad the last dimension of x to n (the truncated rectangular form, methods.md §1.2(a))."""
    return x if x.shape[-1] == n else F.pad(x, (0, n - x.shape[-1]))


def block_size_for(method: str, layer: str, d_in: int, d_out: int, block: int | None) -> int:
    if block is None:
        raise ValueError(f"{method}: layer {layer!r} ({d_in} -> {d_out}) needs block_size for the block layout")
    if d_in % block or d_out % block:
        raise ValueError(f"{method}: block_size={block} must divide both dimensions of layer {layer!r} "
                         f"({d_in} -> {d_out})")
    return block
