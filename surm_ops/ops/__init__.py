"""One module per op: validation, ``torch.library`` registration, backends, and the public docstring."""

from surm_ops.ops import _cuda  # noqa: F401  (registers the compiled extension as the cuda backend)
from surm_ops.ops.circulant import circulant_matmul
from surm_ops.ops.kronecker import kronecker_matmul
from surm_ops.ops.ldr import ldr_matmul
from surm_ops.ops.skew_circulant import skew_circulant_matmul
from surm_ops.ops.structured_linear import structured_linear
from surm_ops.ops.svd import svd_matmul
from surm_ops.ops.toeplitz import toeplitz_matmul

__all__ = ["circulant_matmul", "kronecker_matmul", "ldr_matmul", "skew_circulant_matmul", "structured_linear",
           "svd_matmul", "toeplitz_matmul"]
