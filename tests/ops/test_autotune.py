"""Measured dispatch (surm_ops.autotune): it picks the backend that is faster here, keeps the choice per shape class
(in memory, and on disk when asked, across a restart), changes no result, works under torch.compile, and is off by
default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import surm_ops
from surm_ops import autotune, dispatch

OP = "circulant_matmul"


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("SURM_BACKEND", raising=False)
    monkeypatch.delenv(autotune.ENV, raising=False)
    monkeypatch.delenv(autotune.ENV_CACHE_DIR, raising=False)
    autotune.reset()
    dispatch.forget()
    # One intra-op thread: on a machine shared with other work, waking torch's worker threads can cost a scheduler
    # slice (~20 ms measured on the 2-core CI machine), which would swamp the 2 ms handicap the tests give a backend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    autotune.reset()
    dispatch.forget()


def _slow(monkeypatch, backend, seconds=2e-3):
    """Make ``backend``'s forward of circulant_matmul slower by ``seconds`` a call (same results)."""
    impl = dispatch.implementation(OP, backend)

    def forward(*args):
        time.sleep(seconds)
        return impl.forward(*args)

    monkeypatch.setitem(dispatch._IMPLS[OP], backend, dispatch.Impl(forward, impl.backward, impl.why_not,
                                                                     impl.skip_auto))


@pytest.mark.parametrize("slow, fast", [("fft", "dense"), ("dense", "fft")])
def test_picks_the_faster_backend(monkeypatch, slow, fast):
    _slow(monkeypatch, slow)
    autotune.enable()
    x, c = torch.randn(8, 64), torch.randn(64)
    y = surm_ops.circulant_matmul(x, c)
    assert dispatch.resolve(OP, "auto", x, [c]) == fast
    assert list(autotune.choices().values()) == [fast]
    torch.testing.assert_close(y, surm_ops.circulant_matmul(x, c, backend=slow))  # results within tolerance
    assert torch.equal(y, surm_ops.circulant_matmul(x, c, backend=fast))  # ...and exactly the chosen backend's


def test_one_measurement_per_shape_class(monkeypatch):
    timed = []
    real = autotune._fastest
    monkeypatch.setattr(autotune, "_fastest", lambda *a: timed.append(a[0]) or real(*a))
    autotune.enable()
    c = torch.randn(64)
    for tokens in (5, 6, 8, 8, 5):  # one class: up to 8 tokens
        surm_ops.circulant_matmul(torch.randn(tokens, 64), c)
    surm_ops.circulant_matmul(torch.randn(9, 64), c)  # the next class
    surm_ops.circulant_matmul(torch.randn(8, 64, dtype=torch.float64), c.double())  # another dtype
    assert timed == [OP] * 3


def test_off_by_default(monkeypatch):
    monkeypatch.setattr(autotune, "_fastest", lambda *a: pytest.fail("autotune timed backends while off"))
    assert not autotune.enabled()
    surm_ops.circulant_matmul(torch.randn(8, 64), torch.randn(64))
    assert autotune.choices() == {}


def test_environment_variable_turns_it_on(monkeypatch):
    _slow(monkeypatch, "fft")
    monkeypatch.setenv(autotune.ENV, "1")
    x, c = torch.randn(8, 64), torch.randn(64)
    surm_ops.circulant_matmul(x, c)
    assert list(autotune.choices().values()) == ["dense"]
    monkeypatch.setenv(autotune.ENV, "0")
    assert dispatch.resolve(OP, "auto", torch.randn(4096, 4096), [torch.randn(4096)]) == "fft"  # the cost model


def test_a_forced_backend_is_not_tuned(monkeypatch):
    _slow(monkeypatch, "fft")
    autotune.enable()
    assert dispatch.resolve(OP, "fft", torch.randn(8, 64), [torch.randn(64)]) == "fft"
    assert autotune.choices() == {}


def test_disk_cache_survives_a_restart(monkeypatch, tmp_path):
    _slow(monkeypatch, "fft")
    autotune.enable(cache_dir=tmp_path)
    x, c = torch.randn(8, 64), torch.randn(64)
    surm_ops.circulant_matmul(x, c)
    saved = json.loads((tmp_path / autotune.FILE).read_text())
    assert list(saved.values()) == ["dense"]
    # A new process with the same cache directory reuses the choice without timing anything (dense would lose
    # there: fft is no longer slowed down).
    code = ("import torch, surm_ops\nfrom surm_ops import autotune, dispatch\n"
            "autotune._fastest = lambda *a: 1 / 0\n"
            "print(dispatch.resolve('circulant_matmul', 'auto', torch.randn(8, 64), [torch.randn(64)]))\n")
    env = {**os.environ, autotune.ENV: "1", autotune.ENV_CACHE_DIR: str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "dense"
    # Without the directory the memory is all there is: a reset forgets.
    autotune.reset()
    autotune.enable()
    assert autotune.choices() == {}


def test_damaged_cache_file_is_ignored_with_a_warning(tmp_path):
    (tmp_path / autotune.FILE).write_text("{not json")
    autotune.enable(cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="ignoring unreadable cache"):
        y = surm_ops.circulant_matmul(torch.randn(8, 64), torch.randn(64))
    assert y.shape == (8, 64)
    assert len(json.loads((tmp_path / autotune.FILE).read_text())) == 1  # rewritten, whole


def test_env_report_shows_the_choices(monkeypatch):
    from surm_ops import env

    _slow(monkeypatch, "fft")
    autotune.enable()
    surm_ops.circulant_matmul(torch.randn(8, 64), torch.randn(64))
    report = env.report()
    assert "SURM_AUTOTUNE" in report and "now on" in report
    assert "circulant_matmul|cpu|float32|n_in=64|tokens<=8|64:float32 -> dense" in report


def test_works_under_compile(monkeypatch):
    """The choice is made at run time inside the op: a compiled graph runs the measured backend."""
    _slow(monkeypatch, "fft")
    autotune.enable()
    x, c = torch.randn(8, 64), torch.randn(64, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, c: surm_ops.circulant_matmul(x, c), fullgraph=True)
    y = compiled(x, c)
    assert list(autotune.choices().values()) == ["dense"]
    torch.testing.assert_close(y, surm_ops.circulant_matmul(x, c, backend="fft"))
    y.sum().backward()
    torch.testing.assert_close(c.grad, torch.autograd.grad(surm_ops.circulant_matmul(x, c, backend="fft").sum(), c)[0])
