"""The FFT reference path: circulant, block-circulant, skew-circulant, Toeplitz and LDR products by real FFTs.

This is the ``fft`` backend (any device) and the semantics every faster backend must reproduce, gradient for
gradient. One mechanism serves the Toeplitz family: an (n_out x n_in) Toeplitz operator is the first n_out outputs
of a cyclic convolution of length L >= n_in + n_out - 1 with a kernel k built from the parameters
(k[:n_out] = col, k[L-m] = row[m]). A circulant is the case L = n, k = c; a skew-circulant is the Toeplitz matrix
with row[m] = -c[n-m]. So:

    forward   y  = irfft(rfft(x, L) * K, L)[..., :n_out]              K = rfft(k)
    backward  gx = irfft(rfft(g, L) * conj(K), L)[..., :n_in]          (correlation with k)
              gk = irfft(sum_tokens conj(rfft(x, L)) * rfft(g, L), L)  (reduced over tokens in frequency)

and each op's parameter gradient is the adjoint of its kernel construction (a gather). Arithmetic is float32 for
half inputs (torch.fft has no bfloat16), float64 when any argument is float64; inputs are saved for backward in
their own dtype and upcast there. Lazy ``.conj()`` views are avoided on purpose: inside a custom op traced by
``torch.compile(dynamic=True)`` (torch 2.13) the conjugate bit is dropped and the result is silently wrong, so
conjugates are taken with ``conj_physical`` on tensors this module owns.
"""

from __future__ import annotations

import torch
from torch.fft import irfft, rfft

from surm_ops.structure import compute_dtype, good_size  # noqa: F401  (good_size: also reached as fft.good_size)


def _out(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y.to(dtype).contiguous()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # .to() of a tensor already in dtype returns it, but costs ~1 µs at the call; a small call makes several.
    return t if t.dtype == dtype else t.to(dtype)


def _conv(x: torch.Tensor, k: torch.Tensor, n_out: int, dt: torch.dtype) -> torch.Tensor:
    length = k.shape[-1]
    spec = rfft(_cast(x, dt), n=length)
    spec.mul_(rfft(k))
    y = irfft(spec, n=length)
    if n_out == length:  # the circulant: no slice, and irfft's result is contiguous (~2 µs saved a call)
        return _cast(y, x.dtype)
    return _out(y[..., :n_out], x.dtype)


def _conv_backward(grad: torch.Tensor, x: torch.Tensor, k: torch.Tensor, dt: torch.dtype, need_x: bool,
                   need_k: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    length = k.shape[-1]
    g_spec = rfft(grad.to(dt), n=length)
    gk = None
    if need_k:
        x_spec = rfft(x.to(dt), n=length).reshape(-1, g_spec.shape[-1])
        x_spec.conj_physical_()
        gk = irfft(x_spec.mul_(g_spec.reshape(-1, g_spec.shape[-1])).sum(0), n=length)
    gx = None
    if need_x:
        g_spec.mul_(rfft(k).conj_physical_())
        gx = _out(irfft(g_spec, n=length)[..., :x.shape[-1]], x.dtype)
    return gx, gk


# -- circulant: k = c, L = n ---------------------------------------------------------------------------------------

def circulant_forward(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    if c.ndim == 3:
        return _block_circulant_forward(x, c)
    dt = compute_dtype(x, c)
    return _conv(x, _cast(c, dt), c.shape[-1], dt)


def circulant_backward(grad, x, c, needs):
    if c.ndim == 3:
        return _block_circulant_backward(grad, x, c, needs)
    dt = compute_dtype(x, c)
    gx, gc = _conv_backward(grad, x, c.to(dt), dt, needs[0], needs[1])
    return [gx, None if gc is None else gc.to(c.dtype)]


def _block_circulant_forward(x, c):
    p, q, b = c.shape
    dt = compute_dtype(x, c)
    x_spec = rfft(x.to(dt).reshape(*x.shape[:-1], q, b))
    y_spec = torch.einsum("...qf,pqf->...pf", x_spec, rfft(c.to(dt)))
    return _out(irfft(y_spec, n=b).reshape(*x.shape[:-1], p * b), x.dtype)


def _block_circulant_backward(grad, x, c, needs):
    p, q, b = c.shape
    dt = compute_dtype(x, c)
    g_spec = rfft(grad.to(dt).reshape(-1, p, b))
    gx = gc = None
    if needs[1]:
        x_spec = rfft(x.to(dt).reshape(-1, q, b)).conj_physical_()
        gc = irfft(torch.einsum("tqf,tpf->pqf", x_spec, g_spec), n=b).to(c.dtype)
    if needs[0]:
        gx_spec = torch.einsum("tpf,pqf->tqf", g_spec, rfft(c.to(dt)).conj_physical_())
        gx = _out(irfft(gx_spec, n=b).reshape(x.shape), x.dtype)
    return [gx, gc]


# -- skew-circulant: Toeplitz with row[m] = -c[n-m] ----------------------------------------------------------------

def _skew_kernel(c: torch.Tensor) -> torch.Tensor:
    """c: (..., n) -> (..., L) with k[:n] = c, k[L-m] = -c[n-m]."""
    n = c.shape[-1]
    length = good_size(2 * n - 1)
    gap = c.new_zeros(*c.shape[:-1], length - 2 * n + 1)
    return torch.cat([c, gap, -c[..., 1:]], dim=-1)


def _skew_kernel_adjoint(gk: torch.Tensor, n: int) -> torch.Tensor:
    gc = gk[..., :n].clone()
    gc[..., 1:] -= gk[..., gk.shape[-1] - n + 1:]
    return gc


def skew_circulant_forward(x, c):
    dt = compute_dtype(x, c)
    return _conv(x, _skew_kernel(c.to(dt)), c.shape[-1], dt)


def skew_circulant_backward(grad, x, c, needs):
    dt = compute_dtype(x, c)
    gx, gk = _conv_backward(grad, x, _skew_kernel(c.to(dt)), dt, needs[0], needs[1])
    return [gx, None if gk is None else _skew_kernel_adjoint(gk, c.shape[-1]).to(c.dtype)]


# -- Toeplitz: k[:n_out] = col, k[L-m] = row[m] ---------------------------------------------------------------------

def _toeplitz_kernel(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    n_out, n_in = col.shape[-1], row.shape[-1]
    length = good_size(n_out + n_in - 1)
    return torch.cat([col, col.new_zeros(length - n_out - n_in + 1), row[1:].flip(0)])


def toeplitz_forward(x, col, row):
    dt = compute_dtype(x, col, row)
    return _conv(x, _toeplitz_kernel(col.to(dt), row.to(dt)), col.shape[-1], dt)


def toeplitz_backward(grad, x, col, row, needs):
    dt = compute_dtype(x, col, row)
    gx, gk = _conv_backward(grad, x, _toeplitz_kernel(col.to(dt), row.to(dt)), dt, needs[0], any(needs[1:]))
    gcol = grow = None
    if gk is not None:
        n_out, n_in = col.shape[-1], row.shape[-1]
        gcol = gk[:n_out].to(col.dtype) if needs[1] else None
        if needs[2]:
            grow = torch.cat([gk.new_zeros(1), gk[gk.shape[-1] - n_in + 1:].flip(0)]).to(row.dtype)
    return [gx, gcol, grow]


# -- LDR: y = sum_i C(g_i) S(h_i) x  (skew products by length-L convolutions, then circulants at length n) ----------

def _ldr_skew_outputs(x2_spec: torch.Tensor, h_spec: torch.Tensor, length: int, n: int) -> torch.Tensor:
    """rfft_n of z_i = S(h_i) x for every i: (..., r, n // 2 + 1)."""
    z = irfft(x2_spec.unsqueeze(-2) * h_spec, n=length)[..., :n]
    return rfft(z, n=n)


def ldr_forward(x, g, h):
    dt = compute_dtype(x, g, h)
    n = g.shape[-1]
    hk = _skew_kernel(h.to(dt))
    length = hk.shape[-1]
    z_spec = _ldr_skew_outputs(rfft(x.to(dt), n=length), rfft(hk), length, n)
    y_spec = z_spec.mul_(rfft(g.to(dt))).sum(-2)
    return _out(irfft(y_spec, n=n), x.dtype)


def ldr_backward(grad, x, g, h, needs):
    dt = compute_dtype(x, g, h)
    r, n = g.shape
    hk = _skew_kernel(h.to(dt))
    length = hk.shape[-1]
    h_spec = rfft(hk)
    x2_spec = rfft(x.to(dt), n=length).reshape(-1, length // 2 + 1)
    gy_spec = rfft(grad.to(dt), n=n).reshape(-1, 1, n // 2 + 1)
    gx = gg = gh = None
    if needs[1]:
        z_spec = _ldr_skew_outputs(x2_spec, h_spec, length, n).conj_physical_()
        gg = irfft(z_spec.mul_(gy_spec).sum(0), n=n).to(g.dtype)
    if needs[0] or needs[2]:
        gz = irfft(gy_spec * rfft(g.to(dt)).conj_physical_(), n=n)  # C(g_i)^T gy: (tokens, r, n)
        gz_spec = rfft(gz, n=length)
        if needs[2]:
            xc = x2_spec.conj_physical().unsqueeze(-2)
            gh = _skew_kernel_adjoint(irfft((xc * gz_spec).sum(0), n=length), n).to(h.dtype)
        if needs[0]:
            gx_spec = gz_spec.mul_(h_spec.conj_physical_()).sum(-2)
            gx = _out(irfft(gx_spec, n=length)[..., :n].reshape(x.shape), x.dtype)
    return [gx, gg, gh]
