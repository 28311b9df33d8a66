"""Benchmark ``sparse_depth``: DS-NeRF's depth from structure from motion's keypoints, on few training views.

The masks benchmark's shoot (lego's 100 train views and first 15 test views over a tiled floor, as photos, lego's
alpha as object masks; ``python scripts/bench.py masks --help``) is posed by structure from motion once, from all
its photos; then ``lego_dense.yaml`` trains ``--steps`` on only the first ``--views`` training photos (by name;
``scene.max_images``), twice:

* ``photometric``: its own losses;
* ``+ sparse depth``: ``scene.sparse_depth: true`` (the z-depth of the 3D point each keypoint observes, at its
  pixel, kept on lego by the masks), the ``depth`` loss (``--weight``, ``--kind``, ``--sigma``) and
  ``train.depth_rays`` (``--rays``) more rays a step through those pixels.

Both are scored on the 15 held-out photos, composited on white by their masks. Writes
outputs/bench/sparse_depth.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py sparse_depth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=12, help="training photos used (default 12)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of each run (default 1000)")
    ap.add_argument("--weight", type=float, default=0.1, help="the depth loss's weight (default 0.1: here better "
                    "than the loss's own default 0.01)")
    ap.add_argument("--kind", default="l1", choices=("l1", "relative", "ds_nerf"), help="the depth loss's penalty")
    ap.add_argument("--sigma", type=float, default=0.01, help="ds_nerf's sigma, a fraction of the depth (default "
                    "0.01, the loss's)")
    ap.add_argument("--no-uncertainty", action="store_true", help="the depth loss without the keypoints' "
                    "reprojection errors (uncertainty: false)")
    ap.add_argument("--only-depth", action="store_true", help="train only the run with depth (the colour-only "
                    "run is deterministic on the CPU: its figures do not change)")
    ap.add_argument("--rays", type=int, default=512, help="train.depth_rays (default 512)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for both runs")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "sparse_depth.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import cell, print_table, shared_data, write_result
    from scripts.benchmarks.colmap import train
    from scripts.benchmarks.masks import write_shoot

    lego, skipped = shared_data("sparse_depth", "nerf", "lego")
    if skipped:
        return skipped
    bench = ROOT / "outputs" / "bench" / "sparse_depth"
    shoot = ROOT / "outputs" / "bench" / "masks" / "lego_on_floor"  # (the masks benchmark's: SfM cached alike)
    result: dict = {"photos": write_shoot(Path(lego), shoot), "views": args.views, "steps": args.steps,
                    "kind": args.kind, "weight": args.weight, "uncertainty": not args.no_uncertainty, "runs": {}}
    source = ["scene.type=photos", f"scene.path={shoot}", "scene.masks=masks", "scene.aabb=null",
              f"scene.max_images={args.views}"]
    base = ["{type: photometric}", "{type: tv, weight: 1.0e-4, density_only: true}"]
    depth = (f"{{type: depth, weight: {args.weight}, kind: {args.kind}, sigma: {args.sigma}, "
             f"uncertainty: {str(not args.no_uncertainty).lower()}}}")
    runs = {"photometric": [f"losses=[{', '.join(base)}]"],
            "+ sparse depth": ["scene.sparse_depth=true", f"train.depth_rays={args.rays}",
                               f"losses=[{', '.join([*base, depth])}]"]}
    if args.only_depth:
        runs.pop("photometric")
    for name, sets in runs.items():
        r = train(name.strip("+ ").replace(" ", "_"), [*source, *sets], args, bench / "runs", None)
        scene = json.loads((Path(r["run"]) / "scene.json").read_text())
        r["pixels_with_depth"] = (scene.get("depths") or {}).get("pixels_with_depth")
        result["runs"][name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)

    def share(r: dict) -> str:
        train = (r["pixels_with_depth"] or {}).get("train")
        return "-" if train is None else f"{100 * train:.2f} %"

    print_table(f"lego over a floor from {args.views} posed photos (SfM on all {result['photos']}), object "
                f"masks, {args.steps} steps, 15 held-out photos",
                ("run", "test PSNR dB", "SSIM", "train pixels with a depth", "train s"),
                [(name, cell(r["psnr"], ".2f"), cell(r["ssim"], ".4f"), share(r), cell(r["train_seconds"], ".0f"))
                 for name, r in result["runs"].items()])
    write_result(result, args.out)
    return result
