"""Layer-level benchmarks: the frozen nn.Linear alone and with each adapter (bench/layers.py), forward and a
training step. Run through ``python bench/run.py``, or ``python -m pytest bench/test_layers.py -q``."""

from __future__ import annotations

import pytest

from bench import cases, layers, timing

DEVICE = cases.device()
SHAPE = layers.shape(DEVICE)

PARAMS = [
    pytest.param(spec, mode, id=f"{spec.label}-{mode}", marks=pytest.mark.benchmark(group=f"layer {mode}"))
    for spec in layers.selected()
    for mode in layers.MODES
]


@pytest.mark.parametrize(("spec", "mode"), PARAMS)
def test_layer(benchmark, record_row, bench_device, spec: layers.LayerSpec, mode: str):
    fn, n_params = layers.build(spec, mode, bench_device, SHAPE)
    fields = {**layers.fields(spec, mode, SHAPE), "params": n_params}
    benchmark.extra_info.update(fields)
    record_row(fields, timing.measure(fn, bench_device, benchmark, cases.quick()))
