"""The op cases every generic test runs: each builds parameters for a shape and knows its public function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import surm_ops


@dataclass(frozen=True)
class Case:
    op: str                                   # registered name, e.g. "circulant_matmul"
    label: str                                # test id
    shapes: tuple[tuple[int, ...], ...]       # parameter shapes
    n_in: int
    call: Callable[..., torch.Tensor] | None = None  # (x, *params, backend) -> y when the public order differs

    def params(self, dtype=torch.float64, seed=0, requires_grad=False):
        gen = torch.Generator().manual_seed(seed)
        out = []
        for shape in self.shapes:
            p = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            out.append(p.requires_grad_(requires_grad))
        return out

    def x(self, lead=(5,), dtype=torch.float64, seed=1):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(*lead, self.n_in, generator=gen, dtype=torch.float64).to(dtype)

    def run(self, x, params, backend="auto"):
        if self.call is not None:
            return self.call(x, *params, backend=backend)
        return getattr(surm_ops, self.op)(x, *params, backend=backend)


def _toeplitz_square(x, col, backend):
    return surm_ops.toeplitz_matmul(x, col, backend=backend)


SMALL = [
    Case("circulant_matmul", "circulant-n1", ((1,),), 1),
    Case("circulant_matmul", "circulant-n2", ((2,),), 2),
    Case("circulant_matmul", "circulant-n7", ((7,),), 7),
    Case("circulant_matmul", "circulant-n16", ((16,),), 16),
    Case("circulant_matmul", "block-2x3x4", ((2, 3, 4),), 12),
    Case("circulant_matmul", "block-1x2x5", ((1, 2, 5),), 10),
    Case("circulant_matmul", "block-3x1x1", ((3, 1, 1),), 1),
    Case("skew_circulant_matmul", "skew-n1", ((1,),), 1),
    Case("skew_circulant_matmul", "skew-n2", ((2,),), 2),
    Case("skew_circulant_matmul", "skew-n7", ((7,),), 7),
    Case("skew_circulant_matmul", "skew-n16", ((16,),), 16),
    Case("toeplitz_matmul", "toeplitz-1x1", ((1,), (1,)), 1),
    Case("toeplitz_matmul", "toeplitz-3x7", ((3,), (7,)), 7),
    Case("toeplitz_matmul", "toeplitz-7x3", ((7,), (3,)), 3),
    Case("toeplitz_matmul", "toeplitz-square-row-none", ((6,),), 6, _toeplitz_square),
    Case("ldr_matmul", "ldr-r1-n1", ((1, 1), (1, 1)), 1),
    Case("ldr_matmul", "ldr-r2-n7", ((2, 7), (2, 7)), 7),
    Case("ldr_matmul", "ldr-r3-n16", ((3, 16), (3, 16)), 16),
    Case("kronecker_matmul", "kron-1x1-1x1", ((1, 1), (1, 1)), 1),
    Case("kronecker_matmul", "kron-2x3-4x5", ((2, 3), (4, 5)), 15),
    Case("kronecker_matmul", "kron-3x2-2x3", ((3, 2), (2, 3)), 6),
    Case("svd_matmul", "svd-5x7-k3", ((5, 3), (3,), (7, 3)), 7),
    Case("svd_matmul", "svd-1x1-k1", ((1, 1), (1,), (1, 1)), 1),
    Case("svd_matmul", "svd-per-token", ((6, 2), (5, 2), (4, 2)), 4),
]

LARGE = [
    Case("circulant_matmul", "circulant-n768", ((768,),), 768),
    Case("circulant_matmul", "circulant-n1001", ((1001,),), 1001),
    Case("skew_circulant_matmul", "skew-n1001", ((1001,),), 1001),
    Case("toeplitz_matmul", "toeplitz-768x1001", ((768,), (1001,)), 1001),
    Case("ldr_matmul", "ldr-r2-n768", ((2, 768), (2, 768)), 768),
    Case("circulant_matmul", "block-3x4x64", ((3, 4, 64),), 256),
]


# Sizes that reach every tile, block and loop trip of the Triton kernels at training shapes: 161 = 10 * 16 + 1
# features (masked edges), 40 and 300 tokens (decode tiles are <= 16 tokens; training tiles are 64 tokens, 300 gives
# five token blocks and diag_corr's gradient several 32-token slices), svd at 768 -> 1024 (24 K steps, 16 output
# steps) and ranks 16 and 64, Kronecker (32 x 32) x (24 x 24).
TILE_TOKENS = (40, 300)


def tiled(tokens: int) -> list[Case]:
    """Training-size cases for ``tokens`` tokens (per-token s needs the count)."""
    return [
        Case("circulant_matmul", "circulant-n161", ((161,),), 161),
        Case("skew_circulant_matmul", "skew-n161", ((161,),), 161),
        Case("circulant_matmul", "block-2x3x48", ((2, 3, 48),), 144),
        Case("toeplitz_matmul", "toeplitz-161x97", ((161,), (97,)), 97),
        Case("ldr_matmul", "ldr-r2-n161", ((2, 161), (2, 161)), 161),
        Case("kronecker_matmul", "kron-32x32-24x24", ((32, 32), (24, 24)), 768),
        Case("svd_matmul", "svd-768x1024-k16", ((1024, 16), (16,), (768, 16)), 768),
        Case("svd_matmul", "svd-768x1024-k64", ((1024, 64), (64,), (768, 64)), 768),
        Case("svd_matmul", "svd-768x1024-k16-per-token", ((1024, 16), (tokens, 16), (768, 16)), 768),
    ]


def per_token(case: Case) -> bool:
    return case.label.startswith("svd") and case.label.endswith("per-token")


def ids(cases):
    return [c.label for c in cases]
