"""The PEFT tuner layer around surm_ops' own adapter layers.

A :class:`SurmLayer` wraps the target module (``base_layer``, as every PEFT layer) and holds, per adapter name, one
surm_ops layer (an :class:`~surm_ops.adapters.AdaptedLinear`, or for ``"adapter"`` a
:class:`~surm_ops.adapters.SURMAdapter`) in the ``nn.ModuleDict`` named ``surm_<method>``. The math is those
layers': the forward adds ``layer.delta(x)`` (or applies the adapter form to the output), merging calls
``layer.merge()`` (which keeps the original weight, so unmerging restores it bit for bit).

The surm_ops layer sees the frozen weight through a reference that is not a registered submodule, so the frozen
weight is stored once (under ``base_layer``) and PEFT saves only adapter tensors. ``Conv1D``-style targets (weight
stored (in, out), ``fan_in_fan_out``) are seen through :class:`_TransposedLinear`, a view whose ``weight`` is the
transpose of the stored one: merging writes through it into the stored weight.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from surm_ops.adapters.adapter import ADAPTER_METHOD, SURMAdapter
from surm_ops.adapters.registry import method_class


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None \
        and module.weight.ndim == 2


class _TransposedLinear(nn.Linear):
    """An ``nn.Linear`` face for a module storing its weight as (in_features, out_features) (``Conv1D``).

    ``weight`` is the live transpose of the stored weight, read on every access, so device moves and in-place
    merges stay in step with the stored tensor."""

    def __init__(self, module: nn.Module) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "_stored", module)  # not a submodule: its parameters stay where they are
        self.in_features, self.out_features = module.weight.shape

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self._stored.weight.T

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return getattr(self._stored, "bias", None)


def _linear_face(base: nn.Module, fan_in_fan_out: bool, name: str) -> nn.Linear:
    if isinstance(base, nn.Linear) and not fan_in_fan_out:
        return base
    if _is_conv1d(base) or (fan_in_fan_out and getattr(base, "weight", None) is not None and base.weight.ndim == 2):
        base.weight.requires_grad_(False)  # frozen before its transpose is taken (a leaf view)
        return _TransposedLinear(base)
    raise TypeError(f"surm_ops.peft: {name!r} is {type(base).__name__}; these methods adapt nn.Linear and "
                    "Conv1D-style layers (the 'adapter' method wraps any module)")


def build_layer(method: str, base: nn.Module, options: Any, name: str, fan_in_fan_out: bool = False,
                maps: nn.Module | None = None) -> nn.Module:
    """surm_ops' layer of ``method`` for ``base``, with ``base`` held as an unregistered reference."""
    if method == ADAPTER_METHOD:
        layer = SURMAdapter(base, options, name)  # infers the output size from base
        layer.module = nn.Identity()  # applied to base's output below: base itself is not held twice
        return layer
    kwargs = {"maps": maps} if maps is not None else {}
    layer = method_class(method)(_linear_face(base, fan_in_fan_out, name), options, name, **kwargs)
    face = layer._modules.pop("base")
    object.__setattr__(layer, "base", face)
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
        self.fan_in_fan_out = fan_in_fan_out or _is_conv1d(base_layer)
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
                merged = layer.base.weight.detach() + self.get_delta_weight(adapter).to(layer.base.weight.dtype)
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
