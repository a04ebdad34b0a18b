"""Ahead-of-time compilation of every Triton kernel variant the launchers can produce, for sm_90 and sm_80.

Run as ``python -m tests.kernels.aot [ID ...]`` with ``TRITON_INTERPRET`` unset (under the interpreter
``@triton.jit`` yields functions that cannot be compiled); prints one JSON object mapping each variant id to
``"ok"`` or the compiler's error. tests/kernels/test_gpu_compile.py runs it in a subprocess.
"""

from __future__ import annotations

import json
import sys

SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # opt-in shared memory per block
# (x dtype, parameter/accumulator dtype, accumulator, tl.dot operand): what dot_dtype() picks on a GPU.
DTYPES = [("bf16", "fp32", "float32", "bfloat16"), ("fp16", "fp32", "float32", "float16"),
          ("fp32", "fp32", "float32", "float32"), ("fp64", "fp64", "float64", "float64")]
# Half x with float64 parameters reaches the kernels as float64 (_structured.streamed).


def variants() -> dict[str, tuple]:
    """id -> (kernel name, argument types, constexprs, arch); dtypes as names so this imports without triton."""
    out = {}
    for arch in (90, 80):
        for x, p, acc, dot in DTYPES:
            for variant in ("toeplitz", "toeplitz-groups", "kronecker", "fused-linear", "decode"):
                types = {"x_ptr": f"*{x}", "e_ptr": f"*{p}", "a_ptr": f"*{p}", "b_ptr": f"*{p}", "w_ptr": f"*{x}",
                         "bias_ptr": f"*{x}", "y_ptr": f"*{x}", "scale": "fp32"}
                const = dict(G_IN=3 if variant == "toeplitz-groups" else 1, GEN=1 if variant == "kronecker" else 0,
                             HAS_W=variant == "fused-linear", HAS_BIAS=variant == "fused-linear", ACC=acc, DOT=dot,
                             BLOCKS=16 if variant == "decode" else 4096)
                out[f"structured_mm-{variant}-{x}-{p}-sm_{arch}"] = ("structured_mm", types, const, arch)
            for tile in ((64, 16) if x in ("bf16", "fp16") else (32, 16)):  # _structured._tile's choices
                out[f"diag_corr-t{tile}-{x}-{p}-sm_{arch}"] = (
                    "diag_corr", {"gy_ptr": f"*{x}", "x_ptr": f"*{x}", "out_ptr": f"*{p}"},
                    dict(ACC=acc, DOT=dot, T=tile, BLOCK_B=32), arch)
            for rank in (16, 128):
                out[f"svd-k{rank}-{x}-{p}-sm_{arch}"] = (
                    "svd", {"x_ptr": f"*{x}", "v_ptr": f"*{p}", "s_ptr": f"*{p}", "u_ptr": f"*{p}",
                            "y_ptr": f"*{x}", "h_ptr": f"*{p}"},
                    dict(STORE_H=True, ACC=acc, DOT=dot, RANK=rank), arch)
    return out


def compile_one(kernel: str, types: dict, const: dict, arch: int) -> str:
    import torch
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from surm_ops.kernels import _structured, svd

    const = {k: getattr(tl, v) if k in ("ACC", "DOT") else v for k, v in const.items()}
    acc = torch.float64 if const["ACC"] == tl.float64 else torch.float32
    const["PRECISION"] = _structured.precision(acc)
    if kernel == "structured_mm":
        fn = _structured.structured_mm_kernel
        const.update(_structured.mm_blocks(const.pop("BLOCKS"), half=const["DOT"] in (tl.float16, tl.bfloat16)))
    elif kernel == "svd":
        fn = svd.svd_kernel
        const.update(svd.blocks(4096, const.pop("RANK"), acc))
        const["DOT2"] = svd._second_dot(const["DOT"], acc)
    else:
        fn = _structured.diag_corr_kernel
        const["num_warps"] = _structured.corr_warps(const["T"])
    options = {"num_warps": const.pop("num_warps")}  # the launchers' choice, not a kernel argument
    signature = {name: "constexpr" if name in const else types.get(name, "i32") for name in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const),
                              target=GPUTarget("cuda", arch, 32), options=options)
    if not compiled.asm.get("cubin"):
        return "no SASS produced"
    if compiled.metadata.shared > SHARED_LIMIT[arch]:
        return f"needs {compiled.metadata.shared} bytes of shared memory (limit {SHARED_LIMIT[arch]})"
    usage = _resource_usage(compiled.asm["cubin"])
    # A spill is a stack frame at the register cap, or a sizeable one; an 8-byte frame at 80 registers is not
    # pressure. float64 kernels exist to check precision (gradcheck on a GPU); a spill there costs only speed.
    stack = usage.get("STACK", 0) + usage.get("LOCAL", 0)
    if (stack > 16 or (stack and usage.get("REG", 0) >= 248)) and acc != torch.float64:
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


def main(ids: list[str]) -> None:
    table = variants()
    results = {}
    for vid in ids or list(table):
        try:
            results[vid] = compile_one(*table[vid])
        except Exception as exc:  # reported per variant; the test fails on anything but "ok"
            results[vid] = f"{type(exc).__name__}: {exc}"[:2000]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
