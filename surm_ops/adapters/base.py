"""The base of every adapted layer: a frozen ``nn.Linear`` plus a trainable update.

``y = base(x) + delta(x)`` where ``delta(x) = x @ dW.T`` (the method's scaling included) is computed through the
surm_ops ops, never through a materialised dW in the training forward. ``delta_weight()`` materialises dW for
merging and for tests. Merging adds dW into the frozen weight and keeps a copy of the original weight, so unmerging
restores it bit for bit (no drift from repeated merge/unmerge).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

import surm_ops
from surm_ops.ops.structured_linear import fusable


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` with a trainable structured update.

    Subclasses set ``method`` and ``config_class``, create their parameters in ``__init__`` (float32 by default,
    whatever the base weight's dtype), and implement ``delta`` and ``delta_weight``.
    """

    method: ClassVar[str]
    config_class: ClassVar[type]
    mergeable: ClassVar[bool] = True
    fuse: bool = True
    """Use the fused frozen-plus-update kernel where it runs (see :meth:`fused_update`); set False on a layer to
    keep ``base(x) + delta(x)`` (same values; for comparisons)."""

    def __init__(self, base: nn.Linear, config: Any, name: str = "") -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{self.method}: can only adapt nn.Linear layers; {name or 'the layer'} is "
                            f"{type(base).__name__}")
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.method}: config must be {self.config_class.__name__}; got {type(config).__name__}")
        self.base = base
        self.config = config
        self.layer_name = name
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.merged = False
        self._original_weight: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (e.g. HF tying checks) sees the frozen weight
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def param_dtype(self) -> torch.dtype:
        """float32 adapters on half models (design §2.2): the update is computed in float32, cast once."""
        dt = self.base.weight.dtype
        return dt if dt == torch.float64 else torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        update = self.fused_update() if self.fuse else None
        if update is not None and fusable(x):
            return surm_ops.structured_linear(x, self.base.weight, self.base.bias, update[0], *update[1])
        y = self.base(x)
        return y + self.delta(x).to(y.dtype)

    def fused_update(self) -> tuple[str, tuple[torch.Tensor, ...]] | None:
        """dW as a :func:`surm_ops.structured_linear` structure and its parameters, for methods whose update the
        fused kernel can generate on chip (it then replaces ``base(x) + delta(x)`` where the triton backend runs);
        None for the others."""
        return None

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` for x of shape (..., in_features), through the structured ops."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """dW materialised, shape (out_features, in_features), in the parameters' dtype."""
        raise NotImplementedError

    def expected_parameters(self) -> int:
        """The trainable parameter count methods.md gives for this layer's shape."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Add dW into the frozen weight (no inference overhead); :meth:`unmerge` restores the exact bits."""
        if not self.mergeable:
            raise RuntimeError(f"{self.method} layer {self.layer_name!r} cannot be merged: its update depends on "
                               "the input")
        if self.merged:
            return
        w = self.base.weight
        self._original_weight = w.detach().clone()
        w.add_(self.delta_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"method={self.method}, in={self.in_features}, out={self.out_features}, {fields}"
