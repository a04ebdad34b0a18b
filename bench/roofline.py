"""Roofline bookkeeping for every benchmark row: what is counted, the ceilings it is compared with, and × floor.

This is the one place the counting is defined; bench/cases.py and bench/layers.py only call it.

Notation: B tokens (rows of x), ``n_in``/``n_out`` the op's input/output features, ``e`` bytes per activation
element (x's dtype: 4 for float32, 2 for bfloat16), ``P`` parameter elements and ``pe`` bytes per parameter element.

**Bytes** (compulsory traffic: every tensor read or written once, nothing else; :func:`op_bytes`):

- ``fwd``: read x, write y, read the parameters: ``e·B·(n_in + n_out) + pe·P``;
- ``bwd``: read the output gradient g and x, write ∂x, read the parameters and write their gradients:
  ``e·B·(n_out + 2·n_in) + 2·pe·P``;
- ``full`` = fwd + bwd. At n_in = n_out = d in bfloat16 (parameters aside) that is docs/performance.md's 4·B·d, 6·B·d
  and 10·B·d.

**FLOPs** (forward, per token, of the cheapest known algorithm for the *op*; :func:`op_flops`): a real FFT of
length L counts ``2.5·L·log2 L`` (half the classic ``5·L·log2 L`` complex one); a circulant of length n is two
of them plus a complex multiply per frequency, ``2·2.5·n·log2 n + 6·(n/2 + 1)`` (the filter's transform is not
counted); skew-circulant counts as a circulant of length 2n (the zero-padded convolution it equals, up to signs);
Toeplitz as one of length ``n_in + n_out``; block-circulant (p, q, b) as ``(p + q)`` length-b FFTs plus a
(p × q) complex matrix-vector product per frequency, ``8·p·q·(b/2 + 1)``; LDR of rank r as r × (skew-circulant +
circulant); Kronecker ``a X bᵀ`` in the cheaper order, ``2·min(p·v·(q + u), q·u·(v + p))``; SVD
``2·k·(n_in + n_out) + k``; dense LoRA ``2·r·(n_in + n_out)``. Every provider of an op (its ``fft``, ``dense``,
``auto`` backends, PEFT C3A) is charged the *op's* count, so a row's GFLOP/s is useful work per second and × floor
ranks providers of one op directly (the ``dense`` backend's own ``2·n_in·n_out`` is not what it is credited with).
Backward counts 2× the forward (∂x and ∂parameters each cost about one forward), ``full`` 3×.

**Layers** (a frozen ``nn.Linear`` n_in → n_out, alone or with an adapter; :func:`layer_bytes`,
:func:`layer_flops`): the floor is the frozen layer's, i.e. what a perfectly fused adapter would cost. Forward:
read x and W0, write y, ``e·B·(n_in + n_out) + w·n_in·n_out`` bytes (w = bytes per weight element) and
``2·B·n_in·n_out`` FLOPs; a training step adds the backward for ∂x (read g and W0, write ∂x):
``e·B·(n_out + n_in) + w·n_in·n_out`` bytes and another ``2·B·n_in·n_out`` FLOPs. The adapter's own work is not
added: for an O(n)-parameter update it is small next to the frozen GEMM, and the target (docs/performance.md §3.5) is
to cost no more than 1.10× the frozen layer.

**Ceilings** (:func:`measure_ceilings`), measured in the same process, on the same device, before and after the rows:

- copy bandwidth: ``dst.copy_(src)`` of a large buffer (256 MiB on GPU, 64 MiB on CPU) and, on CPU, of a 1 MiB
  one (the default shapes' tensors are about that size and stay in cache; the faster copy counts); bytes = read +
  written = 2 × the buffer; best of several timed copies;
- matmul rate, per dtype: ``a @ b`` of two square n × n matrices (n = 8192 on GPU; on CPU n = 2048 and 768, the
  faster counts), ``2·n³`` FLOPs; best of several. A row uses the rate of its own dtype (fp32 rows: PyTorch's
  default fp32 matmul precision).

**Floor and × floor**: ``floor = max(bytes / copy bandwidth, FLOPs / matmul rate)``; ``x_floor = robust estimate /
floor`` (bench/timing.py). The FFT's FLOPs run on vector units, not the matrix units the matmul rate measures, so
the compute half of the floor is optimistic for FFT paths: a floor, never a target to beat. Both ceilings are the
best of several tries at the start of the run, measured again at the end; rows use the higher of the two
(:func:`best`). A row below its floor (× floor < 1) is a measurement error and is flagged as one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

MODES = ("fwd", "bwd", "full")
_MODE_FLOPS = {"fwd": 1, "bwd": 2, "full": 3}


def _rfft(length: int) -> float:
    return 2.5 * length * math.log2(max(length, 2))


def conv_flops(length: int) -> float:
    """One circulant product of length ``length``: forward rfft, irfft and a complex multiply per frequency."""
    return 2 * _rfft(length) + 6 * (length // 2 + 1)


def block_circulant_flops(p: int, q: int, b: int) -> float:
    return (p + q) * _rfft(b) + 8 * p * q * (b // 2 + 1)


def ldr_flops(n: int, r: int) -> float:
    return r * (conv_flops(2 * n) + conv_flops(n))


def kronecker_flops(p: int, q: int, u: int, v: int) -> float:
    return 2 * min(p * v * (q + u), q * u * (v + p))


def svd_flops(n_in: int, n_out: int, k: int) -> float:
    return 2 * k * (n_in + n_out) + k


def lora_flops(n_in: int, n_out: int, r: int) -> float:
    return 2.0 * r * (n_in + n_out)


def op_flops(per_token_fwd: float, tokens: int, mode: str) -> float:
    """The op's FLOPs for ``tokens`` rows in ``mode`` from its forward count per token."""
    return per_token_fwd * tokens * _MODE_FLOPS[mode]


def op_bytes(tokens: int, n_in: int, n_out: int, elem: int, params: int, param_elem: int, mode: str) -> int:
    """Compulsory traffic of one op call (see the module docstring)."""
    fwd = elem * tokens * (n_in + n_out) + param_elem * params
    bwd = elem * tokens * (n_out + 2 * n_in) + 2 * param_elem * params
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}[mode]


def layer_bytes(tokens: int, n_in: int, n_out: int, elem: int, weight_elem: int, mode: str) -> int:
    """The frozen layer's compulsory traffic; ``mode`` is ``fwd`` or ``full`` (a training step)."""
    one_pass = elem * tokens * (n_in + n_out) + weight_elem * n_in * n_out
    return one_pass * (1 if mode == "fwd" else 2)


def layer_flops(tokens: int, n_in: int, n_out: int, mode: str) -> float:
    return 2.0 * tokens * n_in * n_out * (1 if mode == "fwd" else 2)


@dataclass(frozen=True)
class Ceilings:
    """Measured on one device in one run: copy bandwidth (GB/s, read + written) and matmul rate per dtype."""

    copy_gbps: float
    matmul_tflops: dict[str, float]

    def floor_us(self, nbytes: float, flops: float | None, dtype: str) -> float:
        mem = nbytes / (self.copy_gbps * 1e9)
        rate = self.matmul_tflops.get(dtype)
        compute = flops / (rate * 1e12) if flops and rate else 0.0
        return max(mem, compute) * 1e6


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure_ceilings(device: torch.device, dtypes: tuple[torch.dtype, ...], best_of: Callable[..., float],
                     small: bool = False) -> Ceilings:
    """Copy bandwidth and matmul rates on ``device``; ``best_of(fn) -> seconds`` is the device's timer (bench/timing).

    ``small`` shrinks the buffers (smoke tests): the numbers are then rough, cache-resident and flagged by the caller.
    """
    gpu = device.type == "cuda"
    copy_gbps = 0.0
    # CPU: the default shapes' tensors (about 1 MB) stay in cache, so a cache-resident copy counts too; the
    # faster of the two is the ceiling, and no row can honestly beat it.
    for mib in (16 if small else 256 if gpu else 64, *(() if gpu else (1,))):
        src = torch.randn(mib * 2**20 // 4, device=device)
        dst = torch.empty_like(src)
        copy_gbps = max(copy_gbps, 2 * mib * 2**20 / best_of(lambda src=src, dst=dst: dst.copy_(src)) / 1e9)
    # CPU: a 768-wide product (the layer rows' size, whose operands stay in cache) can run faster than 2048-wide
    # ones; the faster rate counts, as for the copy.
    sizes = (512,) if small else (8192,) if gpu else (2048, 768)
    rates = {}
    for dt in dtypes:
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dt)
            b = torch.randn(n, n, device=device, dtype=dt)
            rate = 2 * n**3 / best_of(lambda a=a, b=b: a @ b) / 1e12
            rates[dtype_name(dt)] = max(rates.get(dtype_name(dt), 0.0), rate)
    return Ceilings(copy_gbps=copy_gbps, matmul_tflops=rates)


def best(a: Ceilings, b: Ceilings) -> Ceilings:
    """The higher of two measurements of each ceiling (the start and end of a run): a ceiling measured while a
    neighbour held the CPU is too low, and would put rows below their floor."""
    rates = {k: max(a.matmul_tflops.get(k, 0.0), b.matmul_tflops.get(k, 0.0))
             for k in {*a.matmul_tflops, *b.matmul_tflops}}
    return Ceilings(max(a.copy_gbps, b.copy_gbps), rates)


def complete_row(fields: dict, timing, ceilings: Ceilings) -> dict:
    """A result row: ``fields`` (bytes, flops, dtype, ...) plus the timing (bench/timing.py), the ceilings it is
    held against, and the derived GB/s, GFLOP/s, floor and × floor, all from the robust estimate.

    × floor < 1 cannot happen (nothing runs faster than its floor): such a row is flagged ``below-floor``, a
    measurement error (a ceiling measured too low, or a timing too short to trust); ``wide`` marks a spread above
    bench.timing.WIDE."""
    est = timing.robust_s
    floor = ceilings.floor_us(fields["bytes"], fields.get("flops"), fields["dtype"])
    flops = fields.get("flops")
    x_floor = est * 1e6 / floor
    flags = [f for f, bad in (("wide", timing.wide), ("below-floor", x_floor < 1)) if bad]
    return {
        **fields,
        "robust_us": est * 1e6, "median_us": timing.median_s * 1e6, "p20_us": timing.p20_s * 1e6,
        "p80_us": timing.p80_s * 1e6, "spread": timing.spread, "rounds": timing.rounds, "timer": timing.timer,
        "gbps": fields["bytes"] / est / 1e9, "gflops": flops / est / 1e9 if flops else None,
        "floor_us": floor, "x_floor": x_floor, "flags": " ".join(flags),
        "copy_gbps": ceilings.copy_gbps, "matmul_tflops": ceilings.matmul_tflops.get(fields["dtype"]),
    }
