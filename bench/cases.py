"""Op microbenchmark cases: the shapes each op is timed at, on which device and dtype, the providers timed on
each, and the inputs they run on. The layer-level cases are in bench/layers.py; bytes and FLOPs in bench/roofline.py.

A case is one structured op at one shape and dtype, applied to ``x`` of shape ``(tokens, n_in)``. Its providers:

- every backend of :mod:`surm_ops.dispatch` that can run the case on the device (``fft`` and ``dense`` on CPU;
  ``triton``/``cuda`` join on a GPU once they exist), called through the public function, and ``"auto"`` (whatever
  dispatch picks);
- ``"torch"``: the raw torch calls of the reference path under the ``fft`` backend (rfft, multiply, irfft; the
  factored matmuls for Kronecker and SVD) with its own backward, without surm_ops' validation, dispatch and
  ``autograd.Function``: the floor of the reference path, which ``fft`` should stay within 10% of on CPU
  (docs/performance.md §3);
- dense LoRA ``"lora-r{r}"``: ``y = (x @ A.T) @ B.T`` with A ``(r, n_in)`` and B ``(n_out, r)``, at r = 8, 16, 32
  and at the rank with the op's parameter count, ``r = max(1, round(params / (n_in + n_out)))``;
- ``"peft-c3a"`` (circulant and block-circulant cases, when ``peft`` is importable): the update PEFT's C3A layer
  computes, ``BlockCircularConvolution.apply(x.float(), kernel) / n_in`` cast back to x's dtype (a full circulant
  is C3A with one block of size n).

Modes (roofline.MODES): ``"fwd"`` is the forward under ``torch.no_grad()``; ``"bwd"`` the backward alone,
``torch.autograd.grad(y, leaves, g, retain_graph=True)`` on a forward recorded once; ``"full"`` the forward with
``requires_grad`` on x and every parameter, then the backward of a fixed g. ``autograd.grad`` does the same work as
``y.backward(g)`` without ``.grad`` accumulating between rounds.

Dtypes: x and g in the case's dtype; the op's parameters and PEFT's kernel in float32 (the adapter convention,
docs/contract.md §2.2), LoRA's factors in x's dtype (LoRA's fastest form). Inputs are seeded: every provider of a
case sees the same x and g, so ratios within a case compare like with like.

Scopes (:func:`groups`): ``full`` is the whole suite, every provider in every mode: on CPU 256 tokens, float32, plus
one bfloat16 case; on a GPU docs/performance.md §3's shapes (16384 tokens, bfloat16 and float32, plus a 16-token call).
``default`` (the main command) is one case per op at the main shape with ``auto``, ``torch``, LoRA r16 and PEFT
C3A, forward and forward+backward; ``quick`` three cases, forward only (a smoke run).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

import surm_ops
from bench import roofline
from surm_ops import dispatch

LORA_RANKS = (8, 16, 32)
PEFT_OPS = ("circulant", "block_circulant")


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


@dataclass(frozen=True)
class Case:
    name: str                                  # op as it appears in tables: "circulant", "block_circulant", ...
    fn: str                                    # the public surm_ops function (and its registered dispatch name)
    n_in: int
    n_out: int
    param_shapes: tuple[tuple[int, ...], ...]  # the op's parameters, in the public function's argument order
    flops_per_token: float                     # the op's forward FLOPs per token (roofline.py)
    detail: str = ""                           # what else fixes the shape: "b64", "r2", "k16", ...
    tokens: int = 256
    dtype: torch.dtype = torch.float32

    @property
    def dtype_name(self) -> str:
        return roofline.dtype_name(self.dtype)

    @property
    def id(self) -> str:
        """Test-id fragment, e.g. ``block_circulant-256x768x768-b64-float32``."""
        return (f"{self.name}-{self.tokens}x{self.n_in}x{self.n_out}" + (f"-{self.detail}" if self.detail else "")
                + f"-{self.dtype_name}")

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

    def providers(self, dev: torch.device) -> tuple[str, ...]:
        x = torch.empty(1, self.n_in, device=dev, dtype=self.dtype)
        params = [torch.empty(s, device=dev) for s in self.param_shapes]
        # Triton's CPU interpreter (TRITON_INTERPRET=1, as in the test suite) checks kernels; it is not a provider.
        backends = [b for b in dispatch.BACKENDS if not dispatch.reasons(self.fn, b, x, params)
                    and not (b == "triton" and dev.type != "cuda")]
        ranks = sorted({*LORA_RANKS, self.lora_eq_rank})
        peft = ("peft-c3a",) if self.name in PEFT_OPS and peft_available() else ()
        return (*backends, "auto", "torch", *(f"lora-r{r}" for r in ranks), *peft)

    def provider_params(self, provider: str) -> int:
        """Trainable parameters of a provider: the op's, or LoRA's ``r * (n_in + n_out)``."""
        r = lora_rank(provider)
        return self.params if r is None else r * (self.n_in + self.n_out)

    def bytes_moved(self, provider: str, mode: str) -> int:
        r = lora_rank(provider)
        elem = self.dtype.itemsize
        return roofline.op_bytes(self.tokens, self.n_in, self.n_out, elem, self.provider_params(provider),
                                 4 if r is None else elem, mode)

    def flops(self, provider: str, mode: str) -> float:
        r = lora_rank(provider)
        per_token = self.flops_per_token if r is None else roofline.lora_flops(self.n_in, self.n_out, r)
        return roofline.op_flops(per_token, self.tokens, mode)

    def with_(self, **changes) -> Case:
        return dataclasses.replace(self, **changes)


def lora_rank(provider: str) -> int | None:
    """``8`` for ``"lora-r8"``; None for any other provider."""
    return int(provider.removeprefix("lora-r")) if provider.startswith("lora-r") else None


def circulant(n: int) -> Case:
    return Case("circulant", "circulant_matmul", n, n, ((n,),), roofline.conv_flops(n))


def skew_circulant(n: int) -> Case:
    return Case("skew_circulant", "skew_circulant_matmul", n, n, ((n,),), roofline.conv_flops(2 * n))


def block_circulant(n_out: int, n_in: int, b: int) -> Case:
    p, q = n_out // b, n_in // b
    return Case("block_circulant", "circulant_matmul", n_in, n_out, ((p, q, b),),
                roofline.block_circulant_flops(p, q, b), f"b{b}")


def toeplitz(n_out: int, n_in: int) -> Case:
    return Case("toeplitz", "toeplitz_matmul", n_in, n_out, ((n_out,), (n_in,)), roofline.conv_flops(n_in + n_out))


def ldr(n: int, r: int) -> Case:
    return Case("ldr", "ldr_matmul", n, n, ((r, n), (r, n)), roofline.ldr_flops(n, r), f"r{r}")


def kronecker(p: int, q: int, u: int, v: int) -> Case:
    return Case("kronecker", "kronecker_matmul", q * v, p * u, ((p, q), (u, v)), roofline.kronecker_flops(p, q, u, v),
                f"{p}x{q}kron{u}x{v}")


def svd(n_out: int, n_in: int, k: int) -> Case:
    return Case("svd", "svd_matmul", n_in, n_out, ((n_out, k), (k,), (n_in, k)), roofline.svd_flops(n_in, n_out, k),
                f"k{k}")


_CPU_FP32 = (circulant(64), circulant(768), block_circulant(768, 768, 64), skew_circulant(64), skew_circulant(768),
             toeplitz(768, 768), ldr(768, 2), kronecker(24, 32, 32, 24), svd(768, 768, 16))
CPU_CASES: tuple[Case, ...] = (*_CPU_FP32, circulant(768).with_(dtype=torch.bfloat16))
"""The whole CPU suite (``--full``): 256 tokens, float32, and the 768 circulant once more in bfloat16."""

GPU_TOKENS = 16384
_GPU_SHAPES = (circulant(1024), circulant(4096), circulant(8192), circulant(3072),
               block_circulant(3072, 3072, 64), block_circulant(1024, 3072, 64), skew_circulant(4096),
               toeplitz(4096, 4096), ldr(4096, 2), kronecker(64, 64, 64, 64), svd(4096, 4096, 16))
GPU_CASES: tuple[Case, ...] = tuple(
    c.with_(tokens=GPU_TOKENS, dtype=dt) for dt in (torch.bfloat16, torch.float32) for c in _GPU_SHAPES
) + (circulant(4096).with_(tokens=16, dtype=torch.bfloat16),)
"""The whole GPU suite: docs/performance.md §3's shapes at 16384 tokens, bfloat16 and float32; d = 3072 (a multiple of
64, not a power of two); C3A's block-circulant shapes; and a 16-token call (the small-batch target)."""

HEADLINE_IDS = {
    "cpu": ("circulant-256x768x768-float32", "block_circulant-256x768x768-b64-float32",
            "skew_circulant-256x768x768-float32", "toeplitz-256x768x768-float32", "ldr-256x768x768-r2-float32",
            "kronecker-256x768x768-24x32kron32x24-float32", "svd-256x768x768-k16-float32"),
    "cuda": ("circulant-16384x4096x4096-bfloat16", "block_circulant-16384x3072x3072-b64-bfloat16",
             "skew_circulant-16384x4096x4096-bfloat16", "toeplitz-16384x4096x4096-bfloat16",
             "ldr-16384x4096x4096-r2-bfloat16", "kronecker-16384x4096x4096-64x64kron64x64-bfloat16",
             "svd-16384x4096x4096-k16-bfloat16"),
}
"""The default run: one case per structured op at the suite's main shape."""
HEADLINE_PROVIDERS = ("auto", "torch", "lora-r16", "peft-c3a")
"""The default run's providers: what a user calls, the raw reference path under it, and the two baselines."""
HEADLINE_MODES = ("fwd", "full")

QUICK_IDS = {"cpu": ("circulant-256x64x64-float32", "block_circulant-256x768x768-b64-float32",
                     "svd-256x768x768-k16-float32"),
             "cuda": ("circulant-16384x4096x4096-bfloat16", "block_circulant-16384x3072x3072-b64-bfloat16",
                      "svd-16384x4096x4096-k16-bfloat16")}
"""``--quick`` (a smoke run): three cases per device, the default providers, forward only."""

SCOPES = ("quick", "default", "full")


def selected(dev: torch.device, scope: str = "default") -> tuple[Case, ...]:
    """The cases of ``scope`` on ``dev``: ``full`` is the whole suite, ``default`` one case per op, ``quick`` three."""
    kind = "cuda" if dev.type == "cuda" else "cpu"
    suite = GPU_CASES if kind == "cuda" else CPU_CASES
    if scope == "full":
        return suite
    ids = QUICK_IDS[kind] if scope == "quick" else HEADLINE_IDS[kind]
    return tuple(c for c in suite if c.id in ids)


@dataclass(frozen=True)
class Group:
    """What one interleaved measurement times: the providers of one case and mode.

    ``fields[provider]`` is that provider's row before timing (op, shape, bytes, FLOPs, ...); ``build()`` makes
    the callables, ``{provider: fn}``, only when the group is about to be timed (inputs are allocated then), and
    may complete ``fields`` with what only the built callables know (a layer's parameter count)."""

    label: str
    fields: dict[str, dict]
    build: Callable[[], dict[str, Callable[[], object]]]


def groups(dev: torch.device, scope: str = "default") -> list[Group]:
    """The op groups of ``scope``: every provider and mode with ``full``; the headline providers (those that can
    run the case) in ``fwd`` and ``full`` otherwise (``fwd`` only with ``quick``)."""
    out = []
    for case in selected(dev, scope):
        providers = case.providers(dev)
        if scope != "full":
            providers = tuple(p for p in providers if p in HEADLINE_PROVIDERS)
        modes = roofline.MODES if scope == "full" else ("fwd",) if scope == "quick" else HEADLINE_MODES
        backend = resolved_backend(case, dev)
        for mode in modes:
            fields = {p: row_fields(case, p, mode, backend) for p in providers}
            out.append(Group(f"{case.id} {mode}", fields,
                             lambda case=case, mode=mode, providers=providers:
                             {p: build(case, p, mode, dev) for p in providers}))
    return out


def row_fields(case: Case, provider: str, mode: str, auto_backend: str) -> dict:
    """A row's fields other than timing: what was run and the bytes and FLOPs it is charged (roofline.py)."""
    return {"suite": "op", "op": case.name, "provider": provider, "mode": mode, "dtype": case.dtype_name,
            "shape": case.shape, "backend": auto_backend if provider == "auto" else provider,
            "params": case.provider_params(provider), "bytes": case.bytes_moved(provider, mode),
            "flops": case.flops(provider, mode)}


def _randn(shape, seed: int, dev: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator(device=dev).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=dev, dtype=torch.float32).to(dtype)


def inputs(case: Case, dev: torch.device, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """``(x, params, g)``: x and g in the case's dtype, the op's parameters in float32; seeded."""
    x = _randn((case.tokens, case.n_in), seed, dev, case.dtype)
    params = [_randn(shape, seed + 1 + i, dev) for i, shape in enumerate(case.param_shapes)]
    g = _randn((case.tokens, case.n_out), seed + 100, dev, case.dtype)
    return x, params, g


def lora_inputs(case: Case, r: int, dev: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """LoRA's ``[A (r, n_in), B (n_out, r)]`` in x's dtype (B random, not zero: nothing is timed on zeros)."""
    return [_randn((r, case.n_in), seed + 200, dev).div(math.sqrt(case.n_in)).to(case.dtype),
            _randn((case.n_out, r), seed + 201, dev).div(math.sqrt(r)).to(case.dtype)]


def resolved_backend(case: Case, dev: torch.device) -> str:
    """The backend ``"auto"`` runs for this case (honours ``SURM_BACKEND``)."""
    x, params, _ = inputs(case, dev)
    return dispatch.resolve(case.fn, "auto", x, params)


def _peft_c3a(case: Case, params: list[torch.Tensor]) -> tuple[Callable[[torch.Tensor], torch.Tensor], list]:
    from peft.tuners.c3a.utils import BlockCircularConvolution

    kernel = params[0] if params[0].dim() == 3 else params[0].reshape(1, 1, -1).clone()

    def forward(x):
        return (BlockCircularConvolution.apply(x.to(torch.float32), kernel) / x.size(-1)).to(x.dtype)
    return forward, [kernel]


def build(case: Case, provider: str, mode: str, dev: torch.device, seed: int = 0) -> Callable[[], object]:
    """A zero-argument callable that runs ``provider`` on the case's inputs in ``mode``."""
    if mode not in roofline.MODES:
        raise ValueError(f"mode must be one of {roofline.MODES}; got {mode!r}")
    x, params, g = inputs(case, dev, seed)
    r = lora_rank(provider)
    if r is not None:
        params = lora_inputs(case, r, dev, seed)

        def forward(x):
            a, b = params
            return (x @ a.T) @ b.T
    elif provider == "peft-c3a":
        if case.name not in PEFT_OPS:
            raise ValueError(f"peft-c3a runs circulant and block-circulant cases only; got {case.id}")
        forward, params = _peft_c3a(case, params)
    elif provider == "torch":
        impl = dispatch.select(case.fn, "fft", x, params)
        if mode == "fwd":
            return lambda: impl.forward(x, *params)
        needs = [True] * (1 + len(params))
        if mode == "bwd":
            return lambda: impl.backward(g, x, *params, needs)
        return lambda: impl.backward(g, x, *params, needs) if impl.forward(x, *params) is not None else None
    elif provider == "auto" or provider in dispatch.BACKENDS:
        op = getattr(surm_ops, case.fn)

        def forward(x):
            return op(x, *params, backend=provider)
    else:
        raise ValueError(f"unknown provider {provider!r} for {case.id}")

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return forward(x)
        return run

    leaves = [x.requires_grad_(), *(p.requires_grad_() for p in params)]
    if mode == "bwd":
        y = forward(x)
        return lambda: torch.autograd.grad(y, leaves, g, retain_graph=True)
    return lambda: torch.autograd.grad(forward(x), leaves, g)
