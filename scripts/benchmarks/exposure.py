"""Benchmark ``exposure``: per-image exposure compensation (``train.exposure``) on photos of simulated exposure.

A rendered scene (default ``scenes/csg_dense.yaml``) is trained on its training views as rendered and with
``scene.exposure_jitter`` (each training image's object colour scaled by per-channel gains exp(u), u uniform in
+-jitter, centred; the test views as rendered), each with ``train.exposure`` off and on. Prints and writes to
outputs/bench/exposure.json, per run: the test PSNR and SSIM, psnr_cc (each render first through its
least-squares per-channel gain), Chamfer-L1 x10^3 against the ground truth, and, for runs that learn gains,
how well they follow the true ones (correlation and rms error of the log-gains).

    python scripts/bench.py exposure                      # jitter 0 and 0.6, exposure none and gain, 600 steps
    python scripts/bench.py exposure --jitter 0.3 0.6 --kinds none gain affine --steps 1200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts.benchmarks._reconstruct import cell, reconstruct, sweep_arguments, write_result

ROOT = Path(__file__).resolve().parents[2]


def gain_recovery(run: Path) -> dict:
    """Correlation and rms difference of the run's learned log-gains (exposure.json; an affine run's diagonal)
    with the true ones (scene.json's exposure_gains; 1 for images as rendered, where only the rms difference is
    given); {} for a run without exposure.json."""
    import numpy as np

    from pipeline.report.figures import record_gains

    learned, truth = run / "exposure.json", json.loads((run / "scene.json").read_text()).get("exposure_gains")
    if not learned.is_file():
        return {}
    rows = json.loads(learned.read_text())["images"]
    g = np.log(record_gains(rows))
    t = np.log(np.array(truth)) if truth else np.zeros_like(g)
    out = {"gain_rms_log_error": round(float(np.sqrt(((g - t) ** 2).mean())), 4),
           "true_rms_log_gain": round(float(np.sqrt((t ** 2).mean())), 4)}
    if truth:
        out["gain_corr"] = round(float(np.corrcoef(g.ravel(), t.ravel())[0, 1]), 4)
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py exposure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jitter", type=float, nargs="+", default=[0.0, 0.6], help="scene.exposure_jitter values")
    ap.add_argument("--kinds", nargs="+", default=["none", "gain"], choices=["none", "gain", "affine"],
                    help="train.exposure values")
    sweep_arguments(ap, "exposure")
    args = ap.parse_args(argv)

    runs_root = ROOT / "outputs" / "bench" / "exposure_runs"
    rows = []
    print(f"{'jitter':>6} {'exposure':>8} {'psnr':>7} {'psnr_cc':>7} {'ssim':>6} {'chamfer':>8} {'corr':>6} "
          f"{'rms err':>7} {'s':>5}")
    for jitter in args.jitter:
        for kind in args.kinds:
            name = f"j{jitter:g}_{kind}"
            sets = [*args.sets, f"scene.exposure_jitter={jitter}", f"train.exposure={kind}",
                    'evaluators=[{"type": "psnr", "color_correct": "gain"}, {"type": "chamfer"}]']
            run, seconds = reconstruct(name, args.scene, runs_root / name, "--steps", str(args.steps), sets=sets)
            m = json.loads((run / "summary.json").read_text())["metrics"]
            row = {"jitter": jitter, "exposure": kind, "steps": args.steps, "run": str(run),
                   "seconds": round(seconds, 1), **{k: m.get(k) for k in ("psnr", "psnr_cc", "ssim", "chamfer_l1")},
                   **gain_recovery(run)}
            rows.append(row)
            print(f"{jitter:>6g} {kind:>8} {cell(row['psnr'], '7.2f')} {cell(row['psnr_cc'], '7.2f')} "
                  f"{cell(row['ssim'], '6.4f')} {cell(row['chamfer_l1'], '8.2f')} {cell(row.get('gain_corr'), '6.3f')} "
                  f"{cell(row.get('gain_rms_log_error'), '7.3f')} {seconds:5.0f}", flush=True)
    result = {"benchmark": "exposure", "scene": args.scene, "rows": rows}
    write_result(result, args.out)
    return result
