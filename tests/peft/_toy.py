"""Tiny models and the per-method cases shared by the PEFT tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("peft", reason="the peft extra is not installed")

# (id, method, options): every surm_ops method, with the layouts/forms that take other code paths.
CASES = [
    ("circulant", "circulant", {}),
    ("circulant-block", "circulant", {"layout": "block", "block_size": 8}),
    ("circulant-factored", "circulant", {"factored": True}),
    ("toeplitz", "toeplitz", {}),
    ("toeplitz-symmetric", "toeplitz", {"symmetric": True}),
    ("ldr", "ldr", {"rank": 2}),
    ("ldr-block", "ldr", {"rank": 1, "layout": "block", "block_size": 8}),
    ("kronecker", "kronecker", {"r": 4}),
    ("lora", "lora", {"r": 2}),
    ("rmlora", "rmlora", {"r": 4, "random_rank": 2}),
    ("condlora", "condlora", {"r": 2}),
    ("sara", "sara", {"threshold": 0.5}),
    ("sara-budget", "sara", {"budget": 200}),
    ("mosara", "mosara", {"rank": 2, "experts": 2}),
    ("adapter", "adapter", {}),
    ("adapter-ldr", "adapter", {"structure": "ldr", "rank": 2}),
]
NOT_MERGEABLE = {"mosara", "adapter"}


class Toy(nn.Module):
    """Two blocks with a rectangular (16 -> 32) and a square (16 -> 16) target each, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(16, 32), "v": nn.Linear(16, 16)}) for _ in range(2))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = torch.tanh(b["q"](x)[..., :16] + b["v"](x))
        return self.head(torch.cat([x, x], -1))


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 1) -> None:
    """Random values in every trainable tensor, so a zero-initialised update cannot hide a wrong load or merge."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
