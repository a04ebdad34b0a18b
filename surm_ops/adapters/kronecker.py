"""SURM Kronecker update: ``dW = (alpha / r) B (x) A`` with A (r, d_in / r), B (d_out / r, r), never materialised
(``kronecker_matmul`` computes ``B X A^T`` on x reshaped)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import surm_ops
from surm_ops.adapters._util import check_positive
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.registry import register
from surm_ops.reference import dense


@dataclass
class KroneckerConfig:
    """r must divide d_in and d_out; A Kaiming-uniform, B = 0; d_in + d_out parameters."""

    r: int = 8
    alpha: float = 8.0

    def __post_init__(self):
        check_positive("kronecker", r=self.r, alpha=self.alpha)


@register
class KroneckerLinear(AdaptedLinear):
    method = "kronecker"
    config_class = KroneckerConfig

    def __init__(self, base: nn.Module, config: KroneckerConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        r, d_in, d_out = config.r, self.in_features, self.out_features
        if d_in % r or d_out % r:
            raise ValueError(f"kronecker: r={r} must divide both dimensions of layer {name!r} ({d_in} -> {d_out})")
        kw = dict(dtype=self.param_dtype(), device=base.weight.device)
        self.kron_A = nn.Parameter(torch.empty(r, d_in // r, **kw))
        self.kron_B = nn.Parameter(torch.zeros(d_out // r, r, **kw))
        nn.init.kaiming_uniform_(self.kron_A, a=math.sqrt(5))
        self.scale = config.alpha / r

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return surm_ops.kronecker_matmul(x, self.kron_B, self.kron_A) * self.scale

    def fused_update(self):
        return "kronecker", (self.kron_B * self.scale, self.kron_A)

    def delta_weight(self) -> torch.Tensor:
        return dense.kronecker(self.kron_B, self.kron_A) * self.scale

    def expected_parameters(self) -> int:
        return self.in_features + self.out_features
