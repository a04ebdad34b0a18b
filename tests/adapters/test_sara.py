"""SARA and Mo-SARA (docs/methods.md §4): the rank rule on hand-built spectra, the randomized spectrum's bound, the
budget mode, the singular-vector init (dW = 0 with a live lambda gradient), merging, and Mo-SARA's per-token routing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from surm_ops.adapters import sara
from surm_ops.adapters.sara import (
    MoSARAConfig,
    MoSARALinear,
    SARAConfig,
    SARALinear,
    rank_from_spectrum,
    ranks_for_budget,
    sara_rank,
    thresholds_for_budget,
)


def _with_spectrum(sigma, d_out, d_in, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(d_out, len(sigma), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, len(sigma), generator=gen, dtype=torch.float64))
    return ((u * torch.tensor(sigma, dtype=torch.float64)) @ v.T).to(dtype)


def _linear(weight):
    base = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        base.weight.copy_(weight)
    return base


@pytest.mark.parametrize("threshold,k", [(0.4, 1), (0.41, 2), (0.7, 2), (0.71, 3), (0.9, 3), (0.95, 4), (1.0, 4)])
def test_rank_rule_on_a_hand_built_spectrum(threshold, k):
    sigma = [4.0, 3.0, 2.0, 1.0]  # cumulative fractions 0.4, 0.7, 0.9, 1.0
    assert rank_from_spectrum(torch.tensor(sigma), threshold) == k
    w = _with_spectrum(sigma, 12, 9)
    if threshold not in (0.4, 0.7, 0.9, 1.0):  # away from the exact breakpoints, where rounding decides
        assert sara_rank(w, threshold) == k
        assert sara_rank(w.float(), threshold) == k
    assert sara_rank(w, 1.0, max_rank=2) == 2


def test_randomized_spectrum_bounds_the_total_from_above(monkeypatch):
    monkeypatch.setattr(sara, "RANDOMIZED_MIN_DIM", 32)
    sigma = [40.0, 30.0, 20.0, 10.0] + [1.0] * 76  # a flat tail: the Cauchy-Schwarz bound is tight
    w = _with_spectrum(sigma, 120, 80, dtype=torch.float32)
    for threshold in (0.3, 0.55, 0.8, 0.9):
        exact = sara_rank(w, threshold, max_rank=20)
        assert exact == sara_rank(w, threshold, max_rank=20, randomized=True)
    g = torch.randn(120, 80, generator=torch.Generator().manual_seed(0))  # a Marchenko-Pastur tail: not flat
    for threshold in (0.05, 0.1):
        exact, approx = sara_rank(g, threshold, max_rank=30), sara_rank(g, threshold, max_rank=30, randomized=True)
        assert exact <= approx <= 30
    layer = SARALinear(_linear(w), SARAConfig(threshold=0.55, max_rank=20, randomized=True), "layer")
    assert layer.rank == sara_rank(w, 0.55)
    torch.testing.assert_close(layer.sara_P.T @ layer.sara_P, torch.eye(layer.rank), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="randomized=True needs max_rank"):
        SARAConfig(randomized=True)


def test_budget_mode_fits_and_is_tight():
    gen = torch.Generator().manual_seed(0)
    weights = {f"l{i}": torch.randn(d_out, d_in, generator=gen) for i, (d_in, d_out) in
               enumerate([(32, 32), (48, 16), (16, 64), (40, 40)])}
    cost = SARAConfig().params_per_rank
    for budget in (300, 1000, 2500, 4000):
        theta, ranks = ranks_for_budget(weights, budget, cost)
        assert theta == thresholds_for_budget(weights, budget, cost)
        total = sum(ranks[n] * cost(w.shape[1], w.shape[0]) for n, w in weights.items())
        assert total <= budget
        assert ranks == {n: sara_rank(w, theta) for n, w in weights.items()}  # one global threshold
        # tight: any larger threshold that changes a rank exceeds the budget
        fractions = [(s.double().cumsum(0) / s.double().sum()).tolist() for s in map(torch.linalg.svdvals,
                                                                                      weights.values())]
        bigger = [t for f in fractions for t in f if t > theta]
        if bigger:
            nxt = min(bigger)
            assert sum(sara_rank(w, nxt) * cost(w.shape[1], w.shape[0]) for w in weights.values()) > budget
        # the layers take their ranks through config.rank
        layers = [SARALinear(_linear(w), SARAConfig(budget=budget, rank=ranks[n]), n) for n, w in weights.items()]
        assert sum(layer.expected_parameters() for layer in layers) == total
    with pytest.raises(ValueError, match="below the minimum of"):
        ranks_for_budget(weights, 100, cost)
    with pytest.raises(ValueError, match="has budget=500 but no rank"):
        SARALinear(_linear(weights["l0"]), SARAConfig(budget=500), "l0")


def test_sara_init_is_the_truncated_svd_with_zero_update_and_live_lambda():
    w = _with_spectrum([5.0, 4.0, 3.0, 0.5, 0.25], 24, 16, dtype=torch.float32)
    layer = SARALinear(_linear(w), SARAConfig(threshold=0.8), "layer")
    assert layer.rank == 3
    p, q = layer.sara_P.detach(), layer.sara_Q.detach()
    assert p.shape == (24, 3) and q.shape == (3, 16)
    u, sigma, vh = torch.linalg.svd(w.double())  # P diag(sigma_k) Q is the best rank-3 approximation of W0
    torch.testing.assert_close((p * torch.tensor([5.0, 4.0, 3.0])) @ q, ((u[:, :3] * sigma[:3]) @ vh[:3]).float(),
                               rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(layer.delta_weight()) == 0
    x = torch.randn(6, 16)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    assert layer.sara_lambda.grad.abs().min() > 0
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"sara_P", "sara_lambda", "sara_Q"}
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.expected_parameters() == 3 * 41


def test_sara_delta_matches_dense_and_merge_is_exact():
    torch.manual_seed(0)
    layer = SARALinear(nn.Linear(16, 24).double(), SARAConfig(), "layer")
    with torch.no_grad():
        layer.sara_lambda.normal_()
        layer.sara_P.add_(torch.randn_like(layer.sara_P) * 0.1)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    dw = layer.delta_weight()
    torch.testing.assert_close(layer.delta(x), x @ dw.T, rtol=1e-10, atol=1e-12)
    y, w0 = layer(x), layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-10, atol=1e-12)
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0)


def test_mosara_init_routing_and_parameters():
    torch.manual_seed(0)
    layer = MoSARALinear(nn.Linear(16, 24), MoSARAConfig(threshold=0.6, experts=3), "layer")
    k = layer.rank
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"mosara_lambda", "mosara_router"}
    assert {n for n, _ in layer.named_buffers()} == {"mosara_U", "mosara_V"}
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.expected_parameters() == 2 * 3 * k
    x = torch.randn(8, 16)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    g = layer.mosara_lambda.grad
    assert g.abs().max() > 0
    assert (g[0] - g[1]).abs().max() > 0  # the random router breaks the symmetry between experts
    torch.testing.assert_close(layer.gates(x).sum(-1), torch.ones(8))


def test_mosara_delta_is_per_token_and_not_mergeable():
    torch.manual_seed(0)
    layer = MoSARALinear(nn.Linear(16, 24).double(), MoSARAConfig(experts=4), "layer")
    with torch.no_grad():
        layer.mosara_lambda.normal_()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    dws = layer.token_delta_weights(x)
    assert dws.shape == (2, 5, 24, 16)
    torch.testing.assert_close(layer.delta(x), (dws @ x.unsqueeze(-1)).squeeze(-1), rtol=1e-10, atol=1e-12)
    assert (dws[0, 0] - dws[1, 3]).abs().max() > 1e-3  # routing gives each token its own update
    # one shared dW cannot reproduce the per-token outputs: the first token's dW is wrong for the others
    assert (layer.delta(x)[1, 3] - dws[0, 0] @ x[1, 3]).abs().max() > 1e-3
    with pytest.raises(RuntimeError, match="cannot be merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="depends on the input"):
        layer.delta_weight()


@pytest.mark.parametrize("cls,config", [(SARALinear, SARAConfig()), (MoSARALinear, MoSARAConfig())])
def test_float32_adapter_on_bf16_layer(cls, config):
    torch.manual_seed(0)
    layer = cls(nn.Linear(16, 40).to(torch.bfloat16), config, "layer")
    params = [p for p in layer.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    y = layer(torch.randn(4, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


@pytest.mark.parametrize("cls,options,pattern", [
    (SARAConfig, {"threshold": 0.0}, r"sara: threshold must be in \(0, 1\]"),
    (SARAConfig, {"threshold": 1.5}, "threshold must be in"),
    (SARAConfig, {"rank": 9, "max_rank": 4}, "rank=9 exceeds max_rank=4"),
    (SARAConfig, {"budget": -3}, "budget must be a positive integer"),
    (MoSARAConfig, {"experts": 0}, "mosara: experts must be a positive integer"),
])
def test_invalid_config_raises(cls, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**options)


def test_rank_override_larger_than_the_layer_names_it():
    with pytest.raises(ValueError, match=r"rank=20 exceeds the smaller dimension of layer 'layer' \(16 -> 24\)"):
        SARALinear(nn.Linear(16, 24), dataclasses.replace(SARAConfig(), rank=20), "layer")
