#!/usr/bin/env bash
# Create or reuse .venv, install nls with its test extras, run the test suite.
#   bash scripts/test.sh                 # default suite (slow benchmarks deselected)
#   bash scripts/test.sh -m slow         # only the slow tests
#   bash scripts/test.sh tests/test_config.py -x
#   NLS_TEST_WORKERS=0 bash scripts/test.sh ...   # in one process (for --pdb, or to time a test alone)
# The tests run on NLS_TEST_WORKERS pytest-xdist workers, 2 by default: on 2 cores the suite takes 8 to 10
# minutes instead of 13 to 14, since much of it waits on subprocesses, imports and files.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,viewer
# the `nls view` browser test drives a system Chromium; install Debian's when we can (root + apt-get),
# otherwise that test skips with the reason. NLS_NO_BROWSER=1 skips the install.
if [ -z "${NLS_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium for the viewer browser test (NLS_NO_BROWSER=1 skips this)"
  { timeout 600 apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { timeout 300 apt-get update -qq >/dev/null 2>&1 && timeout 600 apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "could not install chromium: the viewer browser test will skip"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# keep build and scene caches inside the project
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
exec .venv/bin/python -m pytest -n "${NLS_TEST_WORKERS:-2}" "$@"
