"""CondLoRA (Kim et al., LREC-COLING 2024, arXiv 2403.14946): one linear map per module type, shared by every layer
of that type, turns each layer's frozen weight W_l into its LoRA factors; ``dW_l = (alpha / r) B_l A_l``.

Forms (docs/methods.md §3), with W_l of shape (d_out, d_in):

* ``form="rectangular"`` (our choice, any shape): ``A_l = Theta_A W_l`` with Theta_A (r, d_out) and
  ``B_l = W_l Theta_B`` with Theta_B (d_in, r); r (d_in + d_out) parameters per module type.
* ``form="square"`` (the authors' code, d_in = d_out = d only): ``A_l = Theta_A W_l^T``, ``B_l = W_l Theta_B^T``
  with Theta_A, Theta_B (r, d); 2 r d parameters per module type.

Theta_A is Kaiming-uniform and Theta_B = 0, so dW_l = 0 at init and Theta_B gets the first gradient. A_l and B_l
are recomputed from W_l (cast to float32) on every forward; W_l is frozen, so gradients reach Theta only.

Sharing, for the model-level inject: layers of one type get the same :class:`CondLoRAMaps` object, keyed by
:func:`condlora_group_key`. A layer holds shared maps as a plain attribute, not a submodule, so the shared tensors
are not duplicated in ``state_dict`` under every layer; the inject must register each map once on the model
(``model.surm_condlora[key]``, an ``nn.ModuleDict``) so that ``model.parameters()``, ``.to()`` and ``state_dict``
see it exactly once. A layer built without ``maps`` owns its maps and registers them as its submodule ``cond_maps``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from surm_ops.adapters._util import adapter_dtype, apply_keeping_float, check_choice, check_positive
from surm_ops.adapters.base import AdaptedLinear, linear_dims
from surm_ops.adapters.registry import register


@dataclass
class CondLoRAConfig:
    """r: rank; alpha: scale numerator (scale = alpha / r); form: "rectangular" (any shape) or "square"."""

    r: int = 8
    alpha: float = 16.0
    form: str = "rectangular"

    def __post_init__(self):
        check_positive("condlora", r=self.r, alpha=self.alpha)
        check_choice("condlora", "form", self.form, ("rectangular", "square"))


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


def condlora_group_key(name: str) -> str:
    """The module type that shares one map: the last component of the qualified name.

    >>> condlora_group_key("encoder.layer.3.attention.self.query")
    'query'
    """
    return name.rsplit(".", 1)[-1]


class CondLoRAMaps(nn.Module):
    """The shared maps (Theta_A, Theta_B) of one module type and shape.

    Shapes: rectangular: ``theta_A`` (r, d_out), ``theta_B`` (d_in, r); square: both (r, d).

    Example (two layers of one type sharing one map)::

        >>> maps = CondLoRAMaps(8, 768, 768)
        >>> q3 = CondLoRALinear(nn.Linear(768, 768), CondLoRAConfig(r=8), maps=maps)
        >>> q4 = CondLoRALinear(nn.Linear(768, 768), CondLoRAConfig(r=8), maps=maps)
    """

    def __init__(self, r: int, d_in: int, d_out: int, form: str = "rectangular", *,
                 dtype: torch.dtype | None = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        check_choice("condlora", "form", form, ("rectangular", "square"))
        if form == "square" and d_in != d_out:
            raise ValueError(f"condlora: form='square' needs d_in == d_out; got {d_in} -> {d_out}")
        self.r, self.d_in, self.d_out, self.form = r, d_in, d_out, form
        kw = dict(dtype=dtype, device=device)
        a_shape, b_shape = ((r, d_out), (d_in, r)) if form == "rectangular" else ((r, d_in), (r, d_in))
        self.theta_A = nn.Parameter(torch.empty(a_shape, **kw))
        self.theta_B = nn.Parameter(torch.zeros(b_shape, **kw))
        nn.init.kaiming_uniform_(self.theta_A, a=math.sqrt(5))

    @classmethod
    def for_linear(cls, base: nn.Module, config: CondLoRAConfig, *, fan_in_fan_out: bool | None = None
                   ) -> CondLoRAMaps:
        """Maps fitting ``base`` (an nn.Linear or Conv1D; float32, or float64 for a float64 layer; on its device)."""
        d_in, d_out, _ = linear_dims(base, fan_in_fan_out, method="condlora")
        return cls(config.r, d_in, d_out, config.form, dtype=adapter_dtype(base.weight.dtype),
                   device=base.weight.device)

    def _apply(self, fn, recurse=True):
        return apply_keeping_float(self, fn, recurse, super()._apply)

    def factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of shapes (..., r, d_in) and (..., d_out, r) from weight (..., d_out, d_in) in the maps' dtype.

        A leading stack dimension generates the factors of several layers in one batched matmul."""
        w = weight.to(self.theta_A.dtype)
        if self.form == "rectangular":
            return self.theta_A @ w, w @ self.theta_B
        return self.theta_A @ w.mT, w @ self.theta_B.T

    def extra_repr(self) -> str:
        return f"r={self.r}, d_in={self.d_in}, d_out={self.d_out}, form={self.form}"


@register
class CondLoRALinear(AdaptedLinear):
    """A layer whose LoRA factors are generated from its frozen weight by (possibly shared) :class:`CondLoRAMaps`.

    Args:
        base, config, name: as every adapted layer.
        maps: the module type's shared maps; ``None`` creates (and registers) the layer's own.

    ``delta(x) = (alpha / r) (x A_l^T) B_l^T``: two skinny matmuls in float32, never the dense dW.
    """

    method = "condlora"
    config_class = CondLoRAConfig

    @classmethod
    def build_layers(cls, matched, config):
        """``inject``'s layers: one :class:`CondLoRAMaps` per module type, shared by every layer of that type and
        registered on the model (``surm_condlora``)."""
        # CondLoRA: one maps module per module type, shared by every layer of that type. The type is the last name
        # component; where layers of one name differ in shape (GPT-2's attn.c_proj 32 -> 32, mlp.c_proj 128 -> 32)
        # each shape is its own type, keyed "<name>_<d_in>x<d_out>".
        dims = {}
        for name, m, _ in matched:
            try:
                dims[name] = linear_dims(m, None, name, cls.method)[:2]
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
        return layers, {keys[k]: v for k, v in maps.items()}, {}

    def __init__(self, base: nn.Module, config: CondLoRAConfig, name: str = "",
                 maps: CondLoRAMaps | None = None, *, fan_in_fan_out: bool | None = None) -> None:
        super().__init__(base, config, name, fan_in_fan_out=fan_in_fan_out)
        d_in, d_out = self.in_features, self.out_features
        if config.form == "square" and d_in != d_out:
            raise ValueError(f"condlora: form='square' needs a square layer; layer {name!r} is {d_in} -> {d_out} "
                             "(use form='rectangular')")
        if maps is None:
            # owned: a registered submodule
            self.cond_maps = CondLoRAMaps.for_linear(base, config, fan_in_fan_out=self.fan_in_fan_out)
        else:
            if (maps.r, maps.d_in, maps.d_out, maps.form) != (config.r, d_in, d_out, config.form):
                raise ValueError(f"condlora: the shared maps ({maps.extra_repr()}) do not fit layer {name!r} "
                                 f"({d_in} -> {d_out}, r={config.r}, form={config.form}); layers of one module "
                                 "type must share a shape")
            object.__setattr__(self, "cond_maps", maps)  # shared: registered once on the model, not here
        self.scale = config.alpha / config.r

    def _frozen_weight(self) -> torch.Tensor:
        # When merged the base weight holds W0 + dW; the factors are defined by W0.
        w = self._original_weight if self.merged else self.base.weight
        return w.T if self.fan_in_fan_out else w

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_l, B_l)``, shapes (r, d_in) and (d_out, r), differentiable in the maps only."""
        return self.cond_maps.factors(self._frozen_weight())

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.factors()
        return F.linear(F.linear(x.to(a.dtype), a), b) * self.scale

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return (b @ a) * self.scale

    def expected_parameters(self) -> int:
        """The maps' parameter count: ``2 r d`` (square) or ``r (d_in + d_out)`` (rectangular).

        This is per *module type*: a model's CondLoRA budget is the sum over its types, not over its layers."""
        r, d_in, d_out = self.config.r, self.in_features, self.out_features
        return 2 * r * d_in if self.config.form == "square" else r * (d_in + d_out)
