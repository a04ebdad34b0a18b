"""Finding things in a model: the methods and their options, the modules ``inject`` targets, tied weights, the
adapted layers and their parameters (through ``torch.compile`` / DDP wrappers), and the injected submodule."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from surm_ops.adapters.adapter import ADAPTER_METHOD, SURMAdapter
from surm_ops.adapters.base import AdaptedLinear, is_conv1d
from surm_ops.adapters.registry import METHODS, build_config, make_config

WRAPPERS: dict[str, type[SURMAdapter]] = {ADAPTER_METHOD: SURMAdapter}
"""Methods that wrap any module (not only ``nn.Linear``): they are not :class:`AdaptedLinear` and stay out of
:data:`surm_ops.adapters.registry.METHODS`."""

ADAPTED_TYPES = (AdaptedLinear, SURMAdapter)

CONFIG_ATTR = "surm_adapter_config"

CONDLORA_ATTR = "surm_condlora"

_FLAGS_ATTR = "_surm_requires_grad"  # [(parameter, requires_grad before inject)], restored by unload

_SHOWN = 5  # how many names an error message lists


def available_methods() -> list[str]:
    """Every method :func:`inject` accepts: the registered layer methods and ``"adapter"``."""
    return sorted([*METHODS, *WRAPPERS])

def _make_config(method: str, options: dict[str, Any]) -> Any:
    if method in WRAPPERS:
        return build_config(method, WRAPPERS[method].config_class, options)
    if method not in METHODS:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {', '.join(available_methods())}")
    return make_config(method, **options)

def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")

def _matcher(target_modules: str | Sequence[str] | None) -> Callable[[str], bool] | None:
    if target_modules is None:
        return None
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules={target_modules!r} is not a valid regular expression: {err}") from None
        return lambda name: pattern.fullmatch(name) is not None
    if (isinstance(target_modules, (list, tuple, set, frozenset)) and target_modules
            and all(isinstance(t, str) and t for t in target_modules)):
        suffixes = tuple(target_modules)
        return lambda name: any(name == t or name.endswith("." + t) for t in suffixes)
    raise ValueError("target_modules must be None (every nn.Linear), a regular expression (str, matched against the "
                     f"whole qualified name) or a non-empty list of name suffixes; got {target_modules!r}")

def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> qualified names, for every parameter held by more than one module (tied weights, e.g. an
    ``lm_head`` sharing the input embedding). A module registered under several names counts once."""
    holders: dict[int, dict[int, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                holders.setdefault(id(p), {}).setdefault(id(module), f"{name}.{pname}" if name else pname)
    return {key: list(mods.values()) for key, mods in holders.items() if len(mods) > 1}

def _find_targets(model: nn.Module, target_modules, method: str) -> list[tuple[str, nn.Module, list[str]]]:
    """``(name, module, every name it has)`` of each matched module, in model order. A module registered under
    several names (shared) is matched once and replaced under all of them."""
    match = _matcher(target_modules)
    shared = _shared_weights(model) if match is None else {}
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    mha_out_proj: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.MultiheadAttention):
            mha_out_proj.add(id(module.out_proj))
        if name:
            names.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    matched = []
    for key, module_names in names.items():
        module = modules[key]
        if match is None:
            # nn.MultiheadAttention reads out_proj.weight directly, never calling out_proj: an adapter there would
            # silently do nothing, so "every nn.Linear" skips it and naming it explicitly is an error. A layer whose
            # weight is tied to another module's (a tied lm_head) is skipped: it could never be merged.
            hit = ((isinstance(module, nn.Linear) or is_conv1d(module)) and key not in mha_out_proj
                   and id(module.weight) not in shared)
        else:
            hit = any(match(n) for n in module_names)
            if hit and key in mha_out_proj:
                raise ValueError(f"{method}: {module_names[0]!r} is the out_proj of an nn.MultiheadAttention, which "
                                 "reads its weight directly without calling it; an adapter there would have no effect")
        if hit:
            matched.append((module_names[0], module, module_names))
    if not matched:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        pool = linear or [n for n, _ in model.named_modules() if n]
        kind = "nn.Linear module names" if linear else "module names"
        hint = (" (a str is a regular expression matched against the whole name; pass a list for suffixes)"
                if isinstance(target_modules, str) else "")
        raise ValueError(f"{method}: no module of {type(model).__name__} matched target_modules={target_modules!r}"
                         f"{hint}; {kind} include {_listing(pool) or 'none'}")
    if method in WRAPPERS:
        all_names = sorted(n for _, _, ns in matched for n in ns)
        for outer, inner in zip(all_names, all_names[1:]):
            if inner.startswith(outer + "."):
                raise ValueError(f"{method}: matched modules nest ({outer!r} contains {inner!r}); target one of them")
    return matched


def _unwrap(model: nn.Module) -> nn.Module:
    """The injected model inside ``torch.compile`` / DDP / DataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            inner = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else None
        if inner is None:
            return model
        model = inner

def _injected_root(model: nn.Module) -> nn.Module:
    """The module :func:`inject` was called on: ``model`` itself, or the one submodule of it that carries the
    metadata (adapters injected into ``model.bert`` are found from the outer model)."""
    model = _unwrap(model)
    if isinstance(getattr(model, CONFIG_ATTR, None), dict):
        return model
    roots = [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, CONFIG_ATTR, None), dict)]
    if len(roots) > 1:
        raise ValueError(f"{type(model).__name__} holds several injected submodules ({_listing([n for n, _ in roots])})"
                         "; pass the one you mean")
    if not roots:
        raise ValueError(f"{type(model).__name__} has no surm_ops adapters (call inject first)")
    return roots[0][1]

def _metadata(model: nn.Module) -> dict[str, Any]:
    return getattr(_injected_root(model), CONFIG_ATTR)

def adapter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` of every adapted layer (:class:`AdaptedLinear` or :class:`SURMAdapter`)."""
    return [(n, m) for n, m in _unwrap(model).named_modules() if isinstance(m, ADAPTED_TYPES)]

def _own_adapter_parameters(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layer's adapter parameters (not those of the wrapped module; CondLoRA's shared maps are not its own)."""
    frozen = "module." if isinstance(layer, SURMAdapter) else "base."
    return [(n, p) for n, p in layer.named_parameters() if not n.startswith(frozen)]

def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Qualified name -> parameter of every adapter tensor (the layers' own and CondLoRA's shared maps)."""
    model = _unwrap(model)
    ids = {id(p) for _, layer in adapter_layers(model) for _, p in _own_adapter_parameters(layer)}
    maps = getattr(model, CONDLORA_ATTR, None)
    if isinstance(maps, nn.Module):
        ids.update(id(p) for p in maps.parameters())
    return {n: p for n, p in model.named_parameters() if id(p) in ids}

def _require_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(_unwrap(model)).__name__} has no surm_ops adapter layers (call inject first)")
    return layers
