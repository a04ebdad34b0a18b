"""The loading logic of surm_ops._extension on a CPU machine: prebuilt, JIT build, and the reasons for neither."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from surm_ops import _extension


@pytest.fixture
def ext(monkeypatch, tmp_path):
    """_extension with no prebuilt module, a fresh state, a private cache dir and a compiler that must not run."""

    def missing():
        raise ModuleNotFoundError("No module named 'surm_ops._C'", name="surm_ops._C")

    def no_compile(*args):
        raise AssertionError("the JIT build must not be attempted here")

    monkeypatch.setattr(_extension, "_import_prebuilt", missing)
    monkeypatch.setattr(_extension, "_jit_compile", no_compile)
    monkeypatch.setenv(_extension.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(_extension.ENV_NO_JIT, raising=False)
    _extension._reset()
    yield _extension
    _extension._reset()


def _status_and_warnings(ext):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = ext.status(), ext.status()
    assert first == second
    return first, [w for w in caught if "surm_ops" in str(w.message)]


def test_torch_without_cuda_never_builds(ext, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    (ok, reason), warned = _status_and_warnings(ext)
    assert not ok and "no CUDA" in reason and warned == []


def test_no_jit_env_is_respected(ext, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: "/usr/local/cuda")
    monkeypatch.setenv(ext.ENV_NO_JIT, "1")
    (ok, reason), warned = _status_and_warnings(ext)
    assert not ok and "SURM_NO_JIT=1" in reason and len(warned) == 1


def test_no_toolkit_says_so(ext, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: None)
    (ok, reason), warned = _status_and_warnings(ext)
    assert not ok and "nvcc" in reason and len(warned) == 1


def test_failed_build_warns_once_and_is_not_retried(ext, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: "/usr/local/cuda")
    calls = []

    def failing(sources, include, directory, archs, cuda_home):
        calls.append(directory)
        raise RuntimeError("Error building extension 'surm_ops_C_jit'\nnvcc fatal: boom")

    monkeypatch.setattr(ext, "_jit_compile", failing)
    (ok, reason), warned = _status_and_warnings(ext)
    assert not ok and "JIT build failed" in reason and "boom" in reason
    assert len(calls) == 1 and len(warned) == 1
    assert (calls[0] / "FAILED").exists()
    ext._reset()  # a new process: the marker stops a rebuild
    (ok, reason), warned = _status_and_warnings(ext)
    assert not ok and "failed earlier" in reason and len(calls) == 1 and len(warned) == 1


def test_successful_build_is_used(ext, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: "/usr/local/cuda")
    seen = {}

    def building(sources, include, directory, archs, cuda_home):
        seen.update(sources=[s.name for s in sources], include=include, directory=directory)
        module = types.ModuleType(ext.JIT_NAME)
        module.__file__ = str(directory / f"{ext.JIT_NAME}.so")
        return module

    monkeypatch.setattr(ext, "_jit_compile", building)
    (ok, reason), warned = _status_and_warnings(ext)
    assert ok and "JIT-built" in reason and warned == []
    assert {"registration.cpp", "conv_kernels.cu"} <= set(seen["sources"])
    assert seen["include"] == ext.csrc_dir()
    assert seen["directory"].is_relative_to(tmp_path / "cache")
    assert ext.load().__name__ == ext.JIT_NAME


def test_build_dir_changes_with_the_sources(tmp_path, monkeypatch):
    monkeypatch.setenv(_extension.ENV_CACHE_DIR, str(tmp_path / "cache"))
    root = tmp_path / "csrc"
    (root / "conv").mkdir(parents=True)
    (root / "conv" / "k.cu").write_text("a")
    (root / "conv" / "k.h").write_text("b")
    first = _extension.build_dir(root)
    (root / "conv" / "k.h").write_text("c")
    assert _extension.build_dir(root) != first
    assert first.parent == tmp_path / "cache" and torch.__version__.split("+")[0] in first.name


def test_sources_are_found_in_this_checkout():
    root = _extension.csrc_dir()
    assert root is not None and (root / "conv" / "conv_kernels.cu").is_file()


def test_stale_torch_baton_from_a_killed_build_is_cleared(ext, monkeypatch):
    """torch's FileBaton ("lock" in the build directory) survives a killed build and would make cpp_extension.load
    wait forever; under our flock no other build runs, so the JIT removes it before building."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: "/usr/local/cuda")
    directory = ext.build_dir(ext.csrc_dir())
    directory.mkdir(parents=True)
    (directory / "lock").write_text("")

    def building(sources, include, build_directory, archs, cuda_home):
        assert not (build_directory / "lock").exists()
        return types.ModuleType(ext.JIT_NAME)

    monkeypatch.setattr(ext, "_jit_compile", building)
    assert ext.status()[0]


def test_build_dir_is_keyed_by_architecture(tmp_path, monkeypatch):
    """A cache built for one GPU architecture is never loaded on another: the arch list is in the directory."""
    monkeypatch.setenv(_extension.ENV_CACHE_DIR, str(tmp_path / "cache"))
    root = _extension.csrc_dir()
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    sm80 = _extension.build_dir(root)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    sm90 = _extension.build_dir(root)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    assert len({sm80, sm90, _extension.build_dir(root)}) == 3
    assert "sm80" in sm80.name and "sm90" in sm90.name


def test_jit_archs_follow_the_visible_gpus(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    caps = {0: (9, 0), 1: (8, 0), 2: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    assert _extension.jit_archs() == "8.0;9.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")
    assert _extension.jit_archs() == "8.6"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert _extension.jit_archs() == _extension.DEFAULT_JIT_ARCHS


def test_jit_build_gets_the_archs_and_toolkit_of_its_directory(ext, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(ext, "_cuda_home", lambda: "/opt/cuda-x")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    seen = {}

    def building(sources, include, directory, archs, cuda_home):
        seen.update(directory=directory, archs=archs, cuda_home=cuda_home)
        return types.ModuleType(ext.JIT_NAME)

    monkeypatch.setattr(ext, "_jit_compile", building)
    assert ext.status()[0]
    assert seen == {"directory": ext.build_dir(ext.csrc_dir(), "9.0"), "archs": "9.0", "cuda_home": "/opt/cuda-x"}
