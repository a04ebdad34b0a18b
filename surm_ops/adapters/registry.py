"""Method name -> adapted-layer class. Each method module registers its class on import."""

from __future__ import annotations

from surm_ops.adapters.base import AdaptedLinear

METHODS: dict[str, type[AdaptedLinear]] = {}


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


def make_config(method: str, **options):
    """The method's typed config from keyword options; unknown or invalid options raise ``ValueError``."""
    cls = method_class(method).config_class
    try:
        return cls(**options)
    except TypeError as err:  # an unexpected keyword
        raise ValueError(f"{method}: {err}") from None
