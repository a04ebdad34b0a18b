"""The SURM *Adapter* form (docs/methods.md §1.3): a bottleneck adapter whose down-projection, activation and
up-projection become one square structured layer.

``adapter(h) = h + GELU(M · drop(h)) + bias`` where ``h = module(x)`` is the wrapped module's output, shape
(..., n), and M is an n x n structured matrix applied through the surm_ops ops (never materialised):

=============  ==============================================  ==========================================  =======
structure      M                                               init (M = 0, a live gradient)               params
=============  ==============================================  ==========================================  =======
circulant      ``C(a ⊙ b)``                                    a ~ N(0, 0.02²), b = 0                      3n
toeplitz       ``T(col, row)`` (general, our choice)           col = row = 0                               3n - 1
ldr            ``Σ_i C(g_i) S(h_i)``, displacement rank r      g = 0, h ~ N(0, 0.02²)                      2rn + n
kronecker      ``B ⊗ A``, A (f, n/f), B (n/f, f)               A Kaiming-uniform, B = 0                    3n
=============  ==============================================  ==========================================  =======

(the parameter counts include the bias, n). With M = 0, ``GELU(0) = 0`` and bias = 0 the adapter is exactly the
identity at init, and ``GELU'(0) = 1/2`` keeps the gradient of the zero factor nonzero (no dead initialisation,
docs/methods.md §1.4.3). Unlike the LoRA-style layers, M carries no extra scaling (docs/methods.md §1.3 has none).

The adapter is nonlinear, so it cannot be merged into a weight: :meth:`SURMAdapter.merge` raises ``RuntimeError``,
and :meth:`SURMAdapter.unmerge` is a no-op (an adapter is never merged), as for every non-mergeable method.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

import surm_ops
from surm_ops.adapters._util import adapter_dtype, apply_keeping_float, check_choice
from surm_ops.reference import dense

ADAPTER_METHOD = "adapter"
STRUCTURES = ("circulant", "toeplitz", "ldr", "kronecker")


def _check_positive_int(name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"adapter: {name} must be a positive integer{' or None' if allow_none else ''}; "
                         f"got {value!r}")


@dataclass
class AdapterConfig:
    """structure: "circulant", "toeplitz", "ldr" or "kronecker" (the matrix M, see the module docstring).

    rank: the displacement rank r of ``structure="ldr"`` (only there). kron_factor: f, the row count of the
    Kronecker factor A (f, n/f) and the column count of B (n/f, f); it must divide n; None picks the divisor of n
    closest to sqrt(n) (our choice: both factors as square as possible, so that ``rank(B ⊗ A) = rank(B) rank(A)``
    can reach its maximum ``min(f, n/f)²``). dropout: on the adapter's input ``h`` only. features: n, the wrapped
    module's output size; None infers it from the module (``out_features``, ``nf``, ``embedding_dim``,
    ``embed_dim`` or a ``normalized_shape``).
    """

    structure: str = "circulant"
    rank: int = 1
    kron_factor: int | None = None
    dropout: float = 0.0
    features: int | None = None

    def __post_init__(self):
        check_choice("adapter", "structure", self.structure, STRUCTURES)
        _check_positive_int("rank", self.rank, allow_none=False)
        if self.rank != 1 and self.structure != "ldr":
            raise ValueError(f"adapter: rank={self.rank} applies only to structure='ldr'; got "
                             f"structure={self.structure!r}")
        _check_positive_int("kron_factor", self.kron_factor, allow_none=True)
        if self.kron_factor is not None and self.structure != "kronecker":
            raise ValueError(f"adapter: kron_factor applies only to structure='kronecker'; got "
                             f"structure={self.structure!r}")
        _check_positive_int("features", self.features, allow_none=True)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"adapter: dropout must be in [0, 1); got {self.dropout!r}")


def default_kron_factor(n: int) -> int:
    """The divisor of n closest to sqrt(n) (the smaller one on a tie).

    >>> default_kron_factor(768), default_kron_factor(64), default_kron_factor(7)
    (24, 8, 1)
    """
    root = math.sqrt(n)
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - root), d))


def _infer_features(module: nn.Module) -> int | None:
    for attr in ("out_features", "nf", "embedding_dim", "embed_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _param_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """float32 adapters (float64 next to a float64 module), on the module's device."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return adapter_dtype(t.dtype), t.device
    return torch.float32, torch.device("cpu")


class SURMAdapter(nn.Module):
    """Wraps ``module`` (any module whose output is a tensor of shape (..., n)) with the SURM adapter
    ``out + GELU(M · drop(out)) + bias``. A module returning a tuple whose first element is that tensor
    (``nn.MultiheadAttention``, transformers attention blocks) gets the adapter on the first element; the rest of
    the tuple passes through.

    Args:
        module: the wrapped module; its parameters are frozen.
        config: an :class:`AdapterConfig`.
        name: the qualified name, for error messages.

    Attributes that the wrapper itself lacks resolve on the wrapped module, so code that reads ``layer.weight`` or
    ``layer.out_features`` of a wrapped ``nn.Linear`` keeps working. Parameters are float32 (float64 next to a
    float64 module); the adapter is computed in that dtype and added to ``out`` in out's dtype.

    Example::

        >>> layer = SURMAdapter(nn.Linear(64, 64), AdapterConfig(structure="circulant"))
        >>> layer(torch.randn(4, 64)).shape, layer.expected_parameters()
        (torch.Size([4, 64]), 192)
    """

    method: ClassVar[str] = ADAPTER_METHOD
    config_class: ClassVar[type] = AdapterConfig
    mergeable: ClassVar[bool] = False

    def __init__(self, module: nn.Module, config: AdapterConfig, name: str = "") -> None:
        super().__init__()
        label = repr(name) if name else "the module"
        if not isinstance(module, nn.Module):
            raise TypeError(f"adapter: can only wrap an nn.Module; {label} is {type(module).__name__}")
        if isinstance(module, SURMAdapter):
            raise TypeError(f"adapter: {label} is already a SURMAdapter")
        if not isinstance(config, AdapterConfig):
            raise TypeError(f"adapter: config must be AdapterConfig; got {type(config).__name__}")
        n = config.features if config.features is not None else _infer_features(module)
        if n is None:
            raise ValueError(f"adapter: cannot infer the output size of {label} ({type(module).__name__}); pass "
                             "features=n")
        factor = None
        if config.structure == "kronecker":
            factor = config.kron_factor or default_kron_factor(n)
            if n % factor:
                raise ValueError(f"adapter: kron_factor={factor} must divide the output size n={n} of {label}")
        self.module = module
        self.config = config
        self.layer_name = name
        self.features = n
        self.kron_factor = factor
        self.merged = False
        for p in module.parameters():
            p.requires_grad_(False)

        dtype, device = _param_dtype_device(module)
        kw = dict(dtype=dtype, device=device)
        s = config.structure
        if s == "circulant":
            self.a = nn.Parameter(torch.randn(n, **kw) * 0.02)
            self.b = nn.Parameter(torch.zeros(n, **kw))
        elif s == "toeplitz":
            self.col = nn.Parameter(torch.zeros(n, **kw))
            self.row_tail = nn.Parameter(torch.zeros(n - 1, **kw))  # row[0] is the diagonal, already col[0]
        elif s == "ldr":
            self.g = nn.Parameter(torch.zeros(config.rank, n, **kw))
            self.h = nn.Parameter(torch.randn(config.rank, n, **kw) * 0.02)
        else:
            self.kron_A = nn.Parameter(torch.empty(factor, n // factor, **kw))
            self.kron_B = nn.Parameter(torch.zeros(n // factor, factor, **kw))
            nn.init.kaiming_uniform_(self.kron_A, a=math.sqrt(5))
        self.adapter_bias = nn.Parameter(torch.zeros(n, **kw))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def _apply(self, fn, recurse=True):
        return apply_keeping_float(self, fn, recurse, super()._apply)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)

    def _row(self) -> torch.Tensor:
        return torch.cat([self.row_tail.new_zeros(1), self.row_tail])

    def structured(self, h: torch.Tensor) -> torch.Tensor:
        """``h @ M.T`` for h of shape (..., n), through the surm_ops ops."""
        s = self.config.structure
        if s == "circulant":
            return surm_ops.circulant_matmul(h, self.a * self.b)
        if s == "toeplitz":
            return surm_ops.toeplitz_matmul(h, self.col, self._row())
        if s == "ldr":
            return surm_ops.ldr_matmul(h, self.g, self.h)
        return surm_ops.kronecker_matmul(h, self.kron_B, self.kron_A)

    def matrix(self) -> torch.Tensor:
        """M materialised, shape (n, n) (tests and inspection)."""
        s = self.config.structure
        if s == "circulant":
            return dense.circulant(self.a * self.b)
        if s == "toeplitz":
            return dense.toeplitz(self.col, self._row())
        if s == "ldr":
            return dense.ldr(self.g, self.h)
        return dense.kronecker(self.kron_B, self.kron_A)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*args, **kwargs)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            # nn.MultiheadAttention, transformers attention blocks: (hidden states, extras...); adapt the first.
            return (self._adapt(out[0]), *out[1:])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"adapter: the wrapped module {self.layer_name!r} returned {type(out).__name__}; the "
                            "adapter form needs a module whose output is a tensor (..., n) or a tuple starting with "
                            "one")
        return self._adapt(out)

    def _adapt(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[-1] != self.features:
            raise ValueError(f"adapter: the wrapped module {self.layer_name!r} returned shape {tuple(out.shape)}; "
                             f"the adapter was built for (..., {self.features})")
        h = self.dropout(out).to(self.adapter_bias.dtype)
        return out + (F.gelu(self.structured(h)) + self.adapter_bias).to(out.dtype)

    def expected_parameters(self) -> int:
        """``3n`` (circulant, kronecker), ``3n - 1`` (toeplitz), ``2rn + n`` (ldr); the bias included."""
        n, s = self.features, self.config.structure
        if s == "toeplitz":
            return 3 * n - 1
        if s == "ldr":
            return 2 * self.config.rank * n + n
        return 3 * n

    def merge(self) -> None:
        """Always raises ``RuntimeError``: ``GELU(M h)`` is nonlinear in h, so no weight can absorb it."""
        raise RuntimeError(f"adapter layer {self.layer_name!r} cannot be merged: the SURM adapter form is nonlinear "
                           "(GELU of a structured product)")

    def unmerge(self) -> None:
        """A no-op: an adapter is never merged."""

    def extra_repr(self) -> str:
        resolved = {"features": self.features, "kron_factor": self.kron_factor}
        fields = ", ".join(f"{f.name}={resolved.get(f.name, getattr(self.config, f.name))!r}"
                           for f in dataclasses.fields(self.config) if f.name != "features")
        return f"method={self.method}, n={self.features}, {fields}"
