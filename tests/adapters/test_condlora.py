"""CondLoRA (docs/methods.md §3): both forms against their dense formulas, one map shared by every layer of a module
type (a step on it moves every layer; state_dict holds it once), gradients reaching the maps only, and the budget of
2 r d per module type independent of depth (RoBERTa-base query+value, r = 8: 24,576)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surm_ops.adapters.condlora import CondLoRAConfig, CondLoRALinear, CondLoRAMaps, condlora_group_key


def _layer(d_in=24, d_out=24, dtype=torch.float32, maps=None, name="layer", **options):
    return CondLoRALinear(nn.Linear(d_in, d_out).to(dtype), CondLoRAConfig(**options), name=name, maps=maps)


def _perturb(maps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in maps.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


def test_group_key_is_the_module_type():
    assert condlora_group_key("encoder.layer.3.attention.self.query") == "query"
    assert condlora_group_key("value") == "value"


@pytest.mark.parametrize("form,d_in,d_out", [("rectangular", 16, 40), ("rectangular", 40, 16),
                                             ("rectangular", 24, 24), ("square", 24, 24)])
def test_forms_match_their_dense_formulas(form, d_in, d_out):
    torch.manual_seed(0)
    layer = _layer(d_in, d_out, dtype=torch.float64, form=form, r=4, alpha=8.0)
    maps = layer.cond_maps
    _perturb(maps)
    w, ta, tb = layer.base.weight, maps.theta_A, maps.theta_B
    if form == "rectangular":
        assert ta.shape == (4, d_out) and tb.shape == (d_in, 4)
        a, b = ta @ w, w @ tb
    else:
        assert ta.shape == tb.shape == (4, d_in)
        a, b = ta @ w.T, w @ tb.T
    dw = 2.0 * b @ a
    torch.testing.assert_close(layer.delta_weight(), dw, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, d_in, dtype=torch.float64)
    torch.testing.assert_close(layer.delta(x), x @ dw.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ dw.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["rectangular", "square"])
def test_identity_at_init_gradients_reach_the_maps_only(form):
    torch.manual_seed(0)
    layer = _layer(form=form)
    x = torch.randn(6, 24)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.cond_maps.theta_B.grad.abs().max() > 0  # theta_B = 0 gets the first gradient
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"cond_maps.theta_A", "cond_maps.theta_B"}  # a standalone layer owns its maps
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.expected_parameters() == 2 * 8 * 24


def test_one_shared_map_across_layers_of_a_type():
    torch.manual_seed(0)
    maps = CondLoRAMaps(4, 24, 24)
    layers = nn.ModuleList(_layer(maps=maps, name=f"layer.{i}.query", r=4) for i in range(3))
    model = nn.Module()
    model.layers = layers
    model.surm_condlora = nn.ModuleDict({"query": maps})  # what the model-level inject registers
    assert all(layer.cond_maps is maps for layer in layers)
    assert list(layers[0].state_dict()) == ["base.weight", "base.bias"]  # not duplicated under each layer
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["surm_condlora.query.theta_A",
                                                                            "surm_condlora.query.theta_B"]
    xs = [torch.randn(5, 24) for _ in layers]
    # the shared gradient is the sum of every layer's contribution
    per_layer = []
    for layer, x in zip(layers, xs):
        maps.zero_grad()
        layer(x).square().sum().backward()
        per_layer.append(maps.theta_B.grad.clone())
    maps.zero_grad()
    sum(layer(x).square().sum() for layer, x in zip(layers, xs)).backward()
    torch.testing.assert_close(maps.theta_B.grad, sum(per_layer))
    # a step on the shared map moves every layer's update
    before = [layer.delta(x).detach().clone() for layer, x in zip(layers, xs)]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for layer, x, d in zip(layers, xs, before):
        assert (layer.delta(x) - d).abs().max() > 0


def test_budget_is_2rd_per_module_type_independent_of_depth():
    # RoBERTa-base query + value, r = 8: 12 layers of 768 x 768 per type.
    torch.manual_seed(0)
    maps = nn.ModuleDict()
    layers = []
    for i in range(12):
        for kind in ("query", "value"):
            name = f"encoder.layer.{i}.attention.self.{kind}"
            key = condlora_group_key(name)
            base = nn.Linear(768, 768)
            if key not in maps:
                maps[key] = CondLoRAMaps.for_linear(base, CondLoRAConfig(r=8))
            layers.append(CondLoRALinear(base, CondLoRAConfig(r=8), name=name, maps=maps[key]))
    assert sum(p.numel() for p in maps.parameters()) == 24_576
    assert sum(p.numel() for layer in layers for p in layer.parameters() if p.requires_grad) == 0
    assert layers[0].expected_parameters() == 2 * 8 * 768  # per type (LoRA: 294,912 over the 24 layers)


def test_merge_is_exact_and_uses_the_original_weight():
    torch.manual_seed(0)
    layer = _layer(16, 40, dtype=torch.float64)
    _perturb(layer.cond_maps)
    x = torch.randn(4, 16, dtype=torch.float64)
    y, dw, w0 = layer(x), layer.delta_weight(), layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.delta_weight(), dw, rtol=0, atol=0)  # factors come from W0, not W0 + dW
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0)


def test_float32_maps_on_bf16_layer():
    torch.manual_seed(0)
    layer = _layer(16, 40, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in layer.cond_maps.parameters())
    _perturb(layer.cond_maps)
    y = layer(torch.randn(4, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.cond_maps.parameters())


def test_shape_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"form='square' needs a square layer; layer 'layer' is 16 -> 40"):
        _layer(16, 40, form="square")
    with pytest.raises(ValueError, match=r"do not fit layer 'layer' \(16 -> 40"):
        _layer(16, 40, maps=CondLoRAMaps(8, 24, 24))
    with pytest.raises(ValueError, match="form must be one of"):
        CondLoRAConfig(form="diagonal")
