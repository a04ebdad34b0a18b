"""The cuda backend's Python side (surm_ops/ops/_cuda.py) on the CPU: its dispatch hooks, and forward/backward
end to end against the float64 dense oracle with the kernels replaced by their host emulation (FakeOps)."""

from __future__ import annotations

import pytest
import torch

import surm_ops.ops._cuda as cuda_backend
from surm_ops import dispatch
from tests import oracle
from tests.csrc.emulator import FakeOps

H100_SMEM = 227 * 1024


@pytest.fixture
def fake_kernels(emulate, monkeypatch):
    ops = FakeOps(emulate)
    monkeypatch.setattr(cuda_backend, "_ops", lambda: ops)
    return ops


@pytest.fixture
def smem(monkeypatch):
    def set_limit(limit):
        monkeypatch.setattr(cuda_backend, "_smem_limit", lambda device: limit)
    set_limit(H100_SMEM)
    return set_limit


def test_registered_for_both_ops():
    for op in ("circulant_matmul", "toeplitz_matmul"):
        impl = dispatch._IMPLS[op]["cuda"]
        assert impl.why_not is not None and impl.skip_auto is not None


def test_cpu_tensors_never_reach_the_kernels():
    x, c = torch.randn(2, 64), torch.randn(64)
    assert any("CUDA tensors only" in r for r in dispatch.reasons("circulant_matmul", "cuda", x, [c]))


@pytest.mark.parametrize("n", [64, 768, 3072, 5120, 11008, 64 * 127])
def test_why_not_accepts_the_supported_sizes(smem, n):
    assert cuda_backend.circulant_why_not(torch.empty(2, n, dtype=torch.bfloat16), torch.empty(n)) == []


def test_why_not_reasons(smem):
    c = torch.empty(64)
    assert any("float64" in r for r in cuda_backend.circulant_why_not(torch.empty(2, 64, dtype=torch.float64), c))
    assert any("float64" in r for r in cuda_backend.circulant_why_not(torch.empty(2, 64), c.double()))
    n = 64 * 131  # prime factor 131 > MAX_RADIX
    assert any("prime factor 131" in r for r in cuda_backend.circulant_why_not(torch.empty(2, n), torch.empty(n)))
    big = torch.empty(12288 + 64)
    assert any("at most" in r for r in cuda_backend.circulant_why_not(torch.empty(2, big.shape[0]), big))
    smem(163 * 1024)  # A100: the 11008 forward fits, its parameter gradient does not
    assert any("shared memory" in r for r in cuda_backend.circulant_why_not(torch.empty(2, 11008),
                                                                            torch.empty(11008)))
    col, row = torch.empty(768), torch.empty(1024)
    assert cuda_backend.toeplitz_why_not(torch.empty(2, 1024), col, row) == []


def test_skip_auto_prefers_dense_tiles_up_to_1024():
    assert "prediction" in cuda_backend.circulant_skip_auto(torch.empty(1, 1024), torch.empty(1024))
    assert cuda_backend.circulant_skip_auto(torch.empty(1, 2048), torch.empty(2048)) is None
    assert cuda_backend.circulant_skip_auto(torch.empty(1, 3072), torch.empty(48, 48, 64)) is None
    assert cuda_backend.toeplitz_skip_auto(torch.empty(1, 1024), torch.empty(768), torch.empty(1024)) is not None
    assert cuda_backend.toeplitz_skip_auto(torch.empty(1, 4096), torch.empty(768), torch.empty(4096)) is None


def rel_err(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300)).item()


CASES = [
    ("circulant_matmul", [(64,)]), ("circulant_matmul", [(768,)]), ("circulant_matmul", [(3, 4, 64)]),
    ("circulant_matmul", [(2, 1, 12)]), ("toeplitz_matmul", [(768,), (1024,)]), ("toeplitz_matmul", [(5,), (7,)]),
    ("toeplitz_matmul", [(9,), (3,)]),
]


def _in_features(op, shapes):
    if op == "circulant_matmul":
        return shapes[0][-1] if len(shapes[0]) == 1 else shapes[0][1] * shapes[0][2]
    return shapes[1][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op,shapes", CASES, ids=[f"{o[:4]}-{s}" for o, s in CASES])
def test_forward_and_gradients_match_the_oracle(fake_kernels, op, shapes, dtype):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) for s in shapes]
    x = torch.randn(2, 3, _in_features(op, shapes), generator=gen).to(dtype)
    x_view = x.transpose(0, 1)  # non-contiguous leading dims
    forward = getattr(cuda_backend, op.split("_")[0] + "_forward")
    backward = getattr(cuda_backend, op.split("_")[0] + "_backward")
    y = forward(x_view, *params)
    assert y.dtype == dtype and y.shape[:-1] == x_view.shape[:-1]
    grad = torch.randn(y.shape, generator=gen).to(dtype)
    grads = backward(grad, x_view, *params, [True] * (1 + len(params)))
    assert fake_kernels.calls.count("conv_forward") == 2 and "conv_grad_spectrum" in fake_kernels.calls

    x64 = x_view.double().requires_grad_()
    p64 = [p.double().requires_grad_() for p in params]
    y64 = oracle.apply(op, x64, *p64)
    want = torch.autograd.grad(y64, [x64, *p64], grad.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # half: one rounding of y / gx, as the kernel's store does
    assert rel_err(y, y64) < tol
    for got, ref, t in zip(grads, want, [x_view, *params]):
        assert got.dtype == t.dtype and got.shape == t.shape
        assert rel_err(got, ref) < (tol if got.dtype != torch.float32 or t is x_view else 1e-4), rel_err(got, ref)
    if op == "toeplitz_matmul":
        assert grads[2][0] == 0  # row[0] is ignored, as in scipy


def test_needs_are_respected(fake_kernels):
    x, c = torch.randn(3, 64), torch.randn(64)
    gx, gc = cuda_backend.circulant_backward(torch.randn(3, 64), x, c, [True, False])
    assert gc is None and gx is not None and "conv_grad_spectrum" not in fake_kernels.calls
    gx, gcol, grow = cuda_backend.toeplitz_backward(torch.randn(3, 5), torch.randn(3, 7), torch.randn(5),
                                                    torch.randn(7), [False, False, True])
    assert gx is None and gcol is None and grow.shape == (7,)
