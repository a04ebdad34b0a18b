"""Op microbenchmarks: every case x provider x mode of bench/cases.py on the benchmark device.

Run through ``python bench/run.py`` (timing settings, CSV, tables, plots), or directly::

    python -m pytest bench/test_ops.py -q                     # pytest-benchmark's default timing on CPU
    SURM_BENCH_QUICK=1 python -m pytest bench/test_ops.py -q  # smoke test: a few cases, a few rounds each

bench/ is outside the repo's ``testpaths``, so a bare ``pytest`` never runs these.
"""

from __future__ import annotations

import pytest

from bench import cases, roofline, timing

DEVICE = cases.device()
CASES = cases.selected(DEVICE)

PARAMS = [
    pytest.param(case, provider, mode, id=f"{case.id}-{provider}-{mode}",
                 marks=pytest.mark.benchmark(group=f"{case.id} {mode}"))
    for case in CASES
    for provider in case.providers(DEVICE)
    for mode in roofline.MODES
]


@pytest.mark.parametrize(("case", "provider", "mode"), PARAMS)
def test_op(benchmark, record_row, bench_device, case: cases.Case, provider: str, mode: str):
    fn = cases.build(case, provider, mode, bench_device)
    fields = {
        "suite": "op", "op": case.name, "provider": provider, "mode": mode, "dtype": case.dtype_name,
        "shape": case.shape, "backend": cases.resolved_backend(case, bench_device) if provider == "auto" else provider,
        "params": case.provider_params(provider), "lora_eq_rank": case.lora_eq_rank,
        "bytes": case.bytes_moved(provider, mode), "flops": case.flops(provider, mode),
    }
    benchmark.extra_info.update(fields)
    record_row(fields, timing.measure(fn, bench_device, benchmark, cases.quick()))
