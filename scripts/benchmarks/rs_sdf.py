"""Benchmark ``rs_sdf``: randomized-smoothing weak SDF (issue 4).

Sub-benchmarks (``--only blur,geometry,lego``; default ``blur,geometry``):

* ``blur``: Gaussian blur of a ``--size``^3 float32 grid (default 384), forward + backward of the
  differentiable blur against ``scipy.ndimage.gaussian_filter`` forward only, in the same
  process; reports seconds, the ratio (target >= 2x on 2 cores) and the load average. On CUDA it
  reports milliseconds against a bandwidth bound of 6 passes over the grid's bytes at the
  device's measured copy bandwidth.
* ``geometry``: trains scenes/rs_sdf_csg.yaml (RS-SDF) and scenes/rs_sdf_csg_baseline.yaml (the
  backend's density field) on the procedural CSG shape, then sweeps the baseline's density
  threshold and keeps its best Chamfer-L1 (the paper's protocol). Target: RS Chamfer <= 0.5 x
  baseline, test-PSNR drop <= 2.5 dB.
* ``lego``: scenes/rs_sdf_lego.yaml against scenes/lego_dense.yaml under the same wall-clock
  budget (``--budget`` seconds each); test PSNR on ``--test-images`` images.

Writes outputs/bench/rs_sdf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "outputs" / "bench" / "runs_rs_sdf"


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- blur --------------------------------------------------------------------------------------

def bench_blur(size: int, sigma_vox: float, repeat: int, device: str) -> dict:
    import torch
    from scipy.ndimage import gaussian_filter

    from plugins.rs_sdf.blur import KERNEL, gaussian_blur3d

    dev = torch.device(device)
    x = torch.rand(size, size, size, device=dev, requires_grad=True)
    g = torch.rand(size, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def ours(method: str) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        y = gaussian_blur3d(x, sigma_vox, method=method)
        sync()
        t1 = time.perf_counter()
        y.backward(g)
        sync()
        t2 = time.perf_counter()
        x.grad = None
        return t1 - t0, t2 - t1

    res: dict = {"size": size, "sigma_vox": sigma_vox, "device": str(dev), "threads": torch.get_num_threads(),
                 "load_before": load()}
    methods = ["matmul", "fft"]
    if dev.type == "cpu" and KERNEL.load():
        methods.insert(0, "kernel")
        ours("kernel")  # warm-up
    res["methods"] = methods
    ours("matmul")  # warm-up (allocator, BLAS)
    for method in methods:
        times = [ours(method) for _ in range(repeat)]
        res[f"{method}_fwd_s"] = statistics.median(t[0] for t in times)
        res[f"{method}_fwd_bwd_s"] = statistics.median(t[0] + t[1] for t in times)
    if dev.type == "cpu":
        xn = x.detach().numpy()
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            gaussian_filter(xn, sigma_vox, mode="constant", truncate=4.0)
            ts.append(time.perf_counter() - t0)
        res["scipy_fwd_s"] = statistics.median(ts)
        best = min(res[f"{m}_fwd_bwd_s"] for m in methods)
        res["ratio_scipy_fwd_over_ours_fwd_bwd"] = res["scipy_fwd_s"] / best
        res["target_met"] = res["ratio_scipy_fwd_over_ours_fwd_bwd"] >= 2.0
    else:
        nbytes = x.numel() * 4
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            x.detach().clone()
        sync()
        bw = 5 * 2 * nbytes / (time.perf_counter() - t0)  # read + write per clone
        res["copy_bandwidth_gb_s"] = bw / 1e9
        res["bandwidth_bound_ms"] = 6 * nbytes / bw * 1e3
        res["fwd_ms"] = res["matmul_fwd_s"] * 1e3
        res["fwd_bwd_ms"] = res["matmul_fwd_bwd_s"] * 1e3
    res["load_after"] = load()
    return res


# -- training runs -----------------------------------------------------------------------------

def reconstruct(scene: Path, sets: list[str], device: str) -> Path:
    """Run ``nls reconstruct`` and return the run folder."""
    out = RUNS / scene.stem
    cmd = [sys.executable, "-m", "pipeline.cli", "reconstruct", str(scene), "--output", str(out), "-q",
           "--device", device]
    for s in sets:
        cmd += ["--set", s]
    print("$", " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{scene.name} failed with exit code {proc.returncode}")
    return sorted(out.glob("*/*/*"), key=lambda p: p.stat().st_mtime)[-1]


def _sweep(meshes, gt, n_samples: int, label: str) -> dict:
    """Chamfer of each (level, mesh) against ``gt``; the best level and the whole sweep."""
    from pipeline.metrics import chamfer

    sweep = []
    for lv, mesh in meshes:
        cd = chamfer(mesh, gt, n_samples=n_samples)
        sweep.append({"level": lv, "chamfer_l1": cd["chamfer_l1"], "chamfer_l2": cd["chamfer_l2"]})
        print(f"  {label} level {lv:8.4g}: CD-L1 {cd['chamfer_l1']:.3f}", flush=True)
    best = min(sweep, key=lambda r: r["chamfer_l1"])
    return {"best_level": best["level"], "chamfer_l1": best["chamfer_l1"], "chamfer_l2": best["chamfer_l2"],
            "sweep": sweep}


def _open(run: Path):
    from pipeline.cli import open_run
    from pipeline.scenes.mesh_render import load_mesh

    ld = open_run(argparse.Namespace(run_dir=str(run), device="cpu", host=None, plugins_dir=None))
    ld.system.eval()
    return ld, load_mesh(ld.scene.gt_mesh)


def best_threshold_chamfer(run: Path, levels: list[float], resolution: int, n_samples: int) -> dict:
    """Baseline mesh = density threshold; sweep the level, keep the best Chamfer-L1 (paper protocol)."""
    from pipeline.mesh import field_to_grid, grid_to_mesh
    from plugins.ngp.extract import fill_interior

    ld, gt = _open(run)
    box = ld.scene.aabb.tolist()
    grid = field_to_grid(lambda p: ld.system.chain(p, None)["density"], box, resolution)
    meshes = ((lv, grid_to_mesh(fill_interior(grid, lv), box, lv, inside="above"))
              for lv in levels if grid.min() < lv < grid.max())
    return _sweep(meshes, gt, n_samples, "baseline density")


def best_level_rs(run: Path, levels: list[float], resolution: int, n_samples: int) -> dict:
    """The same sweep for RS-SDF's weak-SDF iso-level (the scene's level is reported separately)."""
    from pipeline.evaluate import EvalContext, extract

    ld, gt = _open(run)
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    return _sweep(((lv, extract(ctx, resolution=resolution, level=lv)) for lv in levels), gt, n_samples,
                  "RS weak-SDF")


def bench_geometry(a) -> dict:
    sets = [f"train.steps={a.steps}"] if a.steps else []
    res: dict = {"load_before": load()}
    t0 = time.perf_counter()
    rs_run = Path(a.rs_run) if a.rs_run else reconstruct(ROOT / "scenes" / "rs_sdf_csg.yaml", sets + a.set, a.device)
    res["rs_wall_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_run = (Path(a.baseline_run) if a.baseline_run
                else reconstruct(ROOT / "scenes" / f"{a.baseline_scene}.yaml", sets, a.device))
    res["baseline_wall_s"] = time.perf_counter() - t0
    rs = json.loads((rs_run / "summary.json").read_text())["metrics"]
    base = json.loads((base_run / "summary.json").read_text())["metrics"]
    levels = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500]
    sweep = best_threshold_chamfer(base_run, levels, a.resolution, 30000)
    rs_sweep = best_level_rs(rs_run, [-0.004, -0.002, 0.0, 0.002, 0.004], a.resolution, 30000)
    res.update({
        "rs_run": str(rs_run), "baseline_run": str(base_run), "baseline_scene": a.baseline_scene,
        "rs_chamfer_l1": rs.get("chamfer_l1"), "rs_chamfer_l2": rs.get("chamfer_l2"),
        "rs_psnr": rs.get("psnr"), "baseline_psnr": base.get("psnr"),
        "baseline_best_level": sweep["best_level"], "baseline_chamfer_l1": sweep["chamfer_l1"],
        "baseline_sweep": sweep["sweep"], "chamfer_floor": rs.get("chamfer_l1_floor"),
        "certify_within_ci": rs.get("certify_within_ci"),
        "rs_best_level": rs_sweep["best_level"], "rs_best_level_chamfer_l1": rs_sweep["chamfer_l1"],
        "rs_sweep": rs_sweep["sweep"],
        "rs_train_s": json.loads((rs_run / "summary.json").read_text()).get("train_seconds"),
        "baseline_train_s": json.loads((base_run / "summary.json").read_text()).get("train_seconds"),
    })
    if res["rs_chamfer_l1"] is not None:
        res["chamfer_ratio"] = res["rs_chamfer_l1"] / res["baseline_chamfer_l1"]
        res["psnr_drop_db"] = res["baseline_psnr"] - res["rs_psnr"]
        res["chamfer_ratio_both_best_levels"] = res["rs_best_level_chamfer_l1"] / res["baseline_chamfer_l1"]
        res["target_chamfer_met"] = res["chamfer_ratio"] <= 0.5
        res["target_psnr_met"] = res["psnr_drop_db"] <= 2.5
    res["load_after"] = load()
    return res


def bench_lego(a) -> dict:
    from pipeline.scenes import data_path

    lego, why = data_path("nerf", "lego")
    if lego is None:
        print(f"lego skipped: {why}")
        return {"skipped": why}
    sets = [f"train.max_seconds={a.budget}", f"eval.max_images={a.test_images}"]
    n1, n2 = (int(v) for v in a.lego_phases.split(","))
    phases = [f"field.ngp_steps={n1}", f"field.voxel_steps={n2}"]
    res: dict = {"budget_s": a.budget, "test_images": a.test_images, "phases": [n1, n2], "load_before": load()}
    for label, scene, extra in (("rs_sdf", "rs_sdf_lego.yaml", phases + a.set), ("baseline", "lego_dense.yaml", [])):
        run = reconstruct(ROOT / "scenes" / scene, sets + extra, a.device)
        s = json.loads((run / "summary.json").read_text())
        res[label] = {"run": str(run), "psnr": s["metrics"].get("psnr"), "steps": s["step"],
                      "train_seconds": s["train_seconds"]}
    res["psnr_drop_db"] = res["baseline"]["psnr"] - res["rs_sdf"]["psnr"]
    res["load_after"] = load()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py rs_sdf", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="blur,geometry", help="comma list of blur, geometry, lego")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=384, help="blur grid side")
    ap.add_argument("--sigma-vox", type=float, default=2.0, help="blur std in voxels")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, help="override train.steps of the geometry scenes")
    ap.add_argument("--rs-run", help="geometry: use this finished RS-SDF run folder instead of training one")
    ap.add_argument("--baseline-run", help="geometry: use this finished baseline run folder")
    ap.add_argument("--baseline-scene", default="rs_sdf_csg_baseline", choices=["rs_sdf_csg_baseline", "rs_sdf_csg_hash_baseline"],
                    help="geometry: the baseline scene (dense-grid or the paper's hash-grid density field)")
    ap.add_argument("--resolution", type=int, default=256, help="baseline threshold-sweep grid")
    ap.add_argument("--budget", type=float, default=300.0, help="lego: training seconds per method")
    ap.add_argument("--test-images", type=int, default=10, help="lego: test images evaluated")
    ap.add_argument("--lego-phases", default="10000,4000", help="lego: NeRF-phase and voxel-phase steps "
                    "(pick them to fit the budget: the phases are counted in steps)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override (RS scene)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "rs_sdf.json"))
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(int(os.environ.get("NLS_THREADS", 0)) or (os.cpu_count() or 1))
    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    unknown = set(parts) - {"blur", "geometry", "lego"}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; valid: blur, geometry, lego")
    result: dict = {}
    if "blur" in parts:
        result["blur"] = bench_blur(a.size, a.sigma_vox, a.repeat, a.device)
        print(json.dumps(result["blur"], indent=1), flush=True)
    if "geometry" in parts:
        result["geometry"] = bench_geometry(a)
        print(json.dumps({k: v for k, v in result["geometry"].items() if k != "baseline_sweep"}, indent=1))
    if "lego" in parts:
        result["lego"] = bench_lego(a)
        print(json.dumps(result["lego"], indent=1))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**old, **result}, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
