#!/usr/bin/env bash
# The default demo, end to end on CPU, no data download:
# reconstruct the procedural CSG scene, render the test views and a turntable,
# export a mesh, evaluate, and print where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export NLS_CACHE="${NLS_CACHE:-$PWD/.cache/nls}"
SCENE="${1:-scenes/csg_dense.yaml}"
shift || true
start=$(date +%s)
.venv/bin/nls reconstruct "$SCENE" "$@"
run=$(ls -td outputs/*/*/*/ | head -n 1)
run=${run%/}
.venv/bin/nls render "$run" --spiral 36
.venv/bin/nls export "$run" -o "$run/meshes/mesh.glb"
.venv/bin/nls eval "$run"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "run folder:  $run"
echo "  summary:   $run/summary.json"
echo "  renders:   $run/renders/test   (prediction | ground truth | depth)"
echo "  turntable: $(ls "$run"/renders/turntable.* 2>/dev/null | head -n 1)"
echo "  meshes:    $run/meshes/mesh.ply  $run/meshes/mesh.glb"
