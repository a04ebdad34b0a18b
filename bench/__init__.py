"""Benchmarks for surm_ops: ``python bench/run.py`` (see bench/run.py); cases in bench/cases.py."""
