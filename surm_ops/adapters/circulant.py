"""SURM circulant update: ``dW = C(c)`` or, factored (the authors' default), ``dW = C(a * b)``.

Rectangular layers (our choice, docs/methods.md §1.2): ``layout="truncated"`` uses one n x n circulant with
n = max(d_in, d_out), x zero-padded to n and the first d_out outputs kept; ``layout="block"`` uses a
(d_out/b) x (d_in/b) grid of independent b x b circulants (PEFT C3A's layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import surm_ops
from surm_ops import structure
from surm_ops.adapters._util import block_size_for, check_choice, pad_features
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.registry import register
from surm_ops.reference import dense


@dataclass
class CirculantConfig:
    """factored: ``C(a * b)`` with a ~ N(0, 1), b = 0 (2x the parameters); else ``C(c)`` with c = 0.
    layout: "truncated" or "block" (needs block_size dividing both dimensions)."""

    factored: bool = False
    layout: str = "truncated"
    block_size: int | None = None

    def __post_init__(self):
        check_choice("circulant", "layout", self.layout, ("truncated", "block"))
        if self.block_size is not None and self.block_size <= 0:
            raise ValueError(f"circulant: block_size must be positive; got {self.block_size!r}")


@register
class CirculantLinear(AdaptedLinear):
    method = "circulant"
    config_class = CirculantConfig

    def __init__(self, base: nn.Module, config: CirculantConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        d_in, d_out = self.in_features, self.out_features
        if config.layout == "block":
            b = block_size_for(self.method, name, d_in, d_out, config.block_size)
            shape = (d_out // b, d_in // b, b)
        else:
            shape = (max(d_in, d_out),)
        kw = dict(dtype=self.param_dtype(), device=base.weight.device)
        if config.factored:
            self.a = nn.Parameter(torch.randn(shape, **kw))
            self.b = nn.Parameter(torch.zeros(shape, **kw))
        else:
            self.c = nn.Parameter(torch.zeros(shape, **kw))

    def filter(self) -> torch.Tensor:
        return self.a * self.b if self.config.factored else self.c

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        c = self.filter()
        if c.ndim == 3:
            return surm_ops.circulant_matmul(x, c)
        return surm_ops.circulant_matmul(pad_features(x, c.shape[0]), c)[..., :self.out_features]

    def fused_update(self):
        c = self.filter()
        e = structure.circulant_diagonals(c)
        if c.ndim == 3:
            return "toeplitz", (e,)
        # The kept d_out x d_in corner of the n x n circulant is Toeplitz: diagonals -(d_in - 1) .. d_out - 1.
        n = c.shape[0]
        return "toeplitz", (e[n - self.in_features:n + self.out_features - 1].reshape(1, 1, -1),)

    def delta_weight(self) -> torch.Tensor:
        c = self.filter()
        if c.ndim == 3:
            return dense.block_circulant(c)
        return dense.circulant(c)[:self.out_features, :self.in_features]

    def expected_parameters(self) -> int:
        n = (self.in_features * self.out_features // self.config.block_size if self.config.layout == "block"
             else max(self.in_features, self.out_features))
        return 2 * n if self.config.factored else n
