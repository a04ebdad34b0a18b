"""Method name -> adapted-layer class. Each method module registers its class on import.

:func:`build_config` is the one place where keyword options become a method's typed config: unknown names are listed
against the valid ones (with the closest suggested) and every value is checked against its field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from surm_ops.adapters.base import AdaptedLinear

METHODS: dict[str, type[AdaptedLinear]] = {}

# PEFT's names for our options, suggested when a user brings a PEFT habit (only where the target field exists).
_PEFT_NAMES = {"lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r", "lora_r": "r"}


def register(cls: type[AdaptedLinear]) -> type[AdaptedLinear]:
    if cls.method in METHODS:
        raise ValueError(f"adapter method {cls.method!r} is registered twice")
    METHODS[cls.method] = cls
    return cls


def method_class(method: str) -> type[AdaptedLinear]:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {', '.join(sorted(METHODS))}") from None


def _accepts(kind: Any, value: Any) -> bool:
    """Whether value fits the annotation kind (int, float, str, bool and their ``X | None`` unions)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an int is a fine float (alpha=16)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(k) for k in typing.get_args(kind))
    return "None" if kind is type(None) else getattr(kind, "__name__", str(kind))


def build_config(method: str, config_class: type, options: dict[str, Any]) -> Any:
    """``config_class(**options)`` after checking every option's name and type; ``ValueError`` naming the option.

    Example: ``build_config("lora", LoRAConfig, {"rank": 4})`` raises ``ValueError: lora: unknown option 'rank'
    (did you mean 'r'?); valid options: r, alpha, dropout``; ``{"r": "8"}`` raises ``lora: option r must be int;
    got '8' (str)``.
    """
    fields = [f.name for f in dataclasses.fields(config_class)]
    hints = typing.get_type_hints(config_class)
    for name, value in options.items():
        if name not in fields:
            guess = _PEFT_NAMES.get(name) if _PEFT_NAMES.get(name) in fields else None
            guess = guess or next(iter(difflib.get_close_matches(name, fields, n=1, cutoff=0.5)), None)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise ValueError(f"{method}: unknown option {name!r}{hint}; valid options: {', '.join(fields)}")
        if not _accepts(hints[name], value):
            raise ValueError(f"{method}: option {name} must be {_type_name(hints[name])}; got {value!r} "
                             f"({type(value).__name__})")
    return config_class(**options)


def make_config(method: str, **options):
    """The method's typed config from keyword options; unknown or invalid options raise ``ValueError``."""
    return build_config(method, method_class(method).config_class, options)
