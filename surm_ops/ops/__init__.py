"""One module per op: validation, ``torch.library`` registration, backends, and the public docstring."""

from surm_ops.ops.circulant import circulant_matmul
from surm_ops.ops.kronecker import kronecker_matmul
from surm_ops.ops.ldr import ldr_matmul
from surm_ops.ops.skew_circulant import skew_circulant_matmul
from surm_ops.ops.svd import svd_matmul
from surm_ops.ops.toeplitz import toeplitz_matmul

__all__ = ["circulant_matmul", "kronecker_matmul", "ldr_matmul", "skew_circulant_matmul", "svd_matmul",
           "toeplitz_matmul"]
