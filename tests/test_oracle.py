"""The test oracle itself agrees with scipy's constructors (and with the written definitions)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from tests import oracle

rng = np.random.default_rng(0)


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_circulant_is_scipy(n):
    c = rng.standard_normal(n)
    np.testing.assert_array_equal(oracle.circulant(torch.from_numpy(c)).numpy(), scipy.linalg.circulant(c))


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_skew_circulant_definition(n):
    c = rng.standard_normal(n)
    want = np.array([[c[i - j] if i >= j else -c[n + i - j] for j in range(n)] for i in range(n)])
    np.testing.assert_array_equal(oracle.skew_circulant(torch.from_numpy(c)).numpy(), want)


@pytest.mark.parametrize("n_out,n_in", [(1, 1), (3, 7), (7, 3), (8, 8)])
def test_toeplitz_is_scipy(n_out, n_in):
    col, row = rng.standard_normal(n_out), rng.standard_normal(n_in)
    got = oracle.toeplitz(torch.from_numpy(col), torch.from_numpy(row)).numpy()
    np.testing.assert_array_equal(got, scipy.linalg.toeplitz(col, row))


def test_block_circulant_blocks():
    c = rng.standard_normal((2, 3, 4))
    m = oracle.block_circulant(torch.from_numpy(c)).numpy()
    for p in range(2):
        for q in range(3):
            np.testing.assert_array_equal(m[4 * p:4 * p + 4, 4 * q:4 * q + 4], scipy.linalg.circulant(c[p, q]))


def test_kronecker_is_numpy():
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((4, 5))
    np.testing.assert_array_equal(oracle.kronecker(torch.from_numpy(a), torch.from_numpy(b)).numpy(), np.kron(a, b))


def test_ldr_is_sum_of_products():
    g, h = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    want = sum(scipy.linalg.circulant(g[i]) @ oracle.skew_circulant(torch.from_numpy(h[i])).numpy() for i in range(2))
    np.testing.assert_allclose(oracle.ldr(torch.from_numpy(g), torch.from_numpy(h)).numpy(), want, atol=1e-12)
