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
    structured_linear,
    svd_matmul,
    toeplitz_matmul,
)

__version__ = "0.1.0"

# After the ops and __version__: the adapter modules use both.
from surm_ops.adapters import (  # noqa: E402
    RMLoRATraining,
    inject,
    load_adapters,
    merge,
    parameter_report,
    save_adapters,
    unload,
    unmerge,
)

__all__ = [
    "BACKENDS",
    "RMLoRACallback",
    "RMLoRATraining",
    "BackendUnavailableError",
    "circulant_matmul",
    "inject",
    "kronecker_matmul",
    "ldr_matmul",
    "load_adapters",
    "merge",
    "parameter_report",
    "save_adapters",
    "skew_circulant_matmul",
    "structured_linear",
    "svd_matmul",
    "toeplitz_matmul",
    "unload",
    "unmerge",
]


def __getattr__(name: str):
    if name == "RMLoRACallback":  # the transformers Trainer callback: imports transformers on first use
        from surm_ops.adapters.hf import RMLoRACallback

        return RMLoRACallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
