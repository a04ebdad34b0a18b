"""The kernels' algorithms (csrc/fft, csrc/conv), run on the host by tests/csrc/host/emulate.cpp with the same
index math, block by block and thread by thread, against numpy float64.

Every emulated run is done twice, with the emulated threads in increasing and in decreasing order: a result that
depends on the order means a thread reads what another writes in the same phase (a missing barrier on the GPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from surm_ops.ops import _cuda
from tests.csrc.emulator import DEFAULT_SMEM

SIZES = [1, 2, 3, 7, 12, 64, 254, 768, 3072, 5120, 11008]  # 254 = 2 * 127: the largest radix


def rel(got, want) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def both_orders(run):
    a, b = run(0), run(1)
    np.testing.assert_array_equal(a, b, err_msg="result depends on the order of the emulated threads")
    return a


@pytest.mark.parametrize("n", SIZES + [4288, 12288])
def test_plan_factors_into_supported_radices(emulate, n):
    radices = emulate.plan(n)
    assert radices is not None and int(np.prod(radices, dtype=np.int64)) == n
    assert all(2 <= r <= _cuda.MAX_RADIX for r in radices) or n == 1
    assert radices.count(2) <= 1 and radices[: radices.count(4)] == [4] * radices.count(4)


def test_plan_refuses_large_prime_factors(emulate):
    assert emulate.plan(131) is None and emulate.plan(64 * 131) is None
    assert _cuda.largest_prime_factor(64 * 131) == 131 and _cuda.largest_prime_factor(11008) == 43


@pytest.mark.parametrize("n", SIZES)
def test_fft_matches_numpy(emulate, n):
    rng = np.random.default_rng(n)
    batches = max(1, min(3, _cuda.MAX_BUFFER // n))  # one block holds at most MAX_BUFFER values
    z = rng.standard_normal((batches, n)) + 1j * rng.standard_normal((batches, n))
    got = both_orders(lambda order: emulate.fft(z, order))
    want = np.fft.fft(z.astype(np.complex64).astype(np.complex128), axis=-1)
    assert rel(got, want) < 2e-6 * max(1.0, np.log2(n))


def _circulant_case(n):
    return (1, 1, n, n, n)


# (p, q, L, in_len, out_len): square circulant, block-circulant, Toeplitz (L >= n_in + n_out - 1)
CASES = [_circulant_case(n) for n in (1, 7, 64, 768, 3072, 5120, 11008)] + [
    (3, 4, 64, 64, 64), (2, 3, 12, 12, 12), (4, 1, 8, 8, 8),
    (1, 1, 1792, 1024, 768), (1, 1, 1792, 768, 1024), (1, 1, 12, 7, 5), (1, 1, 2, 1, 2),
]


def _ids(cases):
    return ["p{}q{}L{}in{}out{}".format(*c) for c in cases]


def _with_rows(row_counts):
    """(case, rows) pairs: every row count for small lengths, one odd count (a lone last row) from 3072 on."""
    return [(c, r) for c in CASES for r in (row_counts if c[2] < 3072 else [5])]


FWD, GRAD = _with_rows([1, 4, 5]), _with_rows([1, 5, 9])


def _expected_forward(x, k, in_len, out_len):
    """float64: y_P = sum_Q (k[P,Q] (*) pad(x_Q))[:out_len] by numpy's FFT."""
    p, q, length = k.shape
    rows = x.shape[0]
    xs = np.zeros((rows, q, length))
    xs[:, :, :in_len] = x.reshape(rows, q, in_len)
    spec = np.einsum("pqf,rqf->rpf", np.fft.fft(k), np.fft.fft(xs))
    return np.fft.ifft(spec).real[:, :, :out_len].reshape(rows, p * out_len)


@pytest.mark.parametrize("case,rows", FWD, ids=[f"{i}-rows{r}" for i, (_, r) in zip(_ids([c for c, _ in FWD]), FWD)])
def test_forward_matches_numpy(emulate, case, rows):
    p, q, length, in_len, out_len = case
    rng = np.random.default_rng(length * 31 + rows)
    x = rng.standard_normal((rows, q * in_len)).astype(np.float32)
    k = rng.standard_normal((p, q, length))
    spec = np.fft.fft(k.astype(np.float32).astype(np.float64)).astype(np.complex64)
    got = both_orders(lambda order: emulate.forward(x, spec, in_len, out_len, order))
    want = _expected_forward(x.astype(np.float64), k.astype(np.float32).astype(np.float64), in_len, out_len)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert rel(got, want) < 2e-6 * max(1.0, np.log2(length))


def _expected_grad(x, g, length, in_len, out_len, magnitude=False):
    """float64: sum over rows of conj(rfft(pad x_Q)) * rfft(pad g_P), (p, q, L//2 + 1); with magnitude=True the
    sum of the terms' magnitudes, the scale a float32 sum's rounding error is relative to (the sum itself may
    cancel to nearly zero)."""
    rows = x.shape[0]
    q, p = x.shape[1] // in_len, g.shape[1] // out_len
    xs, gs = np.zeros((rows, q, length)), np.zeros((rows, p, length))
    xs[:, :, :in_len] = x.reshape(rows, q, in_len)
    gs[:, :, :out_len] = g.reshape(rows, p, out_len)
    xf, gf = np.conj(np.fft.rfft(xs)), np.fft.rfft(gs)
    if magnitude:
        xf, gf = np.abs(xf), np.abs(gf)
    return np.einsum("rqf,rpf->pqf", xf, gf)


def grad_err(parts, x, g, length, in_len, out_len) -> float:
    x, g = x.astype(np.float64), g.astype(np.float64)
    diff = parts.astype(np.complex128).sum(0) - _expected_grad(x, g, length, in_len, out_len)
    return float(np.linalg.norm(diff) / np.linalg.norm(_expected_grad(x, g, length, in_len, out_len, True)))


@pytest.mark.parametrize("case,rows", GRAD,
                         ids=[f"{i}-rows{r}" for i, (_, r) in zip(_ids([c for c, _ in GRAD]), GRAD)])
def test_grad_partials_sum_to_the_parameter_spectrum(emulate, case, rows):
    p, q, length, in_len, out_len = case
    rng = np.random.default_rng(length * 17 + rows)
    x = rng.standard_normal((rows, q * in_len)).astype(np.float32)
    g = rng.standard_normal((rows, p * out_len)).astype(np.float32)
    parts = both_orders(lambda order: emulate.grad(x, g, length, in_len, out_len, order))
    assert parts.shape[0] == min((rows + 1) // 2, emulate.config(rows, p, q, length, in_len, out_len,
                                                                   DEFAULT_SMEM)["chunks"])
    assert grad_err(parts, x, g, length, in_len, out_len) < 2e-6 * max(1.0, np.log2(length))


def test_grad_tiles_do_not_change_a_bit(emulate):
    """Tiling the output blocks (a smaller shared-memory limit) must give the same partials, bit for bit: the
    accumulation order of each element does not depend on the device."""
    p, q, b, rows = 5, 3, 64, 7
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, q * b)).astype(np.float32)
    g = rng.standard_normal((rows, p * b)).astype(np.float32)
    shape = _cuda.Shape(p, q, b, b, b)
    limits = [DEFAULT_SMEM, _cuda.grad_smem(shape, 2), _cuda.grad_smem(shape, 1)]
    tiles = [emulate.config(rows, p, q, b, b, b, limit)["grad_tile"] for limit in limits]
    assert tiles == [p, 2, 1]
    results = [emulate.grad(x, g, b, b, b, smem_limit=limit) for limit in limits]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_many_rows_use_several_partials(emulate):
    rows, n = 2 * 1024 + 6, 8
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    g = rng.standard_normal((rows, n)).astype(np.float32)
    parts = emulate.grad(x, g, n, n, n)
    assert 1 < parts.shape[0] <= 1024
    assert grad_err(parts, x, g, n, n, n) < 1e-5


CONFIG_SHAPES = [(5, *c) for c in CASES] + [(100, 48, 48, 64, 64, 64), (3, 16, 16, 768, 768, 768),
                                            (1, 1, 1, 12288, 12288, 12288), (1, 1, 1, 12290, 12290, 12290),
                                            (2, 1, 2, 8192, 8192, 8192), (1, 1, 1, 64 * 131, 64 * 131, 64 * 131)]


@pytest.mark.parametrize("limit", [48 * 1024, 163 * 1024, 227 * 1024])
@pytest.mark.parametrize("cfg", CONFIG_SHAPES, ids=[str(c) for c in CONFIG_SHAPES])
def test_python_limits_mirror_the_launcher(emulate, cfg, limit):
    """surm_ops/ops/_cuda.py's why_not must refuse exactly what the C++ launcher would refuse."""
    rows, p, q, length, in_len, out_len = cfg
    c = emulate.config(rows, p, q, length, in_len, out_len, limit)
    s = _cuda.Shape(p, q, length, in_len, out_len)
    assert c["max_buffer"] == _cuda.MAX_BUFFER
    assert c["forward_buffer"] == _cuda.forward_buffer(s) and c["forward_smem"] == _cuda.forward_smem(s)
    assert c["grad_smem_1"] == _cuda.grad_smem(s, 1) and c["grad_buffer_1"] == _cuda.grad_buffer(s, 1)
    launcher_runs = (c["plan_ok"] == 1 and c["forward_buffer"] <= c["max_buffer"] and c["forward_smem"] <= limit
                     and c["grad_tile"] >= 1)
    assert launcher_runs == (not _cuda.limit_reasons(s, limit)), _cuda.limit_reasons(s, limit)


def test_kernel_setup_runs_once_per_kernel_and_device(emulate):
    """cudaFuncSetAttribute (the shared-memory opt-in) goes through csrc/common/once.h: from 8 threads launching
    two kernels on 3 devices 50 times each, every (kernel, device) pair is set up exactly once, never skipped for a
    second device, never repeated; a setup that throws is retried by the next launch and then recorded."""
    counts = emulate.once(threads=8, rounds=50, devices=3)
    assert {k: v for k, v in counts.items() if k.startswith("kernel")} == {
        f"kernel{k} device{d}": 1 for k in range(2) for d in range(3)}
    assert counts["failing_setup_attempts"] == 2
