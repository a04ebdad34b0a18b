"""RM-LoRA (docs/methods.md §2): the init, the orthogonality regulariser against a hand computation, and the random
masker: random_rank rows kept per layer, v1 shared / v2 independent indices, the first step skipped, and the update
mask keeping masked components fixed under AdamW where the gradient mask does not."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from surm_ops.adapters.rmlora import (
    RandomMasker,
    RMLoRAConfig,
    RMLoRALinear,
    orthogonality_loss,
    regularized_loss,
)


def _layer(d_in=24, d_out=16, dtype=torch.float32, **options):
    return RMLoRALinear(nn.Linear(d_in, d_out).to(dtype), RMLoRAConfig(**options), name="layer")


def _model(seed=0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(_layer(24, 16, **options), nn.Tanh(), _layer(16, 16, **options), nn.Tanh(),
                          _layer(16, 8, **options))
    with torch.no_grad():  # B away from zero so that every row of dA gets a gradient
        for m in model.modules():
            if isinstance(m, RMLoRALinear):
                m.lora_B.normal_(std=0.1)
    return model


def _layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RMLoRALinear)]


def _backward(model, seed):
    x = torch.randn(10, 24, generator=torch.Generator().manual_seed(seed))
    model(x).square().mean().backward()


@pytest.mark.parametrize("options,pattern", [
    ({"random_rank": 9}, r"random_rank must be in \[1, r\] = \[1, 8\]"),
    ({"random_rank": 0}, "random_rank must be in"),
    ({"version": "v3"}, "version must be one of"),
    ({"mask": "weights"}, "mask must be one of"),
    ({"gamma": -0.1}, "gamma must be non-negative"),
    ({"r": 0}, "rmlora: r must be positive"),
])
def test_invalid_config_raises(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        RMLoRAConfig(**options)


def test_init_identity_live_gradient_and_trainable_set():
    torch.manual_seed(0)
    layer = _layer(256, 64)
    assert layer.scale == 32.0 / 8
    assert torch.count_nonzero(layer.lora_B) == 0
    assert 0.018 < layer.lora_A.std().item() < 0.022  # N(0, 0.02^2)
    x = torch.randn(6, 256)
    torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    assert layer.lora_B.grad.abs().max() > 0
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == layer.expected_parameters() == 8 * 320


def test_delta_matches_dense_and_merge_is_exact():
    layer = _layer(24, 16, dtype=torch.float64)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 24, dtype=torch.float64)
    torch.testing.assert_close(layer.delta(x), x @ layer.delta_weight().T, rtol=1e-10, atol=1e-12)
    y, w0 = layer(x), layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-10, atol=1e-12)
    layer.unmerge()
    assert torch.equal(layer.base.weight, w0)


def test_float32_adapter_on_bf16_layer_with_masker():
    model = nn.Sequential(_layer(24, 16, dtype=torch.bfloat16))
    assert model[0].lora_A.dtype == torch.float32
    with torch.no_grad():
        model[0].lora_B.normal_()
    masker = RandomMasker(model)
    for _ in range(2):
        y = model(torch.randn(4, 24, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        masker.apply()
    assert model[0].lora_A.grad.dtype == torch.float32
    assert int((model[0].lora_A.grad.abs().sum(1) > 0).sum()) == 4


def test_orthogonality_loss_matches_hand_computation_and_has_gradients():
    model = _model()
    terms = []
    for _, m in _layers(model):
        a, b = m.lora_A.detach(), m.lora_B.detach()
        for gram in (a @ a.T, b.T @ b):  # non-squared Frobenius norm of (Gram - I), one term per matrix
            diff = gram - torch.eye(8)
            terms.append(math.sqrt(sum(v * v for v in diff.flatten().tolist())))
    expected = sum(terms) / len(terms)  # N = 6 matrices (3 layers x {A, B})
    r = orthogonality_loss(model)
    assert len(terms) == 6
    assert r.item() == pytest.approx(expected, rel=1e-5)
    task = torch.tensor(2.0)
    assert regularized_loss(task, model).item() == pytest.approx(2.0 + 0.1 * expected, rel=1e-5)
    r.backward()
    for _, m in _layers(model):
        assert m.lora_A.grad.abs().max() > 0 and m.lora_B.grad.abs().max() > 0


def test_orthogonality_loss_needs_rmlora_layers():
    with pytest.raises(ValueError, match="has no RM-LoRA layers"):
        orthogonality_loss(nn.Linear(3, 3))


def test_masker_skips_the_first_step_then_keeps_random_rank_rows():
    model = _model(random_rank=3)
    masker = RandomMasker(model, generator=torch.Generator().manual_seed(0))
    _backward(model, 0)
    before = {n: (m.lora_A.grad.clone(), m.lora_B.grad.clone()) for n, m in _layers(model)}
    masker.apply()
    for n, m in _layers(model):  # first call: untouched
        assert torch.equal(m.lora_A.grad, before[n][0]) and torch.equal(m.lora_B.grad, before[n][1])
    assert masker.kept == {}
    for step in range(1, 4):
        model.zero_grad()
        _backward(model, step)
        full = {n: (m.lora_A.grad.clone(), m.lora_B.grad.clone()) for n, m in _layers(model)}
        masker.apply()
        for n, m in _layers(model):
            keep_a, keep_b = masker.kept[n]
            assert keep_a.numel() == 3 and torch.equal(keep_a, keep_b)  # v1: B keeps A's indices
            rows = (m.lora_A.grad.abs().sum(1) > 0).nonzero().flatten()
            cols = (m.lora_B.grad.abs().sum(0) > 0).nonzero().flatten()
            assert torch.equal(rows, keep_a) and torch.equal(cols, keep_b)
            torch.testing.assert_close(m.lora_A.grad[keep_a], full[n][0][keep_a], rtol=0, atol=0)
            torch.testing.assert_close(m.lora_B.grad[:, keep_b], full[n][1][:, keep_b], rtol=0, atol=0)


def test_masker_resamples_per_module_and_step_v2_independent_per_matrix():
    model = _model(version="v2", random_rank=4)
    model[2].config = RMLoRAConfig(random_rank=2, version="v2")  # the rank to keep comes from each layer's config
    masker = RandomMasker(model, generator=torch.Generator().manual_seed(1))
    draws = []
    for step in range(12):
        model.zero_grad()
        _backward(model, step)
        masker.apply()
        if step:
            draws.append({n: tuple(tuple(t.tolist()) for t in kept) for n, kept in masker.kept.items()})
    for d in draws:
        assert len(d["0"][0]) == len(d["0"][1]) == 4 and len(d["2"][0]) == len(d["2"][1]) == 2
    assert any(d["0"][0] != d["0"][1] for d in draws)  # v2: B draws its own indices
    assert any(d["0"][0] != d["4"][0] for d in draws)  # per module
    assert len({d["0"][0] for d in draws}) > 1  # per step


def _train(model, mask, steps=5):
    for m in model.modules():
        if isinstance(m, RMLoRALinear):
            m.config = RMLoRAConfig(random_rank=3, mask=mask)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    masker = RandomMasker(model, generator=torch.Generator().manual_seed(0))
    moved = []  # per masked step: the largest change of a masked entry
    for step in range(steps):
        opt.zero_grad()
        _backward(model, step)
        masker.apply()
        before = {n: (m.lora_A.detach().clone(), m.lora_B.detach().clone()) for n, m in _layers(model)}
        opt.step()
        masker.after_step()
        if step:
            worst = 0.0
            for n, m in _layers(model):
                keep_a, keep_b = masker.kept[n]
                drop_a = [i for i in range(8) if i not in keep_a.tolist()]
                drop_b = [i for i in range(8) if i not in keep_b.tolist()]
                worst = max(worst, (m.lora_A[drop_a] - before[n][0][drop_a]).abs().max().item(),
                            (m.lora_B[:, drop_b] - before[n][1][:, drop_b]).abs().max().item())
            moved.append(worst)
    return moved


def test_update_mask_freezes_masked_components_under_adamw_gradient_mask_does_not():
    model = _model()
    moved_update = _train(copy.deepcopy(model), "update")
    moved_grad = _train(copy.deepcopy(model), "gradient")
    assert moved_update == [0.0] * 4  # bit for bit
    assert min(moved_grad) > 1e-4  # Adam's moments and weight decay still move gradient-masked entries


def test_update_mask_needs_after_step_between_applies():
    model = _model(mask="update")
    masker = RandomMasker(model)
    for _ in range(2):
        _backward(model, 0)
        masker.apply()
    with pytest.raises(RuntimeError, match="before after_step"):
        masker.apply()


# ------------------------------------------------------------------------------------- RMLoRATraining (plain loop)


def _step_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(10, 24, generator=g), torch.randn(10, 8, generator=g)


@pytest.mark.parametrize("mask", ["gradient", "update"])
def test_training_hooks_equal_the_hand_wired_loop(mask):
    """RMLoRATraining on the optimizer == regularized_loss + RandomMasker by hand (no clipping: same order)."""
    hooked, manual = _model(mask=mask, gamma=0.5, random_rank=3), _model(mask=mask, gamma=0.5, random_rank=3)
    opt_h = torch.optim.AdamW(hooked.parameters(), lr=0.05)
    opt_m = torch.optim.AdamW(manual.parameters(), lr=0.05)
    from surm_ops.adapters.rmlora import RMLoRATraining

    RMLoRATraining(hooked, opt_h, generator=torch.Generator().manual_seed(7))  # kept alive by the optimizer
    masker = RandomMasker(manual, generator=torch.Generator().manual_seed(7))
    for step in range(4):
        x, t = _step_inputs(step)
        nn.functional.mse_loss(hooked(x), t).backward()  # the plain loop: task loss only
        opt_h.step()
        opt_h.zero_grad()
        regularized_loss(nn.functional.mse_loss(manual(x), t), manual).backward()
        masker.apply()
        opt_m.step()
        masker.after_step()
        opt_m.zero_grad()
    for (name, a), (_, b) in zip(_layers(hooked), _layers(manual)):
        torch.testing.assert_close(a.lora_A, b.lora_A, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(a.lora_B, b.lora_B, rtol=1e-5, atol=1e-6, msg=name)
    plain = _model(mask=mask, gamma=0.5, random_rank=3)  # and it is not plain LoRA
    opt_p = torch.optim.AdamW(plain.parameters(), lr=0.05)
    for step in range(4):
        x, t = _step_inputs(step)
        nn.functional.mse_loss(plain(x), t).backward()
        opt_p.step()
        opt_p.zero_grad()
    assert not torch.allclose(_layers(plain)[0][1].lora_A, _layers(hooked)[0][1].lora_A, atol=1e-4)


def test_training_without_the_hooks_warns_that_it_is_plain_lora():
    model = _model()
    with pytest.warns(UserWarning, match="'layer' is training without RMLoRATraining.*plain LoRA"):
        _backward(model, 0)
    attached = _model()
    from surm_ops.adapters.rmlora import RMLoRATraining

    rm = RMLoRATraining(attached, torch.optim.SGD(attached.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _backward(attached, 0)
    rm.remove()
    assert all(layer.trainer is None for _, layer in _layers(attached))


def test_training_hooks_refuse_a_double_regulariser_and_a_partial_optimizer():
    from surm_ops.adapters.rmlora import RMLoRATraining

    model = _model()
    with pytest.raises(ValueError, match=r"4 RM-LoRA parameters are not in the optimizer, e.g. '2.lora_A'"):
        RMLoRATraining(model, torch.optim.SGD(model[0].parameters(), lr=0.1))
    RMLoRATraining(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="already adds the regulariser"):
        regularized_loss(torch.tensor(0.0), model)
    with pytest.raises(RuntimeError, match="already attached"):
        RMLoRATraining(model, torch.optim.SGD(model.parameters(), lr=0.1))
