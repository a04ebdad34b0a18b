"""The PEFT tuner layer around surm_ops' own adapter layers.

A :class:`SurmLayer` wraps the target module (``base_layer``, as every PEFT layer) and holds, per adapter name, one
surm_ops layer (an :class:`~surm_ops.adapters.AdaptedLinear`, or for ``"adapter"`` a
:class:`~surm_ops.adapters.SURMAdapter`) in the ``nn.ModuleDict`` named ``surm_<method>``. The math is those
layers': the forward adds ``layer.delta(x)`` (or applies the adapter form to the output), merging calls
``layer.merge()`` (which keeps the original weight, so unmerging restores it bit for bit).

The surm_ops layer holds the target through a reference that is not a registered submodule, so the frozen weight
is stored once (under ``base_layer``) and PEFT saves only adapter tensors. ``Conv1D`` targets (weight stored
(in, out), ``fan_in_fan_out``) are the surm_ops layers' own business (they merge dW transposed).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from surm_ops.adapters.adapter import ADAPTER_METHOD, SURMAdapter
from surm_ops.adapters.base import is_conv1d, linear_dims
from surm_ops.adapters.registry import method_class


def weight_out_in(module: nn.Module, fan_in_fan_out: bool, name: str) -> torch.Tensor:
    """The frozen weight of a target as (out_features, in_features) (a transposed view for ``Conv1D``)."""
    _, _, transposed = linear_dims(module, fan_in_fan_out or None, name)
    return module.weight.T if transposed else module.weight


def build_layer(method: str, base: nn.Module, options: Any, name: str, fan_in_fan_out: bool = False,
                maps: nn.Module | None = None) -> nn.Module:
    """surm_ops' layer of ``method`` for ``base``, with ``base`` held as an unregistered reference."""
    if method == ADAPTER_METHOD:
        layer = SURMAdapter(base, options, name)  # infers the output size from base
        layer.module = nn.Identity()  # applied to base's output below: base itself is not held twice
        return layer
    kwargs = {"maps": maps} if maps is not None else {}
    # fan_in_fan_out None lets the layer infer it (Conv1D: True); True on an nn.Linear is its ValueError
    layer = method_class(method)(base, options, name, fan_in_fan_out=fan_in_fan_out or None, **kwargs)
    object.__setattr__(layer, "base", layer._modules.pop("base"))  # held, not registered: saved once, as base_layer
    return layer


class SurmLayer(nn.Module, BaseTunerLayer):
    """A PEFT tuner layer running surm_ops' ``method`` layers. Subclassed once per method (see the tuner module).

    Args:
        base_layer: the target module (``nn.Linear``, ``Conv1D``; any module for ``"adapter"``).
        adapter_name: the first adapter's name.
        options: the method's option dataclass (e.g. ``surm_ops.adapters.CirculantConfig``).
        name: the target's qualified name (for error messages).
        fan_in_fan_out: base stores its weight as (in, out).
        maps: CondLoRA's shared maps for this layer's module type.
    """

    method: ClassVar[str]
    other_param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, options: Any, name: str,
                 fan_in_fan_out: bool = False, maps: nn.Module | None = None, inference_mode: bool = False) -> None:
        super().__init__()
        self.base_layer = base_layer
        setattr(self, self.adapter_layer_names[0], nn.ModuleDict())
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.fan_in_fan_out = fan_in_fan_out or is_conv1d(base_layer)
        if isinstance(base_layer, nn.Linear):
            self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.update_layer(adapter_name, options, name, maps, inference_mode)

    @property
    def surm_layers(self) -> nn.ModuleDict:
        """Adapter name -> surm_ops layer."""
        return getattr(self, self.adapter_layer_names[0])

    def update_layer(self, adapter_name: str, options: Any, name: str, maps: nn.Module | None = None,
                     inference_mode: bool = False) -> None:
        self.surm_layers[adapter_name] = build_layer(self.method, self.get_base_layer(), options, name,
                                                     self.fan_in_fan_out, maps)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """dW of ``adapter`` as (out_features, in_features) (raises for the non-mergeable methods)."""
        layer = self.surm_layers[adapter]
        if not getattr(layer, "mergeable", False):
            raise RuntimeError(f"{self.method}: adapter {adapter!r} has no weight update: its update depends on the "
                               "input")
        return layer.delta_weight()

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge the active (or the named) adapters into the base weight; ``safe_merge`` checks for non-finite
        values before anything changes."""
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.surm_layers:
                continue
            layer = self.surm_layers[adapter]
            if safe_merge:
                w = layer.base_weight()
                merged = w.detach() + self.get_delta_weight(adapter).to(w.dtype)
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            layer.merge()  # raises RuntimeError for the non-mergeable methods, before changing anything
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Restore the weight from before each merge, last merged first (exact)."""
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.surm_layers:
                self.surm_layers[adapter].unmerge()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        y = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return y
        for adapter in self.active_adapters:
            if adapter not in self.surm_layers:
                continue
            layer = self.surm_layers[adapter]
            if isinstance(layer, SURMAdapter):
                y = layer(y)
            else:
                y = y + layer.delta(x).to(y.dtype)
        return y

    def __repr__(self) -> str:
        return "surm_ops." + super().__repr__()
