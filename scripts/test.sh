#!/usr/bin/env bash
# Create or reuse .venv, install nls with its test extras, run the test suite.
#   bash scripts/test.sh                 # default suite (slow benchmarks deselected)
#   bash scripts/test.sh -m slow         # only the slow tests
#   bash scripts/test.sh tests/test_config.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# keep build and scene caches inside the project
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
exec .venv/bin/python -m pytest "$@"
