"""SURM low-displacement-rank update: ``dW = sum_i C(g_i) S(h_i)`` (displacement rank r w.r.t. (Z_1, Z_-1)).

Rectangular layers as for the circulant: ``layout="truncated"`` (one n x n LDR matrix, n = max(d_in, d_out)) or
``layout="block"`` (a grid of independent b x b LDR blocks; applied block by block, so it costs one op call per
block — prefer truncated or a large block_size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import surm_ops
from surm_ops.adapters._util import block_size_for, check_choice, check_positive, pad_features
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.registry import register
from surm_ops.reference import dense


@dataclass
class LDRConfig:
    """rank: displacement rank r (g, h of shape (r, n)); g = 0, h ~ N(0, 0.02^2) so dW = 0 and dg != 0 at init."""

    rank: int = 1
    layout: str = "truncated"
    block_size: int | None = None

    def __post_init__(self):
        check_positive("ldr", rank=self.rank)
        check_choice("ldr", "layout", self.layout, ("truncated", "block"))


@register
class LDRLinear(AdaptedLinear):
    method = "ldr"
    config_class = LDRConfig

    def __init__(self, base: nn.Module, config: LDRConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        d_in, d_out = self.in_features, self.out_features
        kw = dict(dtype=self.param_dtype(), device=base.weight.device)
        if config.layout == "block":
            b = block_size_for(self.method, name, d_in, d_out, config.block_size)
            shape = (d_out // b, d_in // b, config.rank, b)
        else:
            shape = (config.rank, max(d_in, d_out))
        self.g = nn.Parameter(torch.zeros(shape, **kw))
        self.h = nn.Parameter(torch.randn(shape, **kw) * 0.02)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.g.ndim == 2:
            n = self.g.shape[1]
            return surm_ops.ldr_matmul(pad_features(x, n), self.g, self.h)[..., :self.out_features]
        p, q, _, b = self.g.shape
        xs = x.unflatten(-1, (q, b))
        rows = [sum(surm_ops.ldr_matmul(xs[..., j, :], self.g[i, j], self.h[i, j]) for j in range(q))
                for i in range(p)]
        return torch.cat(rows, dim=-1)

    def delta_weight(self) -> torch.Tensor:
        if self.g.ndim == 2:
            return dense.ldr(self.g, self.h)[:self.out_features, :self.in_features]
        return torch.cat([torch.cat([dense.ldr(gij, hij) for gij, hij in zip(gi, hi)], dim=1)
                          for gi, hi in zip(self.g, self.h)], dim=0)

    def expected_parameters(self) -> int:
        if self.config.layout == "block":
            return 2 * self.config.rank * self.in_features * self.out_features // self.config.block_size
        return 2 * self.config.rank * max(self.in_features, self.out_features)
