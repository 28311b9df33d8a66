#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a CUDA machine that cannot reach a package index:
# wheels of nls's dependencies that such a machine's stock PyTorch image lacks, into ./.whl, and a
# small copy of lego (all training views, the first N test and the first M val views) into ./.devdata/nerf/lego.
# Run it here (with network), then copy or carry .whl and .devdata along with the checkout and run
#   NLS_DATA=$PWD/.devdata bash scripts/gpu_check.sh
#
#   bash scripts/gpu_prepare.sh [PYTHON_VERSION] [TEST_VIEWS] [VAL_VIEWS]    # defaults: 3.12 10 TEST_VIEWS
# TEST_VIEWS "all" copies the whole test circle (200 views, 25 MB; for LEGO_EVERY in gpu_check.sh).
# A carry of at most 64 MiB holds the wheels (32 MB, of which embreex is 15 MB: only the mesh-scene
# tests need it), the training views (13 MB) and the whole test circle, not the val split as well.
# Environment: NLS_DATA (source data root, default ../shared/data). Both folders are local
# artefacts: keep them out of git (e.g. add /.whl/ and /.devdata/ to .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${1:-3.12}"
views="${2:-10}"
val_views="${3:-$views}"
data="${NLS_DATA:-../shared/data}"
mkdir -p .whl
# torch, numpy, scipy, scikit-image, imageio, pillow, pluggy, pyyaml, rich and matplotlib come with
# the usual CUDA PyTorch images; these do not (typing-extensions: pydantic needs a recent one)
for pkg in nerfacc==0.5.3 trimesh pydantic pydantic-core annotated-types typing-inspection typing-extensions \
           pykdtree libigl embreex; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$pkg"
done
src="$data/nerf/lego"
if [ -d "$src" ]; then
  dst=.devdata/nerf/lego
  rm -rf "$dst" && mkdir -p "$dst/test" "$dst/val"
  cp -r "$src/train" "$src/transforms_train.json" "$dst/"
  python3 - "$src" "$dst" "$views" "$val_views" <<'EOF'
import json, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
count = {"test": sys.argv[3], "val": sys.argv[4]}
for split in ("test", "val"):  # val: held-out views like the training ones (scene.splits=[train,val,test])
    meta = json.load(open(f"{src}/transforms_{split}.json"))
    if count[split] != "all":
        meta["frames"] = meta["frames"][:int(count[split])]  # nls evaluates the first eval.max_images views
    json.dump(meta, open(f"{dst}/transforms_{split}.json", "w"), indent=1)
    for f in meta["frames"]:
        shutil.copy(f"{src}/{f['file_path'][2:]}.png", f"{dst}/{f['file_path'][2:]}.png")
EOF
else
  echo "no lego under $src: the lego stage of gpu_check.sh will skip" >&2
fi
du -sh .whl .devdata 2>/dev/null || true
