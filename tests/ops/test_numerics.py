"""Every op x backend x dtype against the float64 oracle: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

from tests.ops.cases import LARGE, SMALL, TILE_TOKENS, ids, per_token, tiled
from tests.ops.checks import HALF, TOL, half_baseline, reference, rel_err
from tests.triton_mode import skip_unless_interpreted

BACKENDS = ["fft", "dense", "triton", "auto"]  # triton runs on CPU through the interpreter (tests/conftest.py)
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _skip_unsupported(case, backend):
    if per_token(case) and backend == "dense":
        pytest.skip("dense refuses per-token s by contract; tested in test_dispatch")


def _run_and_compare(case, backend, dtype, lead=(5,), seed=0, device="cpu"):
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = [p.detach().to(device).requires_grad_() for p in case.params(param_dtype, seed=seed)]
    x = case.x(lead, dtype, seed=seed + 1).to(device).requires_grad_()
    y = case.run(x, params, backend)
    assert y.dtype == dtype and y.device == x.device
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(y, [x, *params], grad.to(device))
    for g, t in zip(got, [x, *params]):
        assert g.dtype == t.dtype and g.shape == t.shape
    # The oracle and the low-precision baseline are computed on the CPU.
    y, got, x, params = y.cpu(), [g.cpu() for g in got], x.detach().cpu(), [p.detach().cpu() for p in params]
    y_ref, grads_ref = reference(case, x, params, grad)
    if dtype in HALF:
        base_y, base_gx = half_baseline(case, x.detach(), params, grad)
        # No interpreter slack: the kernels round half operands and outputs to nearest even under the
        # interpreter too (kernels/_structured.py, cast), as a GPU does.
        slack = 1e-5
        assert rel_err(y, y_ref) <= 2 * base_y + slack, (rel_err(y, y_ref), base_y)
        assert rel_err(got[0], grads_ref[0]) <= 2 * base_gx + slack, (rel_err(got[0], grads_ref[0]), base_gx)
        for g, g_ref in zip(got[1:], grads_ref[1:]):
            assert rel_err(g, g_ref) <= 1e-4
    else:
        tol = TOL[dtype]
        assert rel_err(y, y_ref) <= tol
        for i, (g, g_ref) in enumerate(zip(got, grads_ref)):
            assert rel_err(g, g_ref) <= tol, f"gradient {i}: {rel_err(g, g_ref)}"


@pytest.mark.usefixtures("poisoned_allocations", "no_backend_env")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SMALL, ids=ids(SMALL))
def test_matches_oracle(case, backend, dtype):
    skip_unless_interpreted(backend)
    _skip_unsupported(case, backend)
    _run_and_compare(case, backend, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SMALL + LARGE, ids=ids(SMALL + LARGE))
def test_matches_oracle_on_gpu(case, backend, dtype):
    """On a GPU: every backend that runs on CUDA tensors against the float64 CPU oracle."""
    _skip_unsupported(case, backend)
    if case in LARGE and backend == "dense" and case.op == "ldr_matmul":
        pytest.skip("covered at small sizes; the dense LDR build is O(r n^3)")
    _run_and_compare(case, backend, dtype, lead=(5,), device="cuda")


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LARGE, ids=ids(LARGE))
def test_large_sizes_fft(case, dtype):
    _run_and_compare(case, "fft", dtype, lead=(3,))


# Interpreted Triton costs ~5 s per large case, so CI runs float64 without LDR here (all pass in bf16 too, ~70 s);
# the GPU test above runs every dtype and LDR.
LARGE_TRITON = [c for c in LARGE if c.op != "ldr_matmul"]


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("case", LARGE_TRITON, ids=ids(LARGE_TRITON))
def test_large_sizes_triton_interpreted(case):
    """Masked edges (1001 = 62*16 + 9), 768 = 12 tiles, and blocks of 64 through the real kernels' index math."""
    skip_unless_interpreted("triton")
    _run_and_compare(case, "triton", torch.float64, lead=(3,))


# 40 tokens in float64, float32 and bfloat16; 300 tokens (several token blocks: index math only) in float64.
SHARED_S = [c for c in SMALL if not per_token(c)]


TILED = [pytest.param(case, tokens, dtype, id=f"{case.label}-t{tokens}-{dtype}",
                      marks=[pytest.mark.slow] if tokens > 64 else [])
         for tokens in TILE_TOKENS for case in tiled(tokens)
         for dtype in ([torch.float64, torch.float32, torch.bfloat16] if tokens <= 64 else [torch.float64])]


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("case, tokens, dtype", TILED)
def test_training_tiles_triton_interpreted(case, tokens, dtype):
    """The training tiles (64 tokens, several token blocks and gradient slices, many K steps) through the
    interpreter against the float64 oracle, forward and every gradient."""
    skip_unless_interpreted("triton")
    _run_and_compare(case, "triton", dtype, lead=(tokens,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton", "fft"])
@pytest.mark.parametrize("case", tiled(1024), ids=ids(tiled(1024)))
def test_training_tiles_on_gpu(case, backend, dtype):
    """The same cases at 1024 tokens (16 token blocks: two GROUP_M groups) on a GPU, against the float64 CPU
    oracle."""
    _run_and_compare(case, backend, dtype, lead=(1024,), device="cuda")


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "dense", "triton"])
@pytest.mark.parametrize("lead", [(2, 3), (0,), (2, 0), ()], ids=["2x3", "0", "2x0", "none"])
@pytest.mark.parametrize("case", SHARED_S, ids=ids(SHARED_S))
def test_leading_dims(case, backend, lead):
    skip_unless_interpreted(backend)
    _run_and_compare(case, backend, torch.float64, lead=lead)


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "dense", "triton"])
@pytest.mark.parametrize("view", ["transposed", "strided", "expanded"])
@pytest.mark.parametrize("case", SHARED_S, ids=ids(SHARED_S))
def test_non_contiguous_inputs(case, backend, view):
    skip_unless_interpreted(backend)
    params = case.params(torch.float64)
    base = case.x((6,), torch.float64)
    if view == "transposed":
        x = base.T.contiguous().T
    elif view == "strided":
        x = torch.stack([base, torch.full_like(base, float("nan"))], dim=-1)[..., 0]
    else:
        x = base[:1].expand(4, -1)
    assert not x.is_contiguous() or x.shape[-1] == 1
    y = case.run(x, params, backend)
    y_ref, _ = reference(case, x, params, torch.zeros(y.shape, dtype=torch.float64))
    assert rel_err(y, y_ref) <= TOL[torch.float64]


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "dense", "triton"])
@pytest.mark.parametrize("case", SMALL, ids=ids(SMALL))
def test_gradcheck(case, backend):
    skip_unless_interpreted(backend)
    _skip_unsupported(case, backend)
    params = case.params(torch.float64, seed=3, requires_grad=True)
    x = case.x((5,) if per_token(case) else (3,), torch.float64, seed=4).requires_grad_()
    # The interpreter costs ~10 ms a launch: triton gets gradcheck's fast mode (random projections of the Jacobian).
    assert torch.autograd.gradcheck(lambda x, *ps: case.run(x, ps, backend), (x, *params),
                                    fast_mode=backend == "triton")


@pytest.mark.usefixtures("no_backend_env")
def test_backends_agree_on_large_batch():
    """fft and dense give the same float32 answer on a realistic LoRA-sized call (B=512, n=768)."""
    import surm_ops

    x, c = torch.randn(512, 768), torch.randn(768) / 768**0.5
    torch.testing.assert_close(surm_ops.circulant_matmul(x, c, backend="fft"),
                               surm_ops.circulant_matmul(x, c, backend="dense"), rtol=1e-4, atol=1e-4)
