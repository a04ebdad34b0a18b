#!/usr/bin/env bash
# The GPU kit: everything a short GPU loan must do, prepared on a CPU machine and run in one call on the GPU one.
#
#   bash scripts/gpu_session.sh kit             # CPU machine: .gpu-kit/ = the abi3 surm_ops._C built against the GPU
#                                               # image's torch (2.11.0+cu130) for sm_80 and sm_90, checked to load
#   bash scripts/gpu_session.sh run             # GPU machine (no network): load the carried _C (else build it, and
#                                               # say so), record device and versions, every gpu-marked test in
#                                               # parallel, the headline benchmarks; ends within 9 minutes
#   bash scripts/gpu_session.sh run --rehearse  # the same sequence on CPU: Triton interpreter, tiny shapes, the
#                                               # fft backend standing in for cuda (tests/csrc/test_gpu_session.py)
#
# Everything goes to $OUT (default ./gpu-session), each stage's files as soon as it ends, so a run cut short still
# returns what it did: summary.txt (one line per stage: name, exit code, seconds), extension.txt, device.txt, env.txt,
# gpu-tests.{log,xml}, failed-cases/*.pt (one per failing test: its inputs, parameters, backend, output and
# reference; torch.load(path, weights_only=False) on any machine), bench/ (gpu.csv, gpu-latest.md, plots) and
# bench-*.log.
# Environment: SURM_GPU_BUDGET_S (default 540: the whole run), SURM_GPU_WORKERS (xdist workers, default 8),
# SURM_KIT_TORCH (default 2.11.0), SURM_CUDA_VENV (kit: the CUDA venv of .ci/cuda_wheel.sh, for torch's own deps).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
kit_dir="$root/.gpu-kit"
py="${PYTHON:-python3}"

# -- kit (CPU machine) ------------------------------------------------------------------------------------------------

cmd_kit() {
  set -e
  local torch_version="${SURM_KIT_TORCH:-2.11.0}"
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/surm_ops/kit-torch$torch_version"
  local cu_venv="${SURM_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/surm_ops/venv-cu}"
  [[ -x "$cu_venv/bin/python" ]] || { echo "gpu_session.sh kit: no CUDA venv at $cu_venv; run bash .ci/cuda_wheel.sh first" >&2; return 1; }
  mkdir -p "$cache/wheels"
  # The GPU image's torch: its PyPI wheel is the CUDA 13.0 build. Downloaded once, without its dependencies
  # (the CUDA venv already has CUDA 13 libraries and torch's pure-Python dependencies).
  if ! ls "$cache"/wheels/torch-"$torch_version"-*.whl >/dev/null 2>&1; then
    "$py" -m pip download -q --no-deps -d "$cache/wheels" "torch==$torch_version"
  fi
  local venv="$cache/venv"
  if [[ ! -e "$venv/.surm-kit" ]]; then
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --no-deps "$cache"/wheels/torch-"$torch_version"-*.whl
    "$venv/bin/python" -m pip install -q "setuptools>=77" wheel ninja
    # torch's dependencies and the nvidia-* CUDA 13 libraries, from the CUDA venv (after this venv's own torch).
    "$cu_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
      > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/surm-cuda-deps.pth"
    touch "$venv/.surm-kit"
  fi
  local tv; tv="$("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
  echo "gpu_session.sh kit: torch $tv"
  rm -rf "$cache/dist" "$kit_dir"
  mkdir -p "$kit_dir"
  env -u CUDA_HOME -u CUDA_PATH PYTHON="$venv/bin/python" SURM_DIST="$cache/dist" SURM_CUDA_ARCHS="8.0;9.0" \
    MAX_JOBS=2 bash scripts/build_wheel.sh --require-cuda
  local wheel; wheel="$(ls "$cache"/dist/surm_ops-*.whl)"
  cp "$wheel" "$kit_dir/"
  "$venv/bin/python" - "$wheel" "$kit_dir" <<'PY'
import sys, zipfile
names = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.startswith("surm_ops/_C") and n.endswith(".so")]
assert names == ["surm_ops/_C.abi3.so"], names
open(f"{sys.argv[2]}/_C.abi3.so", "wb").write(zipfile.ZipFile(sys.argv[1]).read(names[0]))
PY
  # The check a machine without a GPU allows: the wheel installed into a fresh venv with that torch and its CUDA
  # libraries, imported from outside the repo. Python opens extension modules with RTLD_NOW, so the import
  # resolves every symbol _C needs from libtorch, libc10, libcudart and the C++ runtime.
  local check; check="$(mktemp -d)"
  "$py" -m venv "$check/venv"
  # (A .pth line adds a directory but not the .pth files in it: both directories are named here, torch's first.)
  { "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    "$cu_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
  } > "$("$check/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/surm-kit-torch.pth"
  "$check/venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
  (cd "$check" && "$check/venv/bin/python" -c "
import torch, surm_ops
from surm_ops import _extension
ok, why = _extension.status()
assert ok and _extension.load().__name__ == 'surm_ops._C', why
names = sorted(s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith('surm_ops_C::'))
assert names == ['surm_ops_C::conv_forward', 'surm_ops_C::conv_grad_spectrum'], names
print('kit check: torch', torch.__version__, '-', why, '-', ', '.join(names))") | tee "$kit_dir/CHECK.txt"
  rm -rf "$check"
  {
    echo "built $(date -u +%FT%TZ) from commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "torch $tv, archs 8.0;9.0 (SASS) + compute_90 (PTX), $(basename "$wheel")"
    sha256sum "$kit_dir/_C.abi3.so" | sed "s|$kit_dir/||"
  } > "$kit_dir/BUILD.txt"
  du -sh "$kit_dir"
  echo "gpu_session.sh kit: carry .gpu-kit to the GPU machine (run tool: carry=[\".gpu-kit\"])"
}

# -- run (GPU machine, or CPU with --rehearse) ------------------------------------------------------------------------

out="${OUT:-$PWD/gpu-session}"
rehearse="${SURM_REHEARSE:-0}"
started=$SECONDS
budget="${SURM_GPU_BUDGET_S:-540}"

# stage NAME CAP_S COMMAND...: runs COMMAND with at most min(CAP_S, what is left of the budget), logs a summary line.
stage() {
  local name="$1" cap="$2"; shift 2
  local left=$((budget - (SECONDS - started)))
  ((cap > left)) && cap=$left
  if ((cap < 10)); then
    echo "$name skipped 0 (budget spent)" >> "$out/summary.txt"; return 0
  fi
  local t0=$SECONDS rc=0
  # A fresh bash per stage: timeout cannot run a shell function, and a stage killed at its cap takes only itself.
  timeout --kill-after=10 "$cap" bash "${BASH_SOURCE[0]}" _stage "$@" || rc=$?
  echo "$name $rc $((SECONDS - t0))s" | tee -a "$out/summary.txt"
  return 0
}

load_extension() {
  local report="$out/extension.txt"
  if ((rehearse)); then
    echo "rehearse: the kit's _C (torch 2.11.0+cu130) is not loaded on a CPU machine; the fft backend stands in" \
      > "$report"
    [[ -f "$kit_dir/BUILD.txt" ]] && cat "$kit_dir/BUILD.txt" >> "$report"
    return 0
  fi
  local probe="from surm_ops import _extension; ok, why = _extension.status(); print(why); raise SystemExit(0 if ok else 1)"
  if [[ -f "$kit_dir/_C.abi3.so" ]]; then
    cat "$kit_dir/BUILD.txt" > "$report" 2>/dev/null
    cp "$kit_dir/_C.abi3.so" surm_ops/_C.abi3.so
    if "$py" -c "$probe" >> "$report" 2>&1; then echo "carried _C loaded" | tee -a "$report"; return 0; fi
    echo "carried _C did NOT load (above); building in place instead" | tee -a "$report"
    rm -f surm_ops/_C.abi3.so
  else
    echo "no .gpu-kit/_C.abi3.so was carried; building in place" | tee -a "$report"
  fi
  # The fallback: this GPU's architecture only, to keep it short.
  local arch; arch="$("$py" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  SURM_CUDA_ARCHS="$arch" "$py" setup.py -q build_ext --inplace >> "$report" 2>&1
  "$py" -c "$probe" >> "$report" 2>&1 && echo "in-place build loaded" | tee -a "$report"
}

record_device() {
  { command -v nvidia-smi >/dev/null && nvidia-smi
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
    "$py" -c "import triton; print('triton', triton.__version__)"
    echo "commit ${SURM_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  } > "$out/device.txt" 2>&1
  "$py" -m surm_ops.env > "$out/env.txt" 2>&1
}

run_tests() {
  local args=(-q -ra -p no:cacheprovider -p tests.failed_cases --junitxml="$out/gpu-tests.xml")
  if "$py" -c "import xdist" 2>/dev/null; then args+=(-n "${SURM_GPU_WORKERS:-8}"); fi
  if ((rehearse)); then
    # The cuda backend's glue on CPU (the host emulation of the kernels), a stand-in for the gpu-marked tests.
    args+=(tests/csrc/test_cuda_glue.py -k "${SURM_REHEARSE_TESTS:-float32 and circ}")
  else
    args+=(-m gpu)
  fi
  SURM_FAILED_CASES_DIR="$out/failed-cases" "$py" -m pytest "${args[@]}" > "$out/gpu-tests.log" 2>&1
}

# One benchmark stage: its rows land in $out/bench/{gpu,cpu}.csv when it ends (bench/run.py appends them). The
# arguments after the name are bench/run.py's -k selections (a case runs when it matches any of them).
bench() {
  local name="$1"
  shift
  local args=(bench/run.py --out "$out/bench")
  if ((rehearse)); then args+=(--quick --device cpu --rounds 1 --visit-ms 1); else args+=(--full); fi
  for k in "$@"; do args+=(-k "$k"); done
  "$py" "${args[@]}" > "$out/bench-$name.log" 2>&1
}

cmd_run() {
  mkdir -p "$out"
  : > "$out/summary.txt"
  export PYTHONUNBUFFERED=1 SURM_JIT_VERBOSE=1
  export SURM_BENCH_COMMIT="${SURM_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  export OUT="$out" SURM_REHEARSE="$rehearse"
  ((rehearse)) && export SURM_BENCH_DEVICE=cpu
  echo "mode $([[ $rehearse == 1 ]] && echo rehearse || echo gpu), budget ${budget}s" >> "$out/summary.txt"
  stage extension 300 load_extension
  stage device 60 record_device
  stage tests 240 run_tests
  # docs/performance.md §3, targets 1, 2 (circulant fwd and fwd+bwd at d = 1024/4096/8192, 16384 tokens, every backend),
  # 4 (block-circulant against PEFT's C3A), 7 (a 16-token call), 6 (svd), 5 (adapter layers fused and unfused
  # against the frozen layer; SARA against it stands for svd against the bare GEMM).
  # Labels are "<op>-<tokens>x<n_in>x<n_out>[-detail]-<dtype> <mode>" and "layer <shape> <dtype> <mode>"
  # (bench/cases.py); "-word" excludes. Backward-only rows are left out: fwd and full (fwd+bwd) are the targets.
  if ((rehearse)); then
    stage bench-circulant 150 bench circulant "circulant-256x64x64 -skew -block"
    stage bench-block 60 bench block "block_circulant"
    stage bench-svd 45 bench svd "svd"
    stage bench-layers 120 bench layers "layer"
  else
    local d circ=()
    for d in 1024 4096 8192; do circ+=("circulant-16384x${d}x${d}-bfloat16 -skew -block -bwd"); done
    stage bench-circulant 150 bench circulant "${circ[@]}"
    stage bench-block 60 bench block "block_circulant bfloat16 -bwd"
    stage bench-small 30 bench small "circulant-16x4096x4096 -skew -block -bwd"
    stage bench-svd 45 bench svd "svd bfloat16 -bwd"
    stage bench-layers 120 bench layers "layer -bwd"
  fi
  echo "total $((SECONDS - started))s" | tee -a "$out/summary.txt"
  # Exit status: failed when any stage failed (the summary says which).
  ! grep -qE '^[a-z-]+ [1-9][0-9]* ' "$out/summary.txt"
}

case "${1:-}" in
  kit) cmd_kit ;;
  _stage) shift; "$@" ;;
  run)
    [[ "${2:-}" == "--rehearse" ]] && rehearse=1
    cmd_run ;;
  *) sed -n 2,24p "$0"; exit 2 ;;
esac
