#!/usr/bin/env bash
# The default demo, end to end on CPU, no data download:
# reconstruct the procedural CSG scene (which evaluates it), render the test views and a turntable,
# export a mesh, write the run's HTML report, and print where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
SCENE="${1:-scenes/csg_dense.yaml}"
shift || true
start=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# the run folder is the one this reconstruct printed (its summary's last "run folder:" line), not the
# newest folder under outputs/, which --output or an older run could make another one
# the default scene is also validated while it trains: a test view's PSNR on the progress bar, its image in
# renders/progress/ (other scenes keep their own settings; a scene without images would validate its mesh)
val=()
[ "$SCENE" = scenes/csg_dense.yaml ] && val=(--val-every 300)
.venv/bin/nls reconstruct "$SCENE" "${val[@]}" "$@" | tee "$log"
run=$(sed -n 's/^run folder: *//p' "$log" | tail -n 1)
if [ -z "$run" ] || [ ! -d "$run" ]; then
  echo "demo: could not find the run folder in the output of nls reconstruct" >&2
  exit 1
fi
.venv/bin/nls render "$run" --spiral 36
.venv/bin/nls export "$run" -o "$run/meshes/mesh.glb"
.venv/bin/nls report "$run"   # (the evaluation reconstruct made is in it: nls eval would repeat it)
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "run folder:  $run"
echo "  summary:   $run/summary.json"
echo "  report:    $run/report.html   (metrics, curves, renders against ground truth, slices, turntable)"
echo "  renders:   $run/renders/test   (prediction | ground truth | depth)"
[ -d "$run/renders/progress" ] && echo "  progress:  $run/renders/progress   (a test view every 300 steps while training)"
echo "  turntable: $(ls "$run"/renders/turntable.* 2>/dev/null | head -n 1)"
echo "  meshes:    $run/meshes/mesh.ply  $run/meshes/mesh.glb"
