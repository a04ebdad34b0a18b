"""The compiled extension as installed (a CUDA wheel, or an in-place build), on a machine without a GPU: every
``surm_ops_C::`` schema is registered, and every call surm_ops/ops/_cuda.py makes binds to its schema.

Needs a loadable ``surm_ops._C``, so it skips in the CPU test venv; the CUDA stage of CI (.ci/cuda_wheel.sh) runs it
against the installed wheel with SURM_REQUIRE_CUDA_TORCH=1, which turns the skip into a failure.

Binding is checked by calling the real op with the CPU tensors the glue passes: the op has only a CUDA kernel, so a
call whose arguments match the schema gets as far as dispatch and fails there ("...from the 'CPU' backend"), while a
wrong name, count or type of argument fails earlier with another error. The results the glue goes on with come from
the host emulation of the kernels.
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest
import torch

import surm_ops.ops._cuda as cuda_backend
from tests.csrc.emulator import FakeOps


@pytest.fixture(scope="module")
def extension():
    try:
        return importlib.import_module("surm_ops._C")
    except ImportError as exc:
        if os.environ.get("SURM_REQUIRE_CUDA_TORCH") == "1":
            pytest.fail(f"SURM_REQUIRE_CUDA_TORCH=1 but surm_ops._C does not load: {exc}")
        pytest.skip(f"surm_ops._C is not built here: {exc}")


def _called_by_the_glue() -> set[str]:
    """Names of the ops surm_ops/ops/_cuda.py calls, as `_ops().<name>(...)`."""
    tree = ast.parse(Path(cuda_backend.__file__).read_text())
    return {node.func.attr for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", None) == "_ops"}


def test_every_schema_is_registered_and_used(extension):
    registered = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("surm_ops_C::")}
    called = _called_by_the_glue()
    assert called == {"conv_forward", "conv_grad_spectrum"}
    assert registered == called


class SchemaCheckedOps:
    """torch.ops.surm_ops_C as the glue sees it: each call is first made on the real op (must bind, then stop at
    dispatch for want of a CPU kernel), then answered by the host emulation."""

    def __init__(self, fake: FakeOps):
        self.fake, self.checked = fake, []

    def __getattr__(self, name):
        real, fake = getattr(torch.ops.surm_ops_C, name), getattr(self.fake, name)

        def call(*args):
            with pytest.raises(NotImplementedError, match="CPU"):
                real(*args)
            self.checked.append(name)
            return fake(*args)
        return call


@pytest.mark.parametrize("shapes", [[(64,)], [(3, 4, 16)], [(12,), (20,)]], ids=["circ", "block", "toep"])
def test_the_glue_calls_bind_to_the_schemas(extension, emulate, monkeypatch, shapes):
    ops = SchemaCheckedOps(FakeOps(emulate))
    monkeypatch.setattr(cuda_backend, "_ops", lambda: ops)
    params = [torch.randn(s) for s in shapes]
    kind = "toeplitz" if len(shapes) == 2 else "circulant"
    n_in = shapes[1][0] if kind == "toeplitz" else (shapes[0][-1] if len(shapes[0]) == 1 else 4 * 16)
    x = torch.randn(5, n_in, dtype=torch.bfloat16)
    y = getattr(cuda_backend, f"{kind}_forward")(x, *params)
    getattr(cuda_backend, f"{kind}_backward")(torch.randn_like(y), x, *params, [True] * (1 + len(params)))
    assert sorted(set(ops.checked)) == ["conv_forward", "conv_grad_spectrum"] and len(ops.checked) == 3
