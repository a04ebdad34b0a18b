#!/usr/bin/env bash
# Developer entry point; sets up everything it needs on a fresh machine.
#   bash scripts/dev.sh test  [pytest args...]
#   bash scripts/dev.sh bench [bench/run.py args...]
# Environment:
#   SURM_VENV              virtual environment to use or create (default: .venv in the repo root)
#   SURM_VENV_SYSTEM_SITE  1: create it with --system-site-packages, so a torch installed outside is used
#   SURM_TORCH_VERSION     torch to install when the venv has none (default 2.13.0)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cmd="${1:-}"
case "$cmd" in
  test | bench) shift ;;
  *)
    echo "usage: bash scripts/dev.sh {test|bench} [args...]" >&2
    exit 2
    ;;
esac

venv="${SURM_VENV:-$root/.venv}"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
  venv_args=()
  if [[ "${SURM_VENV_SYSTEM_SITE:-0}" == 1 ]]; then venv_args+=(--system-site-packages); fi
  echo "dev.sh: creating $venv"
  python3 -m venv "${venv_args[@]}" "$venv"
fi
pip=("$py" -m pip --disable-pip-version-check)

# Always pinned: a bare `torch` resolves to the newest CUDA build and several GB of NVIDIA packages, while
# torch==2.13.0 takes the CPU wheel that lies on disk here.
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "dev.sh: installing torch==${SURM_TORCH_VERSION:-2.13.0}"
  "${pip[@]}" install -q "torch==${SURM_TORCH_VERSION:-2.13.0}"
fi

# The editable install only has to be redone when the build description changes.
hash="$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)"
stamp="$venv/.surm-$cmd-$hash"
if [[ ! -e "$stamp" ]]; then
  echo "dev.sh: installing surm_ops[$cmd] (editable)"
  # --no-build-isolation so setup.py sees the torch above; that makes the build requirements our job.
  "${pip[@]}" install -q "setuptools>=77" wheel
  "${pip[@]}" install -q --no-build-isolation -e ".[$cmd]"
  rm -f "$venv"/.surm-"$cmd"-*
  touch "$stamp"
fi

case "$cmd" in
  # No explicit path: pytest falls back to testpaths (tests/), and `dev.sh test tests/ops/x.py` runs just that file.
  test) exec "$py" -m pytest "$@" ;;
  bench) exec "$py" bench/run.py "$@" ;;
esac
