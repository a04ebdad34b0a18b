"""surm_ops/_toolkit.py: the CUDA toolkit is found behind an nvcc wrapper script, an explicit CUDA_HOME is checked,
and a missing toolkit is reported with every place looked at. Fake toolkits in tmp_path, no CUDA needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from surm_ops import _toolkit


def fake_toolkit(root: Path, cudart: bool = True) -> Path:
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ TOP={root}/bin/.."\n')
    nvcc.chmod(0o755)
    if cudart:
        (root / "targets" / "x86_64-linux" / "lib").mkdir(parents=True)
        (root / "targets" / "x86_64-linux" / "lib" / "libcudart.so.13").write_text("")
    return root


def wrapper_on_path(tmp_path: Path, toolkit: Path) -> str:
    """A bin dir holding an nvcc that is a script running the toolkit's nvcc, as /usr/local/bin/nvcc can be."""
    bin_dir = tmp_path / "usr-local" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvcc").write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    (bin_dir / "nvcc").chmod(0o755)
    return str(bin_dir)


def test_the_toolkit_behind_an_nvcc_wrapper_is_found(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    monkeypatch.setattr(_toolkit, "DEFAULT_ROOT", str(tmp_path / "nowhere"))
    # torch's guess would be the wrapper's parent's parent (tmp_path/usr-local), which has no libcudart.
    assert _toolkit.find({"PATH": wrapper_on_path(tmp_path, toolkit)}) == toolkit.resolve()


def test_default_root_is_the_last_resort(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path / "cuda")
    monkeypatch.setattr(_toolkit, "DEFAULT_ROOT", str(toolkit))
    assert _toolkit.find({"PATH": str(tmp_path / "empty")}) == toolkit.resolve()


def test_explicit_cuda_home_is_checked(tmp_path):
    broken = fake_toolkit(tmp_path / "cuda-nolib", cudart=False)
    with pytest.raises(_toolkit.ToolkitError, match="CUDA_HOME=.*cuda-nolib.*no libcudart"):
        _toolkit.find({"CUDA_HOME": str(broken), "PATH": ""})
    good = fake_toolkit(tmp_path / "cuda-good")
    assert _toolkit.find({"CUDA_PATH": str(good), "PATH": ""}) == good.resolve()


def test_no_toolkit_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(_toolkit, "DEFAULT_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(_toolkit.ToolkitError, match="no nvcc on PATH.*nowhere: no bin/nvcc"):
        _toolkit.find({"PATH": str(tmp_path / "empty")})
