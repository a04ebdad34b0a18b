"""Layer-level cases: a frozen ``nn.Linear`` alone against the same layer with each adapter method.

Every layer is ``d -> d`` without bias, frozen weight in the suite's dtype, adapters built exactly as ``inject``
builds them (``METHODS[name](base, Config(**options))``: float32 adapter parameters on a bfloat16 base). Providers
(the ``label`` of a :class:`LayerSpec`): ``frozen`` (the bare layer), every registered method at a typical setting,
the SURM Adapter form around the layer, and, when ``peft`` is importable, PEFT's own LoRA (r = 16) and C3A (block
64) layers, built through ``peft.get_peft_model`` with their defaults (PEFT keeps adapter weights in float32), and
that C3A layer after ``surm_ops.peft.accelerate``.

Modes: ``"fwd"``, the forward under ``torch.no_grad()``; ``"full"``, a training step: the forward, then
``torch.autograd.grad`` for x and every trainable parameter (x needs a gradient, as in any layer but the first; the
frozen layer alone computes only ∂x). No optimizer step. Adapter parameters that start at zero are filled with small
random values first, so no product is timed on zeros.

Sizes: d = 768 with 256 tokens in float32 on CPU; d = 4096 with 16384 tokens in bfloat16 on GPU. The README
quotes each method's time over ``frozen`` and over ``lora-r16`` (dense LoRA at rank 16) from these rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import surm_ops.adapters  # noqa: F401  (registers every method)
from bench import cases, roofline
from surm_ops.adapters.adapter import AdapterConfig, SURMAdapter
from surm_ops.adapters.registry import METHODS

MODES = ("fwd", "full")


@dataclass(frozen=True)
class LayerSpec:
    label: str
    method: str | None = None           # a registry method, "adapter", "peft-lora", "peft-c3a"; None: frozen
    options: dict = field(default_factory=dict)
    fused: bool = True                  # False: the layer's ``fuse`` off (GPU only: on CPU nothing is fused)


LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec("frozen"),
    LayerSpec("lora-r8", "lora", {"r": 8}),
    LayerSpec("lora-r16", "lora", {"r": 16}),
    LayerSpec("lora-r32", "lora", {"r": 32}),
    LayerSpec("circulant", "circulant"),
    LayerSpec("circulant-factored", "circulant", {"factored": True}),
    LayerSpec("circulant-block-b64", "circulant", {"layout": "block", "block_size": 64}),
    LayerSpec("toeplitz", "toeplitz"),
    LayerSpec("toeplitz-symmetric", "toeplitz", {"symmetric": True}),
    LayerSpec("ldr-r1", "ldr", {"rank": 1}),
    LayerSpec("kronecker-r8", "kronecker", {"r": 8}),
    LayerSpec("rmlora-r8", "rmlora", {"r": 8}),
    LayerSpec("condlora-r8", "condlora", {"r": 8}),
    LayerSpec("sara-k16", "sara", {"rank": 16, "randomized": True}),   # randomized: only above d = 2048
    LayerSpec("mosara-k16", "mosara", {"rank": 16, "randomized": True}),
    LayerSpec("adapter-circulant", "adapter", {"structure": "circulant"}),
    # The same layers through base(x) + delta(x): what the fused kernel (structured_linear) saves, on a GPU.
    LayerSpec("circulant-unfused", "circulant", fused=False),
    LayerSpec("circulant-block-b64-unfused", "circulant", {"layout": "block", "block_size": 64}, fused=False),
    LayerSpec("toeplitz-unfused", "toeplitz", fused=False),
    LayerSpec("kronecker-r8-unfused", "kronecker", {"r": 8}, fused=False),
    LayerSpec("peft-lora-r16", "peft-lora", {"r": 16}),
    LayerSpec("peft-c3a-b64", "peft-c3a", {"block_size": 64}),
    # the same PEFT C3A layer after surm_ops.peft.accelerate (our block-circulant op, same parameters)
    LayerSpec("peft-c3a-b64-accelerated", "peft-c3a-accelerated", {"block_size": 64}),
)

QUICK_LABELS = ("frozen", "lora-r16", "circulant")


@dataclass(frozen=True)
class LayerShape:
    tokens: int
    d: int
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.tokens}x{self.d}->{self.d}"


def shape(dev: torch.device) -> LayerShape:
    return LayerShape(16384, 4096, torch.bfloat16) if dev.type == "cuda" else LayerShape(256, 768, torch.float32)


def selected(dev: torch.device, scope: str = "default") -> tuple[LayerSpec, ...]:
    """The layers of ``scope`` (bench/cases.py's scopes): all that can run here, or the three ``quick`` ones."""
    specs = tuple(s for s in LAYERS if not (s.method or "").startswith("peft-") or cases.peft_available())
    specs = tuple(s for s in specs if s.fused or dev.type == "cuda")
    return tuple(s for s in specs if s.label in QUICK_LABELS) if scope == "quick" else specs


def groups(dev: torch.device, scope: str = "default") -> list[cases.Group]:
    """One group per mode: every selected layer, timed interleaved (``fwd`` only with ``quick``). Building a
    group's layers also records their trainable parameter counts in its rows."""
    shp = shape(dev)
    specs = selected(dev, scope)
    out = []
    for mode in (("fwd",) if scope == "quick" else MODES):
        rows = {s.label: fields(s, mode, shp) for s in specs}

        def build_all(mode=mode, rows=rows):
            fns = {}
            for s in specs:
                fns[s.label], rows[s.label]["params"] = build(s, mode, dev, shp)
            return fns
        out.append(cases.Group(f"layer {shp.label} {roofline.dtype_name(shp.dtype)} {mode}", rows, build_all))
    return out


class _Holder(nn.Module):  # PEFT targets modules by name inside a model
    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _peft(base: nn.Linear, spec: LayerSpec) -> nn.Module:
    import peft

    if spec.method == "peft-lora":
        config = peft.LoraConfig(r=spec.options["r"], lora_alpha=2 * spec.options["r"], target_modules=["layer"])
    else:
        config = peft.C3AConfig(block_size=spec.options["block_size"], target_modules=["layer"])
    model = peft.get_peft_model(_Holder(base), config)
    if spec.method == "peft-c3a-accelerated":
        import surm_ops.peft

        surm_ops.peft.accelerate(model)
    return model.base_model.model.layer


def make_layer(spec: LayerSpec, d: int, dev: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The frozen base (seeded) with ``spec``'s adapter; zero-initialised adapter parameters made random."""
    torch.manual_seed(seed)
    base = nn.Linear(d, d, bias=False, device=dev, dtype=dtype).requires_grad_(False)
    if spec.method is None:
        return base
    if spec.method.startswith("peft-"):
        layer = _peft(base, spec)
    elif spec.method == "adapter":
        layer = SURMAdapter(base, AdapterConfig(**spec.options))
    else:
        cls = METHODS[spec.method]
        layer = cls(base, cls.config_class(**spec.options))
        layer.fuse = spec.fused
    layer = layer.to(dev)
    with torch.no_grad():
        for p in trainable(layer):
            if not p.any():
                p.normal_(0, 0.02)
    return layer


def trainable(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


def build(spec: LayerSpec, mode: str, dev: torch.device, shp: LayerShape,
          seed: int = 0) -> tuple[Callable[[], object], int]:
    """A zero-argument callable running ``spec``'s layer in ``mode``, and the layer's trainable parameter count."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    layer = make_layer(spec, shp.d, dev, shp.dtype, seed)
    n_params = sum(p.numel() for p in trainable(layer))
    x = cases._randn((shp.tokens, shp.d), seed + 10, dev, shp.dtype)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return layer(x)
        return run, n_params
    g = cases._randn((shp.tokens, shp.d), seed + 11, dev, shp.dtype)
    leaves = [x.requires_grad_(), *trainable(layer)]
    return (lambda: torch.autograd.grad(layer(x), leaves, g)), n_params


def fields(spec: LayerSpec, mode: str, shp: LayerShape) -> dict:
    """A layer row's fields other than timing and parameter count (bytes and FLOPs: roofline.py)."""
    return {
        "suite": "layer", "op": "linear", "provider": spec.label, "backend": spec.method or "", "mode": mode,
        "dtype": roofline.dtype_name(shp.dtype), "shape": shp.label,
        "bytes": roofline.layer_bytes(shp.tokens, shp.d, shp.d, shp.dtype.itemsize, shp.dtype.itemsize, mode),
        "flops": roofline.layer_flops(shp.tokens, shp.d, shp.d, mode),
    }
