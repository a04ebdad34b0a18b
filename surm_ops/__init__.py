"""surm_ops: fast structured-matrix products for parameter-efficient fine-tuning in PyTorch.

Every op computes ``y = x @ M.T`` for a structured matrix M given by its parameters, without materialising M
(unless the ``dense`` backend is chosen), with autograd, ``torch.compile`` support and backend dispatch::

    import torch, surm_ops
    x = torch.randn(16, 768)
    c = torch.randn(768, requires_grad=True)
    y = surm_ops.circulant_matmul(x, c)      # x @ scipy.linalg.circulant(c).T
    y.sum().backward()
"""

from surm_ops.dispatch import BACKENDS, BackendUnavailableError
from surm_ops.ops import (
    circulant_matmul,
    kronecker_matmul,
    ldr_matmul,
    skew_circulant_matmul,
    svd_matmul,
    toeplitz_matmul,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "circulant_matmul",
    "kronecker_matmul",
    "ldr_matmul",
    "skew_circulant_matmul",
    "svd_matmul",
    "toeplitz_matmul",
]
