"""Argument checks shared by every op: each raises before any work starts, naming the argument and its shape."""

from __future__ import annotations

from collections.abc import Callable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(int(d)) for d in t.shape) + ("," if t.ndim == 1 else "") + ")"


def tensors(op: str, **args: torch.Tensor) -> None:
    """Every argument is a floating-point tensor and all share x's device."""
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op}: argument '{name}' has dtype {t.dtype}; expected float16, bfloat16, float32 or float64")
    x = args["x"]
    if x.ndim == 0:
        raise ValueError(f"{op}: x must have shape (..., n_in) with at least one dimension; got a 0-d tensor")
    for name, t in args.items():
        if t.device != x.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but x is on {x.device}; "
                             "move all arguments to one device")


def ndim(op: str, name: str, t: torch.Tensor, allowed: tuple[int, ...], layout: str) -> None:
    if t.ndim not in allowed:
        raise ValueError(f"{op}: {name} must have shape {layout}; got {name}.shape = {shape_str(t)}")


def features(op: str, x: torch.Tensor, n_in: int, source: Callable[[], str]) -> None:
    """x's last dimension equals n_in, which ``source()`` (e.g. "c.shape = (8,)") describes. The description is
    built only on failure: under torch.compile with dynamic shapes, formatting a symbolic size breaks the graph."""
    if x.shape[-1] != n_in:
        raise ValueError(f"{op}: x.shape[-1] must be n_in = {n_in} to match {source()}; got x.shape = {shape_str(x)}")


def nonempty(op: str, name: str, t: torch.Tensor) -> None:
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} must not be empty; got {name}.shape = {shape_str(t)}")


def compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any argument is float64, else float32: half inputs are computed in float32 (design §2.2)."""
    for t in ts:  # a loop, not any(<generator>): this runs on every call, and the generator costs ~0.5 µs
        if t.dtype == torch.float64:
            return torch.float64
    return torch.float32
