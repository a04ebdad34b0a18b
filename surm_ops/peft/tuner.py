"""The PEFT tuner (``BaseTuner``) of every surm_ops method, and their registration with PEFT.

One tuner class and one layer class per method (PEFT keys both by method); they differ only in ``method`` and the
prefix ``surm_<method>_``. Model-level rules live here, once:

* SARA / Mo-SARA with ``budget``: one global threshold over all targets, resolved before each adapter's injection
  (:func:`surm_ops.adapters.sara.ranks_for_budget`), each layer then built with its rank;
* CondLoRA: one :class:`~surm_ops.adapters.CondLoRAMaps` per module type (last name component, split by shape as
  ``surm_ops.inject`` does) per adapter, owned
  (registered) by the type's first layer and referred to by the others, so PEFT saves, loads, moves and trains it
  once, with or without a ``PeftModel`` around (``peft.inject_adapter_in_model`` drops the tuner);
* merging a method whose update depends on the input (Mo-SARA, the adapter form) raises before any layer changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import register_peft_method
from torch import nn

from surm_ops.adapters.adapter import ADAPTER_METHOD
from surm_ops.adapters.base import linear_dims
from surm_ops.adapters.condlora import CondLoRAMaps, condlora_group_key
from surm_ops.adapters.registry import METHODS
from surm_ops.adapters.sara import MoSARAConfig, SARAConfig, ranks_for_budget
from surm_ops.peft.configs import CONFIGS, peft_type_name, surm_options
from surm_ops.peft.layer import SurmLayer, weight_out_in


def _mergeable(method: str) -> bool:
    return method != ADAPTER_METHOD and METHODS[method].mergeable


class SurmTuner(BaseTuner):
    """PEFT's model-level side of a surm_ops method (use ``peft.get_peft_model(model, config)``)."""

    method: ClassVar[str]
    target_module_mapping: ClassVar[dict] = {}

    def __init__(self, model, peft_config, adapter_name, **kwargs) -> None:
        self._sara_ranks: dict[str, dict[str, int]] = {}
        self._condlora_maps: dict[str, dict[tuple[str, int, int], CondLoRAMaps]] = {}
        super().__init__(model, peft_config, adapter_name, **kwargs)

    def _prepare_adapter_config(self, peft_config, model_config):
        if peft_config.target_modules is None:
            raise ValueError(f"{type(peft_config).__name__}: set target_modules (surm_ops has no default targets "
                             "per architecture)")
        return peft_config

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Here rather than in _pre_injection_hook: PEFT calls that hook for the first adapter only, and an adapter
        # added later (add_adapter) needs its budget resolved too.
        config = self.peft_config[adapter_name]
        options = surm_options(config)
        if isinstance(options, (SARAConfig, MoSARAConfig)) and options.budget is not None and options.rank is None:
            weights = {}
            for key, m in model.named_modules():
                if key and self._check_target_module_exists(config, key):
                    base = m.get_base_layer() if isinstance(m, SurmLayer) else m
                    weights[key] = weight_out_in(base, config.fan_in_fan_out, key)
            if not weights:
                raise ValueError(f"{self.method}: no module matched target_modules={config.target_modules!r}")
            _, self._sara_ranks[adapter_name] = ranks_for_budget(
                weights, options.budget, options.params_per_rank, max_rank=options.max_rank,
                randomized=options.randomized)
        super().inject_adapter(model, adapter_name, *args, **kwargs)

    def _maps_key(self, target: nn.Module, key: str, fan_in_fan_out: bool) -> tuple[str, int, int]:
        # surm_ops.inject's rule: one map per last name component, split by shape where layers of one name differ
        # (GPT-2's attn.c_proj 32 -> 32, mlp.c_proj 128 -> 32). Keying by (name, shape) is the same grouping.
        base = target.get_base_layer() if isinstance(target, SurmLayer) else target
        d_in, d_out, _ = linear_dims(base, fan_in_fan_out or None, key, "condlora")
        return condlora_group_key(key), d_in, d_out

    def _shared_maps(self, adapter_name: str, group: tuple[str, int, int] | None) -> CondLoRAMaps | None:
        """CondLoRA: the maps already made for this module type and adapter (None for the type's first layer, which
        creates them and owns them as its submodule; the type's other layers only refer to them)."""
        if group is None:
            return None
        return self._condlora_maps.setdefault(adapter_name, {}).get(group)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs) -> None:
        options = surm_options(peft_config)
        if adapter_name in self._sara_ranks:
            options = dataclasses.replace(options, rank=self._sara_ranks[adapter_name][current_key])
        group = (self._maps_key(target, current_key, peft_config.fan_in_fan_out) if self.method == "condlora"
                 else None)
        maps = self._shared_maps(adapter_name, group)
        if isinstance(target, SurmLayer):
            target.update_layer(adapter_name, options, current_key, maps, peft_config.inference_mode)
            layer = target
        else:
            layer = self.tuner_layer_cls(target, adapter_name, options, current_key,
                                         fan_in_fan_out=peft_config.fan_in_fan_out, maps=maps,
                                         inference_mode=peft_config.inference_mode)
            if adapter_name != self.active_adapter:
                layer.requires_grad_(False)  # an added adapter is not trainable until set_adapter
            self._replace_module(parent, target_name, layer, target)
        if group is not None and maps is None:
            self._condlora_maps[adapter_name][group] = layer.surm_layers[adapter_name].cond_maps

    def _check_merge_allowed(self) -> None:
        super()._check_merge_allowed()
        if not _mergeable(self.method):
            raise RuntimeError(f"{self.method}: cannot merge: the update depends on the input (no weight holds it); "
                               "no layer was changed")

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._condlora_maps.pop(adapter_name, None)
        self._sara_ranks.pop(adapter_name, None)


def _camel(method: str) -> str:
    return CONFIGS[method].__name__.removesuffix("Config")


LAYERS: dict[str, type[SurmLayer]] = {}
TUNERS: dict[str, type[SurmTuner]] = {}


def register_all() -> None:
    """Register every surm_ops method with PEFT (idempotent; run on ``import surm_ops.peft``)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from surm_ops.peft._peft_type import add_peft_type

    for method, config_cls in CONFIGS.items():
        prefix = f"surm_{method}_"
        layer = LAYERS.setdefault(method, type(f"{_camel(method)}Layer", (SurmLayer,), {
            "method": method, "adapter_layer_names": (f"surm_{method}_layers",), "__module__": __name__}))
        tuner = TUNERS.setdefault(method, type(f"{_camel(method)}Model", (SurmTuner,), {
            "method": method, "prefix": prefix, "tuner_layer_cls": layer, "__module__": __name__}))
        peft_type = add_peft_type(peft_type_name(method))
        if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is tuner:
            continue
        register_peft_method(name=peft_type.value.lower(), config_cls=config_cls, model_cls=tuner, prefix=prefix)
