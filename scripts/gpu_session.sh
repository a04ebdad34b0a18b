#!/usr/bin/env bash
# The GPU work of issue 7, in stages that each fit one device call (10 min): run from the repo root on a machine
# with a CUDA torch, nvcc, triton and pytest (the lent H100/H200 image has them; it has no network, so nothing here
# installs from an index). Logs and results go to $OUT (the device tool returns it), else ./gpu-session/.
#
#   bash scripts/gpu_session.sh build    # CUDA wheel from a clean copy (timed), installed in a fresh venv, imported;
#                                        # then the in-place extension the tests and benchmarks use
#   bash scripts/gpu_session.sh test     # every gpu-marked test: each op x backend x dtype vs the float64 oracle
#   bash scripts/gpu_session.sh bench    # the benchmark suite at docs/performance.md's shapes -> bench/results/gpu.*
#
# Stages can be chained (`build test`); a later call on a fresh machine must run `build` again first.
set -uo pipefail
out="${OUT:-$PWD/gpu-session}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SURM_JIT_VERBOSE=1
py=python3
rc=0

stage_build() {
  { nvidia-smi; $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
    > "$out/device.txt" 2>&1
  # A clean copy of what the wheel is built from (the device's copy of the tree may carry no .git).
  local src; src="$(mktemp -d)"
  cp -r csrc kernels surm_ops scripts setup.py pyproject.toml MANIFEST.in README.md "$src"/
  find "$src" \( -name '__pycache__' -o -name '*.so' \) -prune -exec rm -rf {} +
  local t0=$SECONDS
  (cd "$src" && bash scripts/build_wheel.sh --require-cuda) > "$out/wheel-build.log" 2>&1 || rc=1
  echo "wheel build: $((SECONDS - t0)) s" | tee -a "$out/wheel-build.log"
  ls "$src"/dist/*.whl 2>/dev/null | tee "$out/wheel-name.txt"
  $py -m venv --system-site-packages "$src/venv"
  "$src/venv/bin/python" -m pip install -q --no-deps --no-index "$src"/dist/*.whl >> "$out/wheel-build.log" 2>&1 || rc=1
  (cd / && "$src/venv/bin/python" -m surm_ops.env) > "$out/wheel-env.txt" 2>&1 || rc=1
  grep -q "loaded from" "$out/wheel-env.txt" || { echo "the wheel's surm_ops._C did not load" | tee -a "$out/wheel-env.txt"; rc=1; }
  # The tests and benchmarks import the source tree: build _C next to it.
  t0=$SECONDS
  $py setup.py -q build_ext --inplace > "$out/inplace-build.log" 2>&1 || rc=1
  echo "in-place build: $((SECONDS - t0)) s" | tee -a "$out/inplace-build.log"
  $py -m surm_ops.env > "$out/env.txt" 2>&1 || rc=1
}

stage_test() {
  # No TRITON_INTERPRET: with a GPU present tests/conftest.py leaves Triton compiling for it.
  $py -m pytest -m gpu -q -ra -p no:cacheprovider --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
}

stage_bench() {
  # Pass SURM_BENCH_COMMIT=<sha> where the tree has no .git (the rows record it).
  export SURM_BENCH_COMMIT="${SURM_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  # --full: every case of the GPU suite; --save: into bench/results/gpu.* (copied to $out below).
  $py bench/run.py --full --save 2>&1 | tee "$out/bench.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
  cp bench/results/gpu* "$out/" 2>/dev/null || true
}

[[ $# -gt 0 ]] || { sed -n 2,13p "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    build|test|bench) "stage_$stage" ;;
    *) echo "unknown stage: $stage (build, test or bench)"; exit 2 ;;
  esac
done
exit $rc
