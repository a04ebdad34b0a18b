"""Triton kernels (`@triton.jit` functions and their launchers, no autograd), installed as `surm_ops.kernels`;
imported lazily by the triton backend."""
