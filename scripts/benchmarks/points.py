"""Benchmark ``points``: ``nls reconstruct CLOUD`` with its default settings on point clouds made from the shared
meshes, scored against the cloud (``point_fit``, what a user without ground truth sees) and against the mesh the
cloud came from (``chamfer``, the project's protocol: 30k samples per mesh, the mesh's normalised frame).

Clouds (``--clouds``):

* ``bunny-scan``: the vertices of ``meshes/stanford-bunny.obj``, the original range scan (34,834 points, open
  at the base, no normals), written as a .ply without faces;
* ``spot-samples``: 30,000 area-uniform samples of ``meshes/spot.obj`` (watertight), written as .xyz.

``--normals`` gives each point the mesh's outward normal (bunny: its vertex normals, as the .ply's nx/ny/nz; spot:
the sampled face's normal, as three more numbers a line), so the default scene adds ``point_normals``.

Each run is ``python -m pipeline.cli reconstruct FILE`` (``pipeline/data_scene.py``'s ``POINT_SCENE``: sample
networks, 3000 steps) with ``--set`` options passed on. Writes ``outputs/bench/points.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOUDS = {"bunny-scan": ("stanford-bunny.obj", "vertices"), "spot-samples": ("spot.obj", "samples")}


def _write_cloud(name: str, meshes: Path, out: Path, normals: bool = False) -> tuple[Path, Path]:
    """(the cloud file written into ``out``, the mesh it came from). With ``normals`` the cloud carries the mesh's
    outward normals: the vertex normals (the .ply's nx/ny/nz) or the sampled faces' normals (6 numbers a line)."""
    import numpy as np
    import trimesh

    file, kind = CLOUDS[name]
    mesh = trimesh.load(meshes / file, force="mesh", process=False)
    tag = "-normals" if normals else ""
    if kind == "vertices":
        path = out / f"{name}{tag}.ply"
        cloud = trimesh.Trimesh(vertices=mesh.vertices, faces=np.zeros((0, 3), int), process=False,
                                vertex_normals=mesh.vertex_normals if normals else None)
        path.write_bytes(trimesh.exchange.ply.export_ply(cloud, encoding="binary", vertex_normal=normals))
    else:
        path = out / f"{name}{tag}.xyz"
        points, faces = trimesh.sample.sample_surface(mesh, 30000, seed=0)
        np.savetxt(path, np.concatenate([points, mesh.face_normals[faces]], 1) if normals else points)
    return path, meshes / file


def _score(run: Path, source: Path, samples: int) -> dict:
    """Chamfer of the run's mesh against ``source`` moved into the run's frame (scene.json ``input_frame``)."""
    import numpy as np

    from pipeline.metrics import chamfer, chamfer_floor
    from pipeline.scenes.mesh_render import load_mesh

    to_run = np.asarray(json.loads((run / "scene.json").read_text())["input_frame"]["to_run"])
    gt = load_mesh(source)
    gt.apply_transform(to_run)
    res = chamfer(load_mesh(run / "meshes" / "mesh.ply"), gt, n_samples=samples)
    return {"chamfer_l1": res["chamfer_l1"], "fscore@0.01": res["fscore@0.01"],
            "normal_consistency": res.get("normal_consistency"),
            "chamfer_l1_floor": chamfer_floor(gt, n_samples=samples)["chamfer_l1"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="bench.py points", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clouds", default=",".join(CLOUDS), help=f"comma-separated, of {', '.join(CLOUDS)}")
    ap.add_argument("--normals", action="store_true", help="clouds with the meshes' outward normals (the default "
                    "scene then adds IGR's normal term, point_normals)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to nls reconstruct")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "points.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from scripts.benchmarks._reconstruct import reconstruct, shared_data

    meshes, skipped = shared_data("points", "meshes")
    if skipped:
        return skipped
    names = [c for c in args.clouds.split(",") if c]
    unknown = sorted(set(names) - set(CLOUDS))
    if unknown:
        raise SystemExit(f"--clouds: unknown {', '.join(unknown)}; choose from {', '.join(CLOUDS)}")
    bench = ROOT / "outputs" / "bench"
    (bench / "clouds").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in names:
        cloud, source = _write_cloud(name, meshes, bench / "clouds", args.normals)
        run, wall = reconstruct(name, str(cloud), bench / "runs" / "points", sets=args.set)
        summary = json.loads((run / "summary.json").read_text())
        fit = summary["evaluators"]["point_fit"]
        results[name] = {"run": str(run), "points": fit["n_points"], "steps": summary["step"],
                         "train_seconds": summary["train_seconds"], "wall_seconds": round(wall, 1),
                         **{k: fit[k] for k in ("fit_residual_l1", "fit_residual_p95", "fit_accuracy_l1",
                                                "fit_completeness_l1")},
                         "against_source_mesh": _score(run, source, summary_samples(run))}
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"nls reconstruct CLOUD (default settings{', clouds with normals' if args.normals else ''}); "
                    f"×10³, normalised frames")
    for col in ("cloud", "points", "steps", "train s", "fit residual (mean / p95)", "fit accuracy",
                "CD-L1 vs source mesh", "its floor", "F@0.01", "NC"):
        t.add_column(col, justify="left" if col == "cloud" else "right")
    for name, r in results.items():
        s = r["against_source_mesh"]
        t.add_row(name, str(r["points"]), str(r["steps"]), f"{r['train_seconds']:.0f}",
                  f"{r['fit_residual_l1']:.2f} / {r['fit_residual_p95']:.2f}", f"{r['fit_accuracy_l1']:.2f}",
                  f"{s['chamfer_l1']:.2f}", f"{s['chamfer_l1_floor']:.2f}", f"{s['fscore@0.01']:.3f}",
                  f"{s['normal_consistency']:.3f}")
    Console(width=max(Console().width, 150)).print(t)
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


def summary_samples(run: Path) -> int:
    """The run's ``eval.chamfer_samples`` (config.yaml), so both scores use the same sample count."""
    import yaml

    return int((yaml.safe_load((run / "config.yaml").read_text()).get("eval") or {}).get("chamfer_samples", 30000))


if __name__ == "__main__":
    main()
