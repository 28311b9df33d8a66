#!/usr/bin/env bash
# The checks that need a CUDA device, in one go: build nerfacc's CUDA extension, run the CUDA-vs-CPU
# tests, time the rs_sdf blur on the device, and train lego (RS-SDF against the hash-grid baseline)
# under one wall-clock budget each. Not part of scripts/test.sh (CI has no GPU).
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: outputs/gpu_check
#
# Environment:
#   TESTS_K       pytest -k expression of the tests stage (default "cuda or tcnn or packed_samples": all of
#                 them; e.g. blur)
#   STAGES        space list of build, blur, lego, tests, gap (default: the first four, in that order;
#                 gap evaluates the lego runs on 3 training views)
#   LEGO_BUDGET   training seconds per lego run (default 90)
#   LEGO_STEPS    train every lego run for this many steps instead of LEGO_BUDGET seconds (--lego-steps;
#                 RS-SDF's phases as fractions of the steps); set LEGO_LIMIT to cover them
#   LEGO_GRIDS    RS-SDF voxel grids, one run each (default 256,384: the paper's; "none": baselines only)
#   LEGO_BASELINES  default hash (the paper's baseline; add ,dense for the dense grid; empty: none)
#   LEGO_SETS     space list of KEY=VALUE overrides for every lego run (RS-SDF and baselines), e.g.
#                 renderer.random_background=true (nerfacc's and Instant-NGP's training protocol); one
#                 per line instead when a value holds spaces (e.g. losses=[{"type": "photometric"}])
#   LEGO_VAL      also score every lego run on this many held-out val views (default 0: none; the
#                 first 10 test views are one arc of the test circle, val views spread like the training ones)
#   LEGO_EVERY    also score every lego run on every K-th test view, with each view's PSNR (default 0: none;
#                 10 is 20 views around lego's 200-view test circle; needs those test views in the data)
#   LEGO_LIMIT    seconds before the lego stage is stopped (default 4 x budget + 200)
#   NLS_DATA      data root holding nerf/lego (default ../shared/data)
# Uses the python3 on PATH, which must hold a CUDA build of torch and nls's dependencies. On a machine
# without package access, wheels put in ./.whl are installed into a temporary folder first
# (scripts/gpu_prepare.sh fetches them, and a small lego copy into ./.devdata, on a machine with network).
# Every stage logs to OUT_DIR/log.txt; the lego runs' summaries and the benchmark JSON are packed into
# OUT_DIR/results.tar.gz; the built nerfacc extension is copied to OUT_DIR/nerfacc_cuda.so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/log.txt"
STAGES="${STAGES:-build blur lego tests}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
say() { echo "$@" | tee -a "$LOG"; }

if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/nls_site ]; then  # once per machine: a reinstall would
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nls_site \
    .whl/*.whl >>"$LOG" 2>&1 || say "wheel install failed (see log)"  # touch nerfacc's sources: a rebuild
fi
[ -d /tmp/nls_site ] && export PYTHONPATH="$PYTHONPATH:/tmp/nls_site"
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
export PATH="$(dirname "$NVCC"):$PATH"
export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$NVCC")")")}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then  # build for this device only (minutes less)
  TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)"
  export TORCH_CUDA_ARCH_LIST
fi
{
  echo "== $(date -u +%FT%TZ) $(hostname) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | head -3
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
             "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")'
  echo "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS nvcc: $("$NVCC" --version | tail -1)"
} 2>&1 | tee -a "$LOG"

stage() {  # stage NAME TIMEOUT_S CMD... : run with a time limit, log, report rc and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  say "== stage $name (limit ${limit}s) $(date -u +%T)"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "== stage $name rc=$rc $((SECONDS - t0)) s"
  return $rc
}

for s in $STAGES; do
  case "$s" in
    build)
      # nerfacc's extension and the two C++ CPU kernels (used by the CPU side of the comparisons), in parallel
      stage build-cpu-kernels 240 python3 -c 'from plugins.ngp.hashgrid import _KERNEL as a; from plugins.rs_sdf.blur import KERNEL as b; print("cpu kernels", a.load(), b.load(), a.status(), b.status())' &
      cpu_pid=$!
      stage build-nerfacc 300 python3 -c 'import torch; from nerfacc.cuda import _backend as b; assert b._C is not None, "nerfacc CUDA backend did not load"; print("nerfacc _C", b._C.__file__)'
      wait $cpu_pid
      find "$TORCH_EXTENSIONS_DIR" -name 'nerfacc_cuda*.so' -exec cp {} "$OUT_DIR/nerfacc_cuda.so" \; 2>/dev/null
      ;;
    tests)
      stage tests 240 python3 -m pytest -q -p no:cacheprovider -m "not slow" -rs tests/test_cuda.py \
        tests/test_rendering.py::test_cuda_path_matches_torch_path tests/test_hashgrid.py \
        tests/test_depth_supervision.py -k "${TESTS_K:-cuda or tcnn or packed_samples}"
      ;;
    blur)
      stage blur 120 python3 scripts/bench.py rs_sdf --only blur --device cuda --size 384 \
        --out "$OUT_DIR/bench_rs_sdf_blur.json"
      ;;
    lego)
      # --both-set KEY=VALUE per word of LEGO_SETS, or per line when it holds a newline (values with
      # spaces); `read` splits without glob expansion ([train,val,test])
      lego_sep=$' \t\n'; [[ "${LEGO_SETS:-}" == *$'\n'* ]] && lego_sep=$'\n'
      lego_words=(); lego_sets=()
      IFS="$lego_sep" read -r -d '' -a lego_words <<<"${LEGO_SETS:-}" || true
      for kv in ${lego_words[@]+"${lego_words[@]}"}; do [[ -n "$kv" ]] && lego_sets+=(--both-set "$kv"); done
      stage lego "${LEGO_LIMIT:-$(( ${LEGO_BUDGET:-90} * 4 + 200 ))}" python3 scripts/bench.py rs_sdf --only lego --device cuda \
        --budget "${LEGO_BUDGET:-90}" ${LEGO_STEPS:+--lego-steps "$LEGO_STEPS"} --lego-grid "${LEGO_GRIDS:-256,384}" \
        --lego-baselines "${LEGO_BASELINES-hash}" --val-images "${LEGO_VAL:-0}" --test-every "${LEGO_EVERY:-0}" \
        ${lego_sets[@]+"${lego_sets[@]}"} \
        --out "$OUT_DIR/bench_rs_sdf_lego.json"
      ;;
    gap)
      # the lego runs' PSNR on 3 *training* views (white background, as the test views); with LEGO_VAL the
      # bench scores held-out val views too: train >> val means over-fitting, val >> test that the test
      # views themselves are harder (as on the H200: 35.2 / 33.8 / 26.7 dB for the hash grid)
      for run in $(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["lego"]
runs = [v["run"] for v in r.values() if isinstance(v, dict) and "run" in v]
print(" ".join(sorted(runs, key=lambda run: run.rstrip("/").split("/")[-2] == "rs_sdf")))' \
                   "$OUT_DIR/bench_rs_sdf_lego.json" 2>>"$LOG"); do
        stage "gap-$(basename "$(dirname "$run")")" 120 python3 -m pipeline.cli eval "$run" -q --device cuda \
          --set eval.split=train --set eval.max_images=3 \
          -o "$OUT_DIR/gap_train_$(basename "$(dirname "$run")")_$(basename "$run").json"
      done
      ;;
    *) say "unknown stage $s (valid: build tests blur lego gap)";;
  esac
done
# what comes back: the log, the JSON, and the runs' small records (no checkpoints)
find outputs/bench/runs_rs_sdf -maxdepth 6 \( -name summary.json -o -name config.yaml -o -name metrics.jsonl \
  -o -name cmd.txt -o -name 'eval_*.json' \) 2>/dev/null | tar czf "$OUT_DIR/results.tar.gz" -T - "$OUT_DIR"/*.json 2>/dev/null
say "== done $(date -u +%T)"
grep -E "^== stage .* rc=|passed|failed|error" "$LOG" | tail -20
failed=$(grep -cE "^== stage .* rc=[1-9]" "$LOG" || true)
if [ "$failed" -gt 0 ]; then  # the exit code says it too, for whoever scripts this check
  say "== $failed stage(s) failed"
  exit 1
fi
