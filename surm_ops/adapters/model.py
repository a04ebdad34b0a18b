"""Model-level API: inject adapters into a model, merge and unmerge them, save and load them, report their size.

Typical use (``unload`` returns a plain model, merged or with the adapters removed)::

    import surm_ops
    model = BertModel(config)                                       # any nn.Module
    surm_ops.inject(model, "circulant", ["query", "value"])         # base frozen, adapters trainable
    ... train ...
    surm_ops.save_adapters(model, "out/")                          # adapter tensors only
    fresh = surm_ops.inject(BertModel(config), "circulant", ["query", "value"])
    surm_ops.load_adapters(fresh, "out/")
    surm_ops.merge(fresh)                                          # no inference overhead; unmerge() is exact
    print(surm_ops.parameter_report(fresh))
    plain = surm_ops.unload(fresh)                                 # plain modules, merged

Errors: a wrong argument or a file that does not fit the model (or cannot be read) raises ``ValueError``
(``TypeError`` where a layer class rejects a module's type); a model in the wrong state (already injected, merging a
non-mergeable method or a tied weight, loading into a merged model) raises ``RuntimeError``. Every function validates
first and changes nothing on error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import surm_ops
from surm_ops.adapters.adapter import ADAPTER_METHOD, SURMAdapter
from surm_ops.adapters.base import AdaptedLinear, is_conv1d, linear_dims
from surm_ops.adapters.condlora import CondLoRAMaps, condlora_group_key
from surm_ops.adapters.registry import METHODS, build_config, make_config, method_class
from surm_ops.adapters.sara import MoSARAConfig, SARAConfig, ranks_for_budget

WRAPPERS: dict[str, type[SURMAdapter]] = {ADAPTER_METHOD: SURMAdapter}
"""Methods that wrap any module (not only ``nn.Linear``): they are not :class:`AdaptedLinear` and stay out of
:data:`surm_ops.adapters.registry.METHODS`."""

ADAPTED_TYPES = (AdaptedLinear, SURMAdapter)
CONFIG_ATTR = "surm_adapter_config"
CONDLORA_ATTR = "surm_condlora"
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
_FLAGS_ATTR = "_surm_requires_grad"  # [(parameter, requires_grad before inject)], restored by unload
_SAFETENSORS_KEY = "surm_adapter_config"  # the metadata, also in the safetensors header: a mixed pair is detected
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


# ----------------------------------------------------------------------------------------------------------- inject


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


_EMPTY_DICT = nn.ModuleDict()


def _sanitize(keys: Sequence[str]) -> dict[str, str]:
    """Group key -> a valid, unique ``nn.ModuleDict`` key."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for key in keys:
        base = re.sub(r"\W", "_", key) or "_"
        if hasattr(_EMPTY_DICT, base):  # e.g. "keys", "training": attribute names of the container
            base += "_"
        clean, i = base, 1
        while clean in used:
            clean, i = f"{base}_{i}", i + 1
        used.add(clean)
        out[key] = clean
    return out


def _build(method: str, config: Any, matched) -> tuple[dict[int, nn.Module], dict[str, CondLoRAMaps], dict]:
    """New layers keyed by the id of the module they replace, CondLoRA's shared maps, and resolved metadata."""
    if method in WRAPPERS:
        return {id(m): WRAPPERS[method](m, config, name) for name, m, _ in matched}, {}, {}
    cls = method_class(method)
    resolved: dict[str, Any] = {}
    configs = {name: config for name, _, _ in matched}
    if isinstance(config, (SARAConfig, MoSARAConfig)) and config.budget is not None and config.rank is None:
        # One global threshold for the whole model: resolved here, each layer gets its rank through config.rank.
        weights = {}
        for name, m, _ in matched:
            d_in, d_out, flip = linear_dims(m, None, name, method)  # a layer it cannot adapt fails here, by name
            weights[name] = m.weight.T if flip else m.weight
        if weights:
            theta, ranks = ranks_for_budget(weights, config.budget, config.params_per_rank,
                                            max_rank=config.max_rank, randomized=config.randomized)
            configs.update({name: dataclasses.replace(config, rank=k) for name, k in ranks.items()})
            resolved = {"threshold": theta, "ranks": ranks}
    if method != "condlora":
        return {id(m): cls(m, configs[name], name) for name, m, _ in matched}, {}, resolved
    # CondLoRA: one maps module per module type, shared by every layer of that type. The type is the last name
    # component; where layers of one name differ in shape (GPT-2's attn.c_proj 32 -> 32, mlp.c_proj 128 -> 32)
    # each shape is its own type, keyed "<name>_<d_in>x<d_out>".
    dims = {}
    for name, m, _ in matched:
        try:
            dims[name] = linear_dims(m, None, name, method)[:2]
        except TypeError:
            dims[name] = None  # the layer constructor raises the error, naming the layer
    shapes: dict[str, set] = {}
    for name, d in dims.items():
        shapes.setdefault(condlora_group_key(name), set()).add(d)
    maps: dict[str, CondLoRAMaps] = {}
    layers = {}
    for name, m, _ in matched:
        key = condlora_group_key(name)
        if len(shapes[key]) > 1 and dims[name] is not None:
            key = f"{key}_{dims[name][0]}x{dims[name][1]}"
        if key not in maps:
            try:
                maps[key] = CondLoRAMaps.for_linear(m, config)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{err} (layer {name!r})") from None
        layers[id(m)] = cls(m, config, name, maps=maps.get(key))
    keys = _sanitize(list(maps))
    return layers, {keys[k]: v for k, v in maps.items()}, resolved


def inject(model: nn.Module, method: str, target_modules: str | Sequence[str] | None = None, *,
           modules_to_save: Sequence[str] | None = None, **options: Any) -> nn.Module:
    """Replace the targeted layers of ``model`` by adapted layers, in place; freeze everything else.

    Args:
        model: any ``nn.Module`` (e.g. a Hugging Face model built from a config). Inject *before* wrapping it in
            DDP / FSDP / ``torch.compile``.
        method: one of :func:`available_methods` ("lora", "circulant", ..., and "adapter", the SURM adapter form).
        target_modules: a list of name suffixes (a module matches when its qualified name equals a suffix or ends
            with ``"." + suffix``, like PEFT), or a str regular expression matched with ``fullmatch`` against the
            qualified name, or None for every ``nn.Linear`` and transformers ``Conv1D`` (except the ``out_proj`` of
            ``nn.MultiheadAttention``, which never calls it, and layers whose weight is tied to another module, such
            as a tied ``lm_head``, which could never be merged).
        modules_to_save: name suffixes (as ``target_modules``) of whole modules to train fully and store in the
            adapter file, e.g. a fresh task head ``["classifier"]`` (PEFT's option of the same name). They must not
            contain or sit inside an adapted layer.
        **options: the method's config fields (e.g. ``r=8, alpha=16`` for LoRA); invalid ones raise ``ValueError``.

    Returns:
        ``model`` itself. The targeted ``nn.Linear`` modules become the method's layer (``"adapter"`` wraps the
        targeted modules, of any type, in :class:`SURMAdapter`). Every parameter outside the adapters gets
        ``requires_grad=False``. ``model.surm_adapter_config`` records ``method``, ``options`` (the full config),
        ``targets`` (the qualified names), ``surm_ops_version`` and, for SARA/Mo-SARA with ``budget=``,
        ``resolved`` (the global threshold and the rank of every layer) and ``modules_to_save`` (qualified names).
        CondLoRA's shared maps, one per module
        type (the last component of the name), live in ``model.surm_condlora`` (an ``nn.ModuleDict``).

    Atomic: every new layer is built (and validated) before any is swapped in, so an error (an invalid option, no
    match, a layer the method cannot adapt, a budget too small) leaves the model exactly as it was.

    Example::

        >>> model = inject(model, "lora", ["query", "value"], r=8, alpha=16)
        >>> model = inject(model, "circulant", r"encoder\\.layer\\.\\d+\\.attention\\.self\\.(query|value)")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"inject: model must be an nn.Module; got {type(model).__name__}")
    config = _make_config(method, options)
    if hasattr(model, CONFIG_ATTR) or any(isinstance(m, ADAPTED_TYPES) for m in model.modules()):
        existing = getattr(model, CONFIG_ATTR, {}).get("method", "unknown")
        raise RuntimeError(f"inject: {type(model).__name__} already has adapters (method {existing!r}); inject into "
                           "a fresh model")
    if hasattr(model, CONDLORA_ATTR):
        raise RuntimeError(f"inject: {type(model).__name__} already has an attribute {CONDLORA_ATTR!r}")
    matched = _find_targets(model, target_modules, method)
    saved = _find_modules_to_save(model, modules_to_save, matched)
    meta = {"method": method, "options": _jsonable(dataclasses.asdict(config)),
            "targets": [name for name, _, _ in matched], "surm_ops_version": surm_ops.__version__}
    if saved:
        meta["modules_to_save"] = saved

    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:  # layer constructors freeze their base: restore the flags if any layer fails
        layers, maps, resolved = _build(method, config, matched)
    except BaseException:
        for p, flag in flags:
            p.requires_grad_(flag)
        raise

    slots = []
    for _, module, module_names in matched:
        for name in module_names:
            parent_name, _, attr = name.rpartition(".")
            slots.append((model.get_submodule(parent_name) if parent_name else model, attr, layers[id(module)]))
    for parent, attr, layer in slots:
        setattr(parent, attr, layer)
    if maps:
        setattr(model, CONDLORA_ATTR, nn.ModuleDict(maps))
    adapter_ids = {id(p) for p in _adapter_parameters(model).values()}
    for p in model.parameters():
        if id(p) not in adapter_ids:
            p.requires_grad_(False)
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    if resolved:
        meta["resolved"] = resolved
    setattr(model, CONFIG_ATTR, meta)
    model.__dict__[_FLAGS_ATTR] = flags  # for unload: the flags the user had
    if callable(getattr(type(model), "resize_token_embeddings", None)):  # a transformers PreTrainedModel
        model.__dict__["resize_token_embeddings"] = _ResizeGuard(model)
    return model


def _find_modules_to_save(model: nn.Module, modules_to_save, matched) -> list[str]:
    """The qualified names of the modules to train fully and save, validated against the adapted targets."""
    if modules_to_save is None:
        return []
    if isinstance(modules_to_save, str) or not (isinstance(modules_to_save, (list, tuple, set, frozenset))
                                                and all(isinstance(t, str) and t for t in modules_to_save)):
        raise ValueError(f"modules_to_save must be a list of module name suffixes; got {modules_to_save!r}")
    names = []
    for suffix in modules_to_save:
        found = [n for n, _ in model.named_modules() if n and (n == suffix or n.endswith("." + suffix))]
        if not found:
            pool = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
            raise ValueError(f"modules_to_save: no module of {type(model).__name__} is named {suffix!r} (or ends with "
                             f"'.{suffix}'); leaf modules include {_listing(pool)}")
        names += [n for n in found if n not in names]
    targets = [n for _, _, ns in matched for n in ns]
    for name in names:
        for t in targets:
            if name == t or t.startswith(name + ".") or name.startswith(t + "."):
                raise ValueError(f"modules_to_save: {name!r} overlaps the adapted layer {t!r}; a module is either "
                                 "adapted or saved whole")
    return names


class _ResizeGuard:
    """transformers' ``resize_token_embeddings`` for an injected model, refused (before anything changes) when an
    embedding or the output layer carries an adapter, whose shape would no longer fit the vocabulary. An object, not
    a bound method, so that the model still pickles and deep-copies."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args, **kwargs):
        model = self.model
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            module = getattr(model, getter)()
            if isinstance(module, ADAPTED_TYPES):
                name = next((n for n, m in model.named_modules() if m is module), getter)
                raise RuntimeError(f"resize_token_embeddings: {name!r} carries a {module.method} adapter whose shape "
                                   "is tied to the vocabulary size; nothing was resized. Resize before inject, or "
                                   "surm_ops.unload(model) first")
        return type(model).resize_token_embeddings(model, *args, **kwargs)


# ------------------------------------------------------------------------------------------------- layer discovery


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


def _saved_tensors(root: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified name -> tensor of everything the adapter file holds: the adapter parameters, then the full state
    (parameters and buffers) of each module in ``modules_to_save``."""
    tensors: dict[str, torch.Tensor] = dict(_adapter_parameters(root))
    for name in getattr(root, CONFIG_ATTR).get("modules_to_save", []):
        for key, t in root.get_submodule(name).state_dict(keep_vars=True).items():
            tensors.setdefault(f"{name}.{key}", t)
    return tensors


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


# ----------------------------------------------------------------------------------------------- merge / unmerge


def merge(model: nn.Module) -> nn.Module:
    """Merge every adapted layer's update into its frozen weight (forward unchanged, no adapter overhead).

    Raises ``RuntimeError`` before any layer is merged when a layer cannot be: a non-mergeable method (Mo-SARA, the
    adapter form), or a layer whose weight is tied to another module (e.g. an ``lm_head`` sharing the input
    embedding: adding dW there would change the embedding too). Already merged layers are left as they are. Train
    only unmerged: a merged layer ignores its adapter (and warns when it runs in training mode with gradients on).
    """
    _check_mergeable(model, "merge")
    layers = _require_layers(model)
    done = []
    try:
        for _, layer in layers:
            if not layer.merged:
                layer.merge()
                done.append(layer)
    except BaseException:
        for layer in done:
            layer.unmerge()
        raise
    return model


def _check_mergeable(model: nn.Module, verb: str) -> None:
    layers = _require_layers(model)
    blocked = [(n, layer) for n, layer in layers if not layer.mergeable]
    if blocked:
        name, layer = blocked[0]
        more = f" (and {len(blocked) - 1} more layers)" if len(blocked) > 1 else ""
        raise RuntimeError(f"{verb}: {layer.method} layer {name!r}{more} cannot be merged: its update is not a fixed "
                           "weight; no layer was changed")
    shared = _shared_weights(_unwrap(model))
    for name, layer in layers:
        others = shared.get(id(layer.base.weight), [])
        if not layer.merged and others:
            raise RuntimeError(f"{verb}: layer {name!r} cannot be merged: its weight is shared with "
                               f"{_listing([o for o in others if not o.startswith(name + '.')])} (tied weights), so "
                               "merging would change those modules too; no layer was changed. Keep it unmerged, or "
                               "inject without it (the default targets skip tied layers)")


def unmerge(model: nn.Module) -> nn.Module:
    """Restore every merged layer's frozen weight bit for bit (a no-op for layers that are not merged)."""
    for _, layer in _require_layers(model):
        layer.unmerge()
    return model


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Return ``model`` with plain modules again: every adapted layer is replaced by its own frozen layer, merged
    (``merge=True``: the weights hold W0 + dW, PEFT's ``merge_and_unload``) or restored (``merge=False``: the
    adapters are removed and W0 restored bit for bit), in place.

    Afterwards the model has no surm_ops attribute, wrapper or extra weight copy left: its ``state_dict`` has the
    original keys (so ``save_pretrained`` / ``from_pretrained`` reproduce it), every parameter gets back the
    ``requires_grad`` it had before :func:`inject`, and the ``modules_to_save`` keep their trained values.

    With ``merge=True`` a layer that cannot be merged (Mo-SARA, the adapter form, a tied weight) raises
    ``RuntimeError`` before anything changes; ``merge=False`` works for every method. ``model`` may be an outer
    module whose injected part is a submodule.

    Example::

        >>> model = surm_ops.unload(model)                  # merged, plain nn.Linear everywhere
        >>> model.save_pretrained("merged/")                # a transformers model: loads without surm_ops
    """
    root = _injected_root(model)
    layers = _require_layers(root)
    if merge:
        _check_mergeable(root, "unload")
    slots = []  # every name a layer is registered under (a shared module has several)
    for module in root.modules(remove_duplicate=False):
        for attr, child in module._modules.items():
            if isinstance(child, ADAPTED_TYPES):
                slots.append((module, attr, child))
    if merge:
        surm_ops.merge(root)
    for _, layer in layers:
        if not merge:
            layer.unmerge()
        if isinstance(layer, AdaptedLinear):
            layer._original_weight = None  # the unmerge copy: unload must not keep a second weight
    for parent, attr, layer in slots:
        setattr(parent, attr, layer.base if isinstance(layer, AdaptedLinear) else layer.module)
    if hasattr(root, CONDLORA_ATTR):
        delattr(root, CONDLORA_ATTR)
    delattr(root, CONFIG_ATTR)
    for p, flag in root.__dict__.pop(_FLAGS_ATTR, []):
        p.requires_grad_(flag)
    root.__dict__.pop("resize_token_embeddings", None)
    return _unwrap(model)


# ------------------------------------------------------------------------------------------------ save / load


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _to_cpu(p: torch.Tensor) -> torch.Tensor:
    t = p.detach()
    if hasattr(t, "full_tensor"):  # an FSDP2 DTensor shard: gathering is collective, every rank calls save
        t = t.full_tensor()
    return t.to("cpu").contiguous()


def save_adapters(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters of ``model`` to the directory ``path`` (created if needed).

    ``adapter.safetensors`` holds only the adapter tensors (the layers' trainable parameters and CondLoRA's shared
    maps, under their qualified names, contiguous, in their own float dtype) and the whole state of the
    ``modules_to_save`` given to :func:`inject`; ``adapter_config.json`` holds
    ``model.surm_adapter_config`` plus each tensor's shape and dtype. Both files are written to temporary files in
    ``path`` and renamed into place, so a failed save never leaves a half-written file.

    Mo-SARA's frozen singular vectors are buffers recomputed from the base weights by :func:`inject`, so they are
    not saved. Saving a merged model is fine: merging never changes the adapter parameters. Under FSDP2 call it on
    every rank (the shards are gathered collectively; every rank writes the same files, atomically).

    ``model`` may be an outer module whose injected part is a submodule (names are then relative to that submodule,
    so the file loads into either).
    """
    model = _injected_root(model)
    meta = _metadata(model)
    tensors = {name: _to_cpu(p) for name, p in _saved_tensors(model).items()}
    config = {**meta, "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                                  for name, t in tensors.items()}}
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_adapters: {path} exists and is not a directory")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []
    try:
        for final in (WEIGHTS_NAME, CONFIG_NAME):  # unique names (concurrent FSDP ranks), default permissions
            tmp = str(path / f".{final}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
            open(tmp, "x").close()
            temps.append(tmp)
        save_file(tensors, temps[0], metadata={_SAFETENSORS_KEY: json.dumps(meta, sort_keys=True)})
        shutil.copymode(temps[1], temps[0])  # safetensors writes 0600; give it the umask's permissions
        with open(temps[1], "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        for tmp, final in zip(temps, (WEIGHTS_NAME, CONFIG_NAME)):
            os.replace(tmp, path / final)
    except BaseException:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
        if created and not any(path.iterdir()):
            path.rmdir()
        raise


def _option_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: saved {saved.get(k, '<absent>')!r}, model {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k) != current.get(k)]


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by :func:`save_adapters` into ``model``, injected with the same method and options.

    Everything is validated first: the method, the options, the adapted layers, and every tensor (each saved name
    must be an adapter tensor of the model with the same shape, and no adapter tensor of the model may be missing
    from the file). A mismatch raises ``ValueError`` listing the first ones and leaves the model untouched; loading
    into a merged model raises ``RuntimeError`` (unmerge first). Values are then copied in under ``torch.no_grad``,
    cast to each parameter's dtype and device. A file that is not a readable adapter file (truncated, empty, not
    JSON, a config of the wrong shape) raises ``ValueError`` naming the file.

    ``model`` may be an outer module whose injected part is a submodule. Returns ``model`` (unwrapped from
    ``torch.compile`` / DDP).
    """
    given = _unwrap(model)
    model = _injected_root(model)
    meta = _metadata(model)
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise ValueError(f"load_adapters: {f} does not exist (expected a directory written by save_adapters)")
    merged = [n for n, layer in adapter_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"load_adapters: layer {merged[0]!r} is merged; unmerge(model) before loading")
    saved = _read_config(config_file)
    header, tensors = _read_weights(weights_file)

    problems: list[str] = []
    saved_meta = {k: v for k, v in saved.items() if k != "tensors"}
    if header is not None and header != saved_meta:
        problems.append(f"{CONFIG_NAME} and {WEIGHTS_NAME} come from different saves")
    if saved.get("method") != meta["method"]:
        problems.append(f"method: saved {saved.get('method')!r}, model {meta['method']!r}")
    else:
        problems += [f"option {d}" for d in _option_differences(saved.get("options") or {}, meta["options"])]
    params = _saved_tensors(model)
    unexpected = [n for n in tensors if n not in params]
    missing = [n for n in params if n not in tensors]
    if unexpected:
        problems.append(f"{len(unexpected)} saved tensors are not adapter tensors of the model: {_listing(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} adapter tensors of the model are missing from the file: {_listing(missing)}")
    shapes = [f"{n}: saved {tuple(t.shape)}, model {tuple(params[n].shape)}"
              for n, t in tensors.items() if n in params and t.shape != params[n].shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:_SHOWN])}")
    not_float = [n for n, t in tensors.items()
                 if n in params and t.is_floating_point() != params[n].is_floating_point()]
    if not_float:
        problems.append(f"tensors of the wrong kind (integer vs float) in the file: {_listing(not_float)}")
    sharded = [n for n, p in params.items() if hasattr(p, "full_tensor")]
    if sharded:
        problems.append(f"the model's adapter tensors are sharded (FSDP2), e.g. {sharded[0]!r}: load before "
                        "fully_shard")
    if problems:
        raise ValueError(f"load_adapters: {path} does not fit {type(model).__name__}: " + " | ".join(problems))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.dtype))
    return given


def _read_config(config_file: Path) -> dict[str, Any]:
    """adapter_config.json as a dict with the keys load needs, or ``ValueError`` naming the file and the fault."""
    try:
        with open(config_file) as f:
            saved = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"load_adapters: {config_file} is not valid JSON ({err}); it was not written by "
                         "save_adapters or is corrupt") from None
    faults = []
    if not isinstance(saved, dict):
        faults.append(f"the top level is a {type(saved).__name__}, not an object")
    else:
        for key, kind in (("method", str), ("options", dict), ("targets", list), ("tensors", dict)):
            if not isinstance(saved.get(key), kind):
                faults.append(f"{key!r} is {'missing' if key not in saved else type(saved[key]).__name__}, "
                              f"expected {kind.__name__}")
    if faults:
        raise ValueError(f"load_adapters: {config_file} is not an adapter config: {'; '.join(faults)}")
    return saved


def _read_weights(weights_file: Path) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """``(metadata header or None, tensors)`` of adapter.safetensors, or ``ValueError`` naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights_file, framework="pt") as f:
            header = (f.metadata() or {}).get(_SAFETENSORS_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
        header = None if header is None else json.loads(header)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        size = weights_file.stat().st_size
        raise ValueError(f"load_adapters: {weights_file} ({size} bytes) is not a readable safetensors file "
                         f"({type(err).__name__}: {err}); it is truncated, empty or corrupt") from None
    return header, tensors


# ------------------------------------------------------------------------------------------------------ reporting


def _report_rows(model: nn.Module) -> list[tuple[str, str, int, int | None]]:
    """``(name, method, trainable, expected)`` per adapted layer, per CondLoRA shared map, and for any other
    trainable parameters (expected None)."""
    model = _unwrap(model)
    rows = []
    counted: set[int] = set()
    groups: dict[int, list[nn.Module]] = {}  # id(shared maps) -> their layers
    for name, layer in adapter_layers(model):
        own = _own_adapter_parameters(layer)
        counted.update(id(p) for _, p in own)
        shared = getattr(layer, "cond_maps", None)
        if shared is not None and not any(m is shared for m in layer.children()):
            groups.setdefault(id(shared), []).append(layer)
            continue
        rows.append((name, layer.method, sum(p.numel() for _, p in own if p.requires_grad),
                     layer.expected_parameters()))
    maps = getattr(model, CONDLORA_ATTR, None)
    if isinstance(maps, nn.ModuleDict):
        for key, m in maps.items():
            members = groups.get(id(m), [])
            counted.update(id(p) for p in m.parameters())
            method = f"{members[0].method} ({len(members)} layers)" if members else "condlora"
            rows.append((f"{CONDLORA_ATTR}.{key}", method, sum(p.numel() for p in m.parameters() if p.requires_grad),
                         members[0].expected_parameters() if members else None))
    for prefix, root in model.named_modules():  # modules_to_save: one row each, trained and saved whole
        meta = getattr(root, CONFIG_ATTR, None)
        for name in meta.get("modules_to_save", []) if isinstance(meta, dict) else []:
            params = [p for p in root.get_submodule(name).parameters() if id(p) not in counted]
            counted.update(id(p) for p in params)
            rows.append((f"{prefix}.{name}" if prefix else name, "saved whole",
                         sum(p.numel() for p in params if p.requires_grad), None))
    other = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in counted)
    if other:
        rows.append(("(other trainable parameters)", "-", other, None))
    return rows


def trainable_parameters(model: nn.Module) -> tuple[list[tuple[str, int]], int]:
    """``([(name, trainable count), ...], total)``: one row per adapted layer, one per CondLoRA shared map (named
    ``surm_condlora.<type>``; its layers own no parameters), one per module in ``modules_to_save`` and, if
    anything else is trainable, a row
    ``"(other trainable parameters)"``. The total is every trainable parameter of the model, counted once."""
    rows = [(name, count) for name, _, count, _ in _report_rows(model)]
    return rows, sum(count for _, count in rows)


def parameter_report(model: nn.Module) -> str:
    """A table of trainable parameters per adapted layer against the methods.md formula, with the total::

        layer                                 method     trainable  expected
        encoder.layer.0.attention.self.query  circulant         64        64
        ...
        total                                                  256       256
        trainable: 256 of 120,000 parameters (0.213%)
    """
    model = _unwrap(model)
    rows = _report_rows(model)
    header = ("layer", "method", "trainable", "expected")
    body = [(n, m, f"{t:,}", "-" if e is None else f"{e:,}", "" if e is None or e == t else "  <- differs")
            for n, m, t, e in rows]
    total = sum(t for _, _, t, _ in rows)
    expected = sum(e for _, _, _, e in rows if e is not None)
    body.append(("total", "", f"{total:,}", f"{expected:,}", ""))
    w = [max(len(str(r[i])) for r in [header, *body]) for i in range(4)]
    lines = [f"{header[0]:<{w[0]}}  {header[1]:<{w[1]}}  {header[2]:>{w[2]}}  {header[3]:>{w[3]}}"]
    lines += [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}{r[4]}" for r in body]
    n_all = sum(p.numel() for p in model.parameters())
    lines.append(f"trainable: {total:,} of {n_all:,} parameters ({100 * total / max(n_all, 1):.3f}%)")
    return "\n".join(lines)
