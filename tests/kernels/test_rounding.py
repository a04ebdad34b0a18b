"""The GPU's operand rounding, checked on CPU: under the interpreter the kernels round half operands as tensor cores
do (kernels/_structured.py, "Numerics"), so these tests see what a GPU computes. Each targets a wrong answer a GPU
would give with a naive kernel: a fused layer that adds a small update to W before rounding to half (it vanishes),
float16 tiles of a young adapter falling into subnormals. The parameter-gradient products of svd and LDR are held
to 1e-4 by tests/ops/test_numerics.py under the same emulation.

The same checks run on CUDA tensors in the gpu-marked tests at the bottom, with GPU-sized shapes."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

import surm_ops
from surm_ops.kernels._structured import cast
from tests import oracle
from tests.ops.checks import rel_err
from tests.triton_mode import INTERPRETED

HALF = [torch.bfloat16, torch.float16]
# Half output rounding (2^-9 for bf16) plus M's own rounding to half; a merged kernel misses by ~100%.
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _cancelling(n_out, n_in, n_tok, dtype, device, seed=0):
    """W = [[V, V], [V, V]] and x = [a, -a]: x W^T = 0 and g W = 0 for g = [b, -b], while |W| ~ 1/sqrt(n) is far
    above the update. What the layer then returns is the update's contribution alone."""
    gen = torch.Generator().manual_seed(seed)
    v = (torch.rand(n_out // 2, n_in // 2, generator=gen, dtype=torch.float64) * 2 - 1) / (n_in ** 0.5)
    w = torch.cat([torch.cat([v, v], 1), torch.cat([v, v], 1)], 0)
    a = torch.randn(n_tok, n_in // 2, generator=gen, dtype=torch.float64)
    b = torch.randn(n_tok, n_out // 2, generator=gen, dtype=torch.float64)
    x, g = torch.cat([a, -a], 1), torch.cat([b, -b], 1)
    return (t.to(dtype).to(device) for t in (w, x, g))


def _update(structure, n_out, n_in, size, seed=1):
    """Parameters of an update with entries of about ``size`` (float32, as adapters keep them), and its float64
    matrix from the oracle."""
    gen = torch.Generator().manual_seed(seed)
    if structure == "toeplitz":
        p, q = (2, 3) if n_out % 2 == 0 and n_in % 3 == 0 else (1, 1)
        e = torch.randn(p, q, n_out // p + n_in // q - 1, generator=gen, dtype=torch.float64) * size
        return [e.float()], oracle.block_toeplitz(e.float().double(), n_out, n_in)
    a = torch.randn(4, 6, generator=gen, dtype=torch.float64) * size ** 0.5
    b = torch.randn(n_out // 4, n_in // 6, generator=gen, dtype=torch.float64) * size ** 0.5
    return [a.float(), b.float()], oracle.kronecker(a.float().double(), b.float().double())


def check_small_update_survives(structure, dtype, device, n_tok=40, n_out=96, n_in=120, size=1e-4):
    w, x, g = _cancelling(n_out, n_in, n_tok, dtype, device)
    params, m64 = _update(structure, n_out, n_in, size)
    params = [p.to(device).requires_grad_() for p in params]
    x.requires_grad_()
    y = surm_ops.structured_linear(x, w, None, structure, *params, backend="triton")
    gx, *gps = torch.autograd.grad(y, [x, *params], g)
    x64, g64 = x.detach().cpu().double(), g.cpu().double()
    assert rel_err(y.cpu(), x64 @ m64.T) <= TOL[dtype], "the update's contribution to y is lost"
    assert rel_err(gx.cpu(), g64 @ m64) <= TOL[dtype], "the update's contribution to grad x is lost"
    # The parameter gradients are float32 sums of exact products of half values: float32-accurate.
    p64 = [p.detach().cpu().double().requires_grad_() for p in params]
    m = oracle.block_toeplitz(p64[0], n_out, n_in) if structure == "toeplitz" else oracle.kronecker(*p64)
    want = torch.autograd.grad(x64 @ m.T, p64, g64)
    for got, ref in zip(gps, want):
        assert rel_err(got.cpu(), ref) <= 1e-4


def check_update_contribution(structure, dtype, device, n_tok=40, n_out=96, n_in=120, size=1e-4):
    """Random W and x: ``y(W, M) - y(W, 0)`` in float32 (the launcher's out_dtype) against x M^T."""
    from surm_ops.kernels import structured_linear as fused
    from surm_ops.kernels._structured import rows, structured_mm

    gen = torch.Generator().manual_seed(2)
    w = ((torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) * 2 - 1) / n_in ** 0.5).to(dtype).to(device)
    x = torch.randn(n_tok, n_in, generator=gen, dtype=torch.float64).to(dtype).to(device)
    params, m64 = _update(structure, n_out, n_in, size)
    params = [p.to(device) for p in params]
    zeros = [torch.zeros_like(p) for p in params]
    y = [structured_mm(rows(x), fused._generator(w, ps, torch.float32), torch.float32, weight=w)
         for ps in (params, zeros)]
    want = x.cpu().double() @ m64.T
    assert rel_err((y[0] - y[1]).cpu(), want) <= 1e-2


needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="CPU tensors reach triton through the interpreter")


@needs_interpreter
def test_emulation_is_on_by_default(monkeypatch):
    import triton.language as tl

    from surm_ops.kernels._structured import dot_dtype

    x = torch.zeros(2, 2, dtype=torch.bfloat16)
    assert dot_dtype(x, acc=torch.float32) == tl.bfloat16
    monkeypatch.setenv("SURM_TRITON_EMULATE_ROUNDING", "0")
    assert dot_dtype(x, acc=torch.float32) == tl.float32


@needs_interpreter
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("structure", ["toeplitz", "kronecker"])
def test_small_update_survives_cancelling_base(structure, dtype):
    check_small_update_survives(structure, dtype, "cpu")


@needs_interpreter
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("structure", ["toeplitz", "kronecker"])
def test_small_update_contribution(structure, dtype):
    check_update_contribution(structure, dtype, "cpu")


@needs_interpreter
@pytest.mark.parametrize("size", [1e-5, 1e-6])
def test_float16_young_adapter_not_subnormal(size):
    """float32 parameters of ~1e-6 rounded straight to float16 keep 3-6 bits; scaled first they keep 11."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 161, generator=gen, dtype=torch.float64).half()
    c = torch.randn(161, generator=gen, dtype=torch.float64) * size
    y = surm_ops.circulant_matmul(x, c.float(), backend="triton")
    want = x.double() @ oracle.circulant(c.float().double()).T
    assert rel_err(y, want) <= 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("structure", ["toeplitz", "kronecker"])
@pytest.mark.parametrize("size", [1e-3, 1e-4, 1e-5])
def test_small_update_on_gpu(structure, dtype, size):
    check_small_update_survives(structure, dtype, "cuda", n_tok=4096, n_out=1032, n_in=768, size=size)
    check_update_contribution(structure, dtype, "cuda", n_tok=4096, n_out=1032, n_in=768, size=size)


@triton.jit
def _convert(x_ptr, y_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(y_ptr + offs, cast(tl.load(x_ptr + offs), y_ptr.dtype.element_ty, True))


@needs_interpreter
def test_emulated_bfloat16_rounds_like_a_gpu():
    """The interpreter truncates float32 to bfloat16; a GPU rounds to nearest even. The kernels' conversions
    (operands under emulation, half outputs) go through ``cast``, which must round as the GPU does: ties to even,
    values just above a tie up, negative values symmetrically, across the exponent range."""
    gen = torch.Generator().manual_seed(5)
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, 2**-100 * (1 + 2**-8)])
    x = torch.cat([torch.randn(4096, generator=gen) * torch.logspace(-30, 30, 4096), ties, -ties])
    x = torch.nn.functional.pad(x, (0, 8192 - x.numel()), value=1.5)
    y = torch.empty_like(x, dtype=torch.bfloat16)
    _convert[(1,)](x, y, N=8192)
    assert torch.equal(y, x.to(torch.bfloat16))
