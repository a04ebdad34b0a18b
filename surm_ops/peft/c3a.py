"""PEFT's own C3A adapters computed by surm_ops' block-circulant op.

PEFT's ``C3ALinear`` adds ``BlockCircularConvolution(x, kernel) / in_features`` (complex FFTs and a per-frequency
einsum, hand-written backward). That product is a block-circulant one: block (P, Q) of C3A's matrix is
``circulant(kernel[P, Q]).T``, i.e. ``circulant(c)`` with ``c[i] = kernel[P, Q, -i mod b]``. :func:`accelerate`
gives each C3A layer a forward that computes exactly that with :func:`surm_ops.circulant_matmul` (gradients flow
to the same ``c3a_kernel`` parameters through the index gather); parameters, checkpoints and ``merge`` (which
uses PEFT's ``get_delta_weight``) are untouched. :func:`restore` undoes it.

Gradients: surm_ops' op is differentiated exactly (it passes ``torch.autograd.gradcheck``). PEFT 0.21.2's
hand-written backward returns a wrong gradient for the layer *input* (the kernel gradient is right), which only
matters for adapters below another C3A layer; so an accelerated model's gradients there differ from plain PEFT's,
and are the true ones.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

import surm_ops

_FLAG = "_surm_accelerated"


def c3a_filter(kernel: torch.Tensor) -> torch.Tensor:
    """C3A's kernel (p, q, b) as the (p, q, b) filter of :func:`surm_ops.circulant_matmul` for the same matrix."""
    b = kernel.shape[-1]
    return kernel[..., (-torch.arange(b, device=kernel.device)) % b]


def _forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    # The control flow of PEFT 0.21's C3ALinear.forward, with its product swapped. That forward feeds each active
    # adapter's output (not x) to the next one and divides by the current width; it is kept as is so results match.
    previous_dtype = x.dtype
    if self.disable_adapters:
        if self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
    elif self.merged:
        result = self.base_layer(x, *args, **kwargs)
    else:
        result = self.base_layer(x, *args, **kwargs)
        x = x.to(torch.float32)
        for active_adapter in self.active_adapters:
            if active_adapter not in self.c3a_kernel.keys():
                continue
            kernel = self.c3a_kernel[active_adapter].to(torch.float32)
            x = surm_ops.circulant_matmul(x, c3a_filter(kernel)) / x.size(-1)
            result = result + x.to(result.dtype)
    return result.to(previous_dtype)


def _c3a_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.c3a import C3ALinear

    return [m for m in model.modules() if isinstance(m, C3ALinear)]


def accelerate(model: nn.Module) -> int:
    """Compute every PEFT ``C3ALinear`` of ``model`` with surm_ops' block-circulant op; returns how many layers
    changed (0 when none is left to change: calling it twice is harmless).

    Same parameters, checkpoints and merges; outputs equal PEFT's within float32 rounding, gradients are exact
    (see the module docstring for where PEFT's own differ).

    Example::

        >>> from peft import C3AConfig, get_peft_model
        >>> model = get_peft_model(base, C3AConfig(block_size=64, target_modules=["q_proj", "v_proj"]))
        >>> surm_ops.peft.accelerate(model)
        24
        >>> surm_ops.peft.restore(model)    # back to PEFT's computation
        24
    """
    changed = 0
    for layer in _c3a_layers(model):
        if not getattr(layer, _FLAG, False):
            layer.forward = types.MethodType(_forward, layer)
            setattr(layer, _FLAG, True)
            changed += 1
    return changed


def restore(model: nn.Module) -> int:
    """Undo :func:`accelerate`: PEFT's own C3A computation again; returns how many layers changed back."""
    changed = 0
    for layer in _c3a_layers(model):
        if getattr(layer, _FLAG, False):
            del layer.forward
            delattr(layer, _FLAG)
            changed += 1
    return changed
