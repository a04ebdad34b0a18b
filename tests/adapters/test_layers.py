"""The bar of docs/methods.md §5 for every registered method, square and rectangular: dW = 0 at init with a nonzero
gradient, only adapter parameters trainable, the parameter count of the formula, ``delta`` equal to the dense
``x @ dW.T``, merge equal to the unmerged forward, unmerge exact, and float32 adapters on a bf16 layer."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import surm_ops.adapters
from surm_ops.adapters.registry import METHODS

for _mod in pkgutil.iter_modules(surm_ops.adapters.__path__):  # every method module registers itself on import
    importlib.import_module(f"surm_ops.adapters.{_mod.name}")

# Options per method that make the layer valid for the (d_in, d_out) shapes below.
OPTIONS = {
    "lora": [{}, {"r": 2, "alpha": 4.0}],
    "rmlora": [{}],
    "circulant": [{}, {"factored": True}, {"layout": "block", "block_size": 4},
                  {"layout": "block", "block_size": 4, "factored": True}],
    "toeplitz": [{}, {"symmetric": True}],
    "ldr": [{}, {"rank": 2}, {"layout": "block", "block_size": 8, "rank": 2}],
    "kronecker": [{"r": 4}],
    "condlora": [{}],
    "sara": [{}],
    "mosara": [{}],
}
SHAPES = [(24, 24), (16, 40), (40, 16)]


def _cases():
    cases = []
    for method in sorted(METHODS):
        for options in OPTIONS.get(method, [{}]):
            for d_in, d_out in SHAPES:
                if method == "condlora" and options.get("form") == "square" and d_in != d_out:
                    continue
                label = f"{method}-{'-'.join(f'{k}={v}' for k, v in options.items()) or 'default'}-{d_in}x{d_out}"
                cases.append(pytest.param(method, options, d_in, d_out, id=label))
    return cases


def _layer(method, options, d_in, d_out, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out).to(dtype)
    return METHODS[method](base, METHODS[method].config_class(**options), name="layer")


def _perturb(layer):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


def _adapter_params(layer):
    return [p for p in layer.parameters() if p.requires_grad]


@pytest.mark.parametrize("method,options,d_in,d_out", _cases())
def test_identity_at_init_with_live_gradient(method, options, d_in, d_out):
    layer = _layer(method, options, d_in, d_out)
    x = torch.randn(6, d_in)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    grads = [p.grad for p in _adapter_params(layer)]
    assert any(g is not None and g.abs().max() > 0 for g in grads), "dead initialisation: every gradient is zero"


@pytest.mark.parametrize("method,options,d_in,d_out", _cases())
def test_only_adapter_parameters_train_and_count_matches_formula(method, options, d_in, d_out):
    layer = _layer(method, options, d_in, d_out)
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    trainable = sum(p.numel() for p in _adapter_params(layer))
    assert trainable == layer.expected_parameters()


@pytest.mark.parametrize("method,options,d_in,d_out", _cases())
def test_delta_matches_dense_update_and_merge_is_exact(method, options, d_in, d_out):
    layer = _layer(method, options, d_in, d_out, dtype=torch.float64)
    _perturb(layer)
    x = torch.randn(2, 3, d_in, dtype=torch.float64)
    if not layer.mergeable:
        with pytest.raises(RuntimeError, match="cannot be merged"):
            layer.merge()
        return
    dw = layer.delta_weight()
    assert dw.shape == (d_out, d_in)
    torch.testing.assert_close(layer.delta(x), x @ dw.T, rtol=1e-9, atol=1e-10)
    before = layer.base.weight.detach().clone()
    y = layer(x)
    for _ in range(3):
        layer.merge()
        torch.testing.assert_close(layer(x), y, rtol=1e-9, atol=1e-10)
        layer.unmerge()
        assert torch.equal(layer.base.weight, before)


@pytest.mark.parametrize("method,options,d_in,d_out", _cases())
def test_float32_adapter_on_bf16_layer(method, options, d_in, d_out):
    layer = _layer(method, options, d_in, d_out, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in _adapter_params(layer))
    _perturb(layer)
    x = torch.randn(4, d_in, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in _adapter_params(layer))


@pytest.mark.parametrize("method,options,pattern", [
    ("kronecker", {"r": 5}, r"r=5 must divide both dimensions of layer 'layer' \(24 -> 24\)"),
    ("circulant", {"layout": "block", "block_size": 7}, r"block_size=7 must divide both dimensions of layer 'layer'"),
    ("circulant", {"layout": "block"}, r"layer 'layer' \(24 -> 24\) needs block_size"),
    ("ldr", {"layout": "block", "block_size": 5}, r"block_size=5 must divide"),
])
def test_unexpressible_layer_names_the_layer(method, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        _layer(method, options, 24, 24)


@pytest.mark.parametrize("method,options,pattern", [
    ("lora", {"r": 0}, "r must be positive"),
    ("lora", {"dropout": 1.5}, "dropout must be in"),
    ("circulant", {"layout": "diagonal"}, "layout must be one of"),
    ("ldr", {"rank": 0}, "rank must be positive"),
    ("kronecker", {"alpha": -1.0}, "alpha must be positive"),
])
def test_invalid_config_raises(method, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        METHODS[method].config_class(**options)


def test_adapting_a_non_linear_layer_raises():
    with pytest.raises(TypeError, match=r"can only adapt nn.Linear layers \(or transformers Conv1D.*; conv is Conv1d"):
        METHODS["lora"](nn.Conv1d(2, 2, 1), METHODS["lora"].config_class(), name="conv")
    with pytest.raises(TypeError, match=r"conv \(Conv1d\) has no 2-D weight"):
        METHODS["lora"](nn.Conv1d(2, 2, 1), METHODS["lora"].config_class(), name="conv", fan_in_fan_out=True)
    with pytest.raises(ValueError, match="is an nn.Linear.*fan_in_fan_out=True is only"):
        METHODS["lora"](nn.Linear(2, 2), METHODS["lora"].config_class(), fan_in_fan_out=True)
