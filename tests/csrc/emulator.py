"""Python side of tests/csrc/host/emulate.cpp: builds it with g++ and calls it through binary files.

``FakeOps`` has the signatures of ``torch.ops.surm_ops_C`` and runs the emulated kernels, so the Python glue of the
cuda backend (surm_ops/ops/_cuda.py) can be tested end to end on the CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("host") / "emulate.cpp"
# Above every real device's opt-in limit, so host tests exercise the kernels' own buffer limits; tests that need
# the P tiling of the gradient pass a smaller one.
DEFAULT_SMEM = 227 * 1024


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def build(out_dir: Path) -> Path:
    exe = out_dir / "emulate"
    cmd = [compiler(), "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{ROOT / 'csrc'}",
           str(SOURCE), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


class Emulator:
    def __init__(self, exe: Path):
        self.exe = exe
        self.tmp = Path(tempfile.mkdtemp(prefix="surm-emulate-"))

    def run(self, *args) -> str:
        done = subprocess.run([str(self.exe), *map(str, args)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"emulate {' '.join(map(str, args))}: {done.stderr.strip()}")
        return done.stdout

    def plan(self, n: int) -> list[int] | None:
        _, stages, *radices = map(int, self.run("plan", n).split())
        return None if stages < 0 else radices

    def config(self, rows, p, q, length, in_len, out_len, smem_limit) -> dict[str, int]:
        out = self.run("config", rows, p, q, length, in_len, out_len, smem_limit)
        return {k: int(v) for k, v in (line.split() for line in out.splitlines())}

    def once(self, threads: int, rounds: int, devices: int) -> dict[str, int]:
        """How often each (kernel, device) setup ran under csrc/common/once.h (see emulate.cpp's run_once)."""
        out = self.run("once", threads, rounds, devices)
        return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}

    def fft(self, z: np.ndarray, order: int = 0) -> np.ndarray:
        """Forward FFT of each row of z (batches, n) complex."""
        batches, n = z.shape
        src, dst = self.tmp / "fft.in", self.tmp / "fft.out"
        z.astype(np.complex64).tofile(src)
        self.run("fft", n, batches, order, src, dst)
        return np.fromfile(dst, dtype=np.complex64).reshape(batches, n)

    def _header(self, rows, p, q, length, in_len, out_len) -> bytes:
        return np.array([rows, p, q, length, in_len, out_len], dtype=np.int64).tobytes()

    def forward(self, x: np.ndarray, spec: np.ndarray, in_len: int, out_len: int, order: int = 0) -> np.ndarray:
        """conv_forward: x (rows, q*in_len) float32, spec (p, q, L) complex -> y (rows, p*out_len) float32."""
        p, q, length = spec.shape
        src, dst = self.tmp / "fwd.in", self.tmp / "fwd.out"
        src.write_bytes(self._header(x.shape[0], p, q, length, in_len, out_len)
                        + np.ascontiguousarray(x, dtype=np.float32).tobytes()
                        + np.ascontiguousarray(spec, dtype=np.complex64).tobytes())
        self.run("forward", order, src, dst)
        return np.fromfile(dst, dtype=np.float32).reshape(x.shape[0], p * out_len)

    def grad(self, x, g, length, in_len, out_len, order=0, smem_limit=DEFAULT_SMEM) -> np.ndarray:
        """conv_grad_spectrum: -> partials (chunks, p, q, L//2 + 1) complex64."""
        p, q = g.shape[1] // out_len, x.shape[1] // in_len
        src, dst = self.tmp / "grad.in", self.tmp / "grad.out"
        src.write_bytes(self._header(x.shape[0], p, q, length, in_len, out_len)
                        + np.ascontiguousarray(x, dtype=np.float32).tobytes()
                        + np.ascontiguousarray(g, dtype=np.float32).tobytes())
        out = self.run("grad", order, smem_limit, src, dst)
        info = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
        return np.fromfile(dst, dtype=np.complex64).reshape(info["chunks"], p, q, length // 2 + 1)


class FakeOps:
    """``torch.ops.surm_ops_C`` with the emulated kernels: same arguments, same results (float32 kernel math; the
    output rounded to x's dtype as the kernel's store does)."""

    def __init__(self, emulator: Emulator, order: int = 0):
        self.emulator, self.order, self.calls = emulator, order, []

    def conv_forward(self, x, spec, in_len, out_len):
        self.calls.append("conv_forward")
        assert x.is_contiguous() and x.ndim == 2 and spec.dtype == torch.float32 and spec.is_contiguous()
        spec_c = torch.view_as_complex(spec).numpy()
        y = self.emulator.forward(x.float().numpy(), spec_c, in_len, out_len, self.order)
        return torch.from_numpy(y).to(x.dtype)

    def conv_grad_spectrum(self, x, grad, length, in_len, out_len):
        self.calls.append("conv_grad_spectrum")
        assert x.is_contiguous() and grad.is_contiguous() and x.dtype == grad.dtype
        parts = self.emulator.grad(x.float().numpy(), grad.float().numpy(), length, in_len, out_len, self.order)
        return torch.view_as_real(torch.from_numpy(parts)).contiguous()
