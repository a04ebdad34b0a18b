"""Benchmark cases: the shapes each op is timed at, the providers timed on each, and the inputs they run on.

A case is one structured op at one shape, applied to ``x`` of shape ``(tokens, n_in)``. Its providers are

- the op's backends ``"fft"``, ``"dense"`` and ``"auto"`` (whatever :mod:`surm_ops.dispatch` picks), called through
  the public function;
- dense LoRA baselines ``"lora-r{r}"``: ``y = (x @ A.T) @ B.T`` with A ``(r, n_in)`` and B ``(n_out, r)``, at
  r = 8, 16, 32 and at the rank with the op's parameter count, ``r = max(1, round(params / (n_in + n_out)))``.

Modes: ``"fwd"`` is the forward under ``torch.no_grad()``; ``"full"`` is the forward with ``requires_grad`` on x and
every parameter, then the backward of a fixed ``g``. The backward is ``torch.autograd.grad(y, leaves, g)``: the same
work as ``y.backward(g)`` after ``zero_grad(set_to_none=True)``, without ``.grad`` accumulating between rounds.

Inputs are float32 and seeded: every provider of a case sees the same x and g, so ratios within a case compare like
with like. Traffic and FLOPs are rough counts, documented at :meth:`Case.bytes_moved` and :meth:`Case.flops`.

To add a case, append to :data:`CASES`; to add a provider, extend :meth:`Case.providers` and :func:`build`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

import surm_ops
from surm_ops import dispatch

TOKENS = 256
"""Rows of x (B) for the CPU default set."""

MODES = ("fwd", "full")
BACKENDS = ("fft", "dense", "auto")
LORA_RANKS = (8, 16, 32)
BYTES_PER_ELEMENT = 4  # float32
QUICK_ENV = "SURM_BENCH_QUICK"


def _rfft(length: int) -> float:
    """FLOPs of one real FFT: half of the classic 5 L log2 L of a complex one."""
    return 2.5 * length * math.log2(max(length, 2))


def _conv_flops(length: int) -> float:
    """Forward rfft, irfft and a complex multiply per frequency, per token (the filter's transform not counted)."""
    return 2 * _rfft(length) + 6 * (length // 2 + 1)


@dataclass(frozen=True)
class Case:
    name: str                                  # op as it appears in tables: "circulant", "block_circulant", ...
    fn: str                                    # the public surm_ops function (and its registered dispatch name)
    n_in: int
    n_out: int
    param_shapes: tuple[tuple[int, ...], ...]  # the op's parameters, in the public function's argument order
    detail: str = ""                           # what else fixes the shape: "b64", "r2", "k16", ...
    flops_per_token: float | None = None       # structured forward FLOPs per token; None where not counted
    tokens: int = TOKENS

    @property
    def id(self) -> str:
        """Test-id fragment, e.g. ``block_circulant-768x768-b64``."""
        return f"{self.name}-{self.n_in}x{self.n_out}" + (f"-{self.detail}" if self.detail else "")

    @property
    def shape(self) -> str:
        """Table label, e.g. ``256x768->768 b64`` (x is tokens x n_in, y is tokens x n_out)."""
        return f"{self.tokens}x{self.n_in}->{self.n_out}" + (f" {self.detail}" if self.detail else "")

    @property
    def params(self) -> int:
        """Total elements of the parameter tensors (toeplitz counts ``row[0]``, which the op ignores)."""
        return sum(math.prod(s) for s in self.param_shapes)

    @property
    def lora_eq_rank(self) -> int:
        """The LoRA rank with (about) the op's parameter count."""
        return max(1, round(self.params / (self.n_in + self.n_out)))

    @property
    def providers(self) -> tuple[str, ...]:
        ranks = sorted({*LORA_RANKS, self.lora_eq_rank})
        return BACKENDS + tuple(f"lora-r{r}" for r in ranks)

    def provider_params(self, provider: str) -> int:
        """Trainable parameters of a provider: the op's, or LoRA's ``r * (n_in + n_out)``."""
        r = lora_rank(provider)
        return self.params if r is None else r * (self.n_in + self.n_out)

    def bytes_moved(self, mode: str) -> int:
        """Compulsory activation traffic in float32, parameters left out (they are small next to tokens x features):
        fwd reads x and writes y; full adds the backward's read of g and x and write of grad x."""
        t, b = self.tokens, BYTES_PER_ELEMENT
        fwd = b * t * (self.n_in + self.n_out)
        return fwd if mode == "fwd" else fwd + b * t * (self.n_out + 2 * self.n_in)

    def flops(self, provider: str, mode: str) -> float | None:
        """Forward FLOPs of the provider's math (structured count for fft/auto, ``2 n_in n_out`` per token for
        dense, ``2 r (n_in + n_out)`` for LoRA); full is counted as 3x the forward. None where not counted."""
        r = lora_rank(provider)
        if r is not None:
            per_token = 2.0 * r * (self.n_in + self.n_out)
        elif provider == "dense":
            per_token = 2.0 * self.n_in * self.n_out
        else:
            per_token = self.flops_per_token
        if per_token is None:
            return None
        return per_token * self.tokens * (1 if mode == "fwd" else 3)


def lora_rank(provider: str) -> int | None:
    """``8`` for ``"lora-r8"``; None for an op backend."""
    return int(provider.removeprefix("lora-r")) if provider.startswith("lora-r") else None


def _circulant(n: int) -> Case:
    return Case("circulant", "circulant_matmul", n, n, ((n,),), flops_per_token=_conv_flops(n))


def _skew_circulant(n: int) -> Case:
    # Counted as a circulant of length 2n (the zero-padded linear convolution it equals, up to signs).
    return Case("skew_circulant", "skew_circulant_matmul", n, n, ((n,),), flops_per_token=_conv_flops(2 * n))


def _block_circulant(n_out: int, n_in: int, b: int) -> Case:
    p, q = n_out // b, n_in // b
    # q forward and p inverse transforms of length b, and a (p x q) complex matrix-vector product per frequency.
    flops = (p + q) * _rfft(b) + 8 * p * q * (b // 2 + 1)
    return Case("block_circulant", "circulant_matmul", n_in, n_out, ((p, q, b),), f"b{b}", flops)


def _toeplitz(n_out: int, n_in: int) -> Case:
    # Counted as the circulant embedding of length n_in + n_out.
    return Case("toeplitz", "toeplitz_matmul", n_in, n_out, ((n_out,), (n_in,)),
                flops_per_token=_conv_flops(n_in + n_out))


def _ldr(n: int, r: int) -> Case:
    return Case("ldr", "ldr_matmul", n, n, ((r, n), (r, n)), f"r{r}")  # FLOPs depend on the implementation


def _kronecker(p: int, q: int, u: int, v: int) -> Case:
    # a @ X @ b.T with X (q, v), in the cheaper order.
    flops = 2 * min(p * v * (q + u), q * u * (v + p))
    return Case("kronecker", "kronecker_matmul", q * v, p * u, ((p, q), (u, v)), f"{p}x{q}kron{u}x{v}", flops)


def _svd(n_out: int, n_in: int, k: int) -> Case:
    return Case("svd", "svd_matmul", n_in, n_out, ((n_out, k), (k,), (n_in, k)), f"k{k}",
                flops_per_token=2 * k * (n_in + n_out) + k)


CASES: tuple[Case, ...] = (
    _circulant(64),
    _circulant(768),
    _block_circulant(768, 768, 64),
    _skew_circulant(64),
    _skew_circulant(768),
    _toeplitz(768, 768),
    _ldr(768, 2),
    _kronecker(24, 32, 32, 24),
    _svd(768, 768, 16),
)
"""The CPU default set."""

QUICK_IDS = ("circulant-64x64", "block_circulant-768x768-b64", "svd-768x768-k16")
"""The cases kept when ``SURM_BENCH_QUICK=1`` (smoke testing)."""


def quick() -> bool:
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def selected() -> tuple[Case, ...]:
    """The cases to run: all of :data:`CASES`, or the :data:`QUICK_IDS` ones in quick mode."""
    return tuple(c for c in CASES if c.id in QUICK_IDS) if quick() else CASES


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``(x, params, g)`` for a case: float32, seeded, identical for every provider of the case."""
    x = _randn((case.tokens, case.n_in), seed)
    params = [_randn(shape, seed + 1 + i) for i, shape in enumerate(case.param_shapes)]
    g = _randn((case.tokens, case.n_out), seed + 100)
    return x, params, g


def lora_inputs(case: Case, r: int, seed: int = 0) -> list[torch.Tensor]:
    """LoRA's ``[A (r, n_in), B (n_out, r)]`` (B random, not zero, so nothing is timed on zeros)."""
    return [_randn((r, case.n_in), seed + 200) / math.sqrt(case.n_in),
            _randn((case.n_out, r), seed + 201) / math.sqrt(r)]


def resolved_backend(case: Case, seed: int = 0) -> str:
    """The backend ``"auto"`` runs for this case (honours ``SURM_BACKEND``)."""
    x, params, _ = inputs(case, seed)
    return dispatch.resolve(case.fn, "auto", x, params)


def build(case: Case, provider: str, mode: str, seed: int = 0) -> Callable[[], object]:
    """A zero-argument callable that runs ``provider`` on the case's inputs in ``mode`` (``"fwd"`` or ``"full"``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    x, params, g = inputs(case, seed)
    r = lora_rank(provider)
    if r is not None:
        params = lora_inputs(case, r, seed)

        def forward():
            a, b = params
            return (x @ a.T) @ b.T
    elif provider in BACKENDS:
        op = getattr(surm_ops, case.fn)

        def forward():
            return op(x, *params, backend=provider)
    else:
        raise ValueError(f"unknown provider {provider!r} for {case.id}; expected one of {case.providers}")

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return forward()
        return run

    leaves = [x.requires_grad_(), *(p.requires_grad_() for p in params)]

    def run():
        return torch.autograd.grad(forward(), leaves, g)
    return run


def callables(case: Case, seed: int = 0) -> dict[tuple[str, str], Callable[[], object]]:
    """Every ``(provider, mode)`` of a case mapped to its callable."""
    return {(p, m): build(case, p, m, seed) for p in case.providers for m in MODES}
