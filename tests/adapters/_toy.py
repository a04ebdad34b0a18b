"""A small transformer-like model for the model-level adapter tests (shapes every method's defaults accept)."""

from __future__ import annotations

import torch
from torch import nn

from surm_ops.adapters.model import available_methods

TARGETS = ["q", "v", "ff", "out"]
"""Suffixes of the adaptable layers: q, v (hidden x hidden), ff (hidden -> 2 hidden), out (2 hidden -> hidden)."""

METHOD_OPTIONS: dict[str, dict] = {}
"""Options per method where its defaults do not fit the toy shapes (none need any today)."""


def all_methods() -> list[str]:
    """Every method inject accepts: new registrations are covered automatically."""
    return available_methods()


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.ff = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(2 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.v(torch.tanh(self.q(x)))
        return self.norm(x + self.out(torch.relu(self.ff(x))))


class Toy(nn.Module):
    def __init__(self, hidden: int = 32, depth: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def toy(seed: int = 0, **kwargs) -> Toy:
    torch.manual_seed(seed)
    return Toy(**kwargs)


@torch.no_grad()
def perturb(params, seed: int = 1, scale: float = 0.1) -> None:
    """Move adapter parameters off their (identity) init so every update is nonzero."""
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
