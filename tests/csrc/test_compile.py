"""Every csrc source compiles with nvcc for sm_80 and sm_90 against this torch's headers, as the CUDA build would
(no GPU and no CUDA torch needed: the CPU wheel's headers suffice with C10_CUDA_NO_CMAKE_CONFIGURE_FILE).

Treated as errors beyond nvcc's own: calls across execution spaces, register spills and local memory in any kernel
(ptxas), and any warning whose location is in csrc/. Nothing is cached: each run compiles from scratch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
SOURCES = sorted(p for ext in ("*.cu", "*.cpp") for p in CSRC.rglob(ext))
ARCHS = ("80", "90")


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _std() -> str:
    # torch >= 2.10's headers need C++20 (its cpp_extension passes -std=c++20); csrc itself is C++17, which the
    # host emulation build (g++ -std=c++17) checks.
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return "-std=c++20" if (major, minor) >= (2, 10) else "-std=c++17"


def nvcc_command(source: Path, out: Path) -> list[str]:
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], str(CSRC)]
    cmd = [_nvcc(), "-c", str(source), "-o", str(out), _std(), "-O3", "-lineinfo",
           "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DTORCH_EXTENSION_NAME=_C", *cpp_extension.COMMON_NVCC_FLAGS,
           *(f"-I{i}" for i in includes)]
    if source.suffix == ".cu":
        cmd += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
        cmd += ["-Werror", "cross-execution-space-call", "-Xptxas", "-v,-warn-spills,-warn-lmem-usage,-Werror"]
    return cmd


def test_there_are_sources():
    assert any(p.suffix == ".cu" for p in SOURCES) and (CSRC / "registration.cpp") in SOURCES


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(CSRC)) for p in SOURCES])
def test_compiles_for_sm80_and_sm90(source, tmp_path):
    done = subprocess.run(nvcc_command(source, tmp_path / "out.o"), capture_output=True, text=True, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    ours = [line for line in log.splitlines()
            if re.search(r"warning", line, re.I) and (str(CSRC) in line or "csrc/" in line or "ptxas" in line)]
    assert not ours, "\n".join(ours)
    if source.suffix == ".cu":  # ptxas -v names the target of every kernel it compiled
        for arch in ARCHS:
            assert f"for 'sm_{arch}'" in log, f"no kernel was compiled for sm_{arch}"
