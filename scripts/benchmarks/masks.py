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

``--video``: the video source instead. Lego's 200 test views (one circle around it) over the same floor are
encoded as an H.264 video, their alpha as a folder of masks numbered by frame from 0 (as SAM 2 writes them);
``--frames`` frames are taken and posed, every 8th held out, and ``masks`` sets ``scene.masks=masks``. Writes
outputs/bench/masks_video.json.
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


def write_video_shoot(lego: Path, out: Path, quality: float = 7.0) -> int:
    """Lego's test views over the floor as the H.264 video ``out/lego_on_floor.mp4`` (24 fps), their alpha as
    ``out/masks/NNNNN.png`` numbered by frame from 0; returns how many frames."""
    import imageio.v3 as iio
    import imageio_ffmpeg

    test = json.loads((lego / "transforms_test.json").read_text())
    video = out / "lego_on_floor.mp4"
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if video.exists() and len(list((out / "masks").glob("*.png"))) == len(test["frames"]):
        return len(test["frames"])
    writer = None
    for k, frame in enumerate(test["frames"]):
        rgba = iio.imread(lego / (frame["file_path"] + ".png")).astype(np.float32) / 255.0
        rgb = over_floor(rgba, np.asarray(frame["transform_matrix"]), test["camera_angle_x"])
        if writer is None:
            writer = imageio_ffmpeg.write_frames(str(video), (rgb.shape[1], rgb.shape[0]), fps=24, quality=quality)
            writer.send(None)
        writer.send(np.ascontiguousarray(rgb).tobytes())
        iio.imwrite(out / "masks" / f"{k:05d}.png", np.round(255 * rgba[..., 3]).astype(np.uint8))
    writer.close()
    return len(test["frames"])


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
        [mask] = masks.glob(f"{name}.*.png")  # (the image's name with .png added: 007.png.png, frame_000012.jpg.png)
        on = iio.imread(mask) >= 128
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
    ap.add_argument("--video", action="store_true", help="the video source: lego's test circle over the floor as a "
                    "video, its masks a folder numbered by frame")
    ap.add_argument("--frames", type=int, default=100, help="--video: frames taken (default 100)")
    ap.add_argument("--out", help="default: outputs/bench/masks.json (masks_video.json with --video)")
    args = ap.parse_args(argv)
    args.out = args.out or str(ROOT / "outputs" / "bench" / ("masks_video.json" if args.video else "masks.json"))

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import shared_data
    from scripts.benchmarks.colmap import run_figures, train

    lego, skipped = shared_data("masks", "nerf", "lego")
    if skipped:
        return skipped
    bench = ROOT / "outputs" / "bench" / ("masks_video" if args.video else "masks")
    shoot = bench / "lego_on_floor"
    if args.video:
        result: dict = {"frames_of": write_video_shoot(Path(lego), shoot), "photos": args.frames,
                        "steps": args.steps, "runs": {}}
        source = ["scene.type=video", f"scene.path={shoot / 'lego_on_floor.mp4'}", f"scene.frames={args.frames}"]
    else:
        result = {"photos": write_shoot(Path(lego), shoot), "steps": args.steps, "runs": {}}
        source = ["scene.type=photos", f"scene.path={shoot}"]
    for k, (name, sets) in enumerate((("masks", ["scene.masks=masks"]), ("no-masks", []))):
        result["runs"][name] = run_figures(Path(args.runs[k])) if args.runs else \
            train(name, [*source, "scene.aabb=null", *sets], args, bench / "runs", None)
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

    what = f"{args.frames} frames of a video" if args.video else f"{result['photos']} photos"
    t = Table(title=f"object masks on lego over a tiled floor ({what}, {args.steps} steps, "
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
