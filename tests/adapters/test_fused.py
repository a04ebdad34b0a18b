"""The fused adapted layer: where the triton backend runs, circulant / Toeplitz / Kronecker layers compute
``x (W0 + dW)^T + b`` through ``structured_linear`` in one product, with the same outputs and gradients as the
unfused ``base(x) + delta(x)``. On CPU the suite reaches the triton kernels through the interpreter by forcing
``SURM_BACKEND=triton``."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from tests.adapters.test_layers import _adapter_params, _layer, _perturb
from tests.ops.checks import rel_err
from tests.triton_mode import skip_unless_interpreted

FUSED = [("circulant", {}), ("circulant", {"factored": True}), ("circulant", {"layout": "block", "block_size": 8}),
         ("toeplitz", {}), ("kronecker", {"r": 4})]
SHAPES = [(24, 24), (16, 40), (40, 16)]
CASES = [pytest.param(m, o, d_in, d_out, id=f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}-"
                      f"{d_in}x{d_out}") for m, o in FUSED for d_in, d_out in SHAPES]


def _run(layer, x):
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *[p for p in layer.parameters() if p.requires_grad]])
    return y, grads


@pytest.mark.parametrize("method,options,d_in,d_out", CASES)
def test_fused_layer_equals_unfused(method, options, d_in, d_out, monkeypatch):
    skip_unless_interpreted("triton")
    layer = _layer(method, options, d_in, d_out, dtype=torch.float64)
    _perturb(layer)
    x = torch.randn(5, d_in, dtype=torch.float64, requires_grad=True)
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    assert not layer.fuses(x)
    want = _run(layer, x)
    calls = []
    real = surm_ops.structured_linear
    monkeypatch.setattr(surm_ops, "structured_linear", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    monkeypatch.setenv("SURM_BACKEND", "triton")
    got = _run(layer, x)
    assert calls, "the fused path was not taken"
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method,options", [("toeplitz", {"symmetric": True}), ("ldr", {}), ("lora", {})])
def test_methods_without_a_tile_generator_stay_unfused(method, options, monkeypatch):
    skip_unless_interpreted("triton")
    layer = _layer(method, options, 16, 16)
    assert layer.fused_update() is None
    monkeypatch.setenv("SURM_BACKEND", "triton")
    calls = []
    monkeypatch.setattr(surm_ops, "structured_linear", lambda *a, **k: calls.append(a) or None)
    layer(torch.randn(3, 16))
    assert not calls


def test_fuse_false_keeps_the_unfused_path(monkeypatch):
    skip_unless_interpreted("triton")
    layer = _layer("circulant", {}, 16, 16)
    layer.fuse = False
    monkeypatch.setenv("SURM_BACKEND", "triton")
    calls = []
    monkeypatch.setattr(surm_ops, "structured_linear", lambda *a, **k: calls.append(a) or None)
    assert layer(torch.randn(3, 16)).shape == (3, 16)
    assert not calls


def _shrink(layer, size):
    """Scale the adapter's parameters so its update's entries are about ``size`` (young adapters live at 1e-5 to
    1e-3); the update's degree in its parameters (1 for circulant, 2 for factored or Kronecker) is measured."""
    params = _adapter_params(layer)
    before = layer.delta_weight().abs().mean().item()
    with torch.no_grad():
        for p in params:
            p.mul_(0.5)
        degree = round(torch.log2(torch.tensor(before / layer.delta_weight().abs().mean().item())).item())
        for p in params:
            p.mul_((size / (before * 0.5 ** degree)) ** (1 / degree))


def check_young_adapter_contribution(method, options, dtype, device, n_tok, d_in, d_out, size=1e-4):
    """A half layer whose base output cancels exactly (W = [[V, V], [V, V]], x = [a, -a], grad = [b, -b]) returns
    the update's contribution alone: against a float64 CPU oracle (a float64 copy of the layer, unfused), y,
    grad x and the parameter gradients. A kernel that adds M to W before rounding to half loses it entirely."""
    import copy

    layer = _layer(method, options, d_in, d_out, dtype=dtype)
    _perturb(layer)
    _shrink(layer, size)
    gen = torch.Generator().manual_seed(4)
    v = (torch.rand(d_out // 2, d_in // 2, generator=gen, dtype=torch.float64) * 2 - 1) / d_in ** 0.5
    a = torch.randn(n_tok, d_in // 2, generator=gen, dtype=torch.float64)
    b = torch.randn(n_tok, d_out // 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        layer.base.weight.copy_(torch.cat([torch.cat([v, v], 1)] * 2, 0))
        layer.base.bias.zero_()
    x64, g64 = torch.cat([a, -a], 1).to(dtype).double(), torch.cat([b, -b], 1).to(dtype).double()
    oracle = copy.deepcopy(layer).double()
    oracle.fuse = False
    want_y = oracle(x64.requires_grad_())
    want = torch.autograd.grad(want_y, [x64, *_adapter_params(oracle)], g64)
    layer = layer.to(device)
    x = x64.detach().to(dtype).to(device).requires_grad_()
    assert layer.fuses(x)
    y = layer(x)
    got = torch.autograd.grad(y, [x, *_adapter_params(layer)], g64.to(dtype).to(device))
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]  # output rounding + the update's own half rounding
    assert rel_err(y.cpu(), want_y) <= tol, "the update's contribution to y is lost"
    assert rel_err(got[0].cpu(), want[0]) <= tol, "the update's contribution to grad x is lost"
    for g, w in zip(got[1:], want[1:]):  # float32 sums of exact products of half values
        assert rel_err(g.cpu(), w) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method,options", FUSED, ids=[c.id.rsplit("-", 1)[0] for c in CASES[::len(SHAPES)]])
def test_young_adapter_contribution_survives(method, options, dtype, monkeypatch):
    skip_unless_interpreted("triton")
    monkeypatch.setenv("SURM_BACKEND", "triton")
    check_young_adapter_contribution(method, options, dtype, "cpu", n_tok=40, d_in=48, d_out=80)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method,options", FUSED, ids=[c.id.rsplit("-", 1)[0] for c in CASES[::len(SHAPES)]])
def test_young_adapter_contribution_on_gpu(method, options, dtype, monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    options = {**options, "block_size": 64} if "block_size" in options else options
    check_young_adapter_contribution(method, options, dtype, "cuda", n_tok=4096, d_in=768, d_out=1024)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method,options", FUSED, ids=[c.id.rsplit("-", 1)[0] for c in CASES[::len(SHAPES)]])
def test_fused_layer_on_gpu(method, options, monkeypatch):
    """bf16 layer, float32 adapter, 4096 tokens at d = 768 -> 1024: auto takes the fused kernel; it agrees with the
    unfused layer (fuse=False) within bf16 rounding, gradients included."""
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    options = {**options, "block_size": 64} if "block_size" in options else options
    layer = _layer(method, options, 768, 1024, dtype=torch.bfloat16)
    _perturb(layer)  # on CPU: it draws from a CPU generator
    layer = layer.cuda()
    x = torch.randn(4096, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert layer.fuses(x)
    got = _run(layer, x)
    layer.fuse = False
    want = _run(layer, x)
    for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
        assert ((g.double() - w.double()).norm() / w.double().norm()).item() < 2e-2
