#!/usr/bin/env bash
# Builds a surm_ops wheel against the torch already installed, with the CUDA extension surm_ops._C when that torch
# has CUDA. The same script runs locally and in .github/workflows/wheels.yml.
#
#   bash scripts/build_wheel.sh                 # CUDA wheel where torch has CUDA, else a pure wheel (said clearly)
#   bash scripts/build_wheel.sh --require-cuda  # exit 1 unless a CUDA wheel with surm_ops._C was built (CI)
#   bash scripts/build_wheel.sh --sdist         # the source distribution, never compiling (SURM_SKIP_CUDA_BUILD=1)
# Environment:
#   PYTHON               interpreter whose torch to build against (default: .venv/bin/python, else python3)
#   SURM_DIST            output directory (default: dist/)
#   SURM_CUDA_ARCHS      compute capabilities, default "8.0;9.0" (setup.py); SASS for each, PTX for the newest
#   SURM_LOCAL_VERSION   local version label; default cu<CUDA>torch<major.minor> from the installed torch
#   CUDA_HOME, CUDA_PATH the CUDA toolkit; not needed: setup.py finds it from the nvcc on PATH (surm_ops/_toolkit.py)
# The wheel is cp310-abi3 (setup.py: py_limited_api): one per torch x CUDA pair, for CPython 3.10 and later.
# It never installs torch: a bare `torch` requirement would resolve to a multi-GB CUDA build of an arbitrary version.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode=wheel
require_cuda=0
for arg in "$@"; do
  case "$arg" in
    --require-cuda) require_cuda=1 ;;
    --sdist) mode=sdist ;;
    *) echo "usage: bash scripts/build_wheel.sh [--require-cuda] [--sdist]" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
dist="${SURM_DIST:-$root/dist}"
mkdir -p "$dist"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [[ "$mode" == sdist ]]; then
  "$py" -m pip install -q build
  SURM_SKIP_CUDA_BUILD=1 "$py" -m build --sdist --outdir "$dist" .
  exit 0
fi

if ! "$py" -c "import torch" 2>/dev/null; then
  echo "build_wheel.sh: $py cannot import torch; install a pinned torch first (e.g. torch==2.13.0)" >&2
  exit 1
fi
read -r torch_version torch_cuda < <("$py" -c "import torch; print(torch.__version__.split('+')[0], torch.version.cuda)")
rm -rf build  # setuptools never cleans build/: a stale module there would slip into the wheel

if [[ "$torch_cuda" == None ]]; then
  msg="torch $torch_version has no CUDA (torch.version.cuda is None): building a pure-Python wheel without surm_ops._C"
  if [[ "$require_cuda" == 1 ]]; then echo "build_wheel.sh: $msg; --require-cuda refuses" >&2; exit 1; fi
  echo "build_wheel.sh: $msg"
  SURM_SKIP_CUDA_BUILD=1 SURM_LOCAL_VERSION="" "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$dist" .
  exit 0
fi

# The toolkit, by setup.py's own rule (surm_ops/_toolkit.py), found here first so that a missing one is said plainly
# and early rather than inside pip's log.
if ! toolkit="$("$py" -c "import importlib.util as u, sys; s = u.spec_from_file_location('t', 'surm_ops/_toolkit.py'); \
m = u.module_from_spec(s); s.loader.exec_module(m)
try: print(m.find())
except m.ToolkitError as e: sys.exit(str(e))")"; then
  msg="torch $torch_version has CUDA $torch_cuda but no CUDA toolkit was found (above)"
  if [[ "$require_cuda" == 1 ]]; then echo "build_wheel.sh: $msg; --require-cuda refuses" >&2; exit 1; fi
  echo "build_wheel.sh: $msg; building a pure-Python wheel without surm_ops._C"
  SURM_SKIP_CUDA_BUILD=1 SURM_LOCAL_VERSION="" "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$dist" .
  exit 0
fi
major_minor="$(echo "$torch_version" | cut -d. -f1,2)"
export SURM_LOCAL_VERSION="${SURM_LOCAL_VERSION:-cu${torch_cuda//./}torch${major_minor}}"
echo "build_wheel.sh: torch $torch_version, CUDA $torch_cuda, toolkit $toolkit, archs ${SURM_CUDA_ARCHS:-8.0;9.0}, version +$SURM_LOCAL_VERSION"
# With --require-cuda, setup.py itself refuses to skip the extension (SURM_REQUIRE_CUDA=1).
export SURM_REQUIRE_CUDA="$require_cuda"
# --no-build-isolation: the build must see this torch (an isolated build would fetch one of its own).
"$py" -m pip wheel --no-build-isolation --no-deps -w "$dist" .
wheel="$(ls -t "$dist"/surm_ops-*+"${SURM_LOCAL_VERSION}"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then echo "build_wheel.sh: no wheel tagged +$SURM_LOCAL_VERSION was written" >&2; exit 1; fi
if ! "$py" -c "import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist(); \
sys.exit(not any(x.startswith('surm_ops/_C') and x.endswith('.so') for x in n))" "$wheel"; then
  echo "build_wheel.sh: $wheel has no surm_ops/_C*.so (see the build log: setup.py says why it skipped)" >&2
  exit 1
fi
echo "build_wheel.sh: built $wheel"
