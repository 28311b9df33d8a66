"""A mesh's colour from the directions the training views saw it, for ``nls export --colors / --texture``.

A radiance field's colour depends on the viewing direction, and it is fitted only along the rays of the training
views. Baking a surface point's colour along one fixed direction, such as the inward normal, asks the field for a
direction that no training ray may have come from (the underside of an object photographed from above, a wall seen
only at a slant), where its view-dependent part is unconstrained. Texturing from photographs blends the views that
see each point for the same reason. Here a point's colour is the mean of the field's colour along the rays from the
training cameras that see it: cameras in whose image the point falls, that it faces (``n . d < 0``), and from which
the mesh does not hide it (the first hit of the ray from the camera's centre towards the point lies within
:data:`OCCLUSION_EDGES` mean edge lengths of it; embree through trimesh). Points that no camera sees keep the inward
normal's direction. At most :data:`MAX_VIEWS` cameras are used, spread over the training set's cameras
(farthest-point sampling of their centres and axes), so a capture that lingers in one place does not crowd out the
rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from pipeline.types import Cameras, SceneData

if TYPE_CHECKING:
    import trimesh

#: the most training cameras a bake looks from (a larger set's spread by farthest-point sampling, :func:`view_subset`)
MAX_VIEWS = 32
#: a point is hidden from a camera when the mesh is hit more than this many mean edge lengths before it
OCCLUSION_EDGES = 1.5


@dataclass
class SeeingViews:
    """Which of ``cameras`` (K training cameras) see each vertex of a mesh: ``vertex (V, K)`` bool."""

    cameras: Cameras
    vertex: np.ndarray

    def faces(self, faces: np.ndarray) -> np.ndarray:
        """``(F, K)`` bool: the cameras that see all three corners of each of ``faces (F, 3)`` (vertex indices)."""
        return self.vertex[np.asarray(faces)].all(axis=1)


def colour_cameras(scene: SceneData, color_from: str) -> Optional[Cameras]:
    """The cameras a bake colours from (``--color-from`` / ``mesh_psnr``'s ``color_from``): the training split's,
    refined when the run refined them, for ``"views"``; None (the inward normal) for ``"normal"`` or a scene
    without training images."""
    train = scene.splits.get("train")
    return train.cameras if color_from == "views" and train is not None else None


def view_subset(cameras: Cameras, most: int = MAX_VIEWS) -> list[int]:
    """Sorted indices of at most ``most`` of ``cameras``: all when there are no more, else farthest-point sampling
    from the first (each next camera the one farthest from those already picked) over their centres and optical
    axes, the axes scaled by the centres' spread (a turn of a radian counts as a move across the rig; a tripod's
    cameras differ by their axes alone). Cameras identical to one already picked are not picked again."""
    n = len(cameras)
    if n <= most:
        return list(range(n))
    c2w = cameras.c2w.detach().double().cpu().numpy()
    centres, axes = c2w[:, :3, 3], -c2w[:, :3, 2]  # (N, 3): OpenGL cameras look down -z
    spread = float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())) or 1.0
    points = np.concatenate([centres, axes * spread], 1)  # (N, 6)
    picked = [0]
    dist = np.linalg.norm(points - points[0], axis=1)  # (N,) to the nearest picked camera
    for _ in range(most - 1):
        i = int(np.argmax(dist))
        if dist[i] == 0:  # every camera left repeats a picked one
            break
        picked.append(i)
        dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=1))
    return sorted(picked)


def seeing_views(mesh: "trimesh.Trimesh", cameras: Cameras, most: int = MAX_VIEWS) -> SeeingViews:
    """The training ``cameras`` (at most ``most`` of them, :func:`view_subset`) that see each vertex of ``mesh``
    (module docstring)."""
    from pipeline.scenes.mesh_render import _cast, _intersector

    picked = cameras.select(view_subset(cameras, most))
    verts, normals = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.vertex_normals, np.float64)
    seen = np.zeros((len(verts), len(picked)), bool)
    if len(mesh.faces) == 0:
        return SeeingViews(picked, seen)
    isect = _intersector(mesh)[0]
    tol = OCCLUSION_EDGES * float(np.mean(mesh.edges_unique_length))
    c2w = picked.c2w.double().cpu().numpy()
    fx, fy, cx, cy = (t.double().cpu().numpy() for t in (picked.fx, picked.fy, picked.cx, picked.cy))
    for k in range(len(picked)):
        centre = c2w[k, :3, 3]
        rel = verts - centre  # (V, 3) from the camera to each vertex
        dist = np.linalg.norm(rel, axis=1)
        dirs = rel / np.maximum(dist, 1e-12)[:, None]
        local = rel @ c2w[k, :3, :3]  # camera frame, Blender axes: in front is -z
        depth = -local[:, 2]
        ahead = depth > 1e-9
        u = fx[k] * local[:, 0] / np.where(ahead, depth, 1.0) + cx[k]
        v = -fy[k] * local[:, 1] / np.where(ahead, depth, 1.0) + cy[k]
        candidates = np.nonzero(ahead & (u >= 0) & (u < picked.width) & (v >= 0) & (v < picked.height)
                                & (np.einsum("ij,ij->i", dirs, normals) < 0))[0]
        if len(candidates) == 0:
            continue
        ray, _, loc = _cast(isect, np.repeat(centre[None], len(candidates), 0), dirs[candidates])
        first = np.full(len(candidates), np.inf)
        first[ray] = np.linalg.norm(loc - centre, axis=1)
        seen[candidates[first >= dist[candidates] - tol], k] = True
    return SeeingViews(picked, seen)


def view_colour(chain, points: np.ndarray, normals: np.ndarray, device, *, views: Optional[SeeingViews] = None,
                seen: Optional[np.ndarray] = None, chunk: int = 65536, what: str = "--colors") -> np.ndarray:
    """``(P, 3)`` float32 colour in [0, 1] of ``chain`` at surface ``points (P, 3)`` with unit outward ``normals
    (P, 3)``: the mean over the cameras of ``views`` that see each point (``seen (P, K)`` bool) of its colour along
    their rays, and along the inward normal for a point that none sees (or without ``views``). NLSError when the
    chain has no colour (naming ``what`` to leave out)."""
    from pipeline.mesh import field_colour

    points = np.asarray(points, np.float64)
    normals = np.asarray(normals, np.float64)
    inward = -normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    if views is None or seen is None or not seen.any():
        return field_colour(chain, points, inward, device, chunk, what=what)
    total = np.zeros((len(points), 3), np.float64)
    count = seen.sum(axis=1)
    centres = views.cameras.c2w[:, :3, 3].double().cpu().numpy()
    for k in range(seen.shape[1]):
        idx = np.nonzero(seen[:, k])[0]
        if len(idx) == 0:
            continue
        rel = points[idx] - centres[k]
        total[idx] += field_colour(chain, points[idx], rel / np.linalg.norm(rel, axis=1, keepdims=True), device, chunk,
                                   what=what)
    alone = np.nonzero(count == 0)[0]
    if len(alone):
        total[alone] = field_colour(chain, points[alone], inward[alone], device, chunk, what=what)
    return (total / np.maximum(count, 1)[:, None]).astype(np.float32)
