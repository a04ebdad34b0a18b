"""Plant known bugs in a temporary copy of the repository and check that the tests catch every one.

Each mutant is a plausible bug (most were found surviving, or nearly, in review): one or more exact text
replacements in one file, and the tests that must catch it. For each mutant the script copies the working tree (git's
tracked and untracked, not ignored, files) to a temporary folder, applies the replacements (each must match exactly
once, so a mutant that no longer applies is an error, not a pass), runs its tests there, and counts it caught when
pytest reports failures. First it runs every mutant's tests on the unmutated copy: they must pass, or a "caught"
would mean nothing.

    python scripts/mutants.py            # all mutants, two at a time
    python scripts/mutants.py --list     # ids and what each plants
    python scripts/mutants.py ID [ID..]  # some
    python scripts/mutants.py --no-baseline  # after the whole suite passed on this tree (CI)

Exit status 1 if any mutant survives or cannot be applied. Runs with the interpreter that runs it, which must have
surm_ops' test dependencies (``bash scripts/dev.sh test`` creates such a venv); the copy is imported instead of the
checkout (checked before any mutant runs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMERICS = "tests/ops/test_numerics.py"


@dataclass(frozen=True)
class Mutant:
    id: str
    plants: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]  # pytest arguments


def _tiles(select: str) -> tuple[str, ...]:
    return (NUMERICS, "-k", f"training_tiles_triton and {select}")


MUTANTS = [
    # -- Triton kernels -------------------------------------------------------------------------------------------
    Mutant("diag-corr-drops-a-token", "diag_corr skips the last token of every 32-token gradient slice",
           "kernels/_structured.py", (("tok_hi = tl.minimum(n_tok, tok_lo + chunk)",
                                       "tok_hi = tl.minimum(n_tok, tok_lo + chunk - 1)"),),
           _tiles("circulant-n161-t40 and float64")),
    Mutant("svd-k-loop-ignores-offset", "svd's reduction over n_in reloads the first K block every trip",
           "kernels/svd.py", (("offs_k = k0 + tl.arange(0, BLOCK_K)", "offs_k = tl.arange(0, BLOCK_K)"),),
           _tiles("svd-768x1024-k16-t40 and float64")),
    Mutant("half-dot-drops-accumulator", "the half tensor-core product overwrites its accumulator",
           "kernels/_structured.py", (('out = tl.dot(a, b, acc, input_precision="ieee", out_dtype=ACC)',
                                       'out = tl.dot(a, b, input_precision="ieee", out_dtype=ACC)'),),
           _tiles("circulant-n161-t40 and bfloat16")),
    Mutant("structured-mm-k-loop-ignores-offset", "structured_mm's reduction reloads the first K block",
           "kernels/_structured.py", (("            offs_k = k0 + tl.arange(0, BLOCK_K)\n",
                                       "            offs_k = tl.arange(0, BLOCK_K)\n"),),
           _tiles("toeplitz-161x97-t40 and float64")),
    Mutant("grouped-grid-wrong-row", "the grouped launch order maps programs to token blocks modulo GROUP_M",
           "kernels/_structured.py", (("pid_m = first_m + (pid % (GROUP_M * n_blocks)) % group",
                                       "pid_m = first_m + (pid % (GROUP_M * n_blocks)) % GROUP_M"),),
           _tiles("circulant-n161-t300 and float64")),
    Mutant("toeplitz-tile-off-by-one", "the generated tile reads the neighbouring diagonal",
           "kernels/_structured.py", (("* (bo + bi - 1) + (i % bo) - (j % bi) + (bi - 1)",
                                       "* (bo + bi - 1) + (i % bo) - (j % bi) + bi"),),
           (NUMERICS, "-k", "test_matches_oracle and triton and float64 and (circulant-n7 or toeplitz-3x7)")),
    Mutant("kronecker-tile-wrong-factor-index", "B's column index taken modulo B's rows",
           "kernels/_structured.py", (("* tl.load(b_ptr + (i % u) * v + j % v,",
                                       "* tl.load(b_ptr + (i % u) * v + j % u,"),),
           (NUMERICS, "-k", "test_matches_oracle and triton and float64 and kron-2x3-4x5")),
    Mutant("fused-layer-merges-in-half", "the fused layer adds M to W and rounds the sum to half (a merged model)",
           "kernels/_structured.py", (("SPLIT=weight is not None and half_dot(dot)", "SPLIT=False"),
                                      ("MSCALE=mscale is not None", "MSCALE=False")),
           ("tests/kernels/test_rounding.py", "-k", "small_update")),
    Mutant("float16-tiles-unscaled", "float16 tiles of a young adapter go subnormal",
           "kernels/_structured.py", (("MSCALE=mscale is not None", "MSCALE=False"),),
           ("tests/kernels/test_rounding.py", "-k", "subnormal")),
    Mutant("svd-parameter-gradient-in-half", "svd's grad·u, which feeds the gradients of s and v, takes half operands",
           "kernels/svd.py", (("dot_dtype(g2, u, acc=dt)", "dot_dtype(g2, acc=dt)"),),
           (NUMERICS, "-k", "test_matches_oracle and triton and (bfloat16 or float16) and svd")),
    Mutant("ldr-parameter-gradient-in-half", "LDR's z, which feeds the gradients of g and h, takes half operands",
           "kernels/ldr.py", (("groups_out=r, acc=dt, exact=True)", "groups_out=r, acc=dt)"),),
           (NUMERICS, "-k", "test_matches_oracle and triton and (bfloat16 or float16) and ldr")),
    Mutant("svd-per-token-s-shared", "per-token singular values read as one shared row",
           "kernels/svd.py", (("return rows(s_.expand(*lead, k)), k", "return rows(s_.expand(*lead, k)), 0"),),
           (NUMERICS, "-k", "test_matches_oracle and triton and float64 and svd-per-token")),
    Mutant("emulation-truncates-bfloat16", "the interpreter's emulation truncates to bfloat16 instead of rounding",
           "kernels/_structured.py", (("bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000",
                                       "bits = bits & 0xFFFF0000"),),
           ("tests/kernels/test_rounding.py", "-k", "rounds_like_a_gpu")),
    # -- the adapters ---------------------------------------------------------------------------------------------
    Mutant("unmerge-subtracts", "unmerge subtracts the update again instead of restoring the saved bits",
           "surm_ops/adapters/base.py", (("self.base.weight.copy_(self._original_weight)",
                                          "self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))"),),
           ("tests/adapters/test_model.py", "-k", "unmerge_is_exact")),
    Mutant("load-by-position", "load_adapters copies tensors in file order instead of by name",
           "surm_ops/adapters/files.py", (("        for name, p in params.items():\n"
                                           "            p.copy_(tensors[name].to(p.dtype))",
                                           "        for p, t in zip(params.values(), tensors.values()):\n"
                                           "            p.copy_(t.to(p.dtype))"),),
           ("tests/adapters/test_model.py", "-k", "save_then_load")),
    # -- the FFT reference path -----------------------------------------------------------------------------------
    Mutant("fft-drops-a-conjugate", "the parameter gradient correlates without conjugating x's spectrum",
           "surm_ops/reference/fft.py", (("        x_spec.conj_physical_()\n", ""),),
           (NUMERICS, "-k", "test_matches_oracle and fft and float64 and circulant-n7")),
    Mutant("skew-sign-flip", "the skew-circulant's wrapped diagonals keep their sign",
           "surm_ops/reference/fft.py", (("return torch.cat([c, gap, -c[..., 1:]], dim=-1)",
                                          "return torch.cat([c, gap, c[..., 1:]], dim=-1)"),),
           (NUMERICS, "-k", "test_matches_oracle and fft and float64 and skew-n7")),
]


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The package maps kernels/ to surm_ops.kernels at install time; in the copy a link does it, so that the copy's
    # kernels are imported and not the installed (checkout's) ones.
    os.symlink("../kernels", dest / "surm_ops" / "kernels")


def _pytest(copy: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SURM_BACKEND", "PYTEST_ADDOPTS")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args], cwd=copy,
                          env=env, capture_output=True, text=True)


def _check_imports(copy: Path) -> None:
    code = ("import surm_ops, surm_ops.kernels, surm_ops.kernels.svd as s; "
            "print(surm_ops.__file__); print(s.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, check=True).stdout
    for path in out.split():
        if not Path(path).resolve().is_relative_to(copy.resolve()):
            sys.exit(f"mutants: the copy imports {path}, not its own code; mutants would run on the checkout")


def _run_one(mutant: Mutant) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="surm-mutant-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        target = copy / mutant.path
        text = target.read_text()
        for old, new in mutant.edits:
            if text.count(old) != 1:
                return "not applied", f"{old!r} occurs {text.count(old)} times in {mutant.path}"
            text = text.replace(old, new)
        target.write_text(text)
        result = _pytest(copy, mutant.tests)
    tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or [""]
    if result.returncode == 1:
        return "caught", tail[0]
    if result.returncode == 0:
        return "SURVIVED", tail[0]
    return "error", f"pytest exit {result.returncode}: {tail[0]}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run of each mutant's tests (CI: the whole suite just passed)")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:40s} {m.path:28s} {m.plants}")
        return 0
    unknown = set(args.ids) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s) {sorted(unknown)}; --list shows them")
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="surm-mutant-base-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        _check_imports(copy)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each mutant's tests pass unmutated
            bases = [] if args.no_baseline else list(pool.map(lambda m: _pytest(copy, m.tests), chosen))
        for m, base in zip(chosen, bases):
            if base.returncode != 0:
                print(f"mutants: the tests of {m.id} do not pass unmutated (pytest exit {base.returncode}):\n"
                      + (base.stdout + base.stderr)[-3000:])
                return 1
    if bases:
        print(f"baseline: the tests of {len(chosen)} mutants pass unmutated ({time.monotonic() - start:.0f} s)")
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_run_one, chosen))
    width = max(len(m.id) for m in chosen)
    for m, (verdict, detail) in zip(chosen, results):
        print(f"{m.id:{width}s}  {verdict:11s}  {detail}")
    bad = [m.id for m, (verdict, _) in zip(chosen, results) if verdict != "caught"]
    print(f"{len(chosen) - len(bad)}/{len(chosen)} caught in {time.monotonic() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
