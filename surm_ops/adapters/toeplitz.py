"""SURM Toeplitz update: general ``dW = T(col, row)`` (rectangular by nature), or the authors' symmetric product
``dW = T_sym(b) T_sym(a)`` with ``T_sym(a)[i, j] = a[|i - j|]``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import surm_ops
from surm_ops import structure
from surm_ops.adapters._util import pad_features
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.registry import register
from surm_ops.reference import dense


@dataclass
class ToeplitzConfig:
    """symmetric=False: general Toeplitz, col (d_out,) and row[1:] (d_in - 1,) trainable, zeros at init (our
    choice): d_out + d_in - 1 parameters. symmetric=True: ``T_sym(b) T_sym(a)`` on n = max(d_in, d_out)
    (truncated like the circulant), a ~ N(0, 0.02^2), b = 0: 2n parameters."""

    symmetric: bool = False


@register
class ToeplitzLinear(AdaptedLinear):
    method = "toeplitz"
    config_class = ToeplitzConfig

    def __init__(self, base: nn.Module, config: ToeplitzConfig, name: str = "", *,
                 fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        kw = dict(dtype=self.param_dtype(), device=base.weight.device)
        if config.symmetric:
            n = max(self.in_features, self.out_features)
            self.a = nn.Parameter(torch.randn(n, **kw) * 0.02)
            self.b = nn.Parameter(torch.zeros(n, **kw))
        else:
            self.col = nn.Parameter(torch.zeros(self.out_features, **kw))
            # row[0] is the diagonal, already col[0]: only row[1:] is a parameter.
            self.row_tail = nn.Parameter(torch.zeros(self.in_features - 1, **kw))

    def _row(self) -> torch.Tensor:
        return torch.cat([self.row_tail.new_zeros(1), self.row_tail])

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.symmetric:
            n = self.a.shape[0]
            inner = surm_ops.toeplitz_matmul(pad_features(x, n).to(self.a.dtype), self.a)
            return surm_ops.toeplitz_matmul(inner, self.b)[..., :self.out_features]
        return surm_ops.toeplitz_matmul(x, self.col, self._row())

    def fused_update(self):
        if self.config.symmetric:  # a product of two Toeplitz matrices is not Toeplitz
            return None
        return "toeplitz", (structure.toeplitz_diagonals(self.col, self._row()).reshape(1, 1, -1),)

    def delta_weight(self) -> torch.Tensor:
        if self.config.symmetric:
            m = dense.toeplitz(self.b, self.b) @ dense.toeplitz(self.a, self.a)
            return m[:self.out_features, :self.in_features]
        return dense.toeplitz(self.col, self._row())

    def expected_parameters(self) -> int:
        if self.config.symmetric:
            return 2 * max(self.in_features, self.out_features)
        return self.in_features + self.out_features - 1
