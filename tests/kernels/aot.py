"""Ahead-of-time compilation of the Triton kernels exactly as the launchers specialise them on a GPU.

Every launcher path (each op's forward and backward, the fused linear, LDR's groups, decode and training tile
sizes, every dtype, svd at ranks 16 to 128) runs once on CPU tensors with the kernels replaced by recorders, so
nothing executes and nothing is assumed about which constexprs, tiles or warps a launcher picks: the recorded
launches are bound with Triton's own specialisation (integers equal to 1 become constants, those divisible by 16 and
aligned pointers get divisibility hints, as on a GPU), and each distinct one is compiled to SASS (``variants``
says for which architectures). A variant fails on a compile error, shared memory over the architecture's opt-in
limit per block, a register spill (float64 exempt: it exists to check precision), or a grid beyond CUDA's limits.

Run as ``python -m tests.kernels.aot [--all] [--shard I/N]`` with ``TRITON_INTERPRET`` unset (under the interpreter
``@triton.jit`` yields functions that cannot be compiled); prints one JSON object mapping each variant id to
``"ok"`` or what is wrong. tests/kernels/test_gpu_compile.py runs it in subprocesses.
"""

from __future__ import annotations

import json
import sys

# Opt-in shared memory per block (CUDA programming guide, compute capabilities table).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
GRID_LIMIT = (2**31 - 1, 65535, 65535)
# Triton lowers sm_86 and sm_89 exactly as sm_80 (same shared memory, checked with --all), and sm_120 with no more
# shared memory than sm_80, so the quick set compiles sm_80 once and holds it to the smallest of their limits.
LOWERED_AS = {80: (80, 86, 89, 120), 90: (90,)}


def _scenarios():
    """(label, thunk) pairs: each thunk runs launcher paths on CPU tensors."""
    import torch

    from surm_ops.kernels import circulant, kronecker, ldr, skew_circulant, structured_linear, svd, toeplitz

    def r(*shape, dtype):
        return torch.randn(*shape, dtype=torch.float64).to(dtype)

    everything = [True, True, True, True, True]
    for xdt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        pdt = torch.float64 if xdt == torch.float64 else torch.float32
        name = str(xdt).replace("torch.", "")
        for tokens in (16, 4096):
            x, x768 = r(tokens, 1024, dtype=xdt), r(tokens, 768, dtype=xdt)

            def ops(x=x, x768=x768, pdt=pdt):
                for mod, params in ((circulant, [r(1024, dtype=pdt)]), (circulant, [r(16, 16, 64, dtype=pdt)]),
                                    (circulant, [r(16, 16, 64, dtype=pdt)[:, :, :48].contiguous()]),
                                    (skew_circulant, [r(1024, dtype=pdt)]), (ldr, [r(2, 1024, dtype=pdt)] * 2),
                                    (kronecker, [r(32, 32, dtype=pdt)] * 2)):
                    xi = x if mod is not circulant or params[0].ndim == 1 or params[0].shape[-1] == 64 else x768
                    y = mod.forward(xi, *params)
                    mod.backward(y, xi, *params, everything[:1 + len(params)])
                col, row = r(1001, dtype=pdt), r(768, dtype=pdt)
                y = toeplitz.forward(x768, col, row)
                toeplitz.backward(y, x768, col, row, everything[:3])

            def fused(x=x, x768=x768, pdt=pdt, xdt=xdt):
                # The op always passes a bias (zeros when the layer has none).
                w, bias = r(1024, 768, dtype=xdt), r(1024, dtype=xdt)
                for params, b in (([r(1, 1, 1024 + 768 - 1, dtype=pdt)], bias),
                                  ([r(16, 12, 64 + 64 - 1, dtype=pdt)], 0 * bias),
                                  ([r(32, 32, dtype=pdt), r(32, 24, dtype=pdt)], 0 * bias)):
                    y = structured_linear.forward(x768, w, b, *params)
                    structured_linear.backward(y, x768, w, b, *params, everything[:3 + len(params)])

            def svds(x=x, pdt=pdt):
                for k in (16, 32, 64, 128):
                    u, s, v = r(1024, k, dtype=pdt), r(k, dtype=pdt), r(1024, k, dtype=pdt)
                    y = svd.forward(x, u, s, v)
                    svd.backward(y, x, u, s, v, everything[:4])
                u, s, v = r(1024, 16, dtype=pdt), r(x.shape[0], 16, dtype=pdt), r(1024, 16, dtype=pdt)
                svd.backward(svd.forward(x, u, s, v), x, u, s, v, everything[:4])

            yield f"ops-{name}-t{tokens}", ops
            yield f"fused-{name}-t{tokens}", fused
            yield f"svd-{name}-t{tokens}", svds


def record() -> dict[str, tuple]:
    """Run every scenario with the kernels replaced by recorders: variant id -> (kernel, grid, args, kwargs)."""
    from surm_ops.kernels import _structured, svd

    kernels = {"structured_mm": (_structured, "structured_mm_kernel"), "diag_corr": (_structured, "diag_corr_kernel"),
               "svd": (svd, "svd_kernel")}
    launches: dict[str, tuple] = {}

    class Recorder:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.setdefault(scenario, []).append((self.name, self.fn, grid, args, kwargs))
            return launch

    originals = {name: getattr(mod, attr) for name, (mod, attr) in kernels.items()}
    for name, (mod, attr) in kernels.items():
        setattr(mod, attr, Recorder(name, originals[name]))
    try:
        for scenario, thunk in _scenarios():  # noqa: B007 (the recorders read it)
            thunk()
    finally:
        for name, (mod, attr) in kernels.items():
            setattr(mod, attr, originals[name])
    return launches


def variants(exact: bool = False) -> dict[str, tuple]:
    """Distinct specialisations per architecture: id -> (kernel fn, signature, constexprs, attrs, options, arch,
    grids). The id names the kernel, the first scenario that produced it and the architecture.

    ``exact``: every architecture of SHARED_LIMIT and every specialisation, alignment and divisibility hints
    included (about 1100 compiles). Otherwise the quick set CI runs: sm_80 (standing for the architectures of
    LOWERED_AS) and sm_90, launches that differ only in integer values or hints compiled once (about 320)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    out: dict[str, tuple] = {}
    seen: dict[tuple, str] = {}
    recorded = record()
    for arch in SHARED_LIMIT if exact else LOWERED_AS:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for scenario, calls in recorded.items():
            for name, fn, grid, args, kwargs in calls:
                binder = create_function_from_signature(fn.signature, fn.params, backend)
                bound, spec, options = binder(*args, **kwargs)
                options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
                types = signature if exact else {k: t for k, t in signature.items() if t.startswith("*")}
                key = (name, arch, repr(types), repr(sorted(constexprs.items(), key=str)),
                       repr(attrs) if exact else "", repr(sorted(options.__dict__.items())))
                if key in seen:
                    out[seen[key]][6].append(tuple(grid))
                    continue
                vid = f"{name}-{scenario}-{sum(k[0] == name and k[1] == arch for k in seen)}-sm_{arch}"
                seen[key] = vid
                out[vid] = (fn, signature, constexprs, attrs, options, target, [tuple(grid)])
    return out


def check(fn, signature, constexprs, attrs, options, target, grids) -> str:
    import triton
    from triton.compiler import ASTSource

    for grid in grids:
        if any(g > lim for g, lim in zip(grid, GRID_LIMIT)):
            return f"grid {grid} exceeds CUDA's limits {GRID_LIMIT}"
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    if not compiled.asm.get("cubin"):
        return "no SASS produced"
    for arch in LOWERED_AS.get(target.arch, (target.arch,)):
        if compiled.metadata.shared > SHARED_LIMIT[arch]:
            return f"needs {compiled.metadata.shared} bytes of shared memory (sm_{arch} allows {SHARED_LIMIT[arch]})"
    usage = _resource_usage(compiled.asm["cubin"])
    # A spill is a stack frame at the register cap, or a sizeable one; an 8-byte frame at 80 registers is not
    # pressure. float64 kernels exist to check precision (gradcheck on a GPU); a spill there costs only speed.
    stack = usage.get("STACK", 0) + usage.get("LOCAL", 0)
    float64 = any(v == "*fp64" for v in signature.values())
    if (stack > 16 or (stack and usage.get("REG", 0) >= 248)) and not float64:
        return f"spills registers: {usage}"
    return "ok"


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """cuobjdump -res-usage of a cubin (the tool ships inside triton's NVIDIA backend): REG, STACK, LOCAL, ..."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", out)}


def main(argv: list[str]) -> None:
    exact = "--all" in argv
    argv = [a for a in argv if a != "--all"]
    shard, shards = (int(p) for p in argv[1].split("/")) if argv[:1] == ["--shard"] else (0, 1)
    table = variants(exact)
    results = {}
    for vid in sorted(table)[shard::shards]:
        try:
            results[vid] = check(*table[vid])
        except Exception as exc:  # reported per variant; the test fails on anything but "ok"
            results[vid] = f"{type(exc).__name__}: {exc}"[:2000]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
