"""``structured_linear``: the fused frozen-layer-plus-update product, every backend against a float64 oracle."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from tests import oracle
from tests.ops.checks import rel_err
from tests.triton_mode import skip_unless_interpreted

# (structure, parameter shapes, n_out, n_in)
CASES = [
    ("toeplitz", [(1, 1, 7 + 5 - 1)], 7, 5),       # a rectangular Toeplitz (truncated circulant) update
    ("toeplitz", [(2, 3, 16 + 8 - 1)], 32, 24),    # block-circulant-shaped blocks, not square
    ("toeplitz", [(1, 1, 40 + 70 - 1)], 40, 70),   # masked tile edges
    ("kronecker", [(3, 2), (4, 5)], 12, 10),
]
IDS = ["toeplitz-7x5", "toeplitz-blocks-32x24", "toeplitz-40x70", "kronecker-12x10"]


def _matrix(structure, params, n_out, n_in):
    """M from the documented formulas (tests/oracle.py), sharing no code with the op."""
    if structure == "kronecker":
        return oracle.kronecker(*params)
    return oracle.block_toeplitz(params[0], n_out, n_in)


def _inputs(case, dtype, seed=0, bias=True):
    structure, shapes, n_out, n_in = case
    gen = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(6, n_in, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    b = torch.randn(n_out, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).to(pdt).requires_grad_() for s in shapes]
    return structure, x, w, b, ps


@pytest.mark.usefixtures("poisoned_allocations", "no_backend_env")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["dense", "triton", "auto"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_oracle(case, backend, dtype, bias):
    skip_unless_interpreted(backend)
    structure, x, w, b, ps = _inputs(case, dtype, bias=bias)
    y = surm_ops.structured_linear(x, w, b, structure, *ps, backend=backend)
    assert y.dtype == dtype and y.shape == (6, case[2])
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    leaves = [t for t in (x, w, b, *ps) if t is not None]
    got = torch.autograd.grad(y, leaves, grad.to(dtype))
    ref = [t.detach().double().requires_grad_() for t in leaves]
    x64, w64, *rest = ref
    b64 = rest.pop(0) if b is not None else None
    y64 = x64 @ (w64 + _matrix(structure, rest, *case[2:])).T + (b64 if b64 is not None else 0)
    want = torch.autograd.grad(y64, ref, grad.to(dtype).double())  # the upstream gradient the op received
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    assert rel_err(y, y64) <= tol
    n_layer = len(leaves) - len(ps)  # x, w (and b): x's dtype; then M's parameters
    for i, (g, w_) in enumerate(zip(got, want)):
        assert g.dtype == leaves[i].dtype
        # M's parameter gradients are float32 sums of exact products of half values: float32-accurate.
        bar = tol if i < n_layer else min(tol, 1e-4)
        assert rel_err(g, w_) <= bar, f"gradient {i}: {rel_err(g, w_)}"


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["dense", "triton"])
@pytest.mark.parametrize("case", CASES[:1] + CASES[3:], ids=[IDS[0], IDS[3]])
def test_gradcheck(case, backend):
    skip_unless_interpreted(backend)
    structure, x, w, b, ps = _inputs(case, torch.float64)
    assert torch.autograd.gradcheck(
        lambda *a: surm_ops.structured_linear(a[0], a[1], a[2], structure, *a[3:], backend=backend),
        (x, w, b, *ps), fast_mode=backend == "triton")


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["dense", "triton"])
def test_opcheck(backend):
    skip_unless_interpreted(backend)
    structure, x, w, b, ps = _inputs(CASES[1], torch.float64)
    torch.library.opcheck(torch.ops.surm_ops.structured_linear_toeplitz.default, (x, w, b, *ps, backend))
    structure, x, w, b, ps = _inputs(CASES[3], torch.float64)
    torch.library.opcheck(torch.ops.surm_ops.structured_linear_kronecker.default, (x, w, b, *ps, backend))


def test_auto_uses_dense_on_cpu(no_backend_env):
    from surm_ops import dispatch
    from surm_ops.ops.structured_linear import backend_for

    assert dispatch.resolve("structured_linear_toeplitz", "auto", torch.randn(2, 5), []) == "dense"
    assert backend_for(torch.randn(2, 5), torch.randn(3, 5), None, "toeplitz", torch.randn(1, 1, 7)) == "dense"


@pytest.mark.parametrize("structure, params, pattern", [
    ("circulant", [torch.randn(1, 1, 8)], "structure must be one of 'toeplitz', 'kronecker'; got 'circulant'"),
    ("toeplitz", [torch.randn(1, 1, 8), torch.randn(3)], r"structure 'toeplitz' takes 1 parameter tensor\(s\); got 2"),
    ("toeplitz", [torch.randn(1, 1, 9)], r"e has shape \(1, 1, 9\); for weight.shape = \(3, 6\) it needs"),
    ("toeplitz", [torch.randn(2, 1, 8)], r"e has shape \(2, 1, 8\); for weight.shape = \(3, 6\)"),
    ("toeplitz", [torch.randn(8)], r"e must have shape \(p, q, bo \+ bi - 1\); got e.shape = \(8,\)"),
    ("kronecker", [torch.randn(3, 2), torch.randn(1, 2)], r"kron\(a, b\) has shape \(3, 4\)"),
])
def test_bad_arguments_name_the_shapes(structure, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        surm_ops.structured_linear(torch.randn(4, 6), torch.randn(3, 6), None, structure, *params)


def test_bias_shape_error():
    with pytest.raises(ValueError, match=r"bias has shape \(4,\); weight.shape = \(3, 6\) needs \(3,\)"):
        surm_ops.structured_linear(torch.randn(4, 6), torch.randn(3, 6), torch.randn(4), "toeplitz",
                                   torch.randn(1, 1, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["dense", "triton", "auto"])
@pytest.mark.parametrize("case", CASES + [("toeplitz", [(1, 1, 1024 + 768 - 1)], 1024, 768),
                                          ("toeplitz", [(16, 48, 64 + 64 - 1)], 1024, 3072)],
                         ids=IDS + ["toeplitz-1024x768", "block-1024x3072-b64"])
def test_matches_oracle_on_gpu(case, backend, dtype):
    structure, x, w, b, ps = _inputs(case, dtype)
    x, w, b = (t.detach().cuda().requires_grad_() for t in (x, w, b))
    ps = [p.detach().cuda().requires_grad_() for p in ps]
    y = surm_ops.structured_linear(x, w, b, structure, *ps, backend=backend)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    got = torch.autograd.grad(y, [x, w, b, *ps], grad.to(dtype).cuda())
    ref = [t.detach().cpu().double().requires_grad_() for t in (x, w, b, *ps)]
    y64 = ref[0] @ (ref[1] + _matrix(structure, ref[3:], *case[2:])).T + ref[2]
    want = torch.autograd.grad(y64, ref, grad.to(dtype).double())
    # Half inputs: the product runs in x's dtype on tensor cores, like a plain half matmul; scale by d.
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    assert rel_err(y.cpu(), y64) <= tol
    for i, (g, w_) in enumerate(zip(got, want)):
        bar = tol if i < 3 else min(tol, 1e-4)  # M's parameters: float32 sums of exact products
        assert rel_err(g.cpu(), w_) <= bar, f"gradient {i}: {rel_err(g.cpu(), w_)}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_picks_triton_on_gpu(no_backend_env):
    from surm_ops import dispatch

    x = torch.randn(8, 768, device="cuda")
    assert dispatch.resolve("structured_linear_toeplitz", "auto", x, []) == "triton"
    assert dispatch.resolve("circulant_matmul", "auto", x, [torch.randn(768, device="cuda")]) == "triton"
    assert dispatch.resolve("svd_matmul", "auto", x, [torch.randn(64, 8, device="cuda"), torch.randn(8, device="cuda"),
                                                      torch.randn(768, 8, device="cuda")]) == "triton"
