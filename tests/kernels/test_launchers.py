"""Launcher edge cases found in review, checked through the interpreter: layouts and dtype mixes the generic op
tests do not produce."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from surm_ops import dispatch
from surm_ops.reference import dense
from tests.triton_mode import skip_unless_interpreted


@pytest.fixture(autouse=True)
def _interpreted(monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    skip_unless_interpreted("triton")


def test_single_feature_transposed_input():
    """(T, 1) with strides (1, T) passes is_contiguous() but has a last-dimension stride of T."""
    x = torch.randn(1, 5, dtype=torch.float64).t()
    c = torch.randn(1, dtype=torch.float64)
    torch.testing.assert_close(surm_ops.circulant_matmul(x, c, backend="triton"), x * c)


def test_strided_bias_in_the_fused_linear():
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    bias = torch.randn(3, 2, dtype=torch.float64)[:, 0]
    e = torch.randn(1, 1, 8, dtype=torch.float64)
    want = surm_ops.structured_linear(x, w, bias, "toeplitz", e, backend="dense")
    torch.testing.assert_close(surm_ops.structured_linear(x, w, bias, "toeplitz", e, backend="triton"), want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_input_with_float64_parameters(dtype):
    """Compute in float64 (docs/contract.md §2.2): the kernels get float64 operands, not a half load feeding a
    float64 dot."""
    x = torch.randn(5, 24, dtype=torch.float64).to(dtype).requires_grad_()
    c = torch.randn(24, dtype=torch.float64, requires_grad=True)
    y = surm_ops.circulant_matmul(x, c, backend="triton")
    gx, gc = torch.autograd.grad(y.double().square().sum(), [x, c])
    y64 = x.detach().double() @ dense.circulant(c.detach()).T
    torch.testing.assert_close(y.double(), y64, rtol=1e-2, atol=1e-2)
    assert y.dtype == dtype and gx.dtype == dtype and gc.dtype == torch.float64


def test_kronecker_tiles_only_for_narrow_inputs(monkeypatch):
    monkeypatch.setattr(dispatch, "_on_gpu", lambda x: True)
    monkeypatch.setattr(dispatch, "reasons", lambda op, name, x, params: [] if name != "cuda" else ["no _C"])
    a, b = torch.randn(32, 32), torch.randn(32, 32)
    assert dispatch.choose_auto("kronecker_matmul", torch.randn(2, 1024), [a, b]) == "triton"
    assert dispatch.choose_auto("kronecker_matmul", torch.randn(2, 4096), [torch.randn(64, 64),
                                                                           torch.randn(64, 64)]) in ("fft", "dense")


def test_skip_rules_are_consulted_before_reasons(monkeypatch):
    """reasons() of the cuda backend may JIT-build the extension; a backend auto would skip must not trigger it."""
    monkeypatch.setattr(dispatch, "_on_gpu", lambda x: True)
    asked = []
    monkeypatch.setattr(dispatch, "reasons", lambda op, name, x, params: asked.append(name) or [])
    assert dispatch.choose_auto("circulant_matmul", torch.randn(2, 64), [torch.randn(64)]) == "triton"
    assert "cuda" not in asked


CUDA_GRID_LIMIT = (2**31 - 1, 65535, 65535)


@pytest.mark.parametrize("tokens, features", [(16, 2**22), (2**21, 1024)], ids=["4M-features", "2M-tokens"])
def test_grids_stay_within_cuda_limits_at_large_sizes(monkeypatch, tokens, features):
    """Launch geometry at sizes no CPU test can compute: meta tensors through the real launchers, kernels replaced
    by recorders. A grid axis beyond CUDA's limits fails the launch on a GPU (structured_mm once put output blocks
    on axis 1: 65,535 blocks of 32 is 2.1 M features)."""
    from surm_ops.kernels import _structured, circulant, svd

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: grids.append(tuple(grid))

    for name in ("structured_mm_kernel", "diag_corr_kernel"):
        monkeypatch.setattr(_structured, name, Recorder())
    monkeypatch.setattr(svd, "svd_kernel", Recorder())
    x, c = torch.empty(tokens, features, device="meta"), torch.empty(features, device="meta")
    circulant.backward(circulant.forward(x, c), x, c, [True, True])
    u, s, v = (torch.empty(features, 16, device="meta"), torch.empty(16, device="meta"),
               torch.empty(features, 16, device="meta"))
    svd.backward(svd.forward(x, u, s, v), x, u, s, v, [True] * 4)
    assert len(grids) == 5
    for grid in grids:
        assert all(g <= lim for g, lim in zip(grid, CUDA_GRID_LIMIT)), grid
