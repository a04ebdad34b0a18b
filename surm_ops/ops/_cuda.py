"""The ``cuda`` backend of ``circulant_matmul`` and ``toeplitz_matmul``: the fused FFT kernels of the compiled
extension ``surm_ops._C`` (csrc/conv/, reached as ``torch.ops.surm_ops_C``).

Both ops are one shape of kernel, as in :mod:`surm_ops.reference.fft`: a (p x q) grid of length-L cyclic
convolutions with zero-padded input blocks and truncated output blocks. The kernel reads x once and writes y once;
the parameter spectra (O(n)) are computed here with torch.fft, and so is the last step of the parameter gradient:
the kernel writes per-row-chunk partial spectra, summed here in a fixed order (``torch.sum``, no atomics) and
transformed back.

Importing this module only registers closures; the extension is loaded by dispatch on the first CUDA call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from surm_ops import dispatch
from surm_ops.ops import _speed
from surm_ops.reference import fft as reference
from surm_ops.structure import good_size

# Mirrors of csrc/conv/config.h, csrc/fft/plan.h and csrc/common/exec.h (tests/csrc checks they agree).
MAX_RADIX = 127
MAX_BUFFER = 1024 * 12
TWIDDLE_LO = 64
COMPLEX_BYTES = 8
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Shape:
    """The kernel's view of a call: p output and q input blocks, FFT length, values per input/output block."""

    p: int
    q: int
    length: int
    in_len: int
    out_len: int

    def transposed(self) -> Shape:
        return Shape(self.q, self.p, self.length, self.out_len, self.in_len)


def _circulant_shape(c: torch.Tensor) -> Shape:
    if c.ndim == 3:
        p, q, b = c.shape
        return Shape(p, q, b, b, b)
    n = c.shape[-1]
    return Shape(1, 1, n, n, n)


def _toeplitz_shape(col: torch.Tensor, row: torch.Tensor) -> Shape:
    n_out, n_in = col.shape[-1], row.shape[-1]
    return Shape(1, 1, good_size(n_out + n_in - 1), n_in, n_out)


# -- the limits of csrc/conv/config.h ---------------------------------------------------------------------------------

@functools.cache
def largest_prime_factor(n: int) -> int:
    largest, f = 1, 2
    while f * f <= n:
        while n % f == 0:
            largest, n = f, n // f
        f += 1
    return max(largest, n) if n > 1 else largest


def _twiddle_bytes(length: int) -> int:
    return ((length + TWIDDLE_LO - 1) // TWIDDLE_LO + TWIDDLE_LO) * COMPLEX_BYTES


def forward_buffer(s: Shape) -> int:
    return max(s.p, s.q) * s.length


def forward_smem(s: Shape) -> int:
    blocks = 1 if s.p == s.q == 1 else s.p + s.q
    return _twiddle_bytes(s.length) + blocks * s.length * COMPLEX_BYTES


def grad_buffer(s: Shape, pt: int) -> int:
    return max(s.q, pt) * s.length


def grad_smem(s: Shape, pt: int) -> int:
    return _twiddle_bytes(s.length) + ((s.q + pt) * s.length + pt * s.q * (s.length // 2 + 1)) * COMPLEX_BYTES


def limit_reasons(s: Shape, smem_limit: int) -> list[str]:
    """Why the kernels cannot run shape ``s`` on a device with ``smem_limit`` bytes of shared memory per block
    (the forward and grad-x kernels share their limits: grad-x is the transposed shape)."""
    why = []
    if largest_prime_factor(s.length) > MAX_RADIX:
        why.append(f"FFT length {s.length} has the prime factor {largest_prime_factor(s.length)} > {MAX_RADIX}")
    if forward_buffer(s) > MAX_BUFFER or grad_buffer(s, 1) > MAX_BUFFER:
        why.append(f"one FFT call would hold max(p, q) * L = {forward_buffer(s)} values; "
                   f"the kernels hold at most {MAX_BUFFER}")
    need = max(forward_smem(s), grad_smem(s, 1))
    if need > smem_limit:
        why.append(f"needs {need} bytes of shared memory per block; the device allows {smem_limit}")
    return why


def _smem_limit(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    # Older torch lacks the opt-in figure; the default 48 KiB is always allowed.
    return int(getattr(props, "shared_memory_per_block_optin", 48 * 1024))


# -- dispatch hooks --------------------------------------------------------------------------------------------------

def _why_not(x: torch.Tensor, params, shape: Shape) -> list[str]:
    why = []
    if x.dtype not in _KERNEL_DTYPES:
        why.append(f"x is {x.dtype}; the fused kernels compute in float32 for float32/float16/bfloat16 x "
                   "(float64 runs on the fft backend)")
    if any(p.dtype == torch.float64 for p in params):
        why.append("a float64 parameter asks for float64 arithmetic, which the fused kernels do not do")
    return why + limit_reasons(shape, _smem_limit(x.device))


# -- the kernel calls ------------------------------------------------------------------------------------------------

def _ops():
    return torch.ops.surm_ops_C


def _spectrum(k: torch.Tensor) -> torch.Tensor:
    """(p, q, L) real kernels -> (p, q, L, 2) float32: the full DFT the kernel multiplies by."""
    return torch.view_as_real(torch.fft.fft(k.float())).contiguous()


def _adjoint_spectrum(k: torch.Tensor) -> torch.Tensor:
    """The spectrum of M.T: conjugated (correlation) and with the block grid transposed: (q, p, L, 2)."""
    return torch.view_as_real(torch.fft.fft(k.float()).conj_physical().transpose(0, 1).contiguous())


def _forward(x: torch.Tensor, k: torch.Tensor, s: Shape) -> torch.Tensor:
    rows = x.reshape(-1, s.q * s.in_len).contiguous()
    y = _ops().conv_forward(rows, _spectrum(k), s.in_len, s.out_len)
    return y.reshape(*x.shape[:-1], s.p * s.out_len)


def _backward(grad: torch.Tensor, x: torch.Tensor, k: torch.Tensor, s: Shape, need_x: bool, need_k: bool):
    """(grad of x, grad of the kernel k as (p, q, L) float32)."""
    g = grad.reshape(-1, s.p * s.out_len).to(x.dtype).contiguous()
    gx = gk = None
    if need_x:
        gx = _ops().conv_forward(g, _adjoint_spectrum(k), s.out_len, s.in_len).reshape(x.shape)
    if need_k:
        rows = x.reshape(-1, s.q * s.in_len).contiguous()
        partials = _ops().conv_grad_spectrum(rows, g, s.length, s.in_len, s.out_len)
        gk = torch.fft.irfft(torch.view_as_complex(partials.sum(0)), n=s.length)
    return gx, gk


def _circulant_kernel(c: torch.Tensor) -> torch.Tensor:
    return c.reshape(1, 1, -1) if c.ndim == 1 else c


def circulant_forward(x, c):
    return _forward(x, _circulant_kernel(c), _circulant_shape(c))


def circulant_backward(grad, x, c, needs):
    gx, gk = _backward(grad, x, _circulant_kernel(c), _circulant_shape(c), needs[0], needs[1])
    return [gx, None if gk is None else gk.reshape(c.shape).to(c.dtype)]


def circulant_why_not(x, c):
    return _why_not(x, [c], _circulant_shape(c))


def circulant_skip_auto(x, c):
    s = _circulant_shape(c)
    return _speed.cuda_fused_fft(s.q * s.in_len, s.p * s.out_len)


def _toeplitz_kernel(col, row):
    return reference._toeplitz_kernel(col.float(), row.float()).reshape(1, 1, -1)


def toeplitz_forward(x, col, row):
    return _forward(x, _toeplitz_kernel(col, row), _toeplitz_shape(col, row))


def toeplitz_backward(grad, x, col, row, needs):
    s = _toeplitz_shape(col, row)
    gx, gk = _backward(grad, x, _toeplitz_kernel(col, row), s, needs[0], needs[1] or needs[2])
    gcol = grow = None
    if gk is not None:
        gk = gk.reshape(-1)
        gcol = gk[:s.out_len].to(col.dtype) if needs[1] else None
        if needs[2]:  # row[0] is ignored (scipy), so its gradient is zero
            grow = torch.cat([gk.new_zeros(1), gk[s.length - s.in_len + 1:].flip(0)]).to(row.dtype)
    return [gx, gcol, grow]


def toeplitz_why_not(x, col, row):
    return _why_not(x, [col, row], _toeplitz_shape(col, row))


def toeplitz_skip_auto(x, col, row):
    return _speed.cuda_fused_fft(row.shape[-1], col.shape[-1])


dispatch.register("circulant_matmul", "cuda", dispatch.Impl(
    circulant_forward, circulant_backward, circulant_why_not, circulant_skip_auto))
dispatch.register("toeplitz_matmul", "cuda", dispatch.Impl(
    toeplitz_forward, toeplitz_backward, toeplitz_why_not, toeplitz_skip_auto))
