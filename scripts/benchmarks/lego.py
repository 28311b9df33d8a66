"""Benchmark ``lego``: `nls reconstruct` on the shared NeRF-synthetic lego under a wall-clock budget.

Reports test PSNR/SSIM (full test split unless --test-images), training seconds, steps reached,
peak memory (max RSS of the run) and the load average, and writes outputs/bench/lego.json.
Targets (issue 3): CPU >= 28 dB within 30 min; CUDA (hash grid) >= 35 dB within 5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py lego", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--scene", help="scene file (default: lego_dense.yaml on CPU, lego_hash.yaml on CUDA)")
    ap.add_argument("--budget", type=float, help="training seconds (default 1800 CPU, 300 CUDA)")
    ap.add_argument("--test-images", type=int, help="evaluate the first N test images (default: all 200)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "lego.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import reconstruct, shared_data

    lego, skipped = shared_data("lego", "nerf", "lego")
    if skipped:
        return skipped
    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    scene = args.scene or str(ROOT / "scenes" / ("lego_hash.yaml" if cuda else "lego_dense.yaml"))
    budget = args.budget or (300.0 if cuda else 1800.0)
    runs = ROOT / "outputs" / "bench" / "runs"
    sets = [f"train.max_seconds={budget}", *([f"eval.max_images={args.test_images}"] if args.test_images else []),
            *args.set]
    load_before = os.getloadavg()
    run, wall = reconstruct("lego run", scene, runs, "--device", "cuda" if cuda else "cpu", sets=sets)
    summary = json.loads((run / "summary.json").read_text())
    m = summary["metrics"]
    result = {
        "scene": scene, "run": str(run), "device": summary["device"], "device_name": summary.get("device_name"),
        "test_psnr": m.get("psnr"), "test_ssim": m.get("ssim"), "test_images": m.get("n_images"),
        "train_seconds": summary["train_seconds"], "steps": summary["step"], "budget_s": budget,
        "wall_seconds_total": round(wall, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "threads": summary.get("threads"), "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "target_db": 35.0 if cuda else 28.0,
        "reference": "nerfacc Instant-NGP occupancy grid, lego 800x800: 35.67 dB, 20k steps, ~4.5 min TITAN RTX",
    }
    from rich.console import Console
    from rich.table import Table

    t = Table(title="lego benchmark")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in result.items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
