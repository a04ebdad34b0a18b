"""torch.library registration: opcheck on every op and its backward, torch.compile(fullgraph=True) forward and
backward, and the backend dispatch rules."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from surm_ops import dispatch
from tests.ops.cases import SMALL, ids, per_token
from tests.triton_mode import skip_unless_interpreted

OPCHECK_CASES = [c for c in SMALL if c.label in {
    "circulant-n7", "block-2x3x4", "skew-n7", "toeplitz-3x7", "ldr-r2-n7", "kron-2x3-4x5", "svd-5x7-k3",
    "svd-per-token"}]


def _op_args(case, backend):
    params = case.params(torch.float64, requires_grad=True)
    x = case.x((5,), torch.float64).requires_grad_()
    return x, params, backend


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "dense", "triton", "auto"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=ids(OPCHECK_CASES))
def test_opcheck_forward(case, backend):
    skip_unless_interpreted(backend)
    if per_token(case) and backend == "dense":
        pytest.skip("dense refuses per-token s by contract")
    x, params, backend = _op_args(case, backend)
    torch.library.opcheck(getattr(torch.ops.surm_ops, case.op).default, (x, *params, backend))


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "triton"])
@pytest.mark.parametrize("needs", ["all", "x-only", "params-only"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=ids(OPCHECK_CASES))
def test_opcheck_backward(case, needs, backend):
    skip_unless_interpreted(backend)
    x, params, _ = _op_args(case, backend)
    grad = torch.randn(*x.shape[:-1], getattr(surm_ops, case.op)(x, *params).shape[-1], dtype=torch.float64)
    mask = {"all": [True] * (1 + len(params)), "x-only": [True] + [False] * len(params),
            "params-only": [False] + [True] * len(params)}[needs]
    op = getattr(torch.ops.surm_ops, f"{case.op}_backward").default
    torch.library.opcheck(op, (grad, x.detach(), *[p.detach() for p in params], backend, mask))


def _all_ops(x8, x12, ps):
    """One function calling every op (and both circulant forms), for the compile test."""
    return (surm_ops.circulant_matmul(x8, ps["c"]).sum()
            + surm_ops.circulant_matmul(x12, ps["blk"]).sum()
            + surm_ops.skew_circulant_matmul(x8, ps["c"]).pow(2).sum()
            + surm_ops.toeplitz_matmul(x8, ps["col"], ps["row"]).sum()
            + surm_ops.toeplitz_matmul(x8, ps["c"]).sum()
            + surm_ops.ldr_matmul(x8, ps["g"], ps["h"]).pow(2).sum()
            + surm_ops.kronecker_matmul(x12, ps["a"], ps["b"]).sum()
            + surm_ops.svd_matmul(x8, ps["u"], ps["s"], ps["v"]).pow(2).sum())


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_forward_and_backward(dynamic):
    gen = torch.Generator().manual_seed(0)
    shapes = dict(c=(8,), blk=(2, 3, 4), col=(5,), row=(8,), g=(2, 8), h=(2, 8), a=(3, 4), b=(2, 3), u=(6, 3),
                  s=(3,), v=(8, 3))
    ps = {k: torch.randn(s, generator=gen, requires_grad=True) for k, s in shapes.items()}
    x8, x12 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 12, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True, dynamic=dynamic)
    inputs = [x8, x12, *ps.values()]
    want = torch.autograd.grad(_all_ops(x8, x12, ps), inputs)
    loss = compiled(x8, x12, ps)
    got = torch.autograd.grad(loss, inputs)
    torch.testing.assert_close(loss, _all_ops(x8, x12, ps))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_auto_prefers_dense_for_small_and_fft_for_large(no_backend_env):
    small_x, small_c = torch.randn(8, 16), torch.randn(16)
    big_x, big_c = torch.randn(4096, 4096), torch.randn(4096)
    assert dispatch.resolve("circulant_matmul", "auto", small_x, [small_c]) == "dense"
    assert dispatch.resolve("circulant_matmul", "auto", big_x, [big_c]) == "fft"


def test_environment_forces_backend(monkeypatch):
    x, c = torch.randn(4096, 4096), torch.randn(4096)
    monkeypatch.setenv("SURM_BACKEND", "dense")
    assert dispatch.resolve("circulant_matmul", "auto", x, [c]) == "dense"
    assert dispatch.resolve("circulant_matmul", "fft", x, [c]) == "fft"  # an explicit argument wins


def test_environment_backend_used_at_run_time(monkeypatch):
    """SURM_BACKEND reaches the backend that actually runs (observed through a recording implementation)."""
    calls = []
    fft_impl = dispatch._IMPLS["skew_circulant_matmul"]["fft"]

    def recording(x, c):
        calls.append("fft")
        return fft_impl.forward(x, c)

    monkeypatch.setitem(dispatch._IMPLS["skew_circulant_matmul"], "fft",
                        dispatch.Impl(recording, fft_impl.backward, fft_impl.why_not))
    monkeypatch.setenv("SURM_BACKEND", "fft")
    surm_ops.skew_circulant_matmul(torch.randn(2, 4), torch.randn(4))
    monkeypatch.setenv("SURM_BACKEND", "dense")
    surm_ops.skew_circulant_matmul(torch.randn(2, 4), torch.randn(4))
    assert calls == ["fft"]


def test_available_reports_every_backend(monkeypatch):
    skip_unless_interpreted("triton")
    args = ("circulant_matmul", torch.randn(2, 8), [torch.randn(8)])
    report = dispatch.available(*args)
    assert set(report) == set(surm_ops.BACKENDS)
    assert report["fft"] == [] and report["dense"] == []
    assert report["triton"] == []  # CPU tensors run through the interpreter (TRITON_INTERPRET=1 in this suite)
    assert any("CUDA tensors only" in r for r in report["cuda"])
    monkeypatch.setattr("surm_ops.dispatch._interpreting", lambda: False)
    assert any("CUDA tensors only" in r and "TRITON_INTERPRET=1" in r for r in dispatch.available(*args)["triton"])


def test_auto_never_picks_triton_for_cpu_tensors():
    """The interpreter is for tests: automatic mode on CPU still chooses between fft and dense."""
    for n in (16, 4096):
        assert dispatch.resolve("circulant_matmul", "auto", torch.randn(4, n), [torch.randn(n)]) in ("fft", "dense")


def test_backward_saves_input_in_its_own_dtype():
    """No float32 copy of a bf16 activation is kept for backward: what autograd saves is the bf16 input itself."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = torch.randn(64, 8, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = surm_ops.circulant_matmul(x, c, backend="fft")
    assert {(t.dtype, tuple(t.shape)) for t in saved} == {(torch.bfloat16, (64, 8)), (torch.float32, (8,))}
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and c.grad.dtype == torch.float32


@pytest.mark.usefixtures("no_backend_env")
@pytest.mark.parametrize("backend", ["fft", "dense"])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=ids(OPCHECK_CASES))
def test_eager_path_equals_registered_op(case, backend):
    """Plain eager calls skip the custom-op machinery (an autograd.Function around the same functions); both
    paths must give bit-identical values and gradients."""
    if per_token(case) and backend == "dense":
        pytest.skip("dense refuses per-token s by contract")
    results = []
    for via_op in (False, True):
        x, params, _ = _op_args(case, backend)
        args = (x, *params)
        y = getattr(torch.ops.surm_ops, case.op)(*args, backend) if via_op else case.run(x, params, backend)
        results.append((y, torch.autograd.grad(y.square().sum(), args)))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_double_backward_raises_instead_of_returning_wrong_values():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(surm_ops.circulant_matmul(x, c).square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gx.sum(), [c])


def test_auto_priority_on_gpu_honours_skip_rules(monkeypatch):
    """On CUDA tensors auto takes cuda, then triton, unless a backend's skip_auto predicts another is faster.
    (Run on CPU by treating the tensor as a GPU one and faking the extension's backend.)"""
    monkeypatch.setattr(dispatch, "_on_gpu", lambda x: True)
    monkeypatch.setattr(dispatch, "reasons", lambda op, name, x, params: [] if name != "cuda" else ["no _C"])
    x = torch.randn(2, 4096)
    assert dispatch.choose_auto("circulant_matmul", x, [torch.randn(4096)]) == "triton"
    wide = torch.randn(2, 16384)
    assert dispatch.choose_auto("circulant_matmul", wide, [torch.randn(16384)]) in ("fft", "dense")
    assert dispatch.choose_auto("ldr_matmul", x, [torch.randn(2, 4096)] * 2) in ("fft", "dense")  # 2 r n = 16384
    assert dispatch.choose_auto("svd_matmul", wide, [torch.randn(8, 4), torch.randn(4), torch.randn(16384, 4)]) \
        == "triton"
    monkeypatch.setattr(dispatch, "reasons", lambda op, name, x, params: [])
    monkeypatch.setitem(dispatch._IMPLS["circulant_matmul"], "cuda", dispatch.Impl(
        None, None, skip_auto=lambda x, c: "small" if x.shape[-1] < 2048 else None))
    assert dispatch.choose_auto("circulant_matmul", x, [torch.randn(4096)]) == "cuda"
    assert dispatch.choose_auto("circulant_matmul", torch.randn(2, 768), [torch.randn(768)]) == "triton"


@pytest.mark.parametrize("capability, refused", [((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_gpu_backends_refuse_gpus_older_than_ampere(monkeypatch, capability, refused):
    """Before any kernel or extension is touched, cuda and triton name the device's compute capability when it is
    below 8.0; fft and dense are untouched. (Run on CPU with a stand-in for a CUDA tensor.)"""
    from types import SimpleNamespace

    from surm_ops import _extension

    dispatch._capability.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    loads = []
    monkeypatch.setattr(_extension, "status", lambda: loads.append(1) or (True, "loaded"))
    x = SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setitem(dispatch._IMPLS, "probe", {b: dispatch.Impl(None, None) for b in dispatch.BACKENDS})
    try:
        for backend in ("cuda", "triton"):
            why = dispatch.reasons("probe", backend, x, [])
            old = [w for w in why if "compute capability 8.0" in w]
            assert bool(old) == refused, why
            if refused:
                assert f"sm_{capability[0]}{capability[1]}" in old[0] and "cuda:0" in old[0]
        assert (loads == []) == refused  # an sm_75 device never loads (or JIT-builds) the extension
    finally:
        dispatch._capability.cache_clear()


def test_eager_backward_runs_the_backend_the_forward_resolved(monkeypatch):
    """Decided once per call: changing SURM_BACKEND between forward and backward does not switch the backward to
    another backend (observed through recording implementations)."""
    ran = []
    for name in ("fft", "dense"):
        impl = dispatch.implementation("circulant_matmul", name)

        def backward(*args, impl=impl, name=name):
            ran.append(name)
            return impl.backward(*args)

        monkeypatch.setitem(dispatch._IMPLS["circulant_matmul"], name,
                            dispatch.Impl(impl.forward, backward, impl.why_not, impl.skip_auto))
    x, c = torch.randn(3, 8), torch.randn(8, requires_grad=True)
    monkeypatch.setenv("SURM_BACKEND", "dense")
    y = surm_ops.circulant_matmul(x, c)
    monkeypatch.setenv("SURM_BACKEND", "fft")
    y.sum().backward()
    assert ran == ["dense"]


def test_remembered_decisions_follow_the_environment_and_validate_each_signature(monkeypatch):
    x, c = torch.randn(3, 8), torch.randn(8)
    monkeypatch.setenv("SURM_BACKEND", "dense")
    surm_ops.circulant_matmul(x, c)
    monkeypatch.setenv("SURM_BACKEND", "cuda")
    with pytest.raises(surm_ops.BackendUnavailableError, match="SURM_BACKEND=cuda"):
        surm_ops.circulant_matmul(x, c)
    monkeypatch.delenv("SURM_BACKEND")
    surm_ops.circulant_matmul(x, c)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be n_in = 8"):
        surm_ops.circulant_matmul(torch.randn(3, 9), c)
    with pytest.raises(ValueError, match="is on meta but x is on cpu"):
        surm_ops.circulant_matmul(x, c.to("meta"))


def test_parameters_take_the_eager_path_with_the_same_results():
    """nn.Parameter disables __torch_function__, so an adapter's parameters skip the custom-op machinery like plain
    tensors (the grad_fn shows which path ran); values and gradients match the registered op's."""
    x = torch.randn(3, 8, dtype=torch.float64)
    c = torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    y = surm_ops.circulant_matmul(x, c, backend="fft")
    assert type(y.grad_fn).__name__ == "EagerBackward"
    want = torch.ops.surm_ops.circulant_matmul(x, c, "fft")
    assert torch.equal(y, want)
    assert torch.equal(torch.autograd.grad(y.sum(), c)[0], torch.autograd.grad(want.sum(), c)[0])
