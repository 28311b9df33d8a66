#!/usr/bin/env bash
# Create or reuse .venv and install nls into it (editable), with optional extras.
#   bash scripts/setup.sh            # runtime only
#   bash scripts/setup.sh test       # with test extras
# torch is installed first, pinned to 2.13.0, so nls's own requirements never pick another torch.
# Which build the pin gives depends on the index: this project's machines serve the CPU wheel from
# local disk; PyPI's Linux wheel is a CUDA build (it also runs on CPU, but is several GB). For the CPU
# wheel elsewhere: NLS_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
# On a CUDA machine: install a CUDA torch into .venv first (see README), then run this;
# NLS_TORCH_SPEC overrides the pin (e.g. NLS_TORCH_SPEC="torch==2.13.0+cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# The stamp is named after pyproject.toml and holds the extras installed with it, so a setup that
# asks for fewer extras than are installed (demo.sh after test.sh) does not reinstall.
stamp=".venv/.nls-setup-$(cat pyproject.toml | sha256sum | cut -c1-16)"
have=""
[ -f "$stamp" ] && have="$(cat "$stamp")"
missing=0
for e in ${extras//,/ }; do
  case ",$have," in *",$e,"*) ;; *) missing=1 ;; esac
done
if [ -f "$stamp" ] && [ "$missing" = 0 ] && $VPY -c "import pipeline, torch, nerfacc" 2>/dev/null; then
  exit 0
fi
# install what is asked for and keep what was there: the union, sorted
extras="$(echo "${have},${extras}" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! $VPY -c "import torch" 2>/dev/null; then
  torch_args=("${NLS_TORCH_SPEC:-torch==2.13.0}")
  [ -n "${NLS_TORCH_INDEX:-}" ] && torch_args+=(--index-url "$NLS_TORCH_INDEX")
  echo "installing ${torch_args[*]}"
  $VPY -m pip install -q "${torch_args[@]}"
fi
# Until 2026-12 the distribution was named "nls" (PyPI's "nls" is an unrelated package). An editable
# install of that name left in .venv would keep a second copy of the script and entry points: remove it.
for meta in .venv/lib/python*/site-packages/nls-*.dist-info/METADATA; do
  if [ -f "$meta" ] && grep -q '^Summary: Neural level sets' "$meta"; then
    echo "removing the old install of this project under the name nls (now neural-level-sets)"
    $VPY -m pip uninstall -q -y nls
  fi
done
target="."
[ -n "$extras" ] && target=".[$extras]"
echo "installing neural-level-sets, the nls pipeline ($target)"
$VPY -m pip install -q -e "$target"
rm -f .venv/.nls-setup-*
echo "$extras" > "$stamp"
