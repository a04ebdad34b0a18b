"""The cuda backend on a GPU at the sizes its kernels are built for, against float64 oracles: output and every
gradient, every kernel dtype. Skips cleanly without CUDA. (Never run yet: the project had no GPU when it was
written; see csrc/README.md.)"""

from __future__ import annotations

import pytest
import torch

import surm_ops
import surm_ops.ops._cuda  # noqa: F401  (registers the backend even where surm_ops.ops does not import it)
from surm_ops import _extension
from tests import oracle

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative L2 error bounds: float32 arithmetic, plus for half x one rounding of the output (2 units of roundoff,
# about the error of a plain half-precision dense product, docs/contract.md §2.2 / docs/performance.md target 8).
TOL = {torch.float32: 2e-5, torch.bfloat16: 2 * 2.0**-8, torch.float16: 2 * 2.0**-11}
# (op, parameter shapes, leading dims); dense oracle up to 3072 features, the float64 FFT reference above.
CASES = [
    ("circulant_matmul", [(64,)], (5,)), ("circulant_matmul", [(768,)], (2, 3)),
    ("circulant_matmul", [(3072,)], (5,)), ("circulant_matmul", [(5120,)], (3,)),
    ("circulant_matmul", [(11008,)], (3,)), ("circulant_matmul", [(3, 4, 64)], (7,)),
    ("circulant_matmul", [(48, 48, 64)], (5,)), ("circulant_matmul", [(16, 48, 64)], (5,)),
    ("toeplitz_matmul", [(768,), (1024,)], (5,)), ("toeplitz_matmul", [(1024,), (768,)], (5,)),
    ("toeplitz_matmul", [(3072,), (3072,)], (3,)),
]


@pytest.fixture(scope="module", autouse=True)
def extension():
    ok, why = _extension.status()
    if not ok:
        if "toolkit" in why or _extension.ENV_NO_JIT in why:
            pytest.skip(f"the CUDA extension is unavailable and cannot be built here: {why}")
        pytest.fail(f"the CUDA extension failed: {why}")


def _features(op, shapes):
    if op == "circulant_matmul":
        s = shapes[0]
        return s[0] if len(s) == 1 else s[1] * s[2]
    return shapes[1][0]


def _oracle(op, x, params, grad):
    x = x.detach().double().cpu().requires_grad_()
    ps = [p.detach().double().cpu().requires_grad_() for p in params]
    if _features(op, [p.shape for p in params]) <= 3072 and max(x.shape[-1], grad.shape[-1]) <= 3072:
        y = oracle.apply(op, x, *ps)
    else:
        y = getattr(surm_ops, op)(x, *ps, backend="fft")  # the float64 reference path
    return y.detach(), torch.autograd.grad(y, [x, *ps], grad.double().cpu())


def _run(op, shapes, lead, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).cuda().requires_grad_() for s in shapes]
    x = torch.randn(*lead, _features(op, shapes), generator=gen).to(dtype).cuda().requires_grad_()
    y = getattr(surm_ops, op)(x, *params, backend="cuda")
    grad = torch.randn(y.shape, generator=gen).to(dtype).cuda()
    grads = torch.autograd.grad(y, [x, *params], grad)
    return x, params, y, grad, grads


def rel_err(got, want):
    got, want = got.double().cpu(), want.double().cpu()
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,shapes,lead", CASES, ids=[f"{o[:4]}-{s}" for o, s, _ in CASES])
@pytest.mark.usefixtures("poisoned_allocations")  # an unwritten output element reads NaN
def test_matches_oracle(op, shapes, lead, dtype):
    x, params, y, grad, grads = _run(op, shapes, lead, dtype)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y_ref, grads_ref = _oracle(op, x, params, grad)
    assert rel_err(y, y_ref) <= TOL[dtype]
    assert grads[0].dtype == dtype and rel_err(grads[0], grads_ref[0]) <= TOL[dtype]
    for g, g_ref, p in zip(grads[1:], grads_ref[1:], params):
        assert g.dtype == p.dtype and rel_err(g, g_ref) <= 1e-4  # float32 sums of exactly rounded inputs
    if op == "toeplitz_matmul":
        assert grads[2][0].item() == 0.0


@pytest.mark.parametrize("op,shapes,lead", [CASES[2], CASES[6], CASES[8]], ids=["circ3072", "block48", "toep"])
def test_parameter_gradient_is_deterministic(op, shapes, lead):
    first = _run(op, shapes, (4099,), torch.bfloat16)[4]
    second = _run(op, shapes, (4099,), torch.bfloat16)[4]
    for a, b in zip(first[1:], second[1:]):
        assert torch.equal(a, b)


def test_float32_parameters_with_bfloat16_x_row_none():
    x = torch.randn(5, 2048, device="cuda", dtype=torch.bfloat16)
    col = torch.randn(2048, device="cuda")
    y = surm_ops.toeplitz_matmul(x, col, backend="cuda")
    want = oracle.apply("toeplitz_matmul", x.double().cpu(), col.double().cpu())
    assert rel_err(y, want) <= TOL[torch.bfloat16]
