"""Environment report: ``python -m surm_ops.env``.

Prints versions, devices, the compiled extension's status, the environment variables surm_ops reads, the backends
measured dispatch has chosen (:mod:`surm_ops.autotune`; with ``SURM_CACHE_DIR``, those kept on disk), and for each op
and device which backends can run a typical call and, where one cannot, why.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

import surm_ops
from surm_ops import _extension, autotune, dispatch


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _sample_calls(device: torch.device):
    """A small valid call per op, used to ask each backend whether it could run."""
    x = torch.empty(4, 64, device=device)
    return {
        "circulant_matmul": [torch.empty(64, device=device)],
        "circulant_matmul (block)": [torch.empty(2, 4, 16, device=device)],
        "skew_circulant_matmul": [torch.empty(64, device=device)],
        "toeplitz_matmul": [torch.empty(64, device=device), torch.empty(64, device=device)],
        "ldr_matmul": [torch.empty(2, 64, device=device), torch.empty(2, 64, device=device)],
        "kronecker_matmul": [torch.empty(8, 8, device=device), torch.empty(8, 8, device=device)],
        "svd_matmul": [torch.empty(64, 8, device=device), torch.empty(8, device=device),
                       torch.empty(64, 8, device=device)],
    }, x


def report() -> str:
    lines = [
        f"surm_ops {surm_ops.__version__} ({os.path.dirname(surm_ops.__file__)})",
        f"python   {platform.python_version()} on {platform.platform()}",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda}, {torch.get_num_threads()} CPU threads)",
        f"triton   {_version('triton')}",
        f"numpy    {_version('numpy')}",
    ]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            lines.append(f"cuda:{i}   {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
            devices.append(torch.device("cuda", i))
    else:
        lines.append("cuda     no CUDA device visible to torch")
    ok, why = _extension.status()
    lines.append(f"_C       {'available' if ok else 'unavailable'}: {why}")
    lines.append("")
    lines.append("environment variables:")
    lines.append(f"  {dispatch.ENV_BACKEND}={os.environ.get(dispatch.ENV_BACKEND, '')!r} "
                 "(forces a backend for every call made with backend='auto')")
    lines.append(f"  {autotune.ENV}={os.environ.get(autotune.ENV, '')!r} (1: automatic mode times the backends; "
                 f"now {'on' if autotune.enabled() else 'off'})")
    lines.append(f"  {autotune.ENV_CACHE_DIR}={os.environ.get(autotune.ENV_CACHE_DIR, '')!r} (where measured choices "
                 f"are kept; now {autotune.cache_dir() or 'memory only'})")
    chosen = autotune.choices()
    lines.append("")
    lines.append(f"measured choices ({len(chosen)}):" if chosen else "measured choices: none yet")
    lines.extend(f"  {key} -> {name}" for key, name in sorted(chosen.items()))
    for device in devices:
        lines.append("")
        lines.append(f"backends on {device} (for a 4 x 64 call):")
        calls, x = _sample_calls(device)
        for label, params in calls.items():
            op = label.split(" ")[0]
            status = []
            for name, why in dispatch.available(op, x, params).items():
                status.append(f"{name}: yes" if not why else f"{name}: no ({'; '.join(why)})")
            lines.append(f"  {label}")
            lines.extend(f"    {s}" for s in status)
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
