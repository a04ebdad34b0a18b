"""Shared Triton machinery of the structured products: tiles of M generated on the fly and fed to ``tl.dot``.

Two kernels serve every Toeplitz-family op (circulant, block-circulant, skew-circulant, Toeplitz, LDR), the
Kronecker product and the fused adapted linear layer:

``structured_mm``  ``y = x @ (W + M)^T (+ bias)`` with M's (BLOCK_K x BLOCK_N) tiles built in registers from the
    parameters (``W`` and ``bias`` optional). M never touches HBM. The same kernel gives ``grad_x = grad_y @ M``
    (fused: ``grad_y @ (W + M)``) with the transposed generator.
``diag_corr``      the parameter gradient of a (block-)Toeplitz M: sums of ``grad_y^T x`` along each diagonal of
    each block. Tiles on one block-diagonal share their diagonals, so each program accumulates one block-diagonal
    over a slice of the tokens with ``tl.dot`` into one (T x T) tile; the tiles are written to a buffer and folded
    to diagonals in a fixed order on the host side (deterministic: no atomics).

A (block-)Toeplitz M is described by its diagonals ``e: (p, q, bo + bi - 1)``: block (P, Q) is bo x bi and
``M[P*bo + i, Q*bi + j] = e[P, Q, i - j + bi - 1]`` (:func:`surm_ops.structure.from_diagonals`). A plain
Toeplitz matrix is p = q = 1; a circulant is a Toeplitz matrix with ``e = cat(c[1:], c)``.

Numerics (the README's "Numerics of the triton backend" says what a user sees):
- Inputs are upcast right after loading (the interpreter computes bfloat16 arithmetic wrongly) and every product
  accumulates in float32 (float64 for float64 inputs).
- Where every streamed input is half, a product runs on tensor cores with half operands, as a plain half matmul
  would; otherwise as three TF32 products (``tf32x3``, about float32's accuracy) or exactly in float64.
- M's tiles are rounded to half relative to M's own size, never after adding W: the fused layer computes
  ``x W^T`` and ``x M^T`` as two products into separate accumulators, so an update far below W's ulp survives
  (adding first would compute a merged half-precision model instead). float16 tiles are scaled by a power of two
  that brings M's largest element near 1 (undone exactly on the accumulator), so a small float32 update does not
  fall into float16's subnormals.
- Products whose result feeds a parameter gradient can be asked for full-precision operands (``exact``).
- Under the interpreter the half operand rounding is emulated (round to half, multiply in float32), so CPU tests
  see the GPU's numerics; ``SURM_TRITON_EMULATE_ROUNDING=0`` turns that off.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from surm_ops.structure import diagonal_sums

TOEPLITZ = 0
KRONECKER = 1

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


ENV_EMULATE = "SURM_TRITON_EMULATE_ROUNDING"


def interpreting() -> bool:
    """Whether Triton runs through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def emulating() -> bool:
    """Whether the interpreter rounds half operands as a GPU's tensor cores would (default on; the interpreter's own
    half multiplication is wrong, so emulation rounds to half and multiplies in float32)."""
    return interpreting() and os.environ.get(ENV_EMULATE, "1") != "0"


def dot_dtype(*inputs: torch.Tensor, acc: torch.dtype) -> tl.dtype:
    """The operand dtype of ``tl.dot``: x's half dtype when every streamed input shares it and the accumulator is
    float32 (tensor cores, the precision of a plain half matmul), else the accumulator's. Under the interpreter the
    half dtype stands only where its rounding is emulated (:func:`emulating`)."""
    dts = {t.dtype for t in inputs}
    half = next(iter(dts)) if len(dts) == 1 else None
    if half in (torch.float16, torch.bfloat16) and acc == torch.float32 and (emulating() or not interpreting()):
        return _TL_DTYPE[half]
    return _TL_DTYPE[acc]


def half_dot(dot: tl.dtype) -> bool:
    return dot in (tl.float16, tl.bfloat16)


def precision(acc: torch.dtype) -> str:
    """``input_precision`` of a full-precision ``tl.dot``: float32 as three TF32 products on tensor cores (about
    float32's accuracy; plain "ieee" runs on the FMA units and spills registers at these tiles), float64 exact."""
    return "ieee" if acc == torch.float64 else "tf32x3"


def streamed(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """A streamed input as the kernels take it: float64 products need float64 operands (triton 3.6 cannot lower a
    half load converted to a float64 MMA operand), so a half x with float64 parameters is upcast first."""
    return t.to(acc) if acc == torch.float64 else t


def on_device(t: torch.Tensor):
    """Launch on t's GPU with its current stream (Triton launches on the *current* device, which need not be x's)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@dataclass(frozen=True)
class Toeplitz:
    """The diagonals of a block-Toeplitz M, stacked over ``groups``: e (groups, p, q, bo + bi - 1), contiguous."""

    e: torch.Tensor
    bo: int
    bi: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.e.shape[1] * self.bo, self.e.shape[2] * self.bi

    def transposed(self) -> Toeplitz:
        """The generator of M^T: block (Q, P) of M^T is the transpose of block (P, Q), whose diagonals reverse."""
        return Toeplitz(self.e.transpose(1, 2).flip(-1).contiguous(), self.bi, self.bo)


@dataclass(frozen=True)
class Kronecker:
    """``M = kron(a, b)``: a (p, q), b (u, v), contiguous."""

    a: torch.Tensor
    b: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape[0] * self.b.shape[0], self.a.shape[1] * self.b.shape[1]

    def transposed(self) -> Kronecker:
        return Kronecker(self.a.T.contiguous(), self.b.T.contiguous())


@triton.jit
def cast(v, DT: tl.constexpr, EMULATE: tl.constexpr):
    """``v.to(DT)`` rounded to nearest even, as a GPU converts; the interpreter truncates float32 to bfloat16, so
    under emulation the rounding is done on the bits first (finite values: a tile holds no NaN it would not
    propagate anyway)."""
    if EMULATE:
        if DT == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
    return v.to(DT)


@triton.jit
def mma(a, b, acc, ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr):
    """``acc + a @ b`` with operands in DOT: full precision (``PRECISION``) when DOT is the accumulator's dtype, half
    tensor-core operands otherwise; EMULATE rounds the operands to DOT and multiplies in ACC (the interpreter)."""
    if DOT == ACC:
        out = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    else:
        # One tl.dot for the GPU and its emulation, so the CPU tests check the call a GPU makes.
        if EMULATE:
            a = cast(a, DOT, EMULATE).to(ACC)
            b = cast(b, DOT, EMULATE).to(ACC)
        else:
            a = a.to(DOT)
            b = b.to(DOT)
        out = tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC)
    return out


@triton.jit
def _m_tile(e_ptr, a_ptr, b_ptr, offs_n, offs_k, n_out, n_in, q, bo, bi, u, v, GEN: tl.constexpr):
    """The (BLOCK_K x BLOCK_N) tile of M^T at inputs ``offs_k`` and outputs ``offs_n`` (zero outside M)."""
    i = offs_n[None, :]
    j = offs_k[:, None]
    mask = (i < n_out) & (j < n_in)
    if GEN == 0:
        idx = ((i // bo) * q + j // bi) * (bo + bi - 1) + (i % bo) - (j % bi) + (bi - 1)
        tile = tl.load(e_ptr + idx, mask=mask, other=0.0)
    else:
        tile = (tl.load(a_ptr + (i // u) * q + j // v, mask=mask, other=0.0)
                * tl.load(b_ptr + (i % u) * v + j % v, mask=mask, other=0.0))
    return tile


@triton.jit
def structured_mm_kernel(
        x_ptr, e_ptr, a_ptr, b_ptr, w_ptr, bias_ptr, mscale_ptr, y_ptr,
        n_tok, n_out, n_in, q, bo, bi, u, v,
        stride_xg, stride_xgi, stride_xm, stride_eg, stride_egi, stride_wn, stride_wk, stride_yg, stride_ym,
        G_IN: tl.constexpr, GEN: tl.constexpr, HAS_W: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
        MSCALE: tl.constexpr,
        ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``y[g] = sum_gi x[g, gi] @ (W + M[g, gi])^T + bias``; grid (token blocks x output blocks, g). SPLIT: W's
    and M's products accumulate apart (half operands: M rounded relative to its own size); MSCALE: M's tiles are
    multiplied by ``*mscale_ptr`` (a power of two) and the accumulator divided by it."""
    # One flat axis (grid axes 1 and 2 stop at 65535) in groups of GROUP_M token blocks: the programs running
    # together share their x rows and walk the output columns, so x is read from HBM about once.
    pid = tl.program_id(0)
    pid_g = tl.program_id(1)
    n_blocks = tl.cdiv(n_out, BLOCK_N)
    first_m = (pid // (GROUP_M * n_blocks)) * GROUP_M
    group = tl.minimum(tl.cdiv(n_tok, BLOCK_M) - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_blocks)) % group
    pid_n = (pid % (GROUP_M * n_blocks)) // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_m = offs_m.to(tl.int64)  # tokens x features can pass 2^31 elements
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_n = offs_n.to(tl.int64)  # a large weight can pass 2^31 elements too
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)   # W's product (split only)
    acc_m = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)  # M's product, or (W + M)'s when not split
    if MSCALE:
        ms = tl.load(mscale_ptr).to(ACC)
    # Group bases advance by pointer increments: gi * stride in int32 would overflow for LDR's (r, tokens, n).
    x_base = x_ptr + pid_g.to(tl.int64) * stride_xg
    e_base = e_ptr + pid_g * stride_eg
    for _ in range(G_IN):
        for k0 in range(0, n_in, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xt = tl.load(x_base + rows_m[:, None] * stride_xm + offs_k[None, :],
                         mask=(offs_m[:, None] < n_tok) & (offs_k[None, :] < n_in), other=0.0).to(ACC)
            mt = _m_tile(e_base, a_ptr, b_ptr, offs_n, offs_k, n_out, n_in, q, bo, bi, u, v, GEN).to(ACC)
            if MSCALE:
                mt = mt * ms
            if HAS_W:
                wt = tl.load(w_ptr + cols_n[None, :] * stride_wn + offs_k[:, None].to(tl.int64) * stride_wk,
                             mask=(offs_n[None, :] < n_out) & (offs_k[:, None] < n_in), other=0.0).to(ACC)
                if SPLIT:
                    acc = mma(xt, wt, acc, ACC, DOT, PRECISION, EMULATE)
                else:
                    mt = wt + mt
            acc_m = mma(xt, mt, acc_m, ACC, DOT, PRECISION, EMULATE)
        x_base += stride_xgi
        e_base += stride_egi
    if MSCALE:
        acc_m = acc_m / ms  # a power of two: exact
    acc += acc_m
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < n_out, other=0.0).to(ACC)[None, :]
    tl.store(y_ptr + pid_g.to(tl.int64) * stride_yg + rows_m[:, None] * stride_ym + offs_n[None, :],
             cast(acc, y_ptr.dtype.element_ty, EMULATE), mask=(offs_m[:, None] < n_tok) & (offs_n[None, :] < n_out))


@triton.jit
def diag_corr_kernel(
        gy_ptr, x_ptr, out_ptr,
        n_tok, q, bo, bi, chunk,
        stride_gyg, stride_gym, stride_xg, stride_xm, stride_og,
        ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr, T: tl.constexpr,
        BLOCK_B: tl.constexpr):
    """One (T x T) tile: the sum of ``gy[:, rows]^T @ x[:, cols]`` over the tiles (rows, cols) of one block-diagonal
    of block (P, Q), over one slice of the tokens. Grid (p * q * n_diagonals, token slices, groups)."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_g = tl.program_id(2)
    n_ti = tl.cdiv(bo, T)
    n_tj = tl.cdiv(bi, T)
    n_diag = n_ti + n_tj - 1
    block = pid // n_diag
    delta = pid % n_diag - (n_tj - 1)
    row0 = (block // q) * bo
    col0 = (block % q) * bi
    tok_lo = pid_s * chunk
    tok_hi = tl.minimum(n_tok, tok_lo + chunk)
    offs_t = tl.arange(0, T)
    acc = tl.zeros((T, T), dtype=ACC)
    for ti in range(tl.maximum(0, delta), tl.minimum(n_ti, n_tj + delta)):
        rows = ti * T + offs_t
        cols = (ti - delta) * T + offs_t
        for t0 in range(tok_lo, tok_hi, BLOCK_B):
            toks = t0 + tl.arange(0, BLOCK_B)
            lines = toks.to(tl.int64)
            g = tl.load(gy_ptr + pid_g.to(tl.int64) * stride_gyg + lines[:, None] * stride_gym + (row0 + rows)[None, :],
                        mask=(toks[:, None] < tok_hi) & (rows[None, :] < bo), other=0.0).to(ACC)
            xt = tl.load(x_ptr + pid_g.to(tl.int64) * stride_xg + lines[:, None] * stride_xm + (col0 + cols)[None, :],
                         mask=(toks[:, None] < tok_hi) & (cols[None, :] < bi), other=0.0).to(ACC)
            acc = mma(tl.trans(g), xt, acc, ACC, DOT, PRECISION, EMULATE)
    # int64: tiles x slices x T^2 passes 2^31 for long blocks
    tile = pid_g.to(tl.int64) * stride_og + (pid.to(tl.int64) * tl.num_programs(1) + pid_s) * T * T
    tl.store(out_ptr + tile + offs_t[:, None] * T + offs_t[None, :], acc)


def rows(t: torch.Tensor) -> torch.Tensor:
    """t (..., n) as a contiguous (tokens, n) matrix, the layout every launcher takes."""
    r = t.reshape(-1, t.shape[-1])
    # is_contiguous() ignores the strides of size-1 dimensions: (T, 1) with strides (1, T) passes it.
    return r if r.is_contiguous() and r.stride(-1) == 1 else r.clone(memory_format=torch.contiguous_format)


def mm_blocks(n_tok: int, half: bool) -> dict[str, int]:
    """Tiles of structured_mm. Fixed, untuned choices (no GPU has timed them yet): 16-row tiles for decode-sized
    batches keep one launch cheap; tl.dot needs every tile dimension >= 16 on a GPU. 64 x 64 tiles get 8 warps and
    full-precision products (three TF32 MMAs) a K step of 16: otherwise some variants spill registers on sm_90 or
    sm_80 (tests/kernels checks every variant for spills)."""
    block_k = 32 if half else 16
    if n_tok <= 16:
        # Decode: each program walks all of n_in, so narrower output tiles (more programs: 128 at n_out = 4096,
        # about one per SM) and longer K steps (half the loop trips) shorten the serial chain.
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=2 * block_k, GROUP_M=8, num_warps=4)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=block_k, GROUP_M=8, num_warps=8)


def _half_range_scale(gen: Toeplitz | Kronecker) -> torch.Tensor:
    """A power of two s with max|M| * s in [0.5, 1), as a one-element tensor (no host sync): float16 operands of
    a young adapter (|M| ~ 1e-5) would otherwise be subnormal, with a few bits of precision, or 0."""
    if isinstance(gen, Toeplitz):
        amax = gen.e.abs().amax()
    else:
        amax = gen.a.abs().amax() * gen.b.abs().amax()
    _, exp = torch.frexp(amax.float())
    return torch.ldexp(torch.ones_like(amax, dtype=torch.float32), -exp).reshape(1)


def structured_mm(x: torch.Tensor, gen: Toeplitz | Kronecker, out_dtype: torch.dtype, *,
                  groups_out: int = 1, sum_groups: bool = False, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, acc: torch.dtype = torch.float32, exact: bool = False
                  ) -> torch.Tensor:
    """``x @ (weight + M)^T + bias`` for x (tokens, n_in) -> (tokens, n_out).

    Groups (LDR's r terms, Toeplitz generators only): with ``groups_out = r`` and x 2-D, returns (r, tokens, n_out),
    ``y[g] = x @ M[g]^T``; with ``sum_groups`` and x (r, tokens, n_in), returns ``sum_g x[g] @ M[g]^T``.
    ``exact``: full-precision operands even for half x (a product whose result feeds a parameter gradient).
    """
    n_out, n_in = gen.shape
    x = streamed(x, acc)
    weight = streamed(weight, acc) if weight is not None else None
    xs = x if x.ndim == 3 else x.unsqueeze(0)
    assert xs.stride(-1) == 1
    n_tok = xs.shape[1]
    g_out = 1 if sum_groups else groups_out
    g_in = xs.shape[0] if sum_groups else 1
    # float64 results are rounded to a half out_dtype by torch: the interpreter's float64 -> bfloat16 is wrong.
    y = torch.empty(g_out, n_tok, n_out, device=x.device, dtype=torch.float64 if acc == torch.float64 else out_dtype)
    if isinstance(gen, Toeplitz):
        e, a, b = gen.e, gen.e, gen.e
        p, q = gen.e.shape[1:3]
        geom = (q, gen.bo, gen.bi, 1, 1)
        stride_eg = gen.e.stride(0) if gen.e.shape[0] > 1 else 0
        se = (0, stride_eg) if sum_groups else (stride_eg, 0)
        kind = TOEPLITZ
    else:
        e, a, b = gen.a, gen.a, gen.b
        geom = (gen.a.shape[1], 1, 1, gen.b.shape[0], gen.b.shape[1])
        se = (0, 0)
        kind = KRONECKER
    sx = (0, xs.stride(0)) if sum_groups else (0, 0)
    w = weight if weight is not None else e
    dot = _TL_DTYPE[acc] if exact else dot_dtype(x, *(() if weight is None else (weight,)), acc=acc)
    mscale = _half_range_scale(gen) if dot == tl.float16 else None
    tiles = mm_blocks(n_tok, half=half_dot(dot))
    grid = (triton.cdiv(n_tok, tiles["BLOCK_M"]) * triton.cdiv(n_out, tiles["BLOCK_N"]), g_out)
    bias = bias.contiguous() if bias is not None else None
    with on_device(x):
        structured_mm_kernel[grid](
            xs, e, a, b, w, bias if bias is not None else e, mscale if mscale is not None else e, y,
            n_tok, n_out, n_in, *geom,
            *sx, xs.stride(1), *se, w.stride(0) if weight is not None else 0, w.stride(1) if weight is not None else 0,
            y.stride(0), y.stride(1),
            G_IN=g_in, GEN=kind, HAS_W=weight is not None, SPLIT=weight is not None and half_dot(dot),
            HAS_BIAS=bias is not None, MSCALE=mscale is not None,
            ACC=_TL_DTYPE[acc], DOT=dot, PRECISION=precision(acc), EMULATE=emulating(), **tiles)
    y = y.to(out_dtype)
    return y if groups_out > 1 else y[0]


def corr_warps(t: int) -> int:
    """64 x 64 accumulator tiles spill with 4 warps in float32/float64 on sm_90; 8 hold them in registers."""
    return 8 if t == 64 else 4


def _tile(bo: int, bi: int, blocked: bool, half: bool) -> int:
    """The diagonal tile: as large as tensor cores like, dividing the blocks when there are several. Full-precision
    products (three TF32 MMAs per product) stop at 32: 64 x 64 spills registers on sm_80 even with 8 warps."""
    for t in (64, 32, 16) if half else (32, 16):
        if (bo % t == 0 and bi % t == 0) or (not blocked and min(bo, bi) >= t):
            return t
    return 16


def diag_corr(gy: torch.Tensor, x: torch.Tensor, p: int, q: int, bo: int, bi: int,
              acc: torch.dtype = torch.float32) -> torch.Tensor:
    """Diagonal sums of ``gy^T x`` per block: gy (tokens, p*bo) or (g, tokens, p*bo), x likewise with q*bi
    (either may be 2-D and shared by the groups) -> (g, p, q, bo + bi - 1) in ``acc``."""
    gy, x = streamed(gy, acc), streamed(x, acc)
    groups = max(gy.shape[0] if gy.ndim == 3 else 1, x.shape[0] if x.ndim == 3 else 1)
    gys = gy if gy.ndim == 3 else gy.unsqueeze(0)
    xs = x if x.ndim == 3 else x.unsqueeze(0)
    assert gys.stride(-1) == 1 and xs.stride(-1) == 1
    n_tok = xs.shape[1]
    dot = dot_dtype(gy, x, acc=acc)
    t = _tile(bo, bi, p * q > 1, half=half_dot(dot))
    n_ti, n_tj = triton.cdiv(bo, t), triton.cdiv(bi, t)
    n_diag = n_ti + n_tj - 1
    block_b = 32
    # Enough token slices to fill a GPU several times over, never slices shorter than one token block.
    slices = max(1, min(triton.cdiv(n_tok, block_b), triton.cdiv(512, p * q * n_diag * groups)))
    chunk = triton.cdiv(triton.cdiv(n_tok, slices), block_b) * block_b
    slices = triton.cdiv(n_tok, chunk)
    part = torch.empty(groups, p * q * n_diag, slices, t, t, device=x.device, dtype=acc)
    with on_device(x):
        diag_corr_kernel[(p * q * n_diag, slices, groups)](
            gys, xs, part, n_tok, q, bo, bi, chunk,
            gys.stride(0) if gys.shape[0] > 1 else 0, gys.stride(1),
            xs.stride(0) if xs.shape[0] > 1 else 0, xs.stride(1), part.stride(0),
            ACC=_TL_DTYPE[acc], DOT=dot, PRECISION=precision(acc), EMULATE=emulating(), T=t, BLOCK_B=block_b,
            num_warps=corr_warps(t))
    # Fold: tile diagonals -> block-diagonal vectors (stride t, length 2t - 1, overlapping by t - 1).
    sums = torch.nn.functional.pad(diagonal_sums(part.sum(2)), (0, 1)).reshape(groups, p * q, n_diag, 2, t)
    folded = sums.new_zeros(groups, p * q, n_diag + 1, t)
    folded[:, :, :-1] += sums[:, :, :, 0]
    folded[:, :, 1:] += sums[:, :, :, 1]
    start = n_tj * t - bi  # masked columns of the last partial tile shift the origin
    return folded.reshape(groups, p, q, -1)[..., start:start + bo + bi - 1]


def toeplitz_grads(grad: torch.Tensor, x: torch.Tensor, gen: Toeplitz, need_x: bool, need_e: bool,
                   acc: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward of ``x @ M^T`` for one (block-)Toeplitz generator: grad_x (x's shape and dtype) and the
    gradient of its diagonals ``e`` (p, q, bo + bi - 1) in ``acc``; each ``None`` where not needed."""
    g2 = rows(grad)
    gx = structured_mm(g2, gen.transposed(), x.dtype, acc=acc).reshape(x.shape) if need_x else None
    ge = None
    if need_e:
        p, q = gen.e.shape[1:3]
        ge = diag_corr(g2, rows(x), p, q, gen.bo, gen.bi, acc=acc)[0]
    return gx, ge
