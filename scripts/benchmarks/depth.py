"""Benchmark ``depth``: depth supervision (nerfstudio's ``depth_file_path``, the ``depth`` loss) from few views.

The procedural csg scene is rendered with ``--views`` training views and 8 test views, and written as a
nerfstudio-style ``transforms.json`` folder (per-frame ``split`` keys, ``gt_mesh.ply`` beside it) whose frames
give ``depth_file_path``: ``.npy`` z-depth maps of the ground-truth mesh (0 where a ray misses it), in
millimetres with ``depth_unit_scale_factor: 0.001`` (as a phone's depth sensor writes them through nerfstudio),
``--depth-noise`` their relative noise. ``csg_dense.yaml`` trains ``--steps`` on it twice:

* ``photometric``: its own losses (photometric and TV), the depth maps unused;
* ``+ depth``: the same and the ``depth`` loss (``--weight``, ``--kind``, ``--sigma``).

Both are scored on the 8 test views: PSNR, Chamfer-L1 of the extracted mesh and the rendered depth's error
against the ground-truth mesh (the ``depth`` evaluator). Writes outputs/bench/depth.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def eroded(z: np.ndarray) -> np.ndarray:
    """``z`` (H, W) with 0 (no depth) at every pixel next to one without a depth (4-neighbours): the object's
    silhouette, whose pixels mix object and background, left without depth."""
    edge = np.zeros(z.shape, bool)
    none = z <= 0
    edge[1:] |= none[:-1]
    edge[:-1] |= none[1:]
    edge[:, 1:] |= none[:, :-1]
    edge[:, :-1] |= none[:, 1:]
    return np.where(edge, 0.0, z)


def write_folder(out: Path, views: int, noise: float, erode: bool = False) -> dict:
    """The csg scene with ``views`` training views as a nerfstudio folder ``out`` with depth maps (module
    docstring); returns what was written."""
    from pipeline.mesh_views import mesh_depth
    from pipeline.scenes.mesh_render import load_mesh
    from plugins.scenes.config import ProceduralConfig
    from plugins.scenes.sources import build_procedural

    scene = build_procedural(ProceduralConfig(shape="csg", n_train=views, n_test=8, image_size=96), None)()
    root = Path(scene.meta["root"])
    mesh = load_mesh(scene.gt_mesh)
    rng = np.random.default_rng(0)
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "depth").mkdir()
    frames, covered = [], []
    for split in ("train", "test"):
        doc = json.loads((root / f"transforms_{split}.json").read_text())
        cams = scene.splits[split].cameras
        for i, frame in enumerate(doc["frames"]):
            name = f"{split}_{i:03d}"
            shutil.copyfile(root / (frame["file_path"] + ".png"), out / "images" / f"{name}.png")
            t = mesh_depth(mesh, cams, i)  # distance along each unit pixel-centre ray (NaN: a miss)
            o, d = _centre_rays(cams, i)
            cos = -(d * cams.c2w[i, :3, 2].double().numpy()).sum(-1).reshape(t.shape)
            z = np.where(np.isfinite(t), t * cos, 0.0)
            z = z * (1 + noise * rng.standard_normal(z.shape)) if noise else z
            z = eroded(z) if erode else z
            np.save(out / "depth" / f"{name}.npy", (1000.0 * z).astype(np.float32))
            covered += [float(np.isfinite(t).mean())] if split == "train" else []
            frames.append({"file_path": f"images/{name}.png", "depth_file_path": f"depth/{name}.npy",
                           "transform_matrix": frame["transform_matrix"], "split": split})
    shutil.copyfile(scene.gt_mesh, out / "gt_mesh.ply")
    w, h = int(scene.splits["train"].cameras.width), int(scene.splits["train"].cameras.height)
    doc = {"camera_angle_x": doc["camera_angle_x"], "w": w, "h": h, "depth_unit_scale_factor": 0.001,
           "frames": frames}
    (out / "transforms.json").write_text(json.dumps(doc, indent=1))
    return {"views": views, "test_views": 8, "depth_covers": float(np.mean(covered)), "noise": noise,
            "eroded": erode}


def _centre_rays(cams, i: int):
    """``(origins, dirs)`` (H*W, 3) float64 numpy of view ``i``'s pixel-centre rays."""
    import torch

    from pipeline.rays import pixel_rays

    v, u = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    o, d = pixel_rays(cams, torch.full((u.numel(),), i), u.reshape(-1), v.reshape(-1))
    return o.double().numpy(), d.double().numpy()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py depth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=8, help="training views (default 8)")
    ap.add_argument("--steps", type=int, default=600, help="training steps of each run (default 600)")
    ap.add_argument("--weight", type=float, default=0.01, help="the depth loss's weight (default 0.01, the loss's)")
    ap.add_argument("--kind", default="l1", choices=("l1", "relative", "ds_nerf"), help="the depth loss's penalty")
    ap.add_argument("--sigma", type=float, default=0.01, help="ds_nerf's sigma, a fraction of the depth (default "
                    "0.01, the loss's)")
    ap.add_argument("--depth-noise", type=float, default=0.0, help="relative noise of the depth maps (default 0)")
    ap.add_argument("--erode", action="store_true", help="leave the silhouette's pixels (next to one without a "
                    "depth) without depth")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for both runs")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "depth.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import cell, print_table, reconstruct, write_result

    bench = ROOT / "outputs" / "bench" / "depth"
    result = {"steps": args.steps, "kind": args.kind, "weight": args.weight,
              **write_folder(bench / "csg_depth", args.views, args.depth_noise, args.erode),
              "runs": {}}
    base = ["{type: photometric}", "{type: tv, weight: 1.0e-3, density_only: true}"]
    depth = f"{{type: depth, weight: {args.weight}, kind: {args.kind}, sigma: {args.sigma}}}"
    for name, losses in (("photometric", base), ("+ depth", [*base, depth])):
        run, wall = reconstruct(name, str(ROOT / "scenes" / "csg_dense.yaml"), bench / "runs" / name.strip("+ "),
                                "--device", "cpu", "--steps", str(args.steps),
                                sets=["scene.type=blender", f"scene.path={bench / 'csg_depth'}",
                                      "scene.aabb=[-0.6, -0.6, -0.6, 0.6, 0.6, 0.6]", f"losses=[{', '.join(losses)}]",
                                      "evaluators=[{type: psnr}, {type: chamfer}, {type: depth, save_images: 0}]",
                                      "train.checkpoint_every=100000", *args.set])
        m = json.loads((run / "summary.json").read_text())["metrics"]
        result["runs"][name] = {"run": str(run), "wall_seconds": round(wall, 1),
                                **{k: m.get(k) for k in ("psnr", "ssim", "chamfer_l1", "depth_l1", "depth_abs_rel",
                                                         "depth_median_l1")}}
        print(f"{name}: {json.dumps(result['runs'][name])}", flush=True)

    print_table(f"csg from {args.views} views with depth maps ({100 * result['depth_covers']:.0f} % of the "
                f"pixels, noise {args.depth_noise:g}), {args.steps} steps, 8 test views",
                ("run", "test PSNR dB", "Chamfer-L1 x1e3", "depth L1", "depth abs rel", "wall s"),
                [(name, cell(r["psnr"], ".2f"), cell(r["chamfer_l1"], ".2f"), cell(r["depth_l1"], ".4f"),
                  cell(r["depth_abs_rel"], ".4f"), cell(r["wall_seconds"], ".0f"))
                 for name, r in result["runs"].items()])
    write_result(result, args.out)
    return result
