"""Labelled training points for the hKR loss (numpy + libigl; no torch).

Signed mode (closed shapes): points sampled uniformly in a loose box and near the surface get
``y = -1`` inside and ``+1`` outside, where "inside" means a generalized winding number
(Barill et al. 2018, "Fast Winding Numbers for Soups and Clouds") above ``threshold``:

* meshes, watertight or not (triangle soups): ``igl.fast_winding_number(V, F, Q)``;
* oriented point clouds: ``igl.fast_winding_number(P, N, A, Q)`` with per-point areas ``A``.
  Missing normals are estimated (:func:`estimate_normals`: PCA of the k nearest neighbours,
  oriented by propagation along a minimum spanning tree of the kNN graph weighted by
  ``1 - |n_i . n_j|`` (Hoppe et al. 1992), seeded by the point of largest ``z`` whose normal
  must point ``+z``). Areas are always estimated as ``A_i = pi r_i^2 / k`` with ``r_i`` the
  distance to the k-th neighbour (a disk of radius r_i holds ~k samples).

Input that cannot be labelled raises :class:`pipeline.types.DataError` with the reason: no
geometry, a point cloud without normals when estimation is off, normals that are zero or not
finite, or winding numbers that are too often ambiguous (in (0.25, 0.75): inconsistent
orientation) or that put the loose box's corners inside (inward normals).

Unsigned mode (open surfaces, curves): ``y = -1`` on samples of the surface/curve itself and
``+1`` on uniform and near-surface points farther than ``margin`` from every surface sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from pipeline.types import DataError

__all__ = ["LabelledPoints", "winding_numbers_mesh", "winding_numbers_points", "estimate_normals",
           "estimate_areas", "make_signed_labels", "make_unsigned_labels", "sample_mesh_surface"]


@dataclass
class LabelledPoints:
    """``inside`` (Ni,3) points with y=-1 and ``outside`` (No,3) points with y=+1 (float32), plus the
    surface samples used and facts about how they were made (``info``)."""

    inside: np.ndarray
    outside: np.ndarray
    surface: np.ndarray
    info: dict = field(default_factory=dict)


def _as_f64(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64))


def sample_mesh_surface(vertices, faces, n: int, rng: np.random.Generator):
    """Area-uniform samples of a triangle mesh: ``(points (n,3), normals (n,3))``."""
    V, F = _as_f64(vertices), np.asarray(faces, dtype=np.int64)
    tri = V[F]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise DataError("the mesh has zero total area (degenerate triangles only); nothing to label")
    face = rng.choice(len(F), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    t = tri[face]
    pts = (1 - s)[:, None] * t[:, 0] + (s * (1 - r2))[:, None] * t[:, 1] + (s * r2)[:, None] * t[:, 2]
    nrm = cross[face] / np.maximum(np.linalg.norm(cross[face], axis=1, keepdims=True), 1e-20)
    return pts, nrm


def winding_numbers_mesh(vertices, faces, queries) -> np.ndarray:
    """Generalized winding numbers of ``queries`` w.r.t. a triangle mesh or soup (libigl, fast)."""
    import igl

    return igl.fast_winding_number(_as_f64(vertices), np.ascontiguousarray(np.asarray(faces, np.int64)),
                                   _as_f64(queries))


def winding_numbers_points(points, normals, areas, queries) -> np.ndarray:
    """Generalized winding numbers of ``queries`` (Q,3) w.r.t. an oriented point cloud ``points`` (P,3),
    ``normals`` (P,3), ``areas`` (P,) (libigl, fast). Repeated points are merged first, their areas summed
    (the same winding number): libigl's octree never separates them and crashes the process."""
    import igl

    P, N, A = _as_f64(points), _as_f64(normals), _as_f64(areas)
    _, first, group = np.unique(P, axis=0, return_index=True, return_inverse=True)
    if len(first) < len(P):
        A = np.bincount(group.reshape(-1), weights=A, minlength=len(first))
        P, N = P[first], N[first]
    return igl.fast_winding_number(np.ascontiguousarray(P), np.ascontiguousarray(N), np.ascontiguousarray(A),
                                   _as_f64(queries))


def _knn(points: np.ndarray, k: int):
    from pykdtree.kdtree import KDTree

    k = min(k, len(points))
    tree = KDTree(np.ascontiguousarray(points, dtype=np.float64))
    d, i = tree.query(np.ascontiguousarray(points, dtype=np.float64), k=k)
    return d.reshape(len(points), k), i.reshape(len(points), k).astype(np.int64)


def estimate_areas(points, k: int = 10) -> np.ndarray:
    """Per-point area ``pi r_k^2 / k`` (r_k: distance to the k-th nearest neighbour, self excluded)."""
    P = _as_f64(points)
    d, _ = _knn(P, k + 1)
    r = d[:, -1]
    return np.pi * r ** 2 / k


def estimate_normals(points, k: int = 16) -> np.ndarray:
    """Unit normals of an unoriented point cloud: PCA of k neighbours, oriented by MST propagation.

    The orientation is global only up to the quality of the kNN graph: thin parts closer than
    the neighbourhood size can flip. :func:`make_signed_labels` checks the result.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

    P = _as_f64(points)
    n = len(P)
    if n < 4:
        raise DataError(f"cannot estimate normals from {n} points (need at least 4)")
    _, idx = _knn(P, k)
    nb = P[idx] - P[idx].mean(1, keepdims=True)  # (n,k,3)
    cov = np.einsum("nki,nkj->nij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    N = vecs[:, :, 0]  # eigenvector of the smallest eigenvalue
    # orientation propagation (Hoppe et al. 1992): MST of the kNN graph with weights 1 - |n_i.n_j|
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols = idx.reshape(-1)
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    w = 1.0 - np.abs(np.einsum("ij,ij->i", N[rows], N[cols])) + 1e-6
    G = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    G = G.maximum(G.T)
    T = minimum_spanning_tree(G)
    T = T.maximum(T.T)
    ncomp, comp = connected_components(T, directed=False)
    sign = np.zeros(n)
    for c in range(ncomp):
        members = np.flatnonzero(comp == c)
        seed = members[np.argmax(P[members, 2])]  # highest point: its normal points +z
        sign[seed] = 1.0 if N[seed, 2] >= 0 else -1.0
        order, pred = breadth_first_order(T, seed, directed=False, return_predecessors=True)
        rest = order[1:]
        flip = np.where(np.einsum("ij,ij->i", N[rest], N[pred[rest]]) >= 0, 1.0, -1.0)
        sgn, prd = sign.tolist(), pred.tolist()
        for i, f in zip(rest.tolist(), flip.tolist()):
            sgn[i] = sgn[prd[i]] * f
        sign = np.asarray(sgn)
    return N * sign[:, None]


def _box_samples(lo, hi, n, rng) -> np.ndarray:
    return lo + (hi - lo) * rng.random((n, 3))


def _near_samples(surface: np.ndarray, n: int, sigmas: Sequence[float], rng) -> np.ndarray:
    if n <= 0:
        return np.zeros((0, 3))
    parts = np.array_split(np.arange(n), len(sigmas))
    out = []
    for s, part in zip(sigmas, parts):
        base = surface[rng.integers(0, len(surface), len(part))]
        out.append(base + rng.normal(scale=s, size=base.shape))
    return np.concatenate(out)


def make_signed_labels(box, *, mesh: Optional[tuple] = None, points=None, normals=None,
                       normals_mode: str = "auto", n_uniform: int = 100_000, n_near: int = 100_000,
                       near_sigma: Sequence[float] = (0.01, 0.05), box_padding: float = 0.05,
                       threshold: float = 0.5, max_ambiguous: float = 0.02, n_surface: int = 100_000,
                       seed: int = 0) -> LabelledPoints:
    """Inside/outside points labelled by generalized winding numbers.

    box: (6,) [xmin ymin zmin xmax ymax zmax]; the loose box is it grown by ``box_padding``.
    mesh: ``(V (n,3), F (m,3))`` — a watertight mesh or a triangle soup; or
    points/normals: a point cloud (normals optional, see ``normals_mode``).
    """
    rng = np.random.default_rng(seed)
    b = np.asarray(box, dtype=np.float64).reshape(6)
    lo, hi = b[:3] - box_padding, b[3:] + box_padding
    info: dict = {"mode": "signed", "threshold": threshold}
    if mesh is not None:
        V, F = _as_f64(mesh[0]), np.asarray(mesh[1], np.int64)
        if len(F) == 0:
            raise DataError("the mesh has no faces: nothing to label (give a mesh or an oriented point cloud)")
        surface, _ = sample_mesh_surface(V, F, n_surface, rng)
        wn = lambda q: winding_numbers_mesh(V, F, q)  # noqa: E731
        info["source"] = "mesh (fast winding number, Barill et al. 2018)"
        can_flip = False
    elif points is not None:
        P = _as_f64(points)
        if P.ndim != 2 or P.shape[1] != 3 or len(P) < 4:
            raise DataError(f"the point cloud must be (P,3) with P >= 4, got shape {P.shape}")
        N = None if normals is None else _as_f64(normals)
        estimated = False
        if N is None:
            if normals_mode == "given":
                raise DataError("the point cloud has no normals and hkr.normals = 'given', so inside/outside "
                                "cannot be decided. Provide normals (a .ply with nx,ny,nz or an (N,6) array), "
                                "set normals: estimate, or use mode: unsigned.")
            N = estimate_normals(P)
            estimated = True
        elif normals_mode == "estimate":
            N = estimate_normals(P)
            estimated = True
        else:
            if N.shape != P.shape or not np.isfinite(N).all():
                raise DataError(f"the point cloud's normals are unusable (shape {N.shape}, finite: "
                                f"{bool(np.isfinite(N).all())}); set normals: estimate or mode: unsigned")
            ln = np.linalg.norm(N, axis=1)
            if (ln < 1e-8).mean() > 0.01:
                raise DataError(f"{(ln < 1e-8).mean():.1%} of the point cloud's normals are zero; they carry no "
                                f"orientation. Set normals: estimate or mode: unsigned.")
            N = N / np.maximum(ln, 1e-12)[:, None]
        A = estimate_areas(P)
        surface = P
        wn = lambda q: winding_numbers_points(P, N, A, q)  # noqa: E731
        info["source"] = "point cloud (fast winding number, Barill et al. 2018)"
        info["normals"] = "estimated (PCA k=16 + MST orientation propagation)" if estimated else "given"
        info["areas"] = "estimated (pi r_k^2 / k, k=10)"
        can_flip = estimated
    else:
        raise DataError("nothing to label: the scene has neither a mesh nor a point cloud")

    X = np.concatenate([_box_samples(lo, hi, n_uniform, rng), _near_samples(surface, n_near, near_sigma, rng)])
    w = wn(X)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    wc = wn(corners)
    if np.abs(wc).max() > threshold:
        raise DataError(f"the winding number reaches {np.abs(wc).max():.2f} at the corners of the loose box: the "
                        f"input is not contained in the scene box (or its orientation is broken)")
    wu = np.abs(w[:n_uniform])  # the near-surface band is legitimately ambiguous for point clouds
    ambiguous = float(np.mean((wu > 0.25) & (wu < 0.75)))
    if ambiguous > max_ambiguous:
        raise DataError(f"{ambiguous:.1%} of the uniform box samples have a winding number between 0.25 and 0.75 "
                        f"(limit {max_ambiguous:.1%}): the input's orientation is inconsistent (normals not "
                        f"oriented, or a very open surface). Fix the orientation, raise hkr.max_ambiguous, or "
                        f"use mode: unsigned.")
    n_pos, n_neg = int((w > threshold).sum()), int((w < -threshold).sum())
    if max(n_pos, n_neg) == 0:
        raise DataError("the winding numbers put no point inside: the input does not enclose a volume in this box, "
                        "or its normals are not consistently oriented (|w| stays near 0). Give oriented normals, "
                        "set normals: estimate, or use mode: unsigned for open surfaces and curves.")
    if min(n_pos, n_neg) > 0.1 * max(n_pos, n_neg):
        raise DataError(f"the winding numbers are above {threshold} at {n_pos} points and below -{threshold} at "
                        f"{n_neg}: the orientation is inconsistent (normals with random signs?), so inside and "
                        f"outside cannot be told apart. Set normals: estimate, or use mode: unsigned.")
    if n_neg > n_pos:  # w ~ -1 inside: inward orientation
        if not can_flip:
            raise DataError("the winding numbers are about -1 inside the shape: the input is inside-out (faces or "
                            "normals point inwards). Flip the face orientation / normals.")
        w = -w
        info["normals"] += ", globally flipped (the propagation seed pointed inwards)"
    inside = X[w > threshold]
    outside = X[w <= threshold]
    info.update({"n_inside": int(len(inside)), "n_outside": int(len(outside)), "ambiguous_fraction": ambiguous,
                 "n_surface": int(len(surface))})
    if len(inside) < 0.001 * len(X):
        raise DataError(f"winding numbers put only {len(inside)} of {len(X)} points inside: the input does not "
                        f"enclose a volume in this box or its normals are not consistently oriented. Use mode: "
                        f"unsigned for open surfaces and curves.")
    return LabelledPoints(inside.astype(np.float32), outside.astype(np.float32), surface.astype(np.float32), info)


def make_unsigned_labels(box, *, mesh: Optional[tuple] = None, points=None, margin: float = 0.01,
                         n_uniform: int = 100_000, n_near: int = 100_000, near_sigma: Sequence[float] = (0.01, 0.05),
                         box_padding: float = 0.05, n_surface: int = 100_000, seed: int = 0) -> LabelledPoints:
    """Unsigned labels: surface (or curve) samples get y=-1 (returned as ``inside``); uniform and
    near-surface points farther than ``margin`` from every surface sample get y=+1."""
    from pykdtree.kdtree import KDTree

    rng = np.random.default_rng(seed)
    b = np.asarray(box, dtype=np.float64).reshape(6)
    lo, hi = b[:3] - box_padding, b[3:] + box_padding
    if mesh is not None:
        if len(mesh[1]) == 0:
            raise DataError("the mesh has no faces; for a curve or point set give it as a point cloud")
        surface, _ = sample_mesh_surface(mesh[0], mesh[1], n_surface, rng)
        source = "mesh samples"
    elif points is not None:
        surface = _as_f64(points)
        if surface.ndim != 2 or surface.shape[1] != 3 or len(surface) == 0:
            raise DataError(f"the point cloud must be (P,3), got shape {surface.shape}")
        source = "point cloud"
    else:
        raise DataError("nothing to label: the scene has neither a mesh nor a point cloud")
    X = np.concatenate([_box_samples(lo, hi, n_uniform, rng), _near_samples(surface, n_near, near_sigma, rng)])
    d, _ = KDTree(np.ascontiguousarray(surface)).query(np.ascontiguousarray(X), k=1)
    outside = X[d > margin]
    info = {"mode": "unsigned", "source": source, "n_inside": int(len(surface)), "n_outside": int(len(outside)),
            "dropped_within_margin": int((d <= margin).sum())}
    return LabelledPoints(surface.astype(np.float32), outside.astype(np.float32), surface.astype(np.float32), info)
