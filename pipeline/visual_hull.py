"""A mesh cut to the visual hull of a scene's training views (``nls export --visual-hull PX``).

A point of the object lies, in every view that sees it inside the picture, on a pixel of the object: the view's
alpha (RGBA images, object masks) at least 0.5. Surface elsewhere (floaters in front of a camera, the table a
masked object stood on, background behind it) is outside the visual hull of the masks. The mesh keeps the faces
whose three vertices pass that test in every training view; the masks are first grown by ``PX`` pixels (their
Euclidean distance transform), so that a mask drawn tight to the object's edge, or a camera a fraction of a pixel
off, does not shave the object itself. Evaluations on DTU cut meshes to the masks this way before scoring them.
A vertex behind a camera, or projecting outside its picture, is not judged by that view.
"""

from __future__ import annotations

import numpy as np

from pipeline.types import NLSError, PosedImages


def hull_masks(split: PosedImages, grow: float) -> np.ndarray:
    """(N, H, W) bool: each view's object pixels (alpha >= 0.5) grown by ``grow`` pixels; NLSError when the split
    has no alpha."""
    from scipy.ndimage import distance_transform_edt

    if split.alphas is None:
        raise NLSError("--visual-hull: the training views have no alpha (RGBA images or object masks), so there is "
                       "no object to cut the mesh to")
    on = split.alphas[..., 0].cpu().numpy() >= 0.5
    if grow <= 0:
        return on
    return np.stack([distance_transform_edt(~m) <= grow for m in on])


def inside_hull(points: np.ndarray, split: PosedImages, masks: np.ndarray) -> np.ndarray:
    """(P,) bool: which of ``points`` (P, 3) fall on ``masks`` (N, H, W) in every view of ``split`` that has them in
    front of its camera and inside its picture (the pixel whose square holds the projection)."""
    cams = split.cameras
    c2w = cams.c2w.detach().cpu().double().numpy()
    keep = np.ones(len(points), bool)
    h, w = masks.shape[1:]
    for i in range(len(c2w)):
        local = (points - c2w[i, :3, 3]) @ c2w[i, :3, :3]  # (camera axes: OpenGL, looking down -z)
        depth = -local[:, 2]
        ahead = depth > 1e-9
        z = np.where(ahead, depth, 1.0)
        u = float(cams.cx[i]) + float(cams.fx[i]) * local[:, 0] / z
        v = float(cams.cy[i]) - float(cams.fy[i]) * local[:, 1] / z
        seen = ahead & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        col = np.clip(u, 0, w - 1).astype(np.int64)
        row = np.clip(v, 0, h - 1).astype(np.int64)
        keep &= ~seen | masks[i][row, col]
    return keep


def cut_to_visual_hull(mesh, split: PosedImages, grow: float):
    """``(mesh, dropped faces)``: a copy of the trimesh ``mesh`` with the faces that leave the visual hull of
    ``split``'s masks grown by ``grow`` pixels (module docstring) taken out, its unused vertices removed."""
    keep = inside_hull(np.asarray(mesh.vertices, dtype=np.float64), split, hull_masks(split, grow))
    faces = keep[np.asarray(mesh.faces)].all(axis=1)
    out = mesh.copy()
    out.update_faces(faces)
    out.remove_unreferenced_vertices()
    out.metadata.update(mesh.metadata)
    return out, int((~faces).sum())
