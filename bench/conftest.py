"""Session fixtures of the benchmarks: the device, the ceilings measured on it, and the row recorder.

With ``SURM_BENCH_OUT`` set (bench/run.py sets it), every timed test appends one JSON line to that file, after a
first ``{"kind": "meta", ...}`` line with the device, versions and ceilings of the session.
"""

from __future__ import annotations

import json
import os

import pytest

from bench import cases, layers, meta, roofline, timing

OUT_ENV = "SURM_BENCH_OUT"


def _write(record: dict) -> None:
    path = os.environ.get(OUT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="session")
def bench_device():
    return cases.device()


@pytest.fixture(scope="session")
def ceilings(bench_device):
    dev = bench_device
    dtypes = {c.dtype for c in cases.selected(dev)} | {layers.shape(dev).dtype}
    found = roofline.measure_ceilings(dev, tuple(sorted(dtypes, key=str)), lambda fn: timing.best_of(fn, dev),
                                      small=cases.quick())
    _write({"kind": "meta", **meta.environment(dev), "copy_gbps": found.copy_gbps,
            "matmul_tflops": found.matmul_tflops, "quick": cases.quick()})
    return found


@pytest.fixture
def record_row(ceilings):
    """``record_row(fields, timing)``: complete the row with the ceilings, write it (see the module docstring)."""

    def _record(fields: dict, measured) -> dict | None:
        if measured is None:  # pytest-benchmark disabled: nothing was timed
            return None
        row = roofline.complete_row(fields, measured, ceilings)
        _write({"kind": "row", **row})
        return row

    return _record
