"""Coloured mesh exports of a trained run (``nls export --colors / --faces / --texture``): how faithfully each
keeps the field's colour, how large its file is and how long it takes.

The run's mesh is extracted once at its extractor's resolution. Each variant is then made from it as
``nls export`` makes it (:func:`pipeline.texture.decimate`, :func:`pipeline.mesh.bake_vertex_colors`,
:func:`pipeline.texture.bake_texture`) and written as .glb. Its colour fidelity is measured on its own surface:
at ``--points`` area-uniform random points, the colour the file shows there (:func:`pipeline.texture.surface_colour`:
vertex colours interpolated across the face, or the texture looked up bilinearly at the interpolated UV) against the field's colour at the same point
as the bakers query it (``--color-from views``, the default: the mean along the rays of the training cameras that see
all three corners of its face, :mod:`pipeline.view_colours`; ``normal``: along the interpolated inward normal);
reported as a PSNR in dB over the points.

Usage::

    python scripts/bench.py export --run RUN_DIR                      # 100k faces, textures 1024 and 2048
    python scripts/bench.py export --run RUN_DIR --faces 50000 --textures 2048

Writes outputs/bench/export.json and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402


def _fidelity(path: Path, chain, device, n: int, seed: int = 0, cameras=None) -> float:
    """PSNR (dB) of the colour the .glb at ``path`` shows against the field's, at ``n`` random surface points, seen
    from the training ``cameras`` that see them (None: along the inward normal)."""
    import trimesh

    from pipeline.texture import surface_colour
    from pipeline.view_colours import seeing_views, view_colour

    mesh = trimesh.load(path, force="mesh", process=False)
    rng = np.random.default_rng(seed)
    area = np.asarray(mesh.area_faces)
    faces = rng.choice(len(area), n, p=area / area.sum())
    bary = rng.dirichlet(np.ones(3), n)
    corners = np.asarray(mesh.faces)[faces]
    points = np.einsum("pk,pkc->pc", bary, np.asarray(mesh.vertices)[corners])
    normals = np.einsum("pk,pkc->pc", bary, np.asarray(mesh.vertex_normals)[corners])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shown = surface_colour(mesh, faces, bary, linear_vertex_colours=True)  # (glTF's vertex colours are linear)
    views = seeing_views(mesh, cameras) if cameras is not None else None
    field = view_colour(chain, points, normals, device, views=views,
                        seen=views.faces(corners) if views is not None else None)
    mse = float(np.mean((shown - field) ** 2))
    return -10 * np.log10(max(mse, 1e-12))


def main(argv) -> dict:
    from pipeline.commands.run_loading import open_run
    from pipeline.evaluate import EvalContext, extract
    from pipeline.mesh import bake_vertex_colors, export_mesh
    from pipeline.texture import bake_texture, decimate

    ap = argparse.ArgumentParser(prog="bench.py export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run folder trained on images (nls reconstruct)")
    ap.add_argument("--faces", type=int, default=100_000, help="the simplified meshes' face count")
    ap.add_argument("--textures", default="1024,2048", help="texture sizes, comma-separated")
    ap.add_argument("--points", type=int, default=200_000, help="surface points of the fidelity measure")
    ap.add_argument("--color-from", choices=["views", "normal"], default="views",
                    help="as nls export --color-from: the training views' directions, or the inward normal")
    ap.add_argument("--out", default="outputs/bench/export.json")
    args = ap.parse_args(argv)

    ld = open_run(argparse.Namespace(run_dir=args.run, device="cpu", plugins_dir=None, quiet=True))
    t = time.perf_counter()
    full = extract(EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device))
    extract_s = time.perf_counter() - t
    train = ld.scene.splits.get("train")
    cameras = train.cameras if args.color_from == "views" and train is not None else None
    variants = [("full mesh, vertex colours", None, None),
                (f"{args.faces} faces, vertex colours", args.faces, None)]
    variants += [(f"{args.faces} faces, texture {s}", args.faces, int(s)) for s in args.textures.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, faces, size in variants:
            t = time.perf_counter()
            mesh = decimate(full, faces) if faces else full.copy()
            if size:
                mesh = bake_texture(mesh, ld.system.chain, ld.device, size, name="bench", cameras=cameras)
            else:
                bake_vertex_colors(mesh, ld.system.chain, ld.device, linear=True, cameras=cameras)
            path = export_mesh(mesh, Path(tmp) / "bench.glb")
            seconds = time.perf_counter() - t
            psnr = _fidelity(path, ld.system.chain, ld.device, args.points, cameras=cameras)
            rows.append({"variant": label, "faces": int(len(mesh.faces)), "seconds": round(seconds, 2),
                         "megabytes": round(path.stat().st_size / 1e6, 2), "colour_psnr_db": round(psnr, 2)})
            print(f"{label:<34} {rows[-1]['faces']:>8} faces {seconds:7.1f} s {rows[-1]['megabytes']:7.2f} MB "
                  f"colour PSNR {psnr:6.2f} dB", flush=True)
    record = {"run": str(args.run), "color_from": args.color_from, "extracted_faces": int(len(full.faces)), "extract_seconds": round(extract_s, 2),
              "points": args.points, "rows": rows, "load": os.getloadavg()[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"extracted {record['extracted_faces']} faces in {extract_s:.1f} s; wrote {out}")
    return record
