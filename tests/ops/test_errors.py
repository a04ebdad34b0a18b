"""Every error path of docs/contract.md §2.3: the right exception type, raised before any work, naming the argument and
showing the shapes."""

from __future__ import annotations

import pytest
import torch

import surm_ops
from surm_ops import BackendUnavailableError

X8 = torch.randn(3, 8)


def _calls():
    """(op, kwargs of good arguments) for each op at n_in = 8."""
    return {
        "circulant_matmul": dict(x=X8, c=torch.randn(8)),
        "skew_circulant_matmul": dict(x=X8, c=torch.randn(8)),
        "toeplitz_matmul": dict(x=X8, col=torch.randn(5), row=torch.randn(8)),
        "ldr_matmul": dict(x=X8, g=torch.randn(2, 8), h=torch.randn(2, 8)),
        "kronecker_matmul": dict(x=X8, a=torch.randn(3, 2), b=torch.randn(2, 4)),
        "svd_matmul": dict(x=X8, u=torch.randn(5, 2), s=torch.randn(2), v=torch.randn(8, 2)),
    }


ARGS = [(op, name) for op, kw in _calls().items() for name in kw]


@pytest.mark.parametrize("op,arg", ARGS, ids=[f"{o}-{a}" for o, a in ARGS])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_non_float_dtype_is_type_error(op, arg, dtype):
    kw = _calls()[op]
    kw[arg] = kw[arg].to(dtype)
    with pytest.raises(TypeError, match=f"argument '{arg}' has dtype {dtype}"):
        getattr(surm_ops, op)(**kw)


@pytest.mark.parametrize("op,arg", ARGS, ids=[f"{o}-{a}" for o, a in ARGS])
def test_non_tensor_is_type_error(op, arg):
    kw = _calls()[op]
    kw[arg] = kw[arg].tolist()
    with pytest.raises(TypeError, match=f"argument '{arg}' must be a torch.Tensor; got list"):
        getattr(surm_ops, op)(**kw)


PARAM_ARGS = [a for a in ARGS if a[1] != "x"]


@pytest.mark.parametrize("op,arg", PARAM_ARGS, ids=[f"{o}-{a}" for o, a in PARAM_ARGS])
def test_device_mismatch_is_value_error(op, arg):
    kw = _calls()[op]
    kw[arg] = kw[arg].to("meta")
    with pytest.raises(ValueError, match=f"argument '{arg}' is on meta but x is on cpu"):
        getattr(surm_ops, op)(**kw)


@pytest.mark.parametrize("op", list(_calls()))
def test_wrong_feature_count_names_shapes(op):
    kw = _calls()[op]
    kw["x"] = torch.randn(3, 9)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be n_in = 8 .* got x.shape = \(3, 9\)"):
        getattr(surm_ops, op)(**kw)


def test_zero_dim_x():
    with pytest.raises(ValueError, match="x must have shape"):
        surm_ops.circulant_matmul(torch.tensor(1.0), torch.randn(1))


@pytest.mark.parametrize("op,arg,bad,pattern", [
    ("circulant_matmul", "c", torch.randn(2, 8), r"c must have shape \(n,\) or \(p, q, b\); got c.shape = \(2, 8\)"),
    ("circulant_matmul", "c", torch.randn(0), r"c must not be empty; got c.shape = \(0,\)"),
    ("skew_circulant_matmul", "c", torch.randn(1, 8), r"c must have shape \(n,\); got c.shape = \(1, 8\)"),
    ("toeplitz_matmul", "col", torch.randn(5, 1), r"col must have shape \(n_out,\)"),
    ("toeplitz_matmul", "row", torch.randn(8, 1), r"row must have shape \(n_in,\)"),
    ("ldr_matmul", "g", torch.randn(8), r"g must have shape \(r, n\); got g.shape = \(8,\)"),
    ("ldr_matmul", "h", torch.randn(3, 8), r"g and h must have the same shape"),
    ("kronecker_matmul", "a", torch.randn(6), r"a must have shape \(p, q\)"),
    ("kronecker_matmul", "b", torch.randn(2, 4, 1), r"b must have shape \(u, v\)"),
    ("svd_matmul", "u", torch.randn(5, 3), r"u and v must have the same number of columns k"),
    ("svd_matmul", "s", torch.randn(3), r"s must have shape \(k,\) = \(2,\) or be broadcastable to"),
    ("svd_matmul", "s", torch.randn(4, 2), r"got s.shape = \(4, 2\)"),
    ("svd_matmul", "v", torch.randn(8), r"v must have shape \(n_in, k\)"),
])
def test_bad_parameter_shape(op, arg, bad, pattern):
    kw = _calls()[op]
    kw[arg] = bad
    with pytest.raises(ValueError, match=pattern):
        getattr(surm_ops, op)(**kw)


def test_block_circulant_feature_count_mentions_block_shape():
    with pytest.raises(ValueError, match=r"n_in = 12 to match c.shape = \(2, 3, 4\)"):
        surm_ops.circulant_matmul(torch.randn(2, 8), torch.randn(2, 3, 4))


def test_toeplitz_row_none_requires_square():
    with pytest.raises(ValueError, match=r"row=None means row = col"):
        surm_ops.toeplitz_matmul(torch.randn(2, 8), torch.randn(5))


@pytest.mark.parametrize("backend", ["fast", "", None, "FFT"])
def test_unknown_backend_name(backend):
    with pytest.raises(ValueError, match="backend must be 'auto' or one of cuda, triton, fft, dense"):
        surm_ops.circulant_matmul(X8, torch.randn(8), backend=backend)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_forced_gpu_backend_on_cpu_lists_reasons(backend, monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    # The suite's interpreter lets triton run on CPU; toggling TRITON_INTERPRET itself after triton's import would
    # leave triton half-configured, so the dispatch's view of it is patched instead.
    monkeypatch.setattr("surm_ops.dispatch._interpreting", lambda: False)
    with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' .* runs on CUDA tensors only; x is on cpu"):
        surm_ops.circulant_matmul(X8, torch.randn(8), backend=backend)


def test_forced_backend_from_environment_raises(monkeypatch):
    monkeypatch.setenv("SURM_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="SURM_BACKEND=cuda"):
        surm_ops.circulant_matmul(X8, torch.randn(8))


def test_unknown_backend_in_environment(monkeypatch):
    monkeypatch.setenv("SURM_BACKEND", "gpu")
    with pytest.raises(ValueError, match="environment variable SURM_BACKEND must be"):
        surm_ops.circulant_matmul(X8, torch.randn(8))


def test_dense_refuses_per_token_s():
    x, u, v = torch.randn(4, 8), torch.randn(5, 2), torch.randn(8, 2)
    with pytest.raises(BackendUnavailableError, match="s has per-token values"):
        surm_ops.svd_matmul(x, u, torch.randn(4, 2), v, backend="dense")
