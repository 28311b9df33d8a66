"""The ``neus`` scene source on real images: lego written as an IDR / NeuS folder and trained as lego itself.

Lego's train views and its first ``--test-images`` test views are written as one NeuS folder in a DTU-like world
frame (a rotation, a scale of 250 and a shift, as a scan's millimetres): ``image/`` (the straight colour), ``mask/``
(the alpha), ``cameras_sphere.npz`` (``world_mat_i = K [R | t]`` with integer pixel centres, ``scale_mat_i`` from
the normalised frame, lego's divided by 1.5). The test views sit at every ``k``-th place by name, so ``test_every``
reproduces the splits. The folder is loaded (cameras against lego's, images against lego's), and the scene file
(default ``scenes/lego_dense.yaml``) trains on lego (A) and on the folder (B, its box divided by 1.5): B's PSNR
should be A's up to the ray interval, which the neus source takes from the box and the cameras (NeRF-synthetic
scenes: 2 to 6).

Usage::

    python scripts/bench.py neus                    # 600 steps, 10 test views

Writes outputs/bench/neus.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reconstruct import ROOT, cell, print_table, reconstruct, shared_data, write_result  # noqa: E402

#: lego's frame divided by this is the NeuS folder's normalised frame
SHRINK = 1.5


def _world(seed: int = 0) -> np.ndarray:
    """(4, 4) the folder's scale_mat: normalised frame to a DTU-like world (turned, x 250 x 1.5, shifted)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    S = np.eye(4)
    S[:3, :3] = 250.0 * SHRINK * (q if np.linalg.det(q) > 0 else -q)
    S[:3, 3] = [310.0, -45.0, 620.0]
    return S


def write_lego(lego: Path, out: Path, test_images: int) -> tuple[int, float]:
    """Lego as a NeuS folder at ``out`` (module docstring); returns ``(test_every, seconds)``."""
    from pipeline.dataset_export import moved_cameras, straight_colour
    from pipeline.scenes.blender import load_blender
    from pipeline.scenes.neus import projection, write_neus_folder

    t = time.perf_counter()
    scene = load_blender(lego, splits=("train", "test"), max_images=None)
    train = scene.splits["train"]
    every = len(train.names) // test_images + 1
    order, k_train = [], 0
    for k in range(len(train.names) + test_images):  # (test at every every-th place by name, from the first)
        order.append(("test", k // every) if k % every == 0 else ("train", k_train))
        k_train += k % every != 0
    S = _world()
    to_world = S @ np.diag([1 / SHRINK] * 3 + [1.0])  # (lego's frame to the folder's world)
    images, masks, mats = [], [], []
    for split_name, i in order:
        split = scene.splits[split_name]
        rgba = straight_colour(split.images[i].numpy(), split.alphas[i].numpy(), scene.background)
        images.append(np.round(rgba[..., :3] * 255).astype(np.uint8))
        masks.append(np.round(rgba[..., 3] * 255).astype(np.uint8))
        cams = split.cameras
        mats.append(projection(cams, i, moved_cameras(cams.c2w[i:i + 1].double().numpy(), to_world)[0][0]))
    write_neus_folder(out, np.stack(images), np.stack(mats), S, masks=np.stack(masks))
    return every, time.perf_counter() - t


def compare_loads(lego: Path, folder: Path, every: int, test_images: int) -> dict:
    """The largest differences between lego and the folder loaded by the neus source: camera centres (lego's
    units), rotations, focal lengths, principal points (pixels) and images (colour levels of 255)."""
    import torch

    from pipeline.scenes.blender import load_blender
    from pipeline.scenes.neus import load_neus

    a = load_blender(lego, splits=("train", "test"))
    b = load_neus(folder, test_every=every)
    worst = {"centre": 0.0, "rotation": 0.0, "focal": 0.0, "principal": 0.0, "image": 0.0,
             "near_far": [a.near, a.far, SHRINK * b.near, SHRINK * b.far]}
    for name in ("train", "test"):
        ca, cb = a.splits[name].cameras, b.splits[name].cameras
        n = len(cb)
        assert n == (test_images if name == "test" else len(ca)), (name, n)
        gaps = {"centre": ca.c2w[:n, :3, 3] - SHRINK * cb.c2w[:, :3, 3],
                "rotation": ca.c2w[:n, :3, :3] - cb.c2w[:, :3, :3],
                "focal": torch.cat([ca.fx[:n] - cb.fx, ca.fy[:n] - cb.fy]),
                "principal": torch.cat([ca.cx[:n] - cb.cx, ca.cy[:n] - cb.cy]),
                "image": 255 * (a.splits[name].images[:n] - b.splits[name].images)}
        for key, gap in gaps.items():
            worst[key] = max(worst[key], float(gap.abs().max()))
    return worst


def main(argv) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py neus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default="scenes/lego_dense.yaml")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--test-images", type=int, default=10, help="lego test views written and scored")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "neus.json"))
    args = ap.parse_args(argv)
    lego, skipped = shared_data("neus", "nerf", "lego")
    if skipped:
        return skipped
    import yaml

    box = yaml.safe_load((ROOT / args.scene).read_text())["scene"]["aabb"]
    work = Path(tempfile.mkdtemp(prefix="nls_neus_"))
    try:
        every, write_s = write_lego(lego, work / "lego_neus", args.test_images)
        worst = compare_loads(lego, work / "lego_neus", every, args.test_images)
        sets = [f"eval.max_images={args.test_images}"]
        a, a_s = reconstruct("run A", args.scene, work / "a", "--steps", str(args.steps), sets=sets)
        b, b_s = reconstruct("run B", args.scene, work / "b", "--steps", str(args.steps), "--data",
                             str(work / "lego_neus"),
                             sets=[*sets, f"scene.test_every={every}", f"scene.aabb={[v / SHRINK for v in box]}",
                                   "scene.orientation=none"])
        own = {k: json.loads((run / "summary.json").read_text())["metrics"] for k, run in (("A", a), ("B", b))}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table("lego through the neus source: largest differences from the blender source",
                ["camera centre", "rotation", "focal (px)", "principal point (px)", "image (levels)"],
                [[cell(worst[k], ".2e") for k in ("centre", "rotation", "focal", "principal", "image")]])
    rows = [[label, cell(own[k].get("psnr"), ".4f"), cell(own[k].get("ssim"), ".4f"), f"{s:.0f}"]
            for label, k, s in (("A: lego (blender source)", "A", a_s), ("B: its NeuS folder (neus source)", "B", b_s))]
    print_table(f"{args.scene}, {args.steps} steps, {args.test_images} test views", ["run", "PSNR", "SSIM", "seconds"],
                rows)
    print(f"B - A: {own['B']['psnr'] - own['A']['psnr']:+.4f} dB; folder written in {write_s:.1f} s; near/far in "
          f"lego's units: A {worst['near_far'][0]:.2f} to {worst['near_far'][1]:.2f}, B {worst['near_far'][2]:.2f} to "
          f"{worst['near_far'][3]:.2f}")
    result = {"scene": args.scene, "steps": args.steps, "test_images": args.test_images, "test_every": every,
              "worst": worst, "own": own, "seconds": {"write": write_s, "A": a_s, "B": b_s},
              "load": os.getloadavg()[0]}
    write_result(result, args.out)
    return result
