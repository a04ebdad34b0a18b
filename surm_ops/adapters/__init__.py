"""PEFT methods as modules, and the model-level API (inject / merge / unmerge / save / load / report).

Every method module registers its layer class in :data:`METHODS` on import; importing this package imports them all.
"""

from surm_ops.adapters import circulant, condlora, kronecker, ldr, lora, rmlora, sara, toeplitz  # noqa: F401
from surm_ops.adapters.adapter import AdapterConfig, SURMAdapter
from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.circulant import CirculantConfig, CirculantLinear
from surm_ops.adapters.condlora import CondLoRAConfig, CondLoRALinear, CondLoRAMaps
from surm_ops.adapters.kronecker import KroneckerConfig, KroneckerLinear
from surm_ops.adapters.ldr import LDRConfig, LDRLinear
from surm_ops.adapters.lora import LoRAConfig, LoRALinear
from surm_ops.adapters.model import (
    adapter_layers,
    available_methods,
    inject,
    load_adapters,
    merge,
    parameter_report,
    save_adapters,
    trainable_parameters,
    unload,
    unmerge,
)
from surm_ops.adapters.registry import METHODS, make_config, method_class
from surm_ops.adapters.rmlora import (
    RandomMasker,
    RMLoRAConfig,
    RMLoRALinear,
    RMLoRATraining,
    orthogonality_loss,
    regularized_loss,
)
from surm_ops.adapters.sara import MoSARAConfig, MoSARALinear, SARAConfig, SARALinear, ranks_for_budget
from surm_ops.adapters.toeplitz import ToeplitzConfig, ToeplitzLinear

__all__ = [
    "METHODS",
    "AdaptedLinear",
    "AdapterConfig",
    "CirculantConfig",
    "CirculantLinear",
    "CondLoRAConfig",
    "CondLoRALinear",
    "CondLoRAMaps",
    "KroneckerConfig",
    "KroneckerLinear",
    "LDRConfig",
    "LDRLinear",
    "LoRAConfig",
    "LoRALinear",
    "MoSARAConfig",
    "MoSARALinear",
    "RMLoRAConfig",
    "RMLoRALinear",
    "RMLoRATraining",
    "RandomMasker",
    "SARAConfig",
    "SARALinear",
    "SURMAdapter",
    "ToeplitzConfig",
    "ToeplitzLinear",
    "adapter_layers",
    "available_methods",
    "inject",
    "load_adapters",
    "make_config",
    "merge",
    "method_class",
    "orthogonality_loss",
    "parameter_report",
    "ranks_for_budget",
    "regularized_loss",
    "save_adapters",
    "trainable_parameters",
    "unload",
    "unmerge",
]


def __getattr__(name: str):
    if name == "RMLoRACallback":  # needs transformers: imported on demand
        from surm_ops.adapters.hf import RMLoRACallback

        return RMLoRACallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
