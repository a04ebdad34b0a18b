"""The SURM adapter form (docs/methods.md §1.3): ``out + GELU(M drop(out)) + bias`` for every structure — identity at
init with a live gradient, the dense oracle, gradcheck, the parameter formula, non-mergeable, config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from surm_ops.adapters.adapter import STRUCTURES, AdapterConfig, SURMAdapter, default_kron_factor

CASES = [("circulant", {}), ("toeplitz", {}), ("ldr", {}), ("ldr", {"rank": 3}), ("kronecker", {}),
         ("kronecker", {"kron_factor": 2})]
IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in CASES]


def _adapter(structure, options, n=24, d_in=16, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return SURMAdapter(nn.Linear(d_in, n).to(dtype), AdapterConfig(structure=structure, **options), name="layer")


def _perturb(adapter):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


def test_every_structure_is_covered():
    assert {s for s, _ in CASES} == set(STRUCTURES)


@pytest.mark.parametrize("structure,options", CASES, ids=IDS)
def test_identity_at_init_with_a_live_gradient(structure, options):
    adapter = _adapter(structure, options)
    x = torch.randn(2, 5, 16)
    y = adapter(x)
    assert torch.equal(y, adapter.module(x))
    assert torch.equal(adapter.matrix(), torch.zeros(24, 24))
    y.square().sum().backward()
    assert adapter.module.weight.grad is None and not adapter.module.weight.requires_grad
    grads = {n: p.grad for n, p in adapter.named_parameters() if p.requires_grad}
    assert grads["adapter_bias"].abs().max() > 0
    assert any(g.abs().max() > 0 for n, g in grads.items() if n != "adapter_bias"), "dead initialisation of M"


@pytest.mark.parametrize("structure,options", CASES, ids=IDS)
def test_forward_matches_the_dense_oracle(structure, options):
    adapter = _adapter(structure, options)
    _perturb(adapter)
    x = torch.randn(3, 16)
    out = adapter.module(x)
    expected = out + F.gelu(out @ adapter.matrix().T) + adapter.adapter_bias
    torch.testing.assert_close(adapter(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("structure,options", CASES, ids=IDS)
def test_gradcheck_float64(structure, options):
    adapter = _adapter(structure, options, n=12, d_in=6, dtype=torch.float64)
    _perturb(adapter)
    params = [p for p in adapter.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float64 for p in params)
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    names = [n for n, p in adapter.named_parameters() if p.requires_grad]

    def f(x, *ps):
        return torch.func.functional_call(adapter, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("structure,options,expected", [
    ("circulant", {}, 3 * 24), ("toeplitz", {}, 3 * 24 - 1), ("ldr", {}, 2 * 24 + 24), ("ldr", {"rank": 3}, 7 * 24),
    ("kronecker", {}, 3 * 24), ("kronecker", {"kron_factor": 2}, 3 * 24)])
def test_parameter_count_matches_the_formula(structure, options, expected):
    adapter = _adapter(structure, options)
    assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) == adapter.expected_parameters() == expected


def test_default_kron_factor_is_the_divisor_closest_to_sqrt_n():
    assert [default_kron_factor(n) for n in (1, 7, 24, 64, 768)] == [1, 1, 4, 8, 24]
    adapter = _adapter("kronecker", {})
    assert adapter.kron_factor == 4 and adapter.kron_A.shape == (4, 6) and adapter.kron_B.shape == (6, 4)


def test_half_precision_module_keeps_float32_adapter():
    adapter = _adapter("circulant", {}, dtype=torch.bfloat16)
    assert adapter.a.dtype == torch.float32
    _perturb(adapter)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    y = adapter(x)
    assert y.dtype == torch.bfloat16
    out = adapter.module(x)
    expected = out.float() + F.gelu(out.float() @ adapter.matrix().T) + adapter.adapter_bias
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)


def test_wraps_any_module_with_a_tensor_output():
    norm = SURMAdapter(nn.LayerNorm(10), AdapterConfig())
    assert norm.features == 10 and norm(torch.randn(4, 10)).shape == (4, 10)
    emb = SURMAdapter(nn.Embedding(7, 12), AdapterConfig(structure="toeplitz"))
    assert emb(torch.tensor([[1, 2, 3]])).shape == (1, 3, 12)
    seq = SURMAdapter(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), AdapterConfig(features=6), name="mlp")
    assert seq(torch.randn(2, 4)).shape == (2, 6)
    with pytest.raises(ValueError, match=r"cannot infer the output size of 'mlp'.*features=n"):
        SURMAdapter(nn.Sequential(nn.Linear(4, 6)), AdapterConfig(), name="mlp")
    wrong = SURMAdapter(nn.Sequential(nn.Linear(4, 6)), AdapterConfig(features=5), name="mlp")
    with pytest.raises(ValueError, match=r"'mlp' returned shape \(2, 6\)"):
        wrong(torch.randn(2, 4))


def test_a_tuple_output_is_adapted_on_its_first_element_and_other_outputs_are_a_clear_error():
    class Pair(nn.Module):
        out_features = 4

        def forward(self, x):
            return x, x.sum()

    torch.manual_seed(0)
    layer = SURMAdapter(Pair(), AdapterConfig(), name="attn")
    with torch.no_grad():
        layer.b.normal_()
    x = torch.randn(2, 4)
    h, extra = layer(x)
    torch.testing.assert_close(h, x + torch.nn.functional.gelu(x @ layer.matrix().T) + layer.adapter_bias)
    assert torch.equal(extra, x.sum())
    mha = SURMAdapter(nn.MultiheadAttention(8, 2, batch_first=True), AdapterConfig(), name="mha")
    out, weights = mha(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    assert out.shape == (1, 3, 8) and weights.shape == (1, 3, 3)

    class Dict(nn.Module):
        out_features = 4

        def forward(self, x):
            return {"h": x}

    with pytest.raises(TypeError, match="'attn' returned dict"):
        SURMAdapter(Dict(), AdapterConfig(), name="attn")(torch.randn(2, 4))


def test_attributes_resolve_on_the_wrapped_module():
    adapter = _adapter("circulant", {})
    assert adapter.weight is adapter.module.weight and adapter.out_features == 24
    with pytest.raises(AttributeError):
        adapter.no_such_attribute  # noqa: B018


def test_not_mergeable():
    adapter = _adapter("circulant", {})
    assert not adapter.mergeable
    with pytest.raises(RuntimeError, match="'layer' cannot be merged"):
        adapter.merge()
    adapter.unmerge()  # never merged: a no-op
    assert not adapter.merged


def test_dropout_acts_on_the_adapter_input_only():
    adapter = _adapter("circulant", {"dropout": 0.5})
    _perturb(adapter)
    x = torch.randn(64, 16)
    adapter.eval()
    y_eval = adapter(x)
    adapter.train()
    torch.manual_seed(0)
    y_train = adapter(x)
    assert not torch.equal(y_eval, y_train)
    out = adapter.module(x)
    torch.manual_seed(0)
    expected = out + F.gelu(F.dropout(out, 0.5) @ adapter.matrix().T) + adapter.adapter_bias  # residual undropped
    torch.testing.assert_close(y_train, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,match", [
    ({"structure": "dense"}, "structure must be one of"),
    ({"structure": "circulant", "rank": 2}, "rank=2 applies only to structure='ldr'"),
    ({"structure": "ldr", "rank": 0}, "rank must be a positive integer"),
    ({"structure": "circulant", "kron_factor": 4}, "kron_factor applies only to structure='kronecker'"),
    ({"structure": "kronecker", "kron_factor": -1}, "kron_factor must be a positive integer or None"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"features": 0}, "features must be a positive integer"),
])
def test_config_validation(options, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**options)


def test_kron_factor_must_divide_n():
    with pytest.raises(ValueError, match="kron_factor=5 must divide the output size n=24 of 'layer'"):
        _adapter("kronecker", {"kron_factor": 5})
