"""``inject``: replace a model's targeted layers by adapted ones, atomically, and guard what would break them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

import surm_ops
from surm_ops.adapters.discovery import (
    _FLAGS_ATTR,
    ADAPTED_TYPES,
    CONDLORA_ATTR,
    CONFIG_ATTR,
    WRAPPERS,
    _adapter_parameters,
    _find_targets,
    _listing,
    _make_config,
)
from surm_ops.adapters.files import _jsonable
from surm_ops.adapters.registry import method_class


def _build(method: str, config: Any, matched) -> tuple[dict[int, nn.Module], dict[str, nn.Module], dict]:
    """New layers keyed by the id of the module they replace, shared modules (CondLoRA's maps) and resolved
    metadata (SARA's budget): the method's own ``build_layers`` decides."""
    if method in WRAPPERS:
        return {id(m): WRAPPERS[method](m, config, name) for name, m, _ in matched}, {}, {}
    return method_class(method).build_layers(matched, config)


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
