"""Black-box contract tests for the public ``surm_ops`` API, with scipy/numpy as the oracle.

Written against docs/contract.md §2 (contracts) and §3 (tests) only, without reading the implementation.
Every structured matrix M is rebuilt here in float64 with scipy.linalg.circulant / scipy.linalg.toeplitz /
np.kron / explicit numpy, and each op must compute ``y = x @ M.T``.

Gradients are checked against an oracle that uses only linearity: y is linear in x and, with the other
arguments fixed, affine in each parameter (linear except toeplitz col/row, which add), so with L = sum(G * y)

    dL/dP[k] = sum(G * (y(P = e_k) - y(P = 0)))          (e_k: the k-th basis tensor of P's shape)

which is sum((G^T X) * (M(e_k) - M(0))), M built through the scipy constructor.
"""

import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

scipy_linalg = pytest.importorskip("scipy.linalg")

import surm_ops  # noqa: E402  (deliberately not importorskip: a broken package must fail loudly)

# triton runs here through its interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where triton is installed).
BACKENDS = ("auto", "fft", "dense") + (("triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ())
# What a backend may raise when it declines a call the contract allows it to decline (only: the dense backend with
# per-token s in svd_matmul). Anything else is a failure, never a skip.
REFUSAL = (surm_ops.BackendUnavailableError,)


# --------------------------------------------------------------------------------------------------------------------
# numpy oracles
# --------------------------------------------------------------------------------------------------------------------
def np_circulant(c):
    return scipy_linalg.circulant(c)


def np_block_circulant(c):
    p, q, _ = c.shape
    return np.block([[scipy_linalg.circulant(c[P, Q]) for Q in range(q)] for P in range(p)])


def np_skew_circulant(c):
    n = c.shape[0]
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    # M[i, j] = c[i - j] if i >= j else -c[n + i - j]
    return np.where(i >= j, 1.0, -1.0) * c[(i - j) % n]


def np_toeplitz(col, row=None):
    return scipy_linalg.toeplitz(col) if row is None else scipy_linalg.toeplitz(col, row)


def np_ldr(g, h):
    n = g.shape[1]
    m = np.zeros((n, n))
    for gi, hi in zip(g, h):
        m += np_circulant(gi) @ np_skew_circulant(hi)
    return m


def np_kron(a, b):
    return np.kron(a, b)


def np_svd(u, s, v):
    return (u * s) @ v.T


def _seed(*parts):
    return zlib.crc32(repr(parts).encode())


# --------------------------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    op: str  # function name in surm_ops
    label: str  # pytest id
    pnames: tuple  # positional parameters after x, in call order
    shapes: dict  # parameter name -> shape
    n_in: int
    n_out: int
    dense: Callable | None  # params -> M (n_out, n_in); None when M is per token
    per_token: bool = False

    def params(self, salt=0):
        rng = np.random.default_rng(_seed(self.label, salt))
        return {k: rng.standard_normal(self.shapes[k]) for k in self.pnames}

    def apply(self, x, p):
        """Oracle y for numpy x of shape (..., n_in)."""
        if self.per_token:
            return ((x @ p["v"]) * p["s"]) @ p["u"].T
        return x @ self.dense(p).T

    def call(self, x, tp, backend="auto"):
        fn = getattr(surm_ops, self.op)
        return fn(x, *[tp[k] for k in self.pnames], backend=backend)

    def call_default(self, x, tp):
        fn = getattr(surm_ops, self.op)
        return fn(x, *[tp[k] for k in self.pnames])

    def __repr__(self):
        return self.label


def circ(n):
    return Case("circulant_matmul", f"circulant-n{n}", ("c",), {"c": (n,)}, n, n, lambda p: np_circulant(p["c"]))


def block(p, q, b):
    return Case("circulant_matmul", f"circulant-block-p{p}q{q}b{b}", ("c",), {"c": (p, q, b)}, q * b, p * b,
                lambda P: np_block_circulant(P["c"]))


def skew(n):
    return Case("skew_circulant_matmul", f"skew-n{n}", ("c",), {"c": (n,)}, n, n, lambda p: np_skew_circulant(p["c"]))


def toep(n_out, n_in):
    return Case("toeplitz_matmul", f"toeplitz-out{n_out}-in{n_in}", ("col", "row"), {"col": (n_out,), "row": (n_in,)},
                n_in, n_out, lambda p: np_toeplitz(p["col"], p["row"]))


def toep_sq(n):
    return Case("toeplitz_matmul", f"toeplitz-sym-n{n}", ("col",), {"col": (n,)}, n, n,
                lambda p: np_toeplitz(p["col"]))


def ldr(r, n):
    return Case("ldr_matmul", f"ldr-r{r}-n{n}", ("g", "h"), {"g": (r, n), "h": (r, n)}, n, n,
                lambda p: np_ldr(p["g"], p["h"]))


def kron(p, q, u, v):
    return Case("kronecker_matmul", f"kron-a{p}x{q}-b{u}x{v}", ("a", "b"), {"a": (p, q), "b": (u, v)}, q * v, p * u,
                lambda P: np_kron(P["a"], P["b"]))


def svd(n_out, n_in, k, per_token=False, T=5):
    shapes = {"u": (n_out, k), "s": (T, k) if per_token else (k,), "v": (n_in, k)}
    tag = f"-pertoken{T}" if per_token else ""
    return Case("svd_matmul", f"svd-out{n_out}-in{n_in}-k{k}{tag}", ("u", "s", "v"), shapes, n_in, n_out,
                None if per_token else (lambda p: np_svd(p["u"], p["s"], p["v"])), per_token=per_token)


T_FWD = 5

FORWARD_CASES = [
    *(circ(n) for n in (1, 2, 7, 33, 64, 1001)),
    block(2, 3, 4), block(3, 2, 5), block(1, 1, 7), block(2, 2, 1), block(4, 1, 3), block(1, 3, 2),
    *(skew(n) for n in (1, 2, 7, 33, 64, 1001)),
    toep(7, 7), toep(5, 9), toep(9, 5), toep(1, 4), toep(4, 1), toep(1, 1), toep(33, 1001),
    *(toep_sq(n) for n in (1, 2, 33, 1001)),
    ldr(1, 1), ldr(1, 7), ldr(2, 2), ldr(2, 33), ldr(3, 64), ldr(2, 1001),
    kron(2, 3, 4, 5), kron(3, 2, 5, 4), kron(1, 1, 3, 3), kron(4, 1, 1, 6), kron(1, 1, 1, 1), kron(1, 4, 3, 1),
    svd(9, 7, 3), svd(7, 9, 3), svd(5, 5, 1), svd(1, 1, 1), svd(8, 12, 20),
    svd(12, 8, 4, per_token=True, T=T_FWD), svd(8, 12, 20, per_token=True, T=T_FWD),
]

T_GRAD = 3
GRAD_CASES = [
    circ(1), circ(2), circ(7), circ(8), block(2, 3, 3), block(3, 1, 2),
    skew(1), skew(2), skew(7), skew(8),
    toep(5, 7), toep(7, 5), toep(1, 3), toep_sq(1), toep_sq(6),
    ldr(1, 5), ldr(2, 7), ldr(3, 4),
    kron(2, 3, 3, 2), kron(1, 2, 3, 1),
    svd(6, 5, 3), svd(5, 6, 2, per_token=True, T=T_GRAD),
]

T_GC = 2
GRADCHECK_CASES = [
    circ(1), circ(2), circ(5), block(2, 3, 2),
    skew(1), skew(2), skew(5),
    toep(3, 4), toep(4, 3), toep_sq(4),
    ldr(2, 4),
    kron(2, 3, 2, 1),
    svd(4, 3, 2), svd(3, 4, 2, per_token=True, T=T_GC),
]

# one representative per op (and per parameter layout) for the cheaper shape / layout tests
ONE_PER_OP = [
    circ(7), block(2, 3, 4), skew(7), toep(5, 9), toep_sq(6), ldr(2, 7), kron(2, 3, 4, 5), svd(9, 7, 3),
    svd(7, 9, 3, per_token=True, T=1),
]

HALF_T = 32
HALF_CASES = [
    circ(64), circ(33), block(2, 3, 16), skew(64), skew(33), toep(48, 40), toep_sq(64), ldr(2, 64),
    kron(4, 6, 8, 5), svd(48, 40, 8), svd(40, 48, 8, per_token=True, T=HALF_T),
]


def ids(cases):
    return [c.label for c in cases]


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def to_t(p, dtype=torch.float64, requires_grad=False):
    return {k: torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for k, v in p.items()}


def x_np(case, lead, salt=0):
    rng = np.random.default_rng(_seed(case.label, "x", lead, salt))
    return rng.standard_normal((*lead, case.n_in))


def per_token_params(case, s_shape, salt=0):
    """Parameters for a per-token svd case with s of a given shape."""
    p = case.params(salt)
    rng = np.random.default_rng(_seed(case.label, "s", s_shape, salt))
    p["s"] = rng.standard_normal(s_shape)
    return p


def run(case, x, tp, backend):
    """Call the op; a dense backend may decline per-token s (contract), which skips with the reason."""
    if case.per_token and backend == "dense":
        try:
            return case.call(x, tp, backend)
        except REFUSAL as e:
            assert str(e), "refusal must carry a message"
            pytest.skip(f"dense backend declines per-token s ({type(e).__name__}: {e})")
    return case.call(x, tp, backend)


def assert_close64(got, want, what, rtol=1e-10):
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def rel_l2(got, want):
    got = got.detach().double().cpu()
    want = want.detach().double().cpu() if isinstance(want, torch.Tensor) else torch.from_numpy(np.asarray(want))
    den = torch.linalg.vector_norm(want).item()
    num = torch.linalg.vector_norm(got - want).item()
    return num / den if den > 0 else num


def oracle_grads(case, x, p, G):
    """Exact float64 gradients of L = sum(G * y) by linearity in each argument (see module docstring)."""

    def lin(fn, shape):
        base = fn(np.zeros(shape))  # nonzero when y is affine, not linear, in this argument (toeplitz col/row)
        out = np.zeros(shape)
        for idx in np.ndindex(*shape):
            E = np.zeros(shape)
            E[idx] = 1.0
            out[idx] = np.sum(G * (fn(E) - base))
        return out

    grads = {"x": lin(lambda E: case.apply(E, p), x.shape)}
    for k in case.pnames:
        grads[k] = lin(lambda E, k=k: case.apply(x, {**p, k: E}), p[k].shape)
    return grads


def names_arg(msg, name):
    """The message names the argument: as a word, quoted or back-quoted."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", msg) is not None


def has_number(msg, n):
    return re.search(rf"(?<!\d){n}(?!\d)", msg) is not None


# --------------------------------------------------------------------------------------------------------------------
# 1. forward against the scipy oracle, float64
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=ids(FORWARD_CASES))
def test_forward_float64_matches_scipy(case, backend):
    p = case.params()
    x = x_np(case, (T_FWD,))
    want = case.apply(x, p)
    y = run(case, torch.from_numpy(x), to_t(p), backend)
    assert y.dtype == torch.float64
    assert tuple(y.shape) == (T_FWD, case.n_out)
    assert_close64(y, want, f"{case.label} backend={backend}")


@pytest.mark.parametrize("case", ONE_PER_OP, ids=ids(ONE_PER_OP))
def test_default_backend_is_auto(case):
    """Calling without backend= works and agrees with backend='auto'."""
    p = case.params()
    x = torch.from_numpy(x_np(case, (case.shapes["s"][0] if case.per_token else 4,)))
    tp = to_t(p)
    y0 = case.call_default(x, tp)
    y1 = case.call(x, tp, "auto")
    assert_close64(y0, y1.detach().numpy(), case.label, rtol=1e-12)


def test_toeplitz_row_none_keyword_and_row0_ignored():
    col = np.random.default_rng(1).standard_normal(6)
    row = np.random.default_rng(2).standard_normal(6)
    x = np.random.default_rng(3).standard_normal((4, 6))
    tcol, trow, tx = map(torch.from_numpy, (col, row, x))
    for backend in BACKENDS:
        y_none = surm_ops.toeplitz_matmul(tx, tcol, row=None, backend=backend)
        assert_close64(y_none, x @ scipy_linalg.toeplitz(col).T, f"row=None backend={backend}")
        y_row = surm_ops.toeplitz_matmul(tx, tcol, trow, backend=backend)
        row2 = trow.clone()
        row2[0] = 1e6  # row[0] is ignored, as in scipy
        y_row2 = surm_ops.toeplitz_matmul(tx, tcol, row2, backend=backend)
        assert_close64(y_row, x @ scipy_linalg.toeplitz(col, row).T, f"row backend={backend}")
        assert_close64(y_row2, y_row.numpy(), f"row[0] must be ignored, backend={backend}")


def test_block_circulant_1x1_equals_circulant():
    c = np.random.default_rng(5).standard_normal(9)
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((3, 9)))
    for backend in BACKENDS:
        y1 = surm_ops.circulant_matmul(x, torch.from_numpy(c), backend=backend)
        y3 = surm_ops.circulant_matmul(x, torch.from_numpy(c).reshape(1, 1, 9), backend=backend)
        assert_close64(y3, y1.numpy(), f"backend={backend}", rtol=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# 2. gradients against the numpy oracle, float64
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=ids(GRAD_CASES))
def test_gradients_float64_match_oracle(case, backend):
    p = case.params()
    x = x_np(case, (T_GRAD,))
    G = np.random.default_rng(_seed(case.label, "G")).standard_normal((T_GRAD, case.n_out))
    want = oracle_grads(case, x, p, G)
    if case.dense is not None:  # the oracle itself against the closed form dx = G M
        np.testing.assert_allclose(want["x"], G @ case.dense(p), rtol=1e-12, atol=1e-12)

    tx = torch.tensor(x, requires_grad=True)
    tp = to_t(p, requires_grad=True)
    y = run(case, tx, tp, backend)
    y.backward(torch.from_numpy(G))
    assert tx.grad is not None and tx.grad.dtype == torch.float64
    assert_close64(tx.grad, want["x"], f"{case.label} backend={backend} grad x")
    for k in case.pnames:
        assert tp[k].grad is not None, f"{case.label}: no gradient for {k}"
        assert tp[k].grad.dtype == torch.float64
        assert_close64(tp[k].grad, want[k], f"{case.label} backend={backend} grad {k}")


@pytest.mark.parametrize("case", ONE_PER_OP, ids=ids(ONE_PER_OP))
def test_partial_requires_grad(case):
    """Only x, or only the parameters, requiring grad."""
    T = case.shapes["s"][0] if case.per_token else 3
    p = case.params()
    x = x_np(case, (T,))
    G = np.ones((T, case.n_out))
    want = oracle_grads(case, x, p, G)
    tx = torch.tensor(x, requires_grad=True)
    run(case, tx, to_t(p), "auto").sum().backward()
    assert_close64(tx.grad, want["x"], "x only")
    tp = to_t(p, requires_grad=True)
    run(case, torch.from_numpy(x), tp, "auto").sum().backward()
    for k in case.pnames:
        assert_close64(tp[k].grad, want[k], f"params only: {k}")


# --------------------------------------------------------------------------------------------------------------------
# 3. torch.autograd.gradcheck on the public functions
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=ids(GRADCHECK_CASES))
def test_gradcheck(case, backend):
    p = case.params()
    x = torch.tensor(x_np(case, (T_GC,)), requires_grad=True)
    tp = to_t(p, requires_grad=True)
    run(case, x, tp, backend)  # a dense per-token refusal skips here

    def f(x, *ps):
        return case.call(x, dict(zip(case.pnames, ps)), backend)

    assert torch.autograd.gradcheck(f, (x, *[tp[k] for k in case.pnames]), eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# 4. half-precision x with float32 parameters
# --------------------------------------------------------------------------------------------------------------------
def _bases(case, p, name):
    """dM/dP[k] for every k (M is affine in each parameter): array (numel, n_out, n_in)."""
    shape = p[name].shape
    base = case.dense({**p, name: np.zeros(shape)})
    out = []
    for idx in np.ndindex(*shape):
        E = np.zeros(shape)
        E[idx] = 1.0
        out.append(case.dense({**p, name: E}) - base)
    return np.stack(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", HALF_CASES, ids=ids(HALF_CASES))
def test_half_x_float32_params(case, backend, dtype):
    rng = np.random.default_rng(_seed(case.label, "half"))
    p32 = {k: torch.from_numpy(v).float() for k, v in case.params().items()}
    xh = torch.from_numpy(rng.standard_normal((HALF_T, case.n_in))).to(dtype)
    Gh = torch.from_numpy(rng.standard_normal((HALF_T, case.n_out))).to(dtype)

    # float64 oracle built from the values the op actually receives
    p64 = {k: v.double().numpy() for k, v in p32.items()}
    x64 = xh.double().numpy()
    G64 = Gh.double().numpy()
    y_want = case.apply(x64, p64)
    grads_want = oracle_grads(case, x64, p64, G64) if case.per_token else None

    # plain low-precision dense baseline
    ph = {k: v.to(dtype) for k, v in p32.items()}
    if case.per_token:
        y_base = ((xh @ ph["v"]) * ph["s"]) @ ph["u"].T
        dx_base = ((Gh @ ph["u"]) * ph["s"]) @ ph["v"].T
    else:
        M = case.dense(p64)
        Mh = torch.from_numpy(M).to(dtype)
        y_base = xh @ Mh.T
        dx_base = Gh @ Mh
        GtX_h = (Gh.T @ xh).double().numpy()  # what a plain low-precision dense backward forms
        grads_want = {"x": G64 @ M}
        grads_base = {}
        for k in case.pnames:
            B = _bases(case, p64, k)
            grads_want[k] = np.einsum("kij,ij->k", B, G64.T @ x64).reshape(p64[k].shape)
            grads_base[k] = np.einsum("kij,ij->k", B, GtX_h).reshape(p64[k].shape)

    tx = xh.clone().requires_grad_(True)
    tp = {k: v.clone().requires_grad_(True) for k, v in p32.items()}
    y = run(case, tx, tp, backend)
    assert y.dtype == dtype, f"result dtype {y.dtype}, expected x.dtype {dtype}"
    assert tuple(y.shape) == (HALF_T, case.n_out)
    assert torch.isfinite(y).all()
    e_y, e_base = rel_l2(y, y_want), rel_l2(y_base, y_want)
    assert e_y <= 2 * e_base + 1e-6, f"forward rel err {e_y:.3e} > 2 x plain {dtype} dense {e_base:.3e}"
    # "computed in float32 and rounded once" (fft and dense; triton takes half operands on tensor cores, as a plain
    # half matmul does, and is held to the bar above): no worse than rounding the exact result (allow rare double
    # rounding)
    e_round = rel_l2(torch.from_numpy(y_want).to(dtype), y_want)
    assert backend == "triton" or e_y <= 1.25 * e_round + 1e-6, \
        f"forward rel err {e_y:.3e} vs one rounding of the exact result {e_round:.3e}"

    y.backward(Gh)
    assert tx.grad.dtype == dtype, f"x.grad dtype {tx.grad.dtype}"
    e_dx, e_dx_base = rel_l2(tx.grad, grads_want["x"]), rel_l2(dx_base, grads_want["x"])
    assert e_dx <= 2 * e_dx_base + 1e-6, f"grad x rel err {e_dx:.3e} > 2 x plain {e_dx_base:.3e}"
    for k in case.pnames:
        g = tp[k].grad
        assert g is not None and g.dtype == torch.float32, f"grad {k}: {None if g is None else g.dtype}"
        e = rel_l2(g, grads_want[k])
        if case.per_token:
            assert e <= 1e-2, f"grad {k} rel err {e:.3e}"
        else:
            e_b = rel_l2(torch.from_numpy(grads_base[k]), grads_want[k])
            assert e <= 2 * e_b + 1e-6, f"grad {k} rel err {e:.3e} > 2 x plain {dtype} dense {e_b:.3e}"


@pytest.mark.parametrize("case", ONE_PER_OP, ids=ids(ONE_PER_OP))
def test_float32_everything(case):
    T = case.shapes["s"][0] if case.per_token else 6
    p = case.params()
    x = x_np(case, (T,))
    want = case.apply(x, p)
    for backend in BACKENDS:
        tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        tp = to_t(p, torch.float32, requires_grad=True)
        try:
            y = run(case, tx, tp, backend)
        except pytest.skip.Exception:
            continue
        assert y.dtype == torch.float32
        assert rel_l2(y, want) < 1e-5, f"backend={backend}"
        y.sum().backward()
        assert tx.grad.dtype == torch.float32
        assert all(tp[k].grad.dtype == torch.float32 for k in case.pnames)


@pytest.mark.parametrize("case", [circ(16), skew(16), toep(12, 16), ldr(2, 16), kron(2, 4, 3, 4), svd(12, 16, 4)],
                         ids=lambda c: c.label)
def test_bf16_params_bf16_x(case):
    """All-bf16 call: result and every gradient bf16."""
    p = case.params()
    tx = torch.tensor(x_np(case, (4,)), dtype=torch.bfloat16, requires_grad=True)
    tp = to_t(p, torch.bfloat16, requires_grad=True)
    y = case.call(tx, tp, "auto")
    assert y.dtype == torch.bfloat16
    want = case.apply(tx.detach().double().numpy(), {k: v.detach().double().numpy() for k, v in tp.items()})
    assert rel_l2(y, want) < 2e-2
    y.float().sum().backward()
    assert tx.grad.dtype == torch.bfloat16
    assert all(tp[k].grad.dtype == torch.bfloat16 for k in case.pnames)


# --------------------------------------------------------------------------------------------------------------------
# 5. leading dims, zero-sized batches, strided / transposed views
# --------------------------------------------------------------------------------------------------------------------
LEADS = [(2, 3), (), (1, 1, 1), (4,)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead", LEADS, ids=lambda s: "lead" + "x".join(map(str, s)) if s else "lead-none")
@pytest.mark.parametrize("case", [c for c in ONE_PER_OP if not c.per_token], ids=lambda c: c.label)
def test_leading_dims(case, lead, backend):
    p = case.params()
    x = x_np(case, lead)
    y = run(case, torch.from_numpy(x), to_t(p), backend)
    assert tuple(y.shape) == (*lead, case.n_out)
    assert_close64(y, case.apply(x, p), f"lead={lead}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s_shape", [(2, 3, 4), (1, 3, 4), (3, 4), (2, 1, 4), (4,)],
                         ids=lambda s: "s" + "x".join(map(str, s)))
def test_svd_per_token_s_broadcast(s_shape, backend):
    case = svd(6, 5, 4, per_token=True, T=1)
    p = per_token_params(case, s_shape)
    x = x_np(case, (2, 3))
    tx = torch.tensor(x, requires_grad=True)
    tp = to_t(p, requires_grad=True)
    y = run(case, tx, tp, backend)
    assert tuple(y.shape) == (2, 3, 6)
    assert_close64(y, case.apply(x, p), f"s shape {s_shape}")
    G = np.random.default_rng(0).standard_normal((2, 3, 6))
    y.backward(torch.from_numpy(G))
    want = oracle_grads(case, x, p, G)
    assert tp["s"].grad.shape == tp["s"].shape
    for k in ("x", "u", "s", "v"):
        assert_close64(tx.grad if k == "x" else tp[k].grad, want[k], f"grad {k}, s shape {s_shape}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=["lead0", "lead2x0"])
@pytest.mark.parametrize("case", ONE_PER_OP, ids=lambda c: c.label)
def test_zero_sized_batch(case, lead, backend):
    p = case.params() if not case.per_token else per_token_params(case, (*lead, case.shapes["s"][1]))
    tx = torch.zeros((*lead, case.n_in), dtype=torch.float64, requires_grad=True)
    tp = to_t(p, requires_grad=True)
    y = run(case, tx, tp, backend)
    assert tuple(y.shape) == (*lead, case.n_out) and y.dtype == torch.float64
    y.sum().backward()
    # No tokens: every gradient exists, has its input's shape and is zero (an optimizer step must see zeros).
    assert tx.grad is not None and tuple(tx.grad.shape) == tuple(tx.shape)
    for k in case.pnames:
        g = tp[k].grad
        assert g is not None and tuple(g.shape) == tuple(tp[k].shape) and bool((g == 0).all()), f"grad {k}: {g}"


def _strided_params(case, p):
    """The same values as p, laid out as non-contiguous views (every other element, or transposes)."""
    out = {}
    for k, v in p.items():
        t = torch.from_numpy(v)
        if t.dim() == 2:
            view = t.T.contiguous().T  # column-major: transposed strides
        else:
            big = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
            big[..., ::2] = t
            view = big[..., ::2]
        assert torch.equal(view, t)
        out[k] = view
    return out


X_LAYOUTS = ["every-other-column", "transposed", "every-other-row", "expanded-stride0"]


def _strided_x(x, layout):
    t = torch.from_numpy(x)
    T, n = t.shape
    if layout == "every-other-column":
        big = torch.zeros(T, 2 * n, dtype=t.dtype)
        big[:, ::2] = t
        v = big[:, ::2]
    elif layout == "transposed":
        v = t.T.contiguous().T
    elif layout == "every-other-row":
        big = torch.zeros(2 * T, n, dtype=t.dtype)
        big[::2] = t
        v = big[::2]
    else:
        v = t[:1].expand(T, n)
    return v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", X_LAYOUTS)
@pytest.mark.parametrize("case", ONE_PER_OP, ids=lambda c: c.label)
def test_strided_views(case, layout, backend):
    T = case.shapes["s"][0] if case.per_token else 4
    if case.per_token and T == 1:
        case = svd(7, 9, 3, per_token=True, T=4)
        T = 4
    p = case.params()
    x = x_np(case, (T,))
    xv = _strided_x(x, layout)
    x_used = xv.numpy().copy()  # for the expanded layout every row equals row 0
    assert not xv.is_contiguous() or layout == "every-other-row" and T == 1
    tp = _strided_params(case, p)
    y = run(case, xv, tp, backend)
    assert_close64(y, case.apply(x_used, p), f"x layout={layout}, strided params")
    # the inputs are not written to
    assert np.array_equal(xv.numpy(), x_used)
    for k in case.pnames:
        assert np.array_equal(tp[k].numpy(), p[k])


@pytest.mark.parametrize("case", ONE_PER_OP, ids=lambda c: c.label)
def test_strided_views_gradients(case):
    T = case.shapes["s"][0] if case.per_token else 3
    p = case.params()
    x = x_np(case, (T,))
    G = np.random.default_rng(9).standard_normal((T, case.n_out))
    want = oracle_grads(case, x, p, G)
    tx = torch.tensor(x.T.copy(), requires_grad=True)  # leaf of shape (n, T); x is its transpose
    tp_leaf = {k: torch.tensor(v.T.copy() if v.ndim == 2 else v, requires_grad=True) for k, v in p.items()}
    tp = {k: (t.T if p[k].ndim == 2 else t) for k, t in tp_leaf.items()}
    Gv = torch.from_numpy(G.T.copy()).T  # non-contiguous upstream gradient too
    for backend in BACKENDS:
        tx.grad = None
        for t in tp_leaf.values():
            t.grad = None
        try:
            y = run(case, tx.T, tp, backend)
        except pytest.skip.Exception:
            continue
        y.backward(Gv)
        assert_close64(tx.grad.T, want["x"], f"backend={backend} grad x")
        for k in case.pnames:
            g = tp_leaf[k].grad
            assert_close64(g.T if p[k].ndim == 2 else g, want[k], f"backend={backend} grad {k}")


# --------------------------------------------------------------------------------------------------------------------
# 6. error paths
# --------------------------------------------------------------------------------------------------------------------
def _good(case, T=4):
    p = case.params()
    if case.per_token:
        p = per_token_params(case, (T, case.shapes["s"][1]))
    return torch.from_numpy(x_np(case, (T,))), to_t(p)


ERR_CASES = [circ(7), block(2, 3, 5), skew(7), toep(5, 7), toep_sq(7), ldr(2, 7), kron(2, 3, 5, 7), svd(5, 7, 3),
             svd(5, 7, 3, per_token=True, T=4)]


@pytest.mark.parametrize("bad", [torch.int64, torch.int32, torch.bool, torch.complex128], ids=str)
@pytest.mark.parametrize("case", ERR_CASES, ids=lambda c: c.label)
def test_bad_dtype_x_raises_typeerror(case, bad):
    x, tp = _good(case)
    with pytest.raises(TypeError) as ei:
        case.call(x.to(bad), tp)
    assert names_arg(str(ei.value), "x"), f"message does not name 'x': {ei.value}"


@pytest.mark.parametrize("bad", [torch.int64, torch.bool, torch.complex128], ids=str)
@pytest.mark.parametrize("case", ERR_CASES, ids=lambda c: c.label)
def test_bad_dtype_param_raises_typeerror(case, bad):
    x, tp = _good(case)
    for k in case.pnames:
        tp2 = dict(tp)
        tp2[k] = tp[k].to(bad)
        with pytest.raises(TypeError) as ei:
            case.call(x, tp2)
        assert names_arg(str(ei.value), k), f"message does not name {k!r}: {ei.value}"


@pytest.mark.parametrize("case", ERR_CASES, ids=lambda c: c.label)
def test_wrong_last_dim_raises_valueerror(case):
    x, tp = _good(case)
    bad_n = case.n_in + 4  # n_in values here are 5..15, so bad_n is distinctive
    xb = torch.randn(4, bad_n, dtype=torch.float64)
    with pytest.raises(ValueError) as ei:
        case.call(xb, tp)
    msg = str(ei.value)
    assert names_arg(msg, "x"), f"message does not name 'x': {msg}"
    assert has_number(msg, bad_n), f"message does not show the last dim it got ({bad_n}): {msg}"
    assert has_number(msg, case.n_in), f"message does not show the last dim it needed ({case.n_in}): {msg}"


@pytest.mark.parametrize("case", ERR_CASES, ids=lambda c: c.label)
def test_scalar_x_raises_valueerror(case):
    _, tp = _good(case)
    with pytest.raises(ValueError) as ei:
        case.call(torch.tensor(1.0, dtype=torch.float64), tp)
    assert names_arg(str(ei.value), "x"), str(ei.value)


def _bad_ndims(case):
    """(param name, bad tensor) pairs with a wrong number of dims."""
    out = []
    for k in case.pnames:
        shape = case.shapes[k]
        if case.op == "svd_matmul" and k == "s":
            continue  # s broadcasts; its bad shapes are tested separately
        if case.op == "circulant_matmul":
            bad_shapes = [(7, 7), (), (1, 2, 3, 5)]  # only 1-D and 3-D (block) are valid
        elif len(shape) == 1:
            bad_shapes = [(*shape, 1), ()]
        else:
            bad_shapes = [(shape[0] * shape[1],), (1, *shape)]
        out += [(k, torch.randn(s, dtype=torch.float64)) for s in bad_shapes]
    return out


@pytest.mark.parametrize("case", ERR_CASES, ids=lambda c: c.label)
def test_wrong_param_ndim_raises_valueerror(case):
    x, tp = _good(case)
    for k, bad in _bad_ndims(case):
        with pytest.raises(ValueError) as ei:
            case.call(x, {**tp, k: bad})
        assert names_arg(str(ei.value), k), f"{k} shape {tuple(bad.shape)}: message does not name it: {ei.value}"


def test_inconsistent_param_shapes_raise_valueerror():
    x7 = torch.randn(4, 7, dtype=torch.float64)
    f64 = dict(dtype=torch.float64)
    bad_calls = [
        ("ldr r mismatch", lambda: surm_ops.ldr_matmul(x7, torch.randn(2, 7, **f64), torch.randn(3, 7, **f64))),
        ("ldr n mismatch", lambda: surm_ops.ldr_matmul(x7, torch.randn(2, 7, **f64), torch.randn(2, 6, **f64))),
        ("svd k mismatch u/v", lambda: surm_ops.svd_matmul(x7, torch.randn(5, 3, **f64), torch.randn(3, **f64),
                                                           torch.randn(7, 2, **f64))),
        ("svd s last dim", lambda: surm_ops.svd_matmul(x7, torch.randn(5, 3, **f64), torch.randn(4, **f64),
                                                       torch.randn(7, 3, **f64))),
        ("svd per-token s batch mismatch", lambda: surm_ops.svd_matmul(
            x7, torch.randn(5, 3, **f64), torch.randn(3, 3, **f64), torch.randn(7, 3, **f64))),
        ("svd s with more dims than x", lambda: surm_ops.svd_matmul(
            x7, torch.randn(5, 3, **f64), torch.randn(2, 4, 3, **f64), torch.randn(7, 3, **f64))),
    ]
    problems = []
    for what, call in bad_calls:
        try:
            call()
        except ValueError:
            continue
        except Exception as e:  # noqa: BLE001
            problems.append(f"{what}: {type(e).__name__}: {e}")
        else:
            problems.append(f"{what}: no error")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", [circ(7), toep(5, 7), ldr(2, 7), kron(2, 3, 5, 7), svd(5, 7, 3)],
                         ids=lambda c: c.label)
def test_param_on_other_device_raises(case):
    x, tp = _good(case)
    k = case.pnames[0]
    with pytest.raises((ValueError, TypeError)) as ei:
        case.call(x, {**tp, k: tp[k].to("meta")})
    assert names_arg(str(ei.value), k) or names_arg(str(ei.value), "x"), str(ei.value)


def _triton_can_interpret():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1"


@pytest.mark.parametrize("forced", ["triton", "cuda"])
@pytest.mark.parametrize("case", ONE_PER_OP, ids=lambda c: c.label)
def test_forced_gpu_backend_on_cpu_raises_with_reasons(case, forced, record_property):
    x, tp = _good(case, T=case.shapes["s"][0] if case.per_token else 4)
    try:
        y = case.call(x, tp, forced)
    except surm_ops.BackendUnavailableError as e:
        record_property("exception", type(e).__name__)
        msg = str(e)
        assert len(msg) >= 20 and (forced in msg.lower() or "cpu" in msg.lower()), f"uninformative: {msg!r}"
        return
    if forced == "triton" and _triton_can_interpret():
        # TRITON_INTERPRET=1 lets Triton run on CPU tensors (docs/contract.md §3); then it must be right.
        assert_close64(y, case.apply(x.numpy(), {k: v.numpy() for k, v in tp.items()}), "triton interpreted",
                       rtol=1e-5)
        return
    pytest.fail(f"backend={forced!r} ran on CPU tensors instead of raising")


@pytest.mark.parametrize("case", ONE_PER_OP, ids=lambda c: c.label)
def test_unknown_backend_raises_valueerror(case):
    x, tp = _good(case, T=case.shapes["s"][0] if case.per_token else 4)
    with pytest.raises(ValueError) as ei:
        case.call(x, tp, "no-such-backend")
    assert "no-such-backend" in str(ei.value), str(ei.value)


@pytest.mark.parametrize("env", ["dense", "fft"])
@pytest.mark.parametrize("case", [c for c in ONE_PER_OP if not c.per_token], ids=lambda c: c.label)
def test_env_backend_same_result_as_fft(case, env, monkeypatch):
    x, tp = _good(case)
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    y_fft = case.call(x, tp, "fft")
    monkeypatch.setenv("SURM_BACKEND", env)
    y_auto = case.call(x, tp, "auto")
    y_default = case.call_default(x, tp)
    want = case.apply(x.numpy(), {k: v.numpy() for k, v in tp.items()})
    assert_close64(y_auto, want, f"SURM_BACKEND={env}")
    assert_close64(y_default, want, f"SURM_BACKEND={env}, no backend=")
    assert_close64(y_auto, y_fft.numpy(), f"SURM_BACKEND={env} vs fft", rtol=1e-10)


@pytest.mark.parametrize("case", [circ(7), svd(5, 7, 3)], ids=lambda c: c.label)
def test_env_backend_is_read_at_call_time(case, monkeypatch):
    """SURM_BACKEND=cuda on CPU tensors: the forced-by-environment backend cannot run, so the call raises.

    This is the only observable way to see that the variable is honoured on the CPU; it assumes the
    environment variable forces a backend the way backend= does.
    """
    x, tp = _good(case)
    monkeypatch.setenv("SURM_BACKEND", "cuda")
    with pytest.raises((ValueError, RuntimeError)):
        case.call(x, tp, "auto")
    monkeypatch.setenv("SURM_BACKEND", "fft")
    case.call(x, tp, "auto")  # and back to a runnable one in the same process
