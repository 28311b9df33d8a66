"""Single-image shape decoders on procedural shape families (issue 7).

Four decoders share the image encoder (pre-activation ResNet, Littwin & Wolf Sec. 4) and the same
training budget (optimisation steps, batch, learning rate and sampled points; wall-clock differs:
cond_mlp evaluates a wide MLP per point and is the slowest per step), are trained through the
pipeline's Trainer on the train split of the procedural families and tested on UNSEEN shapes:

* ``hypernet`` (Littwin & Wolf 2019): image -> weights of the occupancy MLP g, Eq. 3 cross-entropy;
* ``deep_level_sets`` (Michalkiewicz et al. 2019): image -> phi grid, Heaviside/Dirac/eikonal terms;
* ``voxel_decoder``: 3D transposed convolutions to 32^3 occupancy, voxel cross-entropy;
* ``cond_mlp``: occupancy MLP on [e, p] with about the hypernet heads' parameter count.

Measured: IoU at 32^3 (single view, mean over every test view of every test object), Chamfer-L1
x10^3 (the project's protocol, `pipeline.metrics.chamfer`; first test view per object, 64^3 marching cubes, 10k samples), IoU with
the embeddings of 1, 2, 4 and 8 views averaged (unseen test objects and training objects), and on the
five R2N2 objects of ../shared/data the IoU on held-out views (22, 23) after training on views 0-19:
a single-view test of SEEN shapes.

Usage::

    python scripts/bench.py hypernet                  # CPU default: 300 steps per decoder, 8 shapes per family
    python scripts/bench.py hypernet --max-steps 3000 --per-family 40
    python scripts/bench.py hypernet --large          # CUDA: N=64, B=5, 128x128 inputs, 200 shapes/family

Writes outputs/bench/hypernet.json and prints a table with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

DECODERS = ("hypernet", "deep_level_sets", "voxel_decoder", "cond_mlp")
PAPER = {"hypernet_shapenet13_mean_iou": 69.1}


def field_block(name: str, enc: dict, cond_hidden: int) -> dict:
    if name == "hypernet":
        return {"type": "hypernet", **enc}
    if name == "deep_level_sets":
        return {"type": "deep_level_sets", **enc, "channels": 32}
    if name == "voxel_decoder":
        return {"type": "voxel_decoder", **enc, "channels": 32}
    return {"type": "cond_mlp", **enc, "hidden": cond_hidden, "layers": 4}


def losses_for(name: str, balance: float = 0.0) -> list[dict]:
    if name in ("hypernet", "cond_mlp"):
        return [{"type": "point_occupancy_ce"}]
    if name == "voxel_decoder":
        return [{"type": "voxel_ce"}]
    return [{"type": "level_set_occupancy", "balance": balance}, {"type": "level_set_surface", "weight": 0.1},
            {"type": "level_set_eikonal", "weight": 0.01}]


def matched_hidden(enc: dict) -> int:
    """cond_mlp hidden width whose decoder parameter count is closest to the hypernet heads'."""
    from plugins.hypernet.config import HypernetConfig
    from plugins.hypernet.hypernet import HypernetField
    from plugins.shapes.decoders import decoder_parameters

    target = decoder_parameters(HypernetField(HypernetConfig(**enc)))
    E = 16 * enc["width"]
    return min(range(16, 2048, 8), key=lambda h: abs((E + 3) * h + h + 3 * (h * h + h) + h + 1 - target))


def train_one(scene: dict, name: str, enc: dict, args, out_root: Path, cond_hidden: int) -> tuple:
    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.runs import RunDir
    from pipeline.testing import plugin_host
    from pipeline.train import Trainer, seed_everything
    from plugins.shapes.decoders import decoder_parameters

    data = {"name": "bench", "scene": scene, "field": field_block(name, enc, cond_hidden),
            "losses": losses_for(name, args.balance),
            "train": {"steps": args.max_steps, "max_seconds": args.seconds, "batch_items": args.batch,
                      "lr": args.lr, "lr_final_factor": 0.3, "log_every": 50, "checkpoint_every": 100000,
                      "seed": 0, "device": args.device}}
    if name == "deep_level_sets":
        data["field"]["epsilon_anneal_steps"] = args.anneal
    cfg = validate(data, plugin_host(), source=f"bench:{name}")
    seed_everything(0)
    dev = torch.device("cuda" if args.device == "cuda" else "cpu")
    scene_data = load_scene_data(cfg, dev)
    system = build_system(cfg, scene_data, dev)
    tr = Trainer(cfg, system, scene_data, RunDir.create(out_root, scene.get("type"), name), dev, progress=False)
    t0 = time.perf_counter()
    tr.fit()
    rows = tr.run.read_metrics()
    info = {"steps": tr.step, "train_seconds": round(time.perf_counter() - t0, 1),
            "decoder_parameters": decoder_parameters(system.chain.field),
            "encoder_parameters": sum(p.numel() for p in system.chain.field.encoder.parameters()),
            "final_loss": rows[-1]["loss"] if rows else None}
    return scene_data, system.chain.field, info


def evaluate(field, scene_data, args, chamfer: bool) -> dict:
    from plugins.shapes.evaluate import evaluate_shapes

    test = scene_data.datasets["test"]
    r = evaluate_shapes(field, test, views=1, chamfer=chamfer, mesh_resolution=args.mesh_res,
                        chamfer_samples=args.chamfer_samples)
    out = {"iou": r["iou"], "chamfer_l1": r.get("chamfer_l1"), "chamfer_failed": r.get("chamfer_failed", 0),
           "per_object": {k: {kk: vv for kk, vv in v.items() if kk != "n_views"} for k, v in r["per_object"].items()}}
    for split in ("test", "train"):
        ds = scene_data.datasets[split]
        nmax = min(len(v) for v in ds.objects().values())
        out[f"iou_vs_views_{split}"] = {k: evaluate_shapes(field, ds, views=k, chamfer=False,
                                                           max_objects=args.max_train_eval)["iou"]
                                        for k in (1, 2, 4, 8) if k <= nmax}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench.py hypernet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=300, help="training steps per decoder (the shared budget)")
    p.add_argument("--r2n2-steps", type=int, default=150, help="training steps per decoder on R2N2")
    p.add_argument("--seconds", type=float, default=None, help="also stop each decoder after this many seconds")
    p.add_argument("--r2n2-seconds", type=float, default=None)
    p.add_argument("--points", type=int, default=1024, help="sampled points per item (hypernet, cond_mlp)")
    p.add_argument("--per-family", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=8, help="encoder N")
    p.add_argument("--blocks", type=int, default=3, help="encoder B")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--anneal", type=int, default=300, help="deep_level_sets band annealing steps")
    p.add_argument("--balance", type=float, nargs="?", const=1.0, default=0.0, metavar="BETA",
                   help="deep_level_sets: class weighting exponent of the occupancy term (not in the paper); "
                   "--balance alone = 1: inside and outside nodes weighted equally")
    p.add_argument("--mesh-res", type=int, default=64)
    p.add_argument("--chamfer-samples", type=int, default=10000)
    p.add_argument("--max-train-eval", type=int, default=10, help="training objects in the views curve")
    p.add_argument("--decoders", default=",".join(DECODERS))
    p.add_argument("--r2n2-decoders", default="hypernet,deep_level_sets")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--large", action="store_true", help="CUDA configuration: N=64, B=5, 128px, 200 per family, "
                   "600 s per decoder")
    p.add_argument("--out", default=str(_REPO / "outputs" / "bench" / "hypernet.json"))
    args = p.parse_args(argv)
    if args.large:
        args.width, args.blocks, args.image_size, args.per_family = 64, 5, 128, 200
        args.max_steps, args.r2n2_steps, args.batch, args.device, args.lr = 20000, 5000, 64, "cuda", 1e-3
        args.points = 2048
        args.mesh_res = 128
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NLS_CACHE", str(_REPO / ".cache" / "nls"))
    from pipeline.scenes import data_path

    enc = {"width": args.width, "blocks": args.blocks, "fc_layers": 2, "norm": "batch"}
    cond_hidden = matched_hidden(enc)
    runs = _REPO / "outputs" / "bench" / "hypernet_runs"
    res: dict = {"config": vars(args), "encoder": enc, "cond_mlp_hidden": cond_hidden, "paper": PAPER,
                 "load_average_start": list(os.getloadavg()), "families": {}, "r2n2": {}}
    fam_scene = {"type": "shape_families", "per_family": args.per_family, "image_size": args.image_size,
                 "n_points": args.points}
    t0 = time.perf_counter()
    from pipeline.build import load_scene_data  # noqa: F401  (warm import)
    for name in [d for d in args.decoders.split(",") if d]:
        print(f"[families] training {name}: {args.max_steps} steps ...", flush=True)
        scene_data, field, info = train_one(fam_scene, name, enc, args, runs, cond_hidden)
        info.update(evaluate(field, scene_data, args, chamfer=True))
        info["load_average"] = list(os.getloadavg())
        res["families"][name] = info
        res["families_split"] = scene_data.meta.get("objects")
        print(f"  {name}: steps {info['steps']}, test IoU {info['iou']:.3f}, CD-L1 {info['chamfer_l1']}, "
              f"views {info['iou_vs_views_test']}", flush=True)
    r2n2, why = data_path("shapenet_r2n2")
    if r2n2 is None:
        res["r2n2"] = {"skipped": why}
    elif not args.r2n2_decoders:
        res["r2n2"] = {"skipped": "no --r2n2-decoders"}
    else:
        sc = {"type": "r2n2", "path": str(r2n2), "image_size": args.image_size, "n_points": args.points}
        a2 = argparse.Namespace(**{**vars(args), "seconds": args.r2n2_seconds, "max_steps": args.r2n2_steps})
        for name in [d for d in args.r2n2_decoders.split(",") if d]:
            print(f"[r2n2] training {name}: {args.r2n2_steps} steps ...", flush=True)
            scene_data, field, info = train_one(sc, name, enc, a2, runs, cond_hidden)
            from plugins.shapes.evaluate import evaluate_shapes

            r = evaluate_shapes(field, scene_data.datasets["test"], chamfer=False)
            info.update({"iou_heldout_views": r["iou"],
                         "per_object": {k: v["iou"] for k, v in r["per_object"].items()},
                         "iou_train_views": evaluate_shapes(field, scene_data.datasets["train"], chamfer=False)["iou"],
                         "note": "seen shapes: trained on views 0-19 of the same objects, tested on views 22-23",
                         "load_average": list(os.getloadavg())})
            res["r2n2"][name] = info
            print(f"  {name}: held-out-view IoU {r['iou']:.3f}", flush=True)
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    res["load_average_end"] = list(os.getloadavg())
    fam = res["families"]
    res["targets"] = {
        "hypernet >= cond_mlp (unseen IoU)": (fam["hypernet"]["iou"] >= fam["cond_mlp"]["iou"])
        if {"hypernet", "cond_mlp"} <= set(fam) else None,
        "deep_level_sets >= voxel_decoder (unseen IoU)": (fam["deep_level_sets"]["iou"] >= fam["voxel_decoder"]["iou"])
        if {"deep_level_sets", "voxel_decoder"} <= set(fam) else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float))
    _table(res)
    print(f"wrote {out}")
    return res


def _table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"single-image decoders on unseen procedural shapes (load avg start "
                    f"{res['load_average_start'][0]:.2f}, end {res['load_average_end'][0]:.2f})")
    for c in ("decoder", "steps", "dec. params", "IoU@32 test", "CD-L1 x1e3", "IoU 1/2/4/8 views test",
              "IoU 1/2/4/8 views train"):
        t.add_column(c)
    for name, r in res["families"].items():
        fmt = lambda d: " / ".join(f"{v:.3f}" for v in d.values())  # noqa: E731
        cd = f"{r['chamfer_l1']:.1f}" if r.get("chamfer_l1") is not None else "-"
        t.add_row(name, str(r["steps"]), str(r["decoder_parameters"]), f"{r['iou']:.3f}", cd,
                  fmt(r["iou_vs_views_test"]), fmt(r["iou_vs_views_train"]))
    Console().print(t)
    for name, r in res["r2n2"].items():
        if isinstance(r, dict) and "iou_heldout_views" in r:
            print(f"R2N2 {name}: held-out views (seen shapes) IoU {r['iou_heldout_views']:.3f}, "
                  f"train views {r['iou_train_views']:.3f}, steps {r['steps']}")
    print("targets:", res["targets"])


if __name__ == "__main__":
    main()
