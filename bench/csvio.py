"""The results CSV (bench/results/cpu.csv, gpu.csv): its columns, appending, migrating older files, loading.

One row per timed (suite, op, provider, dtype, shape, mode). ``date`` is the run's start time and identifies the
run: every row of one run carries the same date, device, commit, versions and ceilings, so a ratio is only ever
taken within one run (bench/render.py). Rows from before a column existed leave it empty.

Columns: date, commit, device; copy_gbps and matmul_tflops (the ceilings measured in that run, the matmul rate for
the row's dtype); torch, triton, cuda (versions; empty when absent), threads; suite (``op`` or ``layer``), op,
provider, backend (what ``auto`` resolved to; the method for layers), dtype, shape, mode; median_us, p20_us,
p80_us, timer; params (trainable elements); bytes, flops (bench/roofline.py), gbps, gflops, floor_us, x_floor;
robust_us (the estimate ratios, GB/s and × floor use: bench/timing.py), spread, rounds; others_cores (cores other
processes kept busy while the row's case was measured); flags (``wide``, ``below-floor``); ceiling_drift (the largest
relative difference between a ceiling measured at the start of the run and again at its end; the rows use the
higher of the two). Rows from before the
robust estimate have an empty robust_us, and ratios of them use median_us.
"""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("date", "commit", "device", "copy_gbps", "matmul_tflops", "torch", "triton", "cuda", "threads",
           "suite", "op", "provider", "backend", "dtype", "shape", "mode", "median_us", "p20_us", "p80_us", "timer",
           "params", "bytes", "flops", "gbps", "gflops", "floor_us", "x_floor",
           "robust_us", "spread", "rounds", "others_cores", "flags", "ceiling_drift")
NUMERIC = ("copy_gbps", "matmul_tflops", "threads", "median_us", "p20_us", "p80_us", "params", "bytes", "flops",
           "gbps", "gflops", "floor_us", "x_floor", "robust_us", "spread", "rounds", "others_cores",
           "ceiling_drift")
_FORMATS = {"copy_gbps": "{:.2f}", "matmul_tflops": "{:.4g}", "median_us": "{:.3f}", "p20_us": "{:.3f}",
            "p80_us": "{:.3f}", "flops": "{:.0f}", "gbps": "{:.3f}", "gflops": "{:.3f}", "floor_us": "{:.3f}",
            "x_floor": "{:.3f}", "robust_us": "{:.3f}", "spread": "{:.3f}", "others_cores": "{:.2f}",
            "ceiling_drift": "{:.3f}"}


def format_row(row: dict) -> dict:
    """CSV strings for every column (missing or None values become empty)."""
    out = {}
    for col in COLUMNS:
        value = row.get(col)
        if value is None or value == "":
            out[col] = ""
        elif col in _FORMATS and isinstance(value, (int, float)):
            out[col] = _FORMATS[col].format(value)
        else:
            out[col] = str(value)
    return out


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def migrate(path: Path) -> bool:
    """Rewrite ``path`` with :data:`COLUMNS` when it has an older subset of them; True if it changed."""
    header, rows = _read(path)
    if tuple(header) == COLUMNS:
        return False
    unknown = set(header) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{path}: unknown columns {sorted(unknown)}; expected a subset of {list(COLUMNS)}")
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({col: row.get(col, "") for col in COLUMNS} for row in rows)
    tmp.replace(path)
    return True


def append(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` (dicts with any subset of the columns), migrating an older file first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        migrate(path)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(format_row(r) for r in rows)


def load(path: Path) -> list[dict]:
    """Every row, numeric columns as floats (None when empty), in file order."""
    _, rows = _read(path)
    for row in rows:
        for col in NUMERIC:
            value = row.get(col)
            row[col] = float(value) if value not in (None, "") else None
        for col in COLUMNS:
            row.setdefault(col, "")
    return rows
