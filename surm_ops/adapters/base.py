"""The base of every adapted layer: a frozen ``nn.Linear`` (or a transformers ``Conv1D``) plus a trainable update.

``y = base(x) + delta(x)`` where ``delta(x) = x @ dW.T`` (the method's scaling included) is computed through the
surm_ops ops, never through a materialised dW in the training forward. ``delta_weight()`` materialises dW for
merging and for tests. Merging adds dW into the frozen weight and keeps a copy of the original weight, so unmerging
restores it bit for bit (no drift from repeated merge/unmerge).

GPT-2-style ``Conv1D`` layers (``y = x @ W + b`` with W stored (in, out), PEFT's ``fan_in_fan_out``) are adapted by
every method: :meth:`AdaptedLinear.base_weight` gives W as (out, in), and merging adds dW transposed.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import torch
from torch import nn

import surm_ops
from surm_ops.adapters._util import adapter_dtype, apply_keeping_float
from surm_ops.ops.structured_linear import backend_for


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``pytorch_utils.Conv1D`` (matched by name and shape, so transformers need not be installed)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.ndim == 2
            and getattr(module, "nf", None) == w.shape[1])


def linear_dims(module: nn.Module, fan_in_fan_out: bool | None = None, name: str = "", method: str = "") -> \
        tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a layer an adapter can wrap, or ``TypeError``.

    ``nn.Linear`` stores its weight (out, in); transformers' ``Conv1D`` stores it (in, out) (``fan_in_fan_out``,
    inferred when None). Any other module with a 2-D ``weight`` computing ``x @ W.T + b`` (False) or ``x @ W + b``
    (True) can be adapted by passing the flag explicitly.
    """
    label = f"{method}: " if method else ""
    what = name or "the layer"
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        if fan_in_fan_out:
            raise ValueError(f"{label}{what} is an nn.Linear (weight stored (out, in)); fan_in_fan_out=True is only "
                             "for layers computing x @ W (transformers Conv1D)")
        return module.in_features, module.out_features, False
    if fan_in_fan_out is None:
        if not is_conv1d(module):
            raise TypeError(f"{label}can only adapt nn.Linear layers (or transformers Conv1D, or a layer with a 2-D "
                            f"weight given fan_in_fan_out=); {what} is {type(module).__name__}")
        fan_in_fan_out = True
    if not (isinstance(w, torch.Tensor) and w.ndim == 2):
        raise TypeError(f"{label}{what} ({type(module).__name__}) has no 2-D weight to adapt")
    d_in, d_out = (w.shape[0], w.shape[1]) if fan_in_fan_out else (w.shape[1], w.shape[0])
    return int(d_in), int(d_out), bool(fan_in_fan_out)


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` (or ``Conv1D``) with a trainable structured update.

    Args:
        base: the layer to adapt (frozen in place).
        config: the method's config dataclass.
        name: the qualified name, for error messages.
        fan_in_fan_out: keyword only; True when ``base`` stores its weight (in, out) and computes ``x @ W + b``
            (transformers ``Conv1D``); None infers it (nn.Linear: False, Conv1D: True).

    Subclasses set ``method`` and ``config_class``, create their parameters in ``__init__`` (float32 by default,
    whatever the base weight's dtype), and implement ``delta`` and ``delta_weight``. Adapter parameters stay float32
    when the model is cast to a half dtype (``model.to(torch.bfloat16)``), as PEFT's ``autocast_adapter_dtype``.
    """

    method: ClassVar[str]
    config_class: ClassVar[type]
    mergeable: ClassVar[bool] = True
    fuse: bool = True
    """Use the fused frozen-plus-update kernel where it runs (see :meth:`fused_update`); set False on a layer to
    keep ``base(x) + delta(x)`` (same values; for comparisons)."""

    @classmethod
    def build_layers(cls, matched, config: Any) -> tuple[dict[int, nn.Module], dict[str, nn.Module], dict]:
        """New layers for ``inject``'s matched modules ``[(name, module, every name it has)]``: ``(layers keyed by
        id(module), shared modules to register on the model, metadata to record)``. Methods whose layers depend
        on each other (a global budget, maps shared across layers) override it."""
        return {id(m): cls(m, config, name) for name, m, _ in matched}, {}, {}

    def __init__(self, base: nn.Module, config: Any, name: str = "", *, fan_in_fan_out: bool | None = None) -> None:
        super().__init__()
        d_in, d_out, self.fan_in_fan_out = linear_dims(base, fan_in_fan_out, name, self.method)
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
        self._in_features, self._out_features = d_in, d_out
        self._warned_merged = False

    @property
    def in_features(self) -> int:
        return self._in_features

    @property
    def out_features(self) -> int:
        return self._out_features

    def base_weight(self) -> torch.Tensor:
        """The frozen weight as (out_features, in_features) (a transposed view for ``fan_in_fan_out``)."""
        w = self.base.weight
        return w.T if self.fan_in_fan_out else w

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (e.g. HF tying checks) sees the frozen weight
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def __setattr__(self, name: str, value: Any) -> None:
        # Code that ties weights by assignment (transformers' tie_weights: ``lm_head.weight = embed.weight``) ties
        # the frozen base's weight.
        if name in ("weight", "bias") and "base" in self._modules:
            setattr(self.base, name, value)
        else:
            super().__setattr__(name, value)

    def param_dtype(self) -> torch.dtype:
        """float32 adapters on half models (docs/contract.md §2.2): the update is computed in float32, cast once."""
        return adapter_dtype(self.base.weight.dtype)

    def _apply(self, fn, recurse=True):
        return apply_keeping_float(self, fn, recurse, super()._apply)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled() and not self._warned_merged:
                self._warned_merged = True
                warnings.warn(f"{self.method} layer {self.layer_name!r} is merged: its adapter gets no gradient; "
                              "unmerge(model) before training", stacklevel=2)
            return self.base(x)
        update = self._fusion(x)
        if update is not None:
            return surm_ops.structured_linear(x, self.base.weight, self.base.bias, update[0], *update[1])
        y = self.base(x)
        return y + self.delta(x).to(y.dtype)

    def fuses(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the fused kernel (:func:`surm_ops.structured_linear` on its triton
        backend) rather than ``base(x) + delta(x)``."""
        return self._fusion(x) is not None

    def _fusion(self, x: torch.Tensor) -> tuple[str, tuple[torch.Tensor, ...]] | None:
        # Adapter policy: fuse only where the op would run its fused triton backend (dense would materialise M
        # per call, slower than base + delta). The fused kernel takes the frozen weight as (out, in); a Conv1D's
        # (in, out) weight takes the plain path.
        update = self.fused_update() if self.fuse and not self.fan_in_fan_out else None
        if update is None or backend_for(x, self.base.weight, self.base.bias, update[0], *update[1]) != "triton":
            return None
        return update

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
        """The trainable parameter count docs/methods.md gives for this layer's shape."""
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
        dw = self.delta_weight()
        w.add_((dw.T if self.fan_in_fan_out else dw).to(w.dtype))
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
