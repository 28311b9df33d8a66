"""Benchmark ``masks``: object masks on a capture whose background structure from motion matches.

Lego's 100 train views and first 15 test views are drawn over a floor of random colour tiles below lego (one
3D scene in every view, so SfM places points on it) and a smooth sky, as photos without poses, the test views
every 8th by name (the photos source's rule), with lego's alpha as masks. Structure from motion runs once (its
cache does not depend on the masks), then ``lego_dense.yaml`` trains ``--steps`` on each of:

* ``masks``: ``scene.masks=masks``: every image composited on white by its mask, the box from the sparse
  points on lego;
* ``no-masks``: the photos as they are, the box from all sparse points (the floor's too).

Both are scored by the pipeline's PSNR on their own held-out images, and on lego alone: the PSNR over the
pixels of the 15 held-out views that the masks place on lego (undistorted mask >= 0.5), of each run's
renders against the masked images. Writes outputs/bench/masks.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def over_floor(rgba: np.ndarray, c2w: np.ndarray, angle_x: float, z: float = -0.6) -> np.ndarray:
    """(H, W, 3) uint8: the RGBA lego view ``rgba`` (camera ``c2w``, Blender axes) over a floor at height ``z``
    tiled with random colours (cells of 0.05), and a smooth sky where the rays miss it: a background that is
    one 3D scene in every view."""
    h, w = rgba.shape[:2]
    f = 0.5 * w / np.tan(0.5 * angle_x)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    dirs = np.stack([(u - 0.5 * w) / f, -(v - 0.5 * h) / f, -np.ones_like(u)], -1) @ c2w[:3, :3].T
    down = dirs[..., 2] < -1e-6
    t = (z - c2w[2, 3]) / np.where(down, dirs[..., 2], -1.0)
    hit = down & (t > 0)
    cells = np.floor((c2w[:2, 3] + t[..., None] * dirs[..., :2]) / 0.05).astype(np.int64) % 256
    table = np.random.default_rng(7).uniform(0.1, 0.9, (256, 256, 3))
    sky = np.broadcast_to(np.array([0.6, 0.7, 0.9]) * (0.8 + 0.2 * v[..., None] / h), (h, w, 3))
    back = np.where(hit[..., None], table[cells[..., 0], cells[..., 1]], sky)
    a = rgba[..., 3:]
    return np.round(255 * (rgba[..., :3] * a + back * (1 - a))).astype(np.uint8)


def write_shoot(lego: Path, out: Path) -> int:
    """Lego's train views and first 15 test views over the floor as photos ``out/NNN.png`` (a test view every 8th),
    their alpha as ``out/masks/NNN.png``; returns how many."""
    import imageio.v3 as iio

    train = json.loads((lego / "transforms_train.json").read_text())
    test = json.loads((lego / "transforms_test.json").read_text())
    views = [(test, f) for f in test["frames"][:15]]
    order, t, r = [], 0, 0
    trains = train["frames"]
    while t < 15 or r < len(trains):
        if len(order) % 8 == 0 and t < 15:
            order.append(views[t])
            t += 1
        else:
            order.append((train, trains[r]))
            r += 1
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for k, (doc, frame) in enumerate(order):
        if (out / f"{k:03d}.png").exists() and (out / "masks" / f"{k:03d}.png").exists():
            continue
        rgba = iio.imread(lego / (frame["file_path"] + ".png")).astype(np.float32) / 255.0
        iio.imwrite(out / f"{k:03d}.png", over_floor(rgba, np.asarray(frame["transform_matrix"]),
                                                    doc["camera_angle_x"]))
        iio.imwrite(out / "masks" / f"{k:03d}.png", np.round(255 * rgba[..., 3]).astype(np.uint8))
    return len(order)


def object_psnr(run: Path, masked_run: Path) -> float:
    """PSNR over the held-out pixels on lego (the masked run's undistorted masks >= 0.5) of ``run``'s renders
    against ``masked_run``'s held-out images (composited on white by their masks)."""
    import imageio.v3 as iio

    from pipeline.report.figures import split_side_by_side

    masks = Path(json.loads((masked_run / "scene.json").read_text())["undistorted_masks"])
    err, count = 0.0, 0
    sides = sorted((masked_run / "renders" / "test").glob("*_pred_gt_depth.png"))
    if not sides:
        raise SystemExit(f"{masked_run / 'renders' / 'test'} holds no renders of the held-out views")
    for side in sides:
        name = side.name[:-len("_pred_gt_depth.png")]
        _, gt, _ = split_side_by_side(iio.imread(side))
        pred = iio.imread(run / "renders" / "test" / f"{name}.png")[..., :3]
        on = iio.imread(masks / f"{name}.png.png") >= 128
        diff = (pred.astype(np.float64) - gt.astype(np.float64))[on] / 255.0
        err, count = err + float((diff ** 2).sum()), count + diff.size
    return float(-10 * np.log10(err / count))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py masks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000, help="training steps of both runs (default 1000)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for both runs")
    ap.add_argument("--runs", nargs=2, metavar=("MASKS_RUN", "NO_MASKS_RUN"), help="score these finished run "
                    "folders of an earlier call instead of training")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "masks.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import shared_data
    from scripts.benchmarks.colmap import run_figures, train

    lego, skipped = shared_data("masks", "nerf", "lego")
    if skipped:
        return skipped
    bench = ROOT / "outputs" / "bench" / "masks"
    shoot = bench / "lego_on_floor"
    result: dict = {"photos": write_shoot(Path(lego), shoot), "steps": args.steps, "runs": {}}
    for k, (name, sets) in enumerate((("masks", ["scene.masks=masks"]), ("no-masks", []))):
        result["runs"][name] = run_figures(Path(args.runs[k])) if args.runs else \
            train(name, ["scene.type=photos", f"scene.path={shoot}", "scene.aabb=null", *sets], args, bench / "runs",
                  None)
        scene = json.loads((Path(result["runs"][name]["run"]) / "scene.json").read_text())
        result["runs"][name]["sparse_points"] = scene.get("sparse_points")
        result["runs"][name]["box_side"] = float(np.ptp(np.reshape(scene["aabb"], (2, 3)), 0).max()
                                                 / scene["input_frame"]["scale"])
        print(f"{name}: {json.dumps(result['runs'][name])}", flush=True)
    masked = Path(result["runs"]["masks"]["run"])
    for name, r in result["runs"].items():
        r["object_psnr"] = object_psnr(Path(r["run"]), masked)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"object masks on lego over a tiled floor ({result['photos']} photos, {args.steps} steps, "
                    f"{result['runs']['masks']['n_images']} held out)")
    for col in ("run", "PSNR dB (own targets)", "PSNR dB on lego", "box side (COLMAP units)", "sparse points",
                "train s"):
        t.add_column(col)
    for name, r in result["runs"].items():
        points = r["sparse_points"] or {}
        t.add_row(name, f"{r['psnr']:.2f}", f"{r['object_psnr']:.2f}", f"{r['box_side']:.2f}",
                  f"{points.get('in_box')} of {points.get('total')}", f"{r['train_seconds']:.0f}")
    Console().print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result
