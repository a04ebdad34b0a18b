"""pytest plugin: a failing test leaves its case behind as a ``.pt`` file, so a failure seen on a lent GPU can be
reproduced and fixed on a CPU machine afterwards.

Enabled with ``-p tests.failed_cases`` and ``SURM_FAILED_CASES_DIR=<dir>`` (scripts/gpu_session.sh does both). For
each failing test it writes ``<dir>/<test id>.pt``: the test's parameters and the local variables of the test
function at the failure (inputs, parameters, backend, output, reference, as the test names them), tensors moved to
the CPU, plus the node id and the error text. Load with ``torch.load(path, weights_only=False)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ENV_DIR = "SURM_FAILED_CASES_DIR"
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _portable(value, depth: int = 0):
    """Tensors to CPU, containers recursively, plain values as they are; anything else as its repr."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, _PLAIN):
        return value
    if depth < 3 and isinstance(value, (list, tuple)):
        return type(value)(_portable(v, depth + 1) for v in value) if isinstance(value, list) else tuple(
            _portable(v, depth + 1) for v in value)
    if depth < 3 and isinstance(value, dict):
        return {str(k): _portable(v, depth + 1) for k, v in value.items()}
    return repr(value)[:2000]


def _test_frame_locals(item, excinfo) -> dict:
    code = getattr(getattr(item, "function", None), "__code__", None)
    for entry in excinfo.traceback:
        if entry.frame.code.raw is code:
            return dict(entry.frame.f_locals)
    return {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    directory = os.environ.get(ENV_DIR)
    if not directory or report.when != "call" or not report.failed or call.excinfo is None:
        return
    case = {
        "nodeid": item.nodeid,
        "error": str(call.excinfo.value)[:20000],
        "params": _portable(dict(getattr(item, "callspec", None).params) if hasattr(item, "callspec") else {}),
        "locals": {k: _portable(v) for k, v in _test_frame_locals(item, call.excinfo).items()
                   if not k.startswith("@")},
    }
    path = Path(directory) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-180:] + ".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(case, path)
    report.sections.append(("failed case", f"saved to {path}"))
