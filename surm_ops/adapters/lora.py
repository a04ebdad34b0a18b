"""Dense LoRA, the baseline: ``dW = (alpha / r) B A``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from surm_ops.adapters._util import check_positive
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.registry import register


@dataclass
class LoRAConfig:
    """r: rank; alpha: scaling numerator (scale = alpha / r); dropout: on the adapter's input only."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self):
        check_positive("lora", r=self.r, alpha=self.alpha)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora: dropout must be in [0, 1); got {self.dropout!r}")


@register
class LoRALinear(AdaptedLinear):
    """A (r, in) Kaiming-uniform, B (out, r) zero, so dW = 0 at init and B gets the first gradient."""

    method = "lora"
    config_class = LoRAConfig

    def __init__(self, base: nn.Module, config: LoRAConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        kw = dict(dtype=self.param_dtype(), device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, **kw))
        self.init_a()
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.scale = config.alpha / config.r

    def init_a(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        xd = self.dropout(x).to(self.lora_A.dtype)
        return F.linear(F.linear(xd, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale

    def expected_parameters(self) -> int:
        return self.config.r * (self.in_features + self.out_features)
