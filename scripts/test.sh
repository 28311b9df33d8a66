#!/usr/bin/env bash
# Create or reuse .venv, install nls with its test extras, run the test suite.
#   bash scripts/test.sh                 # default suite (slow benchmarks deselected)
#   bash scripts/test.sh -m slow         # only the slow tests
#   bash scripts/test.sh tests/test_config.py -x
#   NLS_TEST_WORKERS=0 bash scripts/test.sh ...   # in one process (for --pdb, or to time a test alone)
# The tests run on NLS_TEST_WORKERS pytest-xdist workers, 2 by default, since much of the suite waits on
# subprocesses, imports and files. With more than one worker each worker, and each nls process a test starts,
# trains on one CPU thread (NLS_THREADS=1, unless NLS_THREADS is set): two workers of two threads each put four
# busy threads on two cores, and torch's parallel loops then wait on threads that are not running (on 2 cores
# the suite took 1311 s that way and 1079 s with one thread in the nls processes alone).
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
workers="${NLS_TEST_WORKERS:-2}"
if [ "$workers" != 0 ] && [ "$workers" != 1 ]; then
  export NLS_THREADS="${NLS_THREADS:-1}"
fi
# keep build and scene caches inside the project
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
exec .venv/bin/python -m pytest -n "$workers" --durations=25 "$@"
