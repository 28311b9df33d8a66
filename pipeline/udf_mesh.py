"""Single-sheet meshes of unsigned distance fields (open surfaces), after MeshUDF.

Marching cubes needs a sign change, and an unsigned distance ``u >= 0`` has none: contouring
``u = tau`` gives a closed two-sheet shell around an open surface. Guillard et al. (MeshUDF,
ECCV 2022, Sec. 3) give each cube near the surface its own *pseudo-sign*: the corners whose
gradient of ``u`` points the same way as a reference corner's get ``+``, the others ``-`` (across
the surface the gradient of a distance flips), and marching cubes runs on ``+-u`` cube by cube.
The zero crossing on an edge whose corners have opposite pseudo-signs is then at
``u_a / (u_a + u_b)``, exact for a plane.

This module does that with scikit-image's marching cubes on a whole batch of cubes at once:
each selected cube's 8 pseudo-signed values are written into its own 2x2x2 block of a tiled
volume with one spacer sample between blocks, marching cubes visits only the cube cells (its
``mask``), and the faces are moved back to world coordinates. Cubes are processed
independently, as in MeshUDF, so the faces of neighbouring cubes share vertex positions (the
crossing on a shared edge does not depend on which corner is the reference) and are welded.

Deviations from MeshUDF, stated: the pseudo-sign reference is the cube's first corner (MeshUDF
picks it the same way, then votes over neighbouring cubes to remove some artefacts; we do not
vote); a cube is meshed only when all its corners are within ``threshold`` of the surface and
every edge whose pseudo-signs differ is a *descent* edge (both corner gradients point into the
edge, so ``u`` has a minimum between them, not a ridge of the medial axis). Face orientation is
made consistent per connected component afterwards (breadth-first over the face adjacency).
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from pipeline.mesh import DEFAULT_CHUNK, _check_bbox, _SamplingProgress, field_to_grid
from pipeline.types import NLSError

__all__ = ["udf_grid_to_mesh", "extract_udf_mesh", "near_surface_cubes", "field_values", "field_gradients", "CORNERS"]

#: the 8 corners of a cube, as (i, j, k) offsets; corner 0 is the pseudo-sign reference
CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.int64)
#: the 12 edges of a cube as pairs of corner indices (corners that differ in one coordinate)
EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8)
                  if np.abs(CORNERS[a] - CORNERS[b]).sum() == 1], dtype=np.int64)


def near_surface_cubes(values: np.ndarray, threshold: float) -> np.ndarray:
    """Cubes of the grid whose 8 corner values are all below ``threshold``.

    values: (R0,R1,R2) -> (K, 3) int64 index of each selected cube's first corner.
    """
    v = np.asarray(values)
    low = v < threshold
    all_low = np.ones(tuple(s - 1 for s in v.shape), dtype=bool)
    for c in CORNERS:
        all_low &= low[c[0]:c[0] + v.shape[0] - 1, c[1]:c[1] + v.shape[1] - 1, c[2]:c[2] + v.shape[2] - 1]
    return np.argwhere(all_low)


def _pseudo_signs(grads: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cube pseudo-signs and the cubes kept.

    grads: (K,8,3) corner gradients -> signs (K,8) in {-1,+1}, keep (K,) bool.
    A cube is kept when it has both signs and every sign-changing edge is a descent edge.
    """
    g0 = grads[:, :1]
    signs = np.where((grads * g0).sum(-1) >= 0, 1.0, -1.0)
    a, b = EDGES[:, 0], EDGES[:, 1]
    flip = signs[:, a] != signs[:, b]  # (K,12)
    step = (CORNERS[b] - CORNERS[a]) * spacing  # (12,3): from corner a to corner b
    descent = ((grads[:, a] * step).sum(-1) < 0) & ((grads[:, b] * -step).sum(-1) < 0)
    keep = flip.any(1) & (descent | ~flip).all(1)
    return signs, keep


def _surface_value(cubes: np.ndarray, signs: np.ndarray, value_fn: Callable, lo: np.ndarray, spacing: np.ndarray,
                   samples: int = 17) -> float:
    """The field's value on its minimum sheet, from below: the 2% quantile over the sign-changing cube
    edges of the field's minimum along the edge (``samples`` points per edge), less half a sample
    step (the most a distance-like, 1-Lipschitz field can dip between samples). cubes: (K,3), signs: (K,8).

    Erring low is deliberate: an offset below the true value adds a constant to every corner's
    distance, which only pulls vertices towards edge midpoints by a fraction of that constant; an
    offset above it makes corners next to the sheet hit zero and collapses their faces."""
    a, b = EDGES[:, 0], EDGES[:, 1]
    k, e = np.nonzero(signs[:, a] != signs[:, b])
    start = cubes[k] + CORNERS[a[e]]
    axis = (CORNERS[b[e]] - CORNERS[a[e]]).argmax(1)
    key = np.unique(np.concatenate([start, axis[:, None]], 1), axis=0)  # each grid edge once
    t = np.linspace(0.0, 1.0, samples)
    pts = key[:, None, :3] + t[None, :, None] * np.eye(3)[key[:, 3]][:, None, :]  # (E,samples,3) grid units
    vals = np.asarray(value_fn(lo + pts.reshape(-1, 3) * spacing), dtype=np.float64).reshape(len(key), samples)
    return float(np.quantile(vals.min(1), 0.02)) - 0.5 * float(spacing.max()) / (samples - 1)


def _tiled_marching_cubes(signed: np.ndarray):
    """Marching cubes on K independent cubes. signed: (K,8) -> (verts (V,3) in cube-local [0,1]^3,
    faces (F,3), cube (V,) index of each vertex's cube)."""
    from skimage.measure import marching_cubes

    K = signed.shape[0]
    n = int(np.ceil(K ** (1.0 / 3.0)))
    while n ** 3 < K:
        n += 1
    side = 3 * n - 1  # blocks of 2 samples + 1 spacer, no spacer after the last block
    fill = float(np.abs(signed).max()) + 1.0
    vol = np.full((side, side, side), fill, dtype=np.float32)
    blocks = np.stack(np.unravel_index(np.arange(K), (n, n, n)), -1) * 3  # (K,3) block origin
    for c_idx, c in enumerate(CORNERS):
        o = blocks + c
        vol[o[:, 0], o[:, 1], o[:, 2]] = signed[:, c_idx]
    # Only the K cube cells are meshed: scikit-image's Lewiner code visits a cell when ``mask`` is set
    # at its far corner (i+1, j+1, k+1) (checked by tests/test_udf_mesh.py). Without it, a spacer cell
    # next to a corner at -1e-9 tau puts its crossing at 1.0 in float32 and passes any position test.
    far = blocks + 1
    cells = np.zeros(vol.shape, dtype=bool)
    cells[far[:, 0], far[:, 1], far[:, 2]] = True
    verts, faces, _, _ = marching_cubes(vol, level=0.0, mask=cells)
    verts = verts.astype(np.float64)
    blk = np.floor((verts + 1e-6) / 3).astype(np.int64).clip(0, n - 1)
    cube = np.ravel_multi_index(blk.T, (n, n, n))  # block b holds cube b (blocks are filled in order)
    return verts - 3 * blk, faces, cube


def _weld(origin: np.ndarray, local: np.ndarray, faces: np.ndarray, spacing: np.ndarray, lo: np.ndarray):
    """Weld the vertices of independent cubes by the grid edge they lie on.

    origin: (V,3) grid index of each vertex's cube, local: (V,3) position in that cube ([0,1]^3, on an
    edge: two coordinates are 0 or 1) -> (world vertices (U,3), faces (F,3) re-indexed)."""
    snapped = np.round(local)
    on_grid = np.abs(local - snapped) < 1e-4
    axis = np.argmin(on_grid, axis=1)  # the free coordinate (0 when a vertex sits on a corner)
    start = origin + np.where(on_grid, snapped, 0).astype(np.int64)
    # a vertex on a corner is the corner itself: its snapped x is already in ``start``
    t = np.where(on_grid.all(1), 0.0, local[np.arange(len(local)), axis])
    key = np.concatenate([start, axis[:, None]], 1)
    uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    pos = start[first].astype(np.float64)
    pos[np.arange(len(first)), axis[first]] += t[first]
    return lo + pos * spacing, inv.reshape(-1)[faces]


def _orient(faces: np.ndarray) -> np.ndarray:
    """Consistent winding per connected component (breadth-first over the face adjacency; the first
    face of each component keeps its winding). faces: (F,3) -> (F,3)."""
    import trimesh
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    F = len(faces)
    pairs, edges = trimesh.graph.face_adjacency(faces=faces, return_edges=True)
    if len(pairs) == 0:
        return faces

    def forward(f: np.ndarray, e: np.ndarray) -> np.ndarray:  # does face f run e[0] -> e[1]?
        pos0 = np.argmax(faces[f] == e[:, :1], axis=1)
        return faces[f, (pos0 + 1) % 3] == e[:, 1]

    clash = (forward(pairs[:, 0], edges) == forward(pairs[:, 1], edges)).astype(np.int8) + 1  # 2: same direction
    A = coo_matrix((np.concatenate([clash, clash]), (np.concatenate([pairs[:, 0], pairs[:, 1]]),
                                                     np.concatenate([pairs[:, 1], pairs[:, 0]]))), shape=(F, F)).tocsr()
    flip = np.zeros(F, dtype=bool)
    _, labels = connected_components(A, directed=False)
    for root in np.unique(labels, return_index=True)[1]:
        order, pred = breadth_first_order(A, int(root), directed=False, return_predecessors=True)
        if len(order) < 2:
            continue
        child = order[1:]
        rel = np.asarray(A[child, pred[child]]).reshape(-1) == 2
        for f, p, r in zip(child.tolist(), pred[child].tolist(), rel.tolist()):
            flip[f] = flip[p] ^ r
    out = faces.copy()
    out[flip] = out[flip][:, ::-1]
    return out


def udf_grid_to_mesh(values: np.ndarray, grad_fn: Callable[[np.ndarray], np.ndarray], bbox: Sequence[float], *,
                     threshold: Optional[float] = None, offset: Union[float, str] = 0.0,
                     value_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None, trim: float = 0.5):
    """Single-sheet mesh of an unsigned field sampled on the corners of ``bbox``.

    values: (R0,R1,R2) field values; ``u = max(values - offset, 0)`` is treated as the unsigned
    distance (``offset``: the field's value on the surface, 0 for a true UDF; ``"min"``: estimated as
    the 2% quantile, less half a sample step (:func:`_surface_value`), over the cube edges the sheet
    crosses, of the field's minimum along the edge (needs
    ``value_fn``; the grid minimum without it), for fields whose minimum sheet is not at 0 such as an
    unsigned hKR field, about -margin). grad_fn: (M,3) world
    points -> (M,3) gradients of the field there (called only at the corners of the near-surface
    cubes). threshold: cubes are meshed when all corners have ``u < threshold`` (default: 1.5 voxel
    diagonals). value_fn: (M,3) world points -> (M,) field values; when given, faces whose centroid has
    ``u > trim * voxel size`` are dropped: the pseudo-sign flip continues a little past the border of
    an open surface (MeshUDF's boundary artefact), and there the distance at the face is about the
    overshoot. Returns a ``trimesh.Trimesh`` in world coordinates (may be empty of faces: then an
    :class:`NLSError`); its ``metadata["level"]`` is the offset used, the field value meshed, which the
    Chamfer evaluator records as ``mesh_level``.
    """
    import trimesh

    b = _check_bbox(bbox)
    vol = np.asarray(values, dtype=np.float64)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise NLSError(f"udf mesh: need a 3-D grid with >= 2 samples per axis, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise NLSError(f"udf mesh: the field is NaN or inf at {int((~np.isfinite(vol)).sum())} grid points; no mesh")
    estimate = offset == "min"
    if estimate:
        offset = float(vol.min())  # provisional: selects the cubes; refined below when value_fn is given
    elif isinstance(offset, str):
        raise NLSError(f"udf mesh: offset must be a number or 'min', got {offset!r}")
    spacing = (b[3:] - b[:3]) / (np.asarray(vol.shape) - 1)
    tau = float(threshold) if threshold is not None else 1.5 * float(np.linalg.norm(spacing))
    if tau <= 0:
        raise NLSError(f"udf mesh: threshold must be > 0, got {threshold!r}")
    u = np.maximum(vol - float(offset), 0.0)
    cubes = near_surface_cubes(u, tau)
    if len(cubes) == 0:
        raise NLSError(f"udf mesh: no cube has all corners within {tau:.4g} of the surface (field - offset "
                       f"ranges over [{u.min():.4g}, {u.max():.4g}], offset {offset:g}); lower the offset, "
                       f"raise the threshold or the resolution")
    corner_idx = cubes[:, None, :] + CORNERS[None]  # (K,8,3)
    uniq, inv = np.unique(corner_idx.reshape(-1, 3), axis=0, return_inverse=True)
    g = np.asarray(grad_fn(b[:3] + uniq * spacing), dtype=np.float64)
    if g.shape != (len(uniq), 3):
        raise NLSError(f"udf mesh: grad_fn returned shape {g.shape} for {len(uniq)} points; expected ({len(uniq)}, 3)")
    grads = g[inv.reshape(-1)].reshape(len(cubes), 8, 3)
    signs, keep = _pseudo_signs(grads, spacing)
    if not keep.any():
        raise NLSError(f"udf mesh: none of the {len(cubes)} near-surface cubes has a gradient flip (the field "
                       f"has no minimum sheet there); check the offset ({offset:g}) and the field")
    cubes, signs = cubes[keep], signs[keep]
    if estimate and value_fn is not None:
        offset = _surface_value(cubes, signs, value_fn, b[:3], spacing)
    uc = vol[tuple((cubes[:, None, :] + CORNERS[None]).transpose(2, 0, 1))] - offset
    signed = signs * np.maximum(uc, 1e-9 * tau)
    verts, faces, cube = _tiled_marching_cubes(signed)
    world, faces = _weld(cubes[cube], verts, faces, spacing, b[:3])
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    if value_fn is not None and trim > 0 and len(faces):
        uf = np.maximum(np.asarray(value_fn(world[faces].mean(1)), dtype=np.float64).reshape(-1) - offset, 0.0)
        faces = faces[uf <= trim * float(spacing.min())]
    mesh = trimesh.Trimesh(vertices=world, faces=_orient(faces), process=False)
    mesh.remove_unreferenced_vertices()
    mesh.metadata.update({"extractor": "udf_pseudo_sign", "level": float(offset), "offset": float(offset),
                          "threshold": tau, "trim": float(trim) if value_fn is not None else None, "bbox": b.tolist(),
                          "resolution": list(vol.shape), "cubes": int(len(cubes))})
    return mesh


#: the most points per call of the field near the surface (:func:`field_values`, :func:`field_gradients`),
#: where autograd keeps every call's activations for the backward pass
NEAR_CHUNK = 2 ** 16


def _chunks(n: int, chunk: int, label: str, progress: Optional[bool], resolution: int,
            started: Optional[float]) -> Iterator[slice]:
    """Slices of ``n`` points, ``chunk`` at a time, each reported once the caller is done with it by
    :class:`pipeline.mesh._SamplingProgress` (``progress``, ``resolution``, ``started`` as there)."""
    with _SamplingProgress(n, label, progress, resolution, started) as bar:
        for s in range(0, n, chunk):
            yield slice(s, min(n, s + chunk))
            bar.advance(min(n, s + chunk))


def field_values(fn: Callable, points: np.ndarray, device="cpu", chunk: int = NEAR_CHUNK, *,
                 progress: Optional[bool] = None, resolution: int = 0, started: Optional[float] = None) -> np.ndarray:
    """fn at numpy points (M,3) -> (M,) float64, ``chunk`` points per call, without autograd; progress as
    :func:`_chunks`."""
    import torch

    out = [np.zeros(0)]
    label = f"evaluating field at {len(points)} points"
    with torch.no_grad():
        for sl in _chunks(len(points), int(chunk), label, progress, resolution, started):
            x = torch.as_tensor(points[sl], dtype=torch.float32, device=device)
            out.append(fn(x).reshape(-1).cpu().double().numpy())
    return np.concatenate(out)


def field_gradients(fn: Callable, points: np.ndarray, device="cpu", chunk: int = NEAR_CHUNK, *,
                    progress: Optional[bool] = None, resolution: int = 0,
                    started: Optional[float] = None) -> np.ndarray:
    """Autograd gradient of fn at numpy points (M,3) -> (M,3) float64, ``chunk`` points per call; progress as
    :func:`_chunks`."""
    import torch

    out = [np.zeros((0, 3))]
    label = f"field gradients at {len(points)} points"
    for sl in _chunks(len(points), int(chunk), label, progress, resolution, started):
        x = torch.as_tensor(points[sl], dtype=torch.float32, device=device).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(fn(x).sum(), x)
        out.append(g.detach().cpu().double().numpy())
    return np.concatenate(out)


def extract_udf_mesh(fn: Callable, bbox: Sequence[float], resolution: int, *, threshold: Optional[float] = None,
                     offset: Union[float, str] = 0.0, trim: float = 0.5, device="cpu", progress: Optional[bool] = None,
                     chunk: int = DEFAULT_CHUNK):
    """Single-sheet mesh of the unsigned field ``fn`` ((M,3) torch points -> (M,) values) in ``bbox``.

    Values come from :func:`pipeline.mesh.field_to_grid`; gradients by autograd at the corners of
    the near-surface cubes only. See :func:`udf_grid_to_mesh` for ``threshold``, ``offset`` and ``trim``.
    ``progress`` as in :func:`pipeline.mesh.field_to_grid`, for the grid and then the gradients and values
    near the surface (off a terminal: plain lines once the extraction has run a few seconds). ``chunk``:
    points per call of ``fn`` (:func:`pipeline.mesh.query_chunk`), at most :data:`NEAR_CHUNK` near the surface.
    """
    shown = {"progress": progress, "resolution": int(resolution), "started": time.perf_counter(),
             "chunk": min(int(chunk), NEAR_CHUNK)}
    values = field_to_grid(fn, bbox, resolution, chunk=chunk, device=device, progress=progress)
    return udf_grid_to_mesh(values, lambda p: field_gradients(fn, p, device, **shown), bbox, threshold=threshold,
                            offset=offset, value_fn=lambda p: field_values(fn, p, device, **shown), trim=trim)
