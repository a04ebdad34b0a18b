#!/usr/bin/env bash
# CI's CUDA stage, on a machine without a GPU: the CUDA wheel really built (nvcc, linked against a CUDA torch),
# installed into a fresh venv, loaded from outside the repo, its op schemas checked against the Python glue, the ops
# answering on CPU with that CUDA torch, and the JIT build run for real. Called by .ci/run; runs alone as well.
#
# Environment:
#   SURM_CUDA_VENV          the CUDA torch venv, kept outside the clone and reused between runs
#                           (default ~/.cache/surm_ops/venv-cu); created on first use
#   SURM_CUDA_TORCH         its torch (default 2.14.1: the CUDA 13.0 build, which this machine's pip serves from disk)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PIP_DISABLE_PIP_VERSION_CHECK=1
cu_venv="${SURM_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/surm_ops/venv-cu}"
torch_pin="torch==${SURM_CUDA_TORCH:-2.14.1}"
# What the build (setuptools, ninja), the checks and the op tests need besides torch.
deps=("setuptools>=77" wheel ninja pytest numpy scipy safetensors)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step_start=$SECONDS
step() { printf -- '-- cuda: %s (%ds)\n' "$1" "$((SECONDS - step_start))"; step_start=$SECONDS; }

# 1. The CUDA torch venv, reused: re-installed only when the pins change (a stamp holds their hash).
stamp="$cu_venv/.surm-cuda-$(printf '%s\n' "$torch_pin" "${deps[@]}" | sha256sum | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "cuda_wheel.sh: creating $cu_venv ($torch_pin, a CUDA build of several GB)"
  rm -rf "$cu_venv"
  mkdir -p "$(dirname "$cu_venv")"
  python3 -m venv "$cu_venv"
  "$cu_venv/bin/python" -m pip install -q "$torch_pin" "${deps[@]}"
  touch "$stamp"
fi
cu="$cu_venv/bin/python"
"$cu" -c "import sys, torch; assert torch.version.cuda, torch.__version__; \
print('cuda venv:', sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
step "venv"

# 2. The wheel, built as a user builds it (no CUDA_HOME set: setup.py must find the toolkit itself).
env -u CUDA_HOME -u CUDA_PATH PYTHON="$cu" SURM_DIST="$tmp/dist" SURM_CUDA_ARCHS="8.0;9.0" MAX_JOBS=2 \
  bash scripts/build_wheel.sh --require-cuda
wheel="$(ls "$tmp"/dist/surm_ops-*.whl)"
name="$(basename "$wheel")"
printf 'wheel: %s (%s bytes)\n' "$name" "$(stat -c %s "$wheel")"
[[ "$name" =~ ^surm_ops-[0-9.]+\+cu[0-9]+torch[0-9]+\.[0-9]+-cp310-abi3-linux_x86_64\.whl$ ]] || {
  echo "cuda_wheel.sh: $name is not an abi3 wheel with a +cu<CUDA>torch<X.Y> local version" >&2; exit 1; }
step "build"

# 3. A fresh venv with that torch: the CUDA venv's site-packages joined through a .pth file (no second copy of
# several GB), the wheel installed with no index, used from outside the repo.
python3 -m venv "$tmp/venv"
smoke="$tmp/venv/bin/python"
site="$("$smoke" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$cu" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/surm-cuda-torch.pth"
"$smoke" -m pip install -q --no-deps --no-index "$wheel"
cd "$tmp"
"$smoke" - "$site" <<'PY'
import sys, torch, surm_ops
from surm_ops import _extension
ok, reason = _extension.status()
mod = _extension.load()
assert ok and mod.__name__ == "surm_ops._C" and mod.__file__.startswith(sys.argv[1]), (ok, reason)
assert mod.__file__.endswith(".abi3.so"), mod.__file__
assert not torch.cuda.is_available()
print("loaded:", mod.__file__)
PY
"$smoke" -m surm_ops.env > "$tmp/env.txt"
head -n 7 "$tmp/env.txt"
grep -q "^_C       available: loaded from $site/surm_ops/_C" "$tmp/env.txt" || {
  echo "cuda_wheel.sh: python -m surm_ops.env does not report the wheel's _C as loaded" >&2; exit 1; }
grep -q "no CUDA device visible" "$tmp/env.txt"
step "install and load"

# 4. Schemas against the glue, and the ops on CPU with this CUDA torch: the repo's tests, copied out of the repo so
# that `surm_ops` can only be the installed wheel.
mkdir "$tmp/t"
cp -r "$root/tests" "$root/csrc" "$root/pyproject.toml" "$tmp/t/"
cd "$tmp/t"
SURM_REQUIRE_CUDA_TORCH=1 "$smoke" -m pytest -q -p no:cacheprovider -x \
  tests/csrc/test_built_extension.py tests/ops/test_registration.py tests/ops/test_numerics.py \
  -k "test_built_extension or test_registration or (matches_oracle and not on_gpu and not triton and float32)"
step "schemas and op tests"

# 5. The JIT build for real, from the source tree (which has no _C), in the CUDA venv.
cd "$root"
SURM_REQUIRE_CUDA_TORCH=1 "$cu" -m pytest -q -p no:cacheprovider tests/csrc/test_jit_build.py
step "JIT build"
