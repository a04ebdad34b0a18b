"""Triton backend of ``svd_matmul``: ``y = ((x v) * s) u^T`` as two skinny products in one kernel.

Each program owns a block of tokens: it reduces ``x @ v`` over n_in into a (BLOCK_M x k) tile that never leaves
registers, scales it by s (shared or per token), and streams it against u^T block by block. x is read once and y
written once; the rank-k intermediate costs no HBM traffic. ``grad_x = ((grad u) * s) v^T`` is the same kernel
with u and v swapped; it also writes ``grad u`` (pre-scale), which the parameter gradients reuse. Those
parameter gradients are reductions over the tokens and run as plain (cuBLAS) matmuls.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from surm_ops.kernels._structured import (
    _TL_DTYPE,
    cast,
    dot_dtype,
    emulating,
    mma,
    on_device,
    precision,
    rows,
    streamed,
)
from surm_ops.structure import compute_dtype


@triton.jit
def svd_kernel(x_ptr, v_ptr, s_ptr, u_ptr, y_ptr, h_ptr,
               n_tok, n_in, n_out, k, stride_sm,
               STORE_H: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, DOT2: tl.constexpr,
               PRECISION: tl.constexpr, EMULATE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """x (n_tok, n_in), v (n_in, k), s (n_tok or 1, k) with row stride ``stride_sm``, u (n_out, k), all contiguous;
    y (n_tok, n_out); h (n_tok, k) receives ``x v`` when STORE_H."""
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_m = offs_m.to(tl.int64)  # tokens x features can pass 2^31 elements
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m[:, None] < n_tok
    r_mask = offs_r < k
    h = tl.zeros((BLOCK_M, BLOCK_R), dtype=ACC)
    for k0 in range(0, n_in, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + rows_m[:, None] * n_in + offs_k[None, :], mask=m_mask & (offs_k[None, :] < n_in),
                     other=0.0).to(ACC)
        vt = tl.load(v_ptr + offs_k[:, None] * k + offs_r[None, :], mask=(offs_k[:, None] < n_in) & r_mask[None, :],
                     other=0.0).to(ACC)
        h = mma(xt, vt, h, ACC, DOT, PRECISION, EMULATE)
    if STORE_H:
        tl.store(h_ptr + rows_m[:, None] * k + offs_r[None, :], h, mask=m_mask & r_mask[None, :])
    h = h * tl.load(s_ptr + rows_m[:, None] * stride_sm + offs_r[None, :], mask=m_mask & r_mask[None, :],
                    other=0.0).to(ACC)
    for n0 in range(0, n_out, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        ut = tl.load(u_ptr + offs_n[None, :] * k + offs_r[:, None], mask=(offs_n[None, :] < n_out) & r_mask[:, None],
                     other=0.0).to(ACC)
        y = mma(h, ut, tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC), ACC, DOT2, PRECISION, EMULATE)
        tl.store(y_ptr + rows_m[:, None] * n_out + offs_n[None, :], cast(y, y_ptr.dtype.element_ty, EMULATE),
                 mask=m_mask & (offs_n[None, :] < n_out))


def _second_dot(dot: tl.dtype, acc: torch.dtype) -> tl.dtype:
    """The (x v) * s intermediate is not an input of the user's: rounding it to float16 could overflow (a large
    singular value times an n_in-long sum passes 65504), so only bfloat16 keeps a half second product."""
    return _TL_DTYPE[acc] if dot == tl.float16 else dot


def _scales(s: torch.Tensor, lead: torch.Size, k: int, dt: torch.dtype) -> tuple[torch.Tensor, int]:
    """s as a contiguous (1, k) row (shared) or (tokens, k) matrix (per token), and its row stride."""
    s_ = s.to(dt)
    if s_.ndim <= 1 or s_.shape[:-1].numel() == 1:
        return s_.reshape(-1).expand(k).contiguous().reshape(1, k), 0
    return rows(s_.expand(*lead, k)), k


def blocks(n_tok: int, k: int, acc: torch.dtype, wide: bool) -> dict[str, int]:
    """Tile sizes (fixed, untuned: no GPU has timed them), chosen so that every variant compiles without register
    spills and within the 99 KB of shared memory that sm_86, sm_89 and sm_120 give a block (tests/kernels compiles
    each launch for sm_80 and sm_90 and checks). ``wide``: a product takes float32 operands, run as three tf32
    products, which needs about three times the registers of a half product: from rank 64 it gets narrower tiles."""
    block_r = max(16, triton.next_power_of_2(k))
    if acc == torch.float64:  # checking precision, not speed
        return dict(BLOCK_M=16, BLOCK_K=16, BLOCK_R=block_r, BLOCK_N=32, num_warps=4)
    if n_tok <= 16 or (wide and block_r > 64):
        block_m = 16
    else:
        block_m = 32 if block_r > 64 or (wide and block_r == 64) else 64
    block_n = 32 if wide and block_r > 64 else 64
    # 8 warps where the register tiles are large: with 4, rank 128 spills on sm_90.
    return dict(BLOCK_M=block_m, BLOCK_K=32, BLOCK_R=block_r, BLOCK_N=block_n, num_warps=4 if block_m == 16 else 8)


def _launch(x2: torch.Tensor, v: torch.Tensor, s2: torch.Tensor, stride_sm: int, u: torch.Tensor,
            out_dtype: torch.dtype, acc: torch.dtype, store_h: bool, dot: tl.dtype):
    """``((x2 v) * s2) u^T`` (and ``x2 v`` when ``store_h``); ``dot`` is the first product's operand dtype."""
    x2 = streamed(x2, acc)
    n_tok, n_in = x2.shape
    n_out, k = u.shape
    y = torch.empty(n_tok, n_out, device=x2.device, dtype=torch.float64 if acc == torch.float64 else out_dtype)
    h = torch.empty(n_tok, k, device=x2.device, dtype=acc) if store_h else y
    # The second product only ever feeds y (or grad x): its operands follow x's precision.
    dot2 = _second_dot(dot_dtype(x2, acc=acc), acc)
    tiles = blocks(n_tok, k, acc, wide=dot == _TL_DTYPE[acc] or dot2 == _TL_DTYPE[acc])
    with on_device(x2):
        svd_kernel[(triton.cdiv(n_tok, tiles["BLOCK_M"]),)](
            x2, v, s2, u, y, h, n_tok, n_in, n_out, k, stride_sm,
            STORE_H=store_h, ACC=_TL_DTYPE[acc], DOT=dot, DOT2=dot2, PRECISION=precision(acc),
            EMULATE=emulating(), **tiles)
    return y.to(out_dtype), (h if store_h else None)


def forward(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    dt = compute_dtype(x, u, s, v)
    s2, stride_sm = _scales(s, x.shape[:-1], u.shape[1], dt)
    x2 = rows(x)
    y, _ = _launch(x2, v.to(dt).contiguous(), s2, stride_sm, u.to(dt).contiguous(), x.dtype, dt, False,
                   dot_dtype(x2, acc=dt))
    return y.reshape(*x.shape[:-1], u.shape[0])


def backward(grad, x, u, s, v, needs):
    dt = compute_dtype(x, u, s, v)
    n_out, k = u.shape
    u_, v_ = u.to(dt).contiguous(), v.to(dt).contiguous()
    s2, stride_sm = _scales(s, x.shape[:-1], k, dt)
    g2 = rows(grad)
    # gw = grad @ u feeds the gradients of s and v: full-precision operands unless u is itself half like grad.
    gx, gw = _launch(g2, u_, s2, stride_sm, v_, x.dtype, dt, True, dot_dtype(g2, u, acc=dt))
    gu = gs = gv = None
    if needs[1] or needs[2]:
        t = rows(x).to(dt) @ v_
        if needs[2]:
            gs = (gw * t).reshape(*x.shape[:-1], k).sum_to_size(s.shape).to(s.dtype)
        if needs[1]:
            gu = (g2.to(dt).T @ (t * s2)).to(u.dtype)
    if needs[3]:
        gv = (rows(x).to(dt).T @ (gw * s2)).to(v.dtype)
    return [gx.reshape(x.shape) if needs[0] else None, gu, gs, gv]
