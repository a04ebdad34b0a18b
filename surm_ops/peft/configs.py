"""One PEFT config class per surm_ops method, built from the method's own option dataclass.

Each class (e.g. :class:`CirculantConfig`) is a ``peft.PeftConfig`` dataclass whose fields are the PEFT targeting
fields below plus exactly the options of the surm_ops method (same names, same defaults; the option rules stay in
``surm_ops.adapters``, which validates them when the config is created). ``config(method, **options)`` returns the
right one.

PEFT fields: ``target_modules`` (list of name suffixes, or a regular expression matched against the whole name),
``exclude_modules``, ``modules_to_save`` (extra modules trained and saved whole), ``layers_to_transform`` /
``layers_pattern`` (as in PEFT's LoRA), ``fan_in_fan_out`` (target weights stored (in, out), e.g. GPT-2's
``Conv1D``; detected automatically for ``Conv1D``).

Example::

    >>> from surm_ops import peft as sp
    >>> cfg = sp.config("circulant", layout="block", block_size=64, target_modules=["q_proj", "v_proj"])
    >>> type(cfg).__name__, cfg.peft_type.value
    ('CirculantConfig', 'SURM_CIRCULANT')
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from peft.config import PeftConfig

from surm_ops.adapters.adapter import ADAPTER_METHOD, AdapterConfig
from surm_ops.adapters.registry import METHODS
from surm_ops.peft._peft_type import add_peft_type

CLASS_NAMES = {
    "circulant": "CirculantConfig",
    "toeplitz": "ToeplitzConfig",
    "ldr": "LDRConfig",
    "kronecker": "KroneckerConfig",
    "lora": "LoRAConfig",
    "rmlora": "RMLoRAConfig",
    "condlora": "CondLoRAConfig",
    "sara": "SARAConfig",
    "mosara": "MoSARAConfig",
    ADAPTER_METHOD: "AdapterConfig",
}
"""surm_ops method name -> PEFT config class name (in :mod:`surm_ops.peft`)."""

_PEFT_FIELDS = [
    ("target_modules", list[str] | str | None, field(default=None)),
    ("exclude_modules", list[str] | str | None, field(default=None)),
    ("modules_to_save", list[str] | None, field(default=None)),
    ("layers_to_transform", list[int] | int | None, field(default=None)),
    ("layers_pattern", list[str] | str | None, field(default=None)),
    ("fan_in_fan_out", bool, field(default=False)),
    ("target_parameters", list[str] | None, field(default=None)),  # read by PEFT's matcher; unsupported here
]


def peft_type_name(method: str) -> str:
    """The ``PeftType`` value of a method: ``SURM_<METHOD>`` (distinct from any PEFT built-in)."""
    return f"SURM_{method.upper()}"


def _option_class(method: str) -> type:
    return AdapterConfig if method == ADAPTER_METHOD else METHODS[method].config_class


def surm_options(cfg: PeftConfig) -> Any:
    """The surm_ops option dataclass (e.g. ``surm_ops.adapters.CirculantConfig``) held by a PEFT config."""
    cls = _option_class(cfg.surm_method)
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def _post_init(self) -> None:
    PeftConfig.__post_init__(self)
    self.peft_type = add_peft_type(peft_type_name(self.surm_method))
    if isinstance(self.target_modules, list):
        self.target_modules = set(self.target_modules)
    if isinstance(self.target_modules, str) and (self.layers_to_transform is not None or self.layers_pattern):
        raise ValueError(f"{type(self).__name__}: layers_to_transform / layers_pattern need target_modules as a "
                         "list, not a regular expression")
    if self.target_parameters:
        raise ValueError(f"{type(self).__name__}: target_parameters is not supported; use target_modules")
    surm_options(self)  # the method's own rules raise ValueError naming the option


def _make_class(method: str) -> type[PeftConfig]:
    options = _option_class(method)
    taken = {name for name, _, _ in _PEFT_FIELDS} | {f.name for f in dataclasses.fields(PeftConfig)}
    clash = [f.name for f in dataclasses.fields(options) if f.name in taken]
    if clash:
        raise TypeError(f"{method}: options {clash} collide with PEFT config fields")
    own = [(f.name, f.type, field(default=f.default)) for f in dataclasses.fields(options)]
    name = CLASS_NAMES[method]
    cls = dataclasses.make_dataclass(name, own + _PEFT_FIELDS, bases=(PeftConfig,),
                                     namespace={"__post_init__": _post_init, "surm_method": method})
    cls.__module__ = __name__
    cls.__doc__ = (f"PEFT config of the surm_ops {method!r} method: the PEFT targeting fields (see "
                   f":mod:`surm_ops.peft.configs`) and the method's options:\n\n{options.__doc__ or ''}")
    return cls


CONFIGS: dict[str, type[PeftConfig]] = {m: _make_class(m) for m in CLASS_NAMES}
"""surm_ops method name -> its PEFT config class."""

if set(CONFIGS) != {*METHODS, ADAPTER_METHOD}:  # a method added to surm_ops.adapters must be added here too
    raise RuntimeError(f"surm_ops.peft covers {sorted(CONFIGS)}, surm_ops.adapters has "
                       f"{sorted({*METHODS, ADAPTER_METHOD})}")


def config(method: str, **options: Any) -> PeftConfig:
    """The PEFT config of ``method`` (a surm_ops method name, e.g. ``"circulant"``, ``"sara"``) from keyword options.

    ``options`` are the method's own options plus the PEFT fields (``target_modules``, ``modules_to_save``, ...).
    An unknown method or option, or an invalid value, raises ``ValueError`` naming it.
    """
    if method not in CONFIGS:
        raise ValueError(f"unknown surm_ops method {method!r}; expected one of {', '.join(sorted(CONFIGS))}")
    try:
        return CONFIGS[method](**options)
    except TypeError as err:  # an unexpected keyword
        raise ValueError(f"{method}: {err}") from None
