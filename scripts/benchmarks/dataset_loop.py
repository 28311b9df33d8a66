"""Another method on a run's own data (``nls export --dataset``, ``nls eval --renders``): how faithful the export is,
and whether renders scored from outside agree with a run's own scores.

A run (A) trains on a scene file; ``nls export A --dataset`` writes its data; the same scene file trains on the export
(B: with A's data and settings it should give A's figures, deterministic on the CPU) and so does a variant (C,
``--variant-set``, default a coarser grid: "another method"); B's and C's test renders (the prediction PNGs) are then
scored on A with ``nls eval A --renders``. Prints each PSNR/SSIM, B - A and the renders' scores against B's and C's
own, the export's time and size.

Usage::

    python scripts/bench.py dataset_loop                               # lego_dense.yaml, 600 steps, 10 test views
    python scripts/bench.py dataset_loop --scene scenes/csg_dense.yaml --steps 300
    python scripts/bench.py dataset_loop --dataset-format neus       # the export as IDR / NeuS folders

Writes outputs/bench/dataset_loop.json (dataset_loop_neus.json with ``--dataset-format neus``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reconstruct import ROOT, cell, print_table, reconstruct, shared_data, write_result  # noqa: E402


def _nls(*args: str) -> None:
    """``nls ARGS`` in a subprocess; SystemExit with its output when it fails."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"nls {args[0]} failed with exit code {proc.returncode}")


def _scores(path: Path) -> dict:
    """PSNR and SSIM of a summary.json or eval JSON."""
    metrics = json.loads(path.read_text())["metrics"]
    return {"psnr": metrics.get("psnr"), "ssim": metrics.get("ssim")}


def main(argv) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py dataset_loop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default="scenes/lego_dense.yaml")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-images", type=int, default=10, help="eval.max_images of every run")
    ap.add_argument("--variant-set", action="append", default=None,
                    help="--set of run C (repeatable; default field.resolution=64)")
    ap.add_argument("--dataset-format", choices=["nerfstudio", "neus"], default="nerfstudio",
                    help="the export's layout (neus: B and C load it with the neus source, its box from nls_run.json)")
    ap.add_argument("--out", default=None, help="default outputs/bench/dataset_loop[_neus].json")
    args = ap.parse_args(argv)
    suffix = "_neus" if args.dataset_format == "neus" else ""
    args.out = args.out or str(ROOT / "outputs" / "bench" / f"dataset_loop{suffix}.json")
    if "lego" in Path(args.scene).name:
        _, skipped = shared_data("dataset_loop", "nerf", "lego")
        if skipped:
            return skipped
    variant = args.variant_set or ["field.resolution=64"]
    common = ["--steps", str(args.steps)]
    sets = [f"eval.max_images={args.eval_images}"]
    work = Path(tempfile.mkdtemp(prefix="nls_dataset_loop_"))
    try:
        a, a_s = reconstruct("run A", args.scene, work / "a", *common, sets=sets)
        t = time.perf_counter()
        _nls("export", str(a), "--dataset", "--dataset-format", args.dataset_format, "-o", str(work / "data"), "-q")
        export_s = time.perf_counter() - t
        megabytes = sum(p.stat().st_size for p in (work / "data").rglob("*") if p.is_file()) / 1e6
        on_export = [*sets, "scene.type=blender", f"scene.path={work / 'data'}"]
        if args.dataset_format == "neus":  # (the export's normalised frame as it is, and the run's box in it)
            box = json.loads((work / "data" / "nls_run.json").read_text())["aabb_normalised"]
            on_export = [*sets, "scene.type=neus", f"scene.path={work / 'data'}", "scene.orientation=none",
                         f"scene.aabb={box}"]
        b, b_s = reconstruct("run B", str(a / "config.yaml"), work / "b", *common, sets=on_export)
        c, c_s = reconstruct("run C", str(a / "config.yaml"), work / "c", *common,
                             sets=[*on_export, *variant, "method=variant"])
        scored = {}
        for label, run in (("B", b), ("C", c)):
            folder = work / f"renders_{label}"
            folder.mkdir()
            for png in (run / "renders" / "test").glob("*.png"):  # (the predictions: not the side-by-sides)
                if not png.stem.endswith(("_pred_gt_depth", "_valid")):
                    shutil.copy(png, folder)
            _nls("eval", str(a), "--renders", str(folder), "-o", str(work / f"scored_{label}.json"), "-q")
            scored[label] = _scores(work / f"scored_{label}.json")
        own = {"A": _scores(a / "summary.json"), "B": _scores(b / "summary.json"), "C": _scores(c / "summary.json")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [["A: the scene file", cell(own["A"]["psnr"], ".4f"), cell(own["A"]["ssim"], ".4f"), "-", f"{a_s:.0f}"],
            ["B: the same on the export", cell(own["B"]["psnr"], ".4f"), cell(own["B"]["ssim"], ".4f"),
             cell(scored["B"]["psnr"], ".4f"), f"{b_s:.0f}"],
            [f"C: {' '.join(variant)} on the export", cell(own["C"]["psnr"], ".4f"), cell(own["C"]["ssim"], ".4f"),
             cell(scored["C"]["psnr"], ".4f"), f"{c_s:.0f}"]]
    print_table(f"{args.scene}, {args.steps} steps, {args.dataset_format} export, {args.eval_images} test views "
                f"(PSNR dB)",
                ["run", "own PSNR", "own SSIM", "its renders scored on A", "seconds"], rows)
    print(f"B - A: {own['B']['psnr'] - own['A']['psnr']:+.2e} dB; export: {export_s:.1f} s, {megabytes:.1f} MB")
    result = {"scene": args.scene, "dataset_format": args.dataset_format, "steps": args.steps,
              "eval_images": args.eval_images, "variant": variant,
              "own": own, "scored_on_A": scored, "export_seconds": round(export_s, 2),
              "export_megabytes": round(megabytes, 1), "seconds": {"A": a_s, "B": b_s, "C": c_s},
              "load": os.getloadavg()[0]}
    write_result(result, args.out)
    return result
