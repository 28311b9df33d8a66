"""DTU's point-cloud evaluation of a reconstructed surface: accuracy, completeness and their mean, in millimetres.

The DTU MVS benchmark (Aanæs et al., IJCV 2016) scores a reconstruction against the structured-light scan of each
object (``Points/stl/stl<scan:03d>_total.ply``) inside the region the scanner observed (``ObsMask/ObsMask<scan>_10
.mat``: a voxel mask ``ObsMask`` over the box ``BB`` at ``Res`` mm) and above the table (``ObsMask/Plane<scan>.mat``:
the plane ``P``). Neural surface papers (IDR, NeuS, VolSDF, MonoSDF, Neuralangelo) report meshes by the Python port of
the benchmark's MATLAB code, which this module follows:

1. the mesh is sampled so that no edge of a triangle is left with a gap wider than ``density`` (0.2 mm), and the
   samples are thinned so no two lie within ``density`` of each other (the benchmark reduces every submitted point
   cloud to 0.2 mm this way);
2. accuracy: the distance of each sample whose voxel (``round((p - BB_min) / Res)``) lies in the mask and was
   observed to the nearest scan point;
3. completeness: the distance of each scan point above the plane to the nearest sample within ``patch`` (60 mm)
   of the mask's box (a sample in a region the scanner did not observe may still cover a scan point);
4. each is the mean over the distances below ``max_dist`` (20 mm; larger ones are outliers the benchmark leaves
   out), and ``overall`` is the mean of the two.

The scan, the mask and the mesh are in DTU's world frame (mm): a run on an IDR / NeuS folder of a scan maps its mesh
back there with the scene's ``input_frame`` (:mod:`pipeline.scenes.neus`).

Two choices here are ours and make no difference beyond the benchmark's own randomness: the samples are a lattice on
each triangle (``i/n1 e1 + j/n2 e2``, ``n = ceil(|e| / density)``), and the thinning keeps points greedily in
(slab along x, seeded random) order, computed in parallel rounds that give exactly the sequential greedy result
(Blelloch, Fineman and Shun, SPAA 2012). The port thins in an unseeded random order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pipeline.scenes.blender import in_box
from pipeline.types import DataError, NLSError

#: the benchmark's sampling density and outlier distance, in mm
DENSITY_MM = 0.2
MAX_DIST_MM = 20.0
PATCH_MM = 60.0
#: the most lattice samples a mesh may take (~3.6 GB of float64 points before thinning): more means a mesh in
#: another frame or unit
MAX_SAMPLES = 150_000_000


@dataclass
class DTUReference:
    """One scan's ground truth, in DTU's world frame (mm)."""

    points: np.ndarray  # (S, 3) float64: the structured-light scan
    obs_mask: np.ndarray  # (X, Y, Z) bool: voxels the scanner observed
    bb: np.ndarray  # (2, 3) float64: the mask's box, its min corner first (the centre of voxel 0)
    res: float  # the mask's voxel size
    plane: np.ndarray  # (4,) float64: scan points p with plane . (p, 1) > 0 are above the table


def scan_number(name: str) -> Optional[int]:
    """The scan a folder's name gives (``scan24``, ``dtu_scan24``, ``scan_024``), else None."""
    m = re.search(r"scan[_-]?(\d+)", name, re.IGNORECASE)
    return int(m.group(1)) if m else None


def reference_files(root: Path, scan: int) -> dict[str, Path]:
    """The benchmark's files of ``scan`` under ``root`` (the folder holding ``Points/`` and ``ObsMask/``, the
    ``SampleSet/MVS Data`` of DTU's release)."""
    root = Path(root)
    return {"points": root / "Points" / "stl" / f"stl{scan:03d}_total.ply",
            "obs_mask": root / "ObsMask" / f"ObsMask{scan}_10.mat",
            "plane": root / "ObsMask" / f"Plane{scan}.mat"}


def _mat_arrays(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """The variables ``names`` of the MATLAB file ``path``; DataError naming the file and what it lacks."""
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise DataError(f"{path}: {exc}; save it as a MATLAB v7 (or older) file") from exc
    except Exception as exc:  # scipy raises ValueError / TypeError on files it cannot parse
        raise DataError(f"{path}: not a MATLAB .mat file scipy can read ({exc})") from exc
    missing = [n for n in names if n not in data]
    if missing:
        have = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: no variable {', '.join(missing)} (has {', '.join(have) or 'none'}); DTU's "
                        f"ObsMask<scan>_10.mat holds ObsMask, BB and Res, Plane<scan>.mat holds P")
    return [np.asarray(data[n]) for n in names]


def load_reference(points: Path, obs_mask: Path, plane: Path) -> DTUReference:
    """Read a scan's files; DataError naming the file that is missing or malformed."""
    for what, path in (("scan points", points), ("observation mask", obs_mask), ("plane", plane)):
        if not Path(path).is_file():
            raise DataError(f"DTU {what}: no file {path}")
    import trimesh

    try:
        cloud = trimesh.load(str(points), process=False)
    except Exception as exc:
        raise DataError(f"{points}: cannot be read as a point cloud ({exc})") from exc
    pts = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), np.float64)
    if pts.ndim != 2 or pts.shape[-1] != 3 or len(pts) == 0:
        raise DataError(f"{points}: holds no points (DTU's stl<scan>_total.ply is a PLY point cloud)")
    mask, bb, res = _mat_arrays(Path(obs_mask), ("ObsMask", "BB", "Res"))
    (p,) = _mat_arrays(Path(plane), ("P",))
    if mask.ndim != 3 or bb.size != 6 or res.size != 1 or p.size != 4:
        raise DataError(f"{obs_mask}, {plane}: ObsMask must be a 3-D array (has shape {mask.shape}), BB 2x3 (has "
                        f"{bb.shape}), Res one number (has {res.shape}) and P four numbers (has {p.shape})")
    return DTUReference(points=pts, obs_mask=mask.astype(bool), bb=bb.reshape(2, 3).astype(np.float64),
                        res=float(res.reshape(())), plane=p.reshape(4).astype(np.float64))


def _lattice_sides(v: np.ndarray, f: np.ndarray, density: float):
    """Each face's ``v0``, ``e1``, ``e2`` and lattice steps ``n1``, ``n2`` (:func:`sample_surface`)."""
    v0 = v[f[:, 0]]
    e1 = v[f[:, 1]] - v0
    e2 = v[f[:, 2]] - v0
    n1 = np.maximum(1, np.ceil(np.linalg.norm(e1, axis=1) / density)).astype(np.int64)
    n2 = np.maximum(1, np.ceil(np.linalg.norm(e2, axis=1) / density)).astype(np.int64)
    return v0, e1, e2, n1, n2


def lattice_size(vertices: np.ndarray, faces: np.ndarray, density: float) -> float:
    """About how many points :func:`sample_surface` makes (half of each face's parallelogram lattice)."""
    *_, n1, n2 = _lattice_sides(np.asarray(vertices, np.float64), np.asarray(faces, np.int64).reshape(-1, 3),
                                density)
    return float(((n1 + 1) * (n2 + 1)).sum() / 2)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, density: float, *,
                   chunk: int = 4_000_000) -> np.ndarray:
    """(P, 3): a lattice of points on every triangle, ``v0 + i/n1 e1 + j/n2 e2`` for ``i/n1 + j/n2 <= 1`` with
    ``e1 = v1 - v0``, ``e2 = v2 - v0`` and ``n = max(1, ceil(|e| / density))``: the triangles' corners and edges
    from ``v0`` are sampled at most ``density`` apart. Shared edges and corners give repeated points (thinning
    removes them). ``chunk``: lattice points made at once."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) == 0:
        return np.zeros((0, 3))
    v0, e1, e2, n1, n2 = _lattice_sides(v, f, density)
    count = (n1 + 1) * (n2 + 1)  # lattice points of each triangle's parallelogram
    ends = np.cumsum(count)
    out = []
    start = 0
    while start < len(f):
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + chunk, side="right"))
        stop = max(stop, start + 1)
        c = count[start:stop]
        tri = np.repeat(np.arange(start, stop), c)
        local = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)  # 0..count-1 within each triangle
        a = local // (n2[tri] + 1)
        b = local % (n2[tri] + 1)
        s, t = a / n1[tri], b / n2[tri]
        inside = s + t <= 1 + 1e-9
        tri, s, t = tri[inside], s[inside], t[inside]
        out.append(v0[tri] + s[:, None] * e1[tri] + t[:, None] * e2[tri])
        start = stop
    return np.concatenate(out)


def _greedy_independent(n: int, pairs: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """(n,) bool: the points kept by visiting them in increasing ``priority`` (a permutation of ``range(n)``)
    and keeping each one no kept point is paired with. Computed in rounds (a point whose priority is below all
    its undecided partners' is kept and its partners dropped), which give the sequential result exactly."""
    a = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int64)
    b = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int64)
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 dropped
    while True:
        undecided = state == 0
        if not undecided.any():
            return state == 1
        live = undecided[a] & undecided[b]
        a, b = a[live], b[live]
        lowest = np.full(n, n, np.int64)
        np.minimum.at(lowest, a, priority[b])
        picked = undecided & (priority < lowest)
        state[picked] = 1
        state[b[picked[a]]] = 2


def thin(points: np.ndarray, radius: float, *, seed: int = 0, slab: int = 1_000_000,
         progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """(Q, 3): ``points`` with no two kept ones within ``radius``: points sorted along x are cut into slabs of
    ``slab``; each slab's points are visited in a seeded random order and a point is dropped when a kept point lies
    within ``radius`` (``<=``). ``progress(done, total)`` is called after each slab."""
    from scipy.spatial import cKDTree

    p = np.asarray(points, np.float64)
    if len(p) == 0:
        return p.reshape(0, 3)
    p = p[np.argsort(p[:, 0], kind="stable")]
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for start in range(0, len(p), slab):
        part = p[start:start + slab]
        near = [k[k[:, 0] >= part[0, 0] - radius] for k in kept[-8:]]  # slabs are x-sorted: only the last reach
        near = np.concatenate(near) if near else np.zeros((0, 3))
        if len(near):
            d, _ = cKDTree(near).query(part, distance_upper_bound=radius * (1 + 1e-12))
            part = part[~np.isfinite(d)]
        if len(part):
            pairs = cKDTree(part).query_pairs(radius, output_type="ndarray")
            part = part[_greedy_independent(len(part), pairs, rng.permutation(len(part)))]
        kept.append(part)
        if progress is not None:
            progress(min(start + slab, len(p)), len(p))
    return np.concatenate(kept)


def observed(points: np.ndarray, ref: DTUReference) -> np.ndarray:
    """(P,) bool: the points whose nearest mask voxel (``round((p - BB_min) / Res)``) exists and was observed."""
    idx = np.round((np.asarray(points, np.float64) - ref.bb[0]) / ref.res).astype(np.int64)
    shape = np.asarray(ref.obs_mask.shape)
    ok = ((idx >= 0) & (idx < shape)).all(axis=1)
    out = np.zeros(len(idx), bool)
    i = idx[ok]
    out[ok] = ref.obs_mask[i[:, 0], i[:, 1], i[:, 2]]
    return out


def above_plane(points: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(P,) bool: ``plane . (p, 1) > 0``."""
    p = np.asarray(points, np.float64)
    return p @ plane[:3] + plane[3] > 0


def _mean_below(d: np.ndarray, limit: float) -> float:
    inliers = d[d < limit]
    return float(inliers.mean()) if len(inliers) else float("nan")


def evaluate_mesh(vertices: np.ndarray, faces: np.ndarray, ref: DTUReference, *, density: float = DENSITY_MM,
                  max_dist: float = MAX_DIST_MM, patch: float = PATCH_MM, seed: int = 0,
                  progress: Optional[Callable[[str], None]] = None) -> dict:
    """The benchmark's figures for a mesh (``vertices`` (V, 3) in DTU's world frame, ``faces`` (F, 3)) against
    ``ref`` (module docstring). NLSError when no sample of the mesh lies in the observed region (a mesh in another
    frame, or an empty one)."""
    from pipeline.metrics import nearest_distances

    say = progress or (lambda _s: None)
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    lo, hi = ref.bb[0] - patch, ref.bb[1] + patch
    corners = v[f]  # (F, 3, 3): faces wholly outside the box give no sample that is kept
    f = f[((corners.max(axis=1) >= lo) & (corners.min(axis=1) <= hi)).all(axis=1)]
    estimate = lattice_size(v, f, density)
    if estimate > MAX_SAMPLES:
        raise NLSError(f"the mesh's faces in the scan's box would take ~{estimate:,.0f} samples at {density:g} apart "
                       f"(more than {MAX_SAMPLES:,}): is the mesh in DTU's world frame (mm), and density in mm?")
    samples = sample_surface(v, f, density)
    say(f"{len(samples):,} lattice samples; thinning to {density:g}")
    data = thin(samples, density, seed=seed)
    data = data[in_box(data, np.concatenate([lo, hi]))]  # (within the patch of the mask's box)
    del samples
    inside = observed(data, ref)
    if not inside.any():
        lo, hi = (v.min(0), v.max(0)) if len(v) else (np.zeros(3), np.zeros(3))
        raise NLSError(f"no point of the mesh lies in the scan's observed region (mesh box {np.round(lo, 1).tolist()}"
                       f" .. {np.round(hi, 1).tolist()}, mask box {np.round(ref.bb[0], 1).tolist()} .. "
                       f"{np.round(ref.bb[1], 1).tolist()}): the mesh must be in DTU's world frame (mm)")
    data_in = data[inside]
    stl = ref.points[above_plane(ref.points, ref.plane)]
    say(f"distances: {len(data_in):,} samples, {len(stl):,} scan points")
    d2s, _ = nearest_distances(data_in, ref.points)
    s2d, _ = nearest_distances(stl, data)
    acc, comp = _mean_below(d2s, max_dist), _mean_below(s2d, max_dist)
    return {"dtu_accuracy": acc, "dtu_completeness": comp, "dtu_overall": (acc + comp) / 2,
            "dtu_accuracy_outliers": float((d2s >= max_dist).mean()),
            "dtu_completeness_outliers": float((s2d >= max_dist).mean()) if len(s2d) else float("nan"),
            "dtu_samples": int(len(data)), "dtu_observed": int(len(data_in)), "dtu_scan_points": int(len(stl))}
