"""Benchmark ``dtu_eval``: DTU's point-cloud evaluation (:mod:`pipeline.dtu_eval`) at the size of a DTU scan.

No DTU scan is in the data folder, so the benchmark makes one whose answer is known: the scan is ``--scan-points``
points of a sphere of radius 150 mm (DTU's objects are 200 - 400 mm across; its scans hold a few million points),
the mask observes the upper half (z >= 0) over a 1 mm grid, and the table plane is z = -100 mm. The mesh is an
icosphere of ``--subdivisions`` (8: 1.3 M faces, about what marching cubes at 512^3 gives a DTU object) and radius
150 + ``--lift`` mm, so accuracy and completeness are both ``lift`` up to the faceting and the scan's spacing.
Prints the time of each phase and the peak memory; writes outputs/bench/dtu_eval.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def fibonacci_sphere(n: int, radius: float) -> np.ndarray:
    """(n, 3): ``n`` points spread evenly over a sphere of ``radius`` about the origin."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z * z)
    return radius * np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def main(argv: list[str]) -> dict:
    import trimesh

    from pipeline.dtu_eval import DTUReference, evaluate_mesh

    ap = argparse.ArgumentParser(prog="bench.py dtu_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan-points", type=int, default=2_500_000)
    ap.add_argument("--subdivisions", type=int, default=8)
    ap.add_argument("--lift", type=float, default=0.5, help="the mesh's radius over the scan's (mm)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "dtu_eval.json")
    args = ap.parse_args(argv)

    radius = 150.0
    bb = np.array([[-200.0, -200.0, -200.0], [200.0, 200.0, 200.0]])
    mask = np.zeros((401, 401, 401), bool)
    mask[:, :, 200:] = True  # (z >= 0 observed)
    ref = DTUReference(points=fibonacci_sphere(args.scan_points, radius), obs_mask=mask, bb=bb, res=1.0,
                       plane=np.array([0.0, 0.0, 1.0, 100.0]))
    mesh = trimesh.creation.icosphere(subdivisions=args.subdivisions, radius=radius + args.lift)
    marks: list[tuple[str, float]] = [("start", time.perf_counter())]
    res = evaluate_mesh(mesh.vertices, mesh.faces, ref,
                        progress=lambda line: marks.append((line, time.perf_counter())))
    marks.append(("done", time.perf_counter()))
    phases = {"sample": marks[1][1] - marks[0][1], "thin, mask": marks[2][1] - marks[1][1],
              "distances": marks[3][1] - marks[2][1]}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    out = {"scan_points": args.scan_points, "faces": int(len(mesh.faces)), "lift_mm": args.lift, **res,
           "seconds": {k: round(v, 2) for k, v in phases.items()},
           "total_seconds": round(marks[-1][1] - marks[0][1], 2), "peak_rss_gb": round(peak_gb, 2),
           "lattice_samples": marks[1][0].split(" ")[0]}
    print(f"mesh {len(mesh.faces):,} faces, radius {radius + args.lift:g} mm; scan {args.scan_points:,} points, "
          f"radius {radius:g} mm (truth: accuracy = completeness = {args.lift:g} mm up to faceting and spacing)")
    print(f"{'accuracy':>12} {'completeness':>13} {'overall':>8} {'samples':>10} {'observed':>10}")
    print(f"{res['dtu_accuracy']:12.4f} {res['dtu_completeness']:13.4f} {res['dtu_overall']:8.4f} "
          f"{res['dtu_samples']:10,} {res['dtu_observed']:10,}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
          + f"; total {out['total_seconds']:.1f}; peak RSS {peak_gb:.2f} GB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
