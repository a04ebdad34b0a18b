"""Merging adapters into their frozen weights, exactly undoing it, and ``unload``: a plain model again."""

from __future__ import annotations

from torch import nn

from surm_ops.adapters.base import AdaptedLinear
from surm_ops.adapters.discovery import (
    _FLAGS_ATTR,
    ADAPTED_TYPES,
    CONDLORA_ATTR,
    CONFIG_ATTR,
    _injected_root,
    _listing,
    _require_layers,
    _shared_weights,
    _unwrap,
)


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

_merge = merge  # unload's argument is named merge


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
        _merge(root)
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
