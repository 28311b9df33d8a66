"""Benchmark ``transients``: ignore masks (nerfstudio's ``mask_path``) over things that move between views.

Lego's 100 train views and first 15 test views are written as a nerfstudio-style ``transforms.json`` folder
(per-frame ``split`` keys), twice:

* ``clean/``: the views as they are;
* ``people/``: each train view with ``--blobs`` opaque ellipses of random colour, size and place painted over it
  (about 5 % of the image each: passers-by, different in every view), and every frame's ``mask_path``, black on
  its ellipses (the test views are clean, their masks white).

``lego_dense.yaml`` then trains ``--steps`` on each of:

* ``clean``: the clean views (the ceiling);
* ``ignore``: the painted views with their masks as ignore masks (``scene.mask_use: ignore``, the default);
* ``unmasked``: the painted views, their masks unused (``scene.mask_use: off``).

All three are scored by the pipeline's test PSNR on the same 15 clean test views. Writes
outputs/bench/transients.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def paint_blobs(rgba: np.ndarray, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: the uint8 RGBA view ``rgba`` (H, W, 4) with ``count`` opaque ellipses of random colour
    painted over it (semi-axes 8-18 % of the side), and the uint8 (H, W) mask, 0 on them and 255 elsewhere."""
    h, w = rgba.shape[:2]
    v, u = np.mgrid[0:h, 0:w] + 0.5
    out, hit = rgba.copy(), np.zeros((h, w), bool)
    for _ in range(count):
        cu, cv = rng.uniform(0, w), rng.uniform(0, h)
        au, av = rng.uniform(0.08, 0.18, 2) * np.array([w, h])
        inside = ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0
        out[inside] = np.array([*rng.integers(0, 256, 3), 255], np.uint8)
        hit |= inside
    return out, np.where(hit, 0, 255).astype(np.uint8)


def write_folders(lego: Path, out: Path, blobs: int, n_test: int = 15) -> dict:
    """``out/clean`` and ``out/people`` (module docstring) from the Blender folder ``lego``; returns the share of
    the train pixels the ellipses cover."""
    import imageio.v3 as iio

    train = json.loads((lego / "transforms_train.json").read_text())
    test = json.loads((lego / "transforms_test.json").read_text())
    rng = np.random.default_rng(0)
    covered = []
    h, w = iio.imread(lego / (train["frames"][0]["file_path"] + ".png")).shape[:2]
    docs = {k: {"camera_angle_x": train["camera_angle_x"], "w": w, "h": h, "near": 2.0, "far": 6.0, "frames": []}
            for k in ("clean", "people")}
    for split, doc in (("train", train), ("test", test)):
        for k, frame in enumerate(doc["frames"][:n_test] if split == "test" else doc["frames"]):
            name = f"{split}_{k:03d}.png"
            rgba = iio.imread(lego / (frame["file_path"] + ".png"))
            painted, mask = paint_blobs(rgba, rng, blobs) if split == "train" else (
                rgba, np.full(rgba.shape[:2], 255, np.uint8))
            covered += [float((mask == 0).mean())] if split == "train" else []
            for kind, image in (("clean", rgba), ("people", painted)):
                (out / kind / "images").mkdir(parents=True, exist_ok=True)
                iio.imwrite(out / kind / "images" / name, image)
                entry = {"file_path": f"images/{name}", "transform_matrix": frame["transform_matrix"],
                         "split": split}
                if kind == "people":
                    (out / kind / "masks").mkdir(parents=True, exist_ok=True)
                    iio.imwrite(out / kind / "masks" / name, mask)
                    entry["mask_path"] = f"masks/{name}"
                docs[kind]["frames"].append(entry)
    for kind, doc in docs.items():
        (out / kind / "transforms.json").write_text(json.dumps(doc, indent=1))
    return {"covered": float(np.mean(covered)), "train_views": len(train["frames"]), "test_views": n_test}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py transients", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2400, help="training steps of each run (default 2400)")
    ap.add_argument("--blobs", type=int, default=3, help="ellipses painted over each train view (default 3)")
    ap.add_argument("--only", help="comma-separated runs of clean, ignore, unmasked (default: all three)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "transients.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import cell, print_table, shared_data, write_result
    from scripts.benchmarks.colmap import train

    lego, skipped = shared_data("transients", "nerf", "lego")
    if skipped:
        return skipped
    bench = ROOT / "outputs" / "bench" / "transients"
    result = {"steps": args.steps, "blobs": args.blobs, **write_folders(Path(lego), bench, args.blobs), "runs": {}}
    runs = {"clean": ["scene.mask_use=off", f"scene.path={bench / 'clean'}"],
            "ignore": ["scene.mask_use=ignore", f"scene.path={bench / 'people'}"],
            "unmasked": ["scene.mask_use=off", f"scene.path={bench / 'people'}"]}
    chosen = args.only.split(",") if args.only else list(runs)
    for name in chosen:
        result["runs"][name] = train(name, runs[name], args, bench / "runs", None)
        print(f"{name}: {json.dumps(result['runs'][name])}", flush=True)

    print_table(f"lego with {args.blobs} passers-by per train view ({100 * result['covered']:.1f} % of its "
                f"pixels), {args.steps} steps, {result['test_views']} clean test views",
                ("run", "test PSNR dB", "SSIM", "train s"),
                [(name, cell(r["psnr"], ".2f"), cell(r["ssim"], ".4f"), cell(r["train_seconds"], ".0f"))
                 for name, r in result["runs"].items()])
    write_result(result, args.out)
    return result
