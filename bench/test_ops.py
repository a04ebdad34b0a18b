"""pytest-benchmark tests: every case x provider x mode of bench/cases.py.

Run through ``python bench/run.py`` (timing settings, the results table and CSV), or directly::

    python -m pytest bench -q                          # pytest-benchmark's default timing (~1 s per test)
    SURM_BENCH_QUICK=1 python -m pytest bench -q       # smoke test: a few cases, a few rounds each

bench/ is outside the repo's ``testpaths``, so a bare ``pytest`` never runs these.
"""

from __future__ import annotations

import pytest
import torch

from bench import cases

CASES = cases.selected()

PARAMS = [
    pytest.param(case, provider, mode, id=f"{case.id}-{provider}-{mode}",
                 marks=pytest.mark.benchmark(group=f"{case.id} {mode}"))
    for case in CASES
    for provider in case.providers
    for mode in cases.MODES
]


@pytest.mark.parametrize(("case", "provider", "mode"), PARAMS)
def test_op(benchmark, case: cases.Case, provider: str, mode: str):
    fn = cases.build(case, provider, mode)
    benchmark.extra_info.update(
        op=case.name,
        fn=case.fn,
        case=case.id,
        case_index=CASES.index(case),
        provider=provider,
        provider_index=case.providers.index(provider),
        backend=cases.resolved_backend(case) if provider == "auto" else provider,
        mode=mode,
        shape=case.shape,
        tokens=case.tokens,
        n_in=case.n_in,
        n_out=case.n_out,
        dtype="float32",
        params=case.provider_params(provider),
        op_params=case.params,
        lora_eq_rank=case.lora_eq_rank,
        bytes=case.bytes_moved(mode),
        flops=case.flops(provider, mode),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    if cases.quick():
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    else:
        benchmark(fn)
