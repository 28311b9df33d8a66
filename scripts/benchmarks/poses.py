"""Benchmark ``poses``: camera pose refinement (``train.refine_poses``) on a scene of simulated pose error.

A scene with known poses (default ``scenes/csg_dense.yaml``) is trained with its training cameras as rendered and with
``scene.pose_noise_deg`` / ``pose_noise_shift`` (each training camera turned about its centre by up to that many
degrees and moved by up to that much per axis, their common motion removed, while its image stays as it is; the test
views keep their poses), each with ``train.refine_poses`` off and on. Prints and writes to
outputs/bench/poses.json, per run: the test PSNR and SSIM, Chamfer-L1 x10^3 against the ground truth, and the
training cameras' mean rotation error (degrees) and centre error (world units) against the true poses, before
training and after (poses.json's refined poses; without refinement the poses it trained with; with exact poses,
how far refinement moved them), and the view error: the mean angle between the directions in which a camera and
its true pose see the ground-truth surface (a rotation and a shift that move the image alike are one error there,
not two).

    python scripts/bench.py poses                          # noise 0 and 2 degrees / 0.02, refinement off and on
    python scripts/bench.py poses --noise 1:0.01 3:0.03 --steps 1200
    python scripts/bench.py poses --scene scenes/lego_dense.yaml --noise 2:0.04 --steps 2400 --set eval.every=20
    python scripts/bench.py poses --noise 0:0 --focal-noise 0.05 --refine off focal   # a focal length 5% long
    python scripts/bench.py poses --noise 0:0 --focal-noise 0.05,-0.03 --refine focal focal_cam   # two cameras

With ``--focal-noise F`` every camera's focal length is taken as ``1 + F`` times its true one (``scene.focal_noise``,
all splits alike, as a calibration error would be) and ``--refine focal`` / ``both`` learn it back
(``train.refine_focal``); the table adds the training cameras' mean focal-length error in per cent, before and after.
``--focal-noise F1,F2`` simulates two cameras (the images of each split taken by them in turn), each with its own
error, and ``--refine focal_cam`` / ``both_cam`` learn one factor per camera (``train.focal_per_camera``).

Add ``--set eval.align_poses=100`` to score the test views after test-time pose alignment (README, Poses).
On a folder of images (the blender source: lego) the true poses are the data's own, the noise is put on the
training cameras when they are loaded, and there is no Chamfer-L1 (no ground-truth mesh) nor view error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from scripts.benchmarks._reconstruct import cell, reconstruct, sweep_arguments, write_result

ROOT = Path(__file__).resolve().parents[2]
#: ``--refine`` values: (train.refine_poses, train.refine_focal, train.focal_per_camera)
REFINE = {"off": (False, False, False), "on": (True, False, False), "focal": (False, True, False),
          "both": (True, True, False), "focal_cam": (False, True, True), "both_cam": (True, True, True)}


def pose_recovery(run: Path) -> dict:
    """The training cameras' mean rotation error (degrees), centre error and view error (degrees) against the
    true poses that scene.json records, before training and after it (poses.json's refined ``c2w``; the same
    as before for a run without it): :func:`pipeline.pose_refinement.pose_accuracy`, flattened."""
    from pipeline.pose_refinement import pose_accuracy

    record = json.loads((run / "poses.json").read_text()) if (run / "poses.json").is_file() else None
    refined = [c["c2w"] for c in record["cameras"]] if record else None
    fx = [c["fx"] for c in record["cameras"]] if record and "focal" in record else None
    accuracy = pose_accuracy(json.loads((run / "scene.json").read_text()), refined, fx)
    if "rotation_deg" not in accuracy and record:  # exact poses: the error after is how far refinement moved them
        accuracy.update(rotation_deg=(0.0, record["rotation_deg"]["mean"]), centre=(0.0, record["shift"]["mean"]))
    if "focal_pct" not in accuracy and record and "focal" in record:  # an exact focal length: how far it moved
        accuracy["focal_pct"] = (0.0, 100 * abs(record["focal"]["scale"] - 1))
    return {f"{key}_{when}": round(value, 5) for key, pair in accuracy.items()
            for when, value in zip(("before", "after"), pair)}


def render_shift(run: Path, split: str = "test") -> Optional[float]:
    """How far the run's renders of ``split`` sit off their photos: the mean over its ``*_pred_gt_depth.png``
    side-by-sides of the length of the shift (pixels) that registers the photo on the prediction, by phase
    correlation of their grey levels to 1/100 pixel (``skimage.registration.phase_cross_correlation``); None
    without renders. A frame that drifted shows as a shift; a field that is only blurred does not."""
    import imageio.v3 as iio
    import numpy as np
    from skimage.registration import phase_cross_correlation

    from pipeline.report.figures import split_side_by_side

    shifts = []
    for path in sorted((run / "renders" / split).glob("*_pred_gt_depth.png")):
        pred, photo = (panel.astype(np.float64).mean(-1) for panel in split_side_by_side(iio.imread(path))[:2])
        shift, _, _ = phase_cross_correlation(photo, pred, upsample_factor=100)
        shifts.append(float(np.hypot(*shift)))
    return float(np.mean(shifts)) if shifts else None


def has_ground_truth_mesh(scene_file: str) -> bool:
    """Whether the scene file's source renders a mesh it knows (procedural, mesh), so Chamfer-L1 can be scored;
    a folder of images (blender: lego) has none."""
    import yaml

    return (yaml.safe_load((ROOT / scene_file).read_text()).get("scene") or {}).get("type") in ("procedural", "mesh")


def _focal_noise(text: str):
    """``F`` (one error for every camera) as a float, or ``F1,F2,...`` (one per simulated camera) as a list."""
    values = [float(v) for v in text.split(",")]
    return values if len(values) > 1 else values[0]


def _focal_label(focal) -> str:
    """``+0.05`` or ``+0.05,-0.03``, or for more than 3 cameras their count and the errors' range
    (``48cams+-0.05``); empty for exact focal lengths."""
    values = focal if isinstance(focal, list) else [focal]
    if not any(values):
        return ""
    if len(values) > 3:
        return f"{len(values)}cams+-{max(abs(v) for v in values):g}"
    return ",".join(f"{v:+g}" for v in values)


def _noise(text: str) -> tuple[float, float]:
    """``DEG:SHIFT`` (or ``DEG``, the shift then DEG/100) as two floats."""
    deg, _, shift = text.partition(":")
    return float(deg), float(shift) if shift else float(deg) / 100


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py poses", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise", type=_noise, nargs="+", default=[(0.0, 0.0), (2.0, 0.02)],
                    help="pose noise as DEG:SHIFT (scene.pose_noise_deg and scene.pose_noise_shift)")
    ap.add_argument("--refine", nargs="+", default=["off", "on"], choices=list(REFINE),
                    help="what is refined: off (nothing), on (train.refine_poses), focal (train.refine_focal), "
                         "both; focal_cam and both_cam with one factor per camera (train.focal_per_camera)")
    ap.add_argument("--focal-noise", type=_focal_noise, nargs="+", default=[0.0],
                    help="scene.focal_noise values: F (every camera's focal length times 1 + F) or F1,F2,... "
                         "(that many simulated cameras, one error each)")
    sweep_arguments(ap, "poses")
    args = ap.parse_args(argv)

    evaluators = [{"type": "psnr"}, *([{"type": "chamfer"}] if has_ground_truth_mesh(args.scene) else [])]
    runs_root = ROOT / "outputs" / "bench" / "poses_runs"
    rows = []
    print(f"{'noise':>16} {'refine':>9} {'psnr':>7} {'ssim':>6} {'chamfer':>8} {'rot before':>10} {'after':>7} "
          f"{'pos before':>10} {'after':>8} {'view before':>11} {'after':>7} {'focal %':>7} {'after':>6} "
          f"{'shift px':>8} {'s':>5}")
    for (deg, shift), focal in ((n, f) for n in args.noise for f in args.focal_noise):
        for refine in args.refine:
            poses, focals, per_camera = REFINE[refine]
            flabel = _focal_label(focal)
            name = f"d{deg:g}_s{shift:g}" + (f"_f{flabel.replace(',', '_')}" if flabel else "") + f"_{refine}"
            sets = [*args.sets, f"scene.pose_noise_deg={deg}", f"scene.pose_noise_shift={shift}",
                    f"scene.focal_noise={json.dumps(focal)}", f"train.refine_poses={str(poses).lower()}",
                    f"train.refine_focal={str(focals).lower()}",
                    f"train.focal_per_camera={str(per_camera).lower()}", f'evaluators={json.dumps(evaluators)}']
            run, seconds = reconstruct(name, args.scene, runs_root / name, "--steps", str(args.steps), sets=sets)
            m = json.loads((run / "summary.json").read_text())["metrics"]
            row = {"noise_deg": deg, "noise_shift": shift, "focal_noise": focal, "refine_poses": poses,
                   "refine_focal": focals, "focal_per_camera": per_camera, "steps": args.steps, "run": str(run),
                   "seconds": round(seconds, 1),
                   **{k: m.get(k) for k in ("psnr", "ssim", "chamfer_l1")}, **pose_recovery(run),
                   "render_shift_px": render_shift(run)}
            rows.append(row)
            label = f"{deg:g}:{shift:g}" + (f"/{flabel}" if flabel else "")
            print(f"{label:>16} {refine:>9} {cell(row['psnr'], '7.2f')} {cell(row['ssim'], '6.4f')} "
                  f"{cell(row['chamfer_l1'], '8.2f')} {cell(row.get('rotation_deg_before'), '10.3f')} "
                  f"{cell(row.get('rotation_deg_after'), '7.3f')} {cell(row.get('centre_before'), '10.4f')} "
                  f"{cell(row.get('centre_after'), '8.4f')} {cell(row.get('view_deg_before'), '11.3f')} "
                  f"{cell(row.get('view_deg_after'), '7.3f')} {cell(row.get('focal_pct_before'), '7.2f')} "
                  f"{cell(row.get('focal_pct_after'), '6.2f')} {cell(row['render_shift_px'], '8.2f')} "
                  f"{seconds:5.0f}", flush=True)
    result = {"benchmark": "poses", "scene": args.scene, "rows": rows}
    write_result(result, args.out)
    return result
