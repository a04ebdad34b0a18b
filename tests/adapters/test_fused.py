"""The fused adapted layer: where the triton backend runs, circulant / Toeplitz / Kronecker layers compute
``x (W0 + dW)^T + b`` through ``structured_linear`` in one product, with the same outputs and gradients as the
unfused ``base(x) + delta(x)``. On CPU the suite reaches the triton kernels through the interpreter by forcing
``SURM_BACKEND=triton``."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from surm_ops.ops.structured_linear import fusable
from tests.adapters.test_layers import _layer, _perturb
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
    assert not fusable(x)
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
    assert fusable(x)
    got = _run(layer, x)
    layer.fuse = False
    want = _run(layer, x)
    for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
        assert ((g.double() - w.double()).norm() / w.double().norm()).item() < 2e-2
