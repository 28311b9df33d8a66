"""What a coloured mesh looks like from a scene's cameras: one ray through each pixel centre, cast against the mesh
(embree through trimesh), the colour the mesh shows where the ray first meets it
(:func:`pipeline.texture.surface_colour`: its texture, or its vertex colours), the scene's background where it
meets nothing. The mesh is drawn unlit: a mesh baked from a radiance field carries the light in its colour, as the
images did.

Used by the ``mesh_psnr`` evaluator, which scores an exported asset (``nls export --colors / --texture``) against
the images the field was scored against, and (:func:`mesh_depth`: the distance to the first hit) by the ``depth``
evaluator, which scores the field's rendered depth against the ground-truth mesh's. :func:`shaded_hits` is the
clay render of a mesh without colour (the report's turntable, geometry validation's previews).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.types import Cameras


def shaded_hits(mesh, origins: np.ndarray, dirs: np.ndarray, colour: Sequence[float], ambient: float,
                isect=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clay render of ``mesh`` along the rays ``origins``/``dirs`` (R, 3) on white: each hit ``colour`` (3,) times
    ``ambient + (1 - ambient) |n . d|`` (Lambert, the light at the eye). Returns ((R, 3) image, the rays that hit
    (K,), the hits (K, 3)); ``isect``, a prebuilt intersector of ``mesh``, saves building it again per view."""
    from pipeline.scenes.mesh_render import _cast, _intersector

    img = np.ones((len(origins), 3))
    if len(mesh.faces) == 0:
        return img, np.zeros(0, np.int64), np.zeros((0, 3))
    ray, tri, loc = _cast(isect if isect is not None else _intersector(mesh)[0], origins, dirs)
    cos = np.abs(np.einsum("ij,ij->i", np.asarray(mesh.face_normals)[tri], dirs[ray]))
    img[ray] = (ambient + (1.0 - ambient) * cos)[:, None] * np.asarray(colour, np.float64)
    return img, ray, loc


def first_hits(mesh, cameras: Cameras, index: int, offset: tuple[float, float] = (0.0, 0.0),
               isect=None) -> tuple[np.ndarray, ...]:
    """The pixel-centre rays of camera ``index`` of ``cameras`` (as the renderers cast them; moved by ``offset``
    (du, dv) pixels, e.g. to a sub-pixel's centre) against ``mesh``: (origins (R, 3), unit directions (R, 3), the
    rays that hit (K,), the faces they hit first (K,), where (K, 3)), R = H x W row-major. ``isect``: a prebuilt
    intersector of ``mesh``."""
    from pipeline.rays import image_rays
    from pipeline.scenes.mesh_render import _cast, _intersector

    origins, dirs = (t.detach().cpu().double().numpy() for t in image_rays(cameras.to("cpu"), index, offset))
    if len(mesh.faces) == 0:
        return origins, dirs, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    ray, tri, loc = _cast(isect if isect is not None else _intersector(mesh)[0], origins, dirs)
    return origins, dirs, ray, tri, loc


def mesh_image(mesh, cameras: Cameras, index: int, background: Sequence[float], supersample: int = 1) -> np.ndarray:
    """(H, W, 3) sRGB image in [0, 1] of the coloured ``mesh`` seen by camera ``index`` of ``cameras`` (pixel
    centres, as the renderers cast them; with ``supersample`` s, the mean over s x s sub-pixel centres, as the
    renderers anti-alias), on ``background`` (3,)."""
    import trimesh

    from pipeline.rays import subpixel_offsets
    from pipeline.scenes.mesh_render import _intersector
    from pipeline.texture import surface_colour

    isect = _intersector(mesh)[0] if len(mesh.faces) else None
    offsets = subpixel_offsets(supersample)
    total = np.zeros((cameras.height * cameras.width, 3))
    for offset in offsets:
        origins, _, ray, tri, loc = first_hits(mesh, cameras, index, offset, isect)
        image = np.broadcast_to(np.asarray(background, np.float64), (len(origins), 3)).copy()
        if len(ray):
            bary = np.clip(trimesh.triangles.points_to_barycentric(np.asarray(mesh.triangles)[tri], loc), 0, 1)
            image[ray] = surface_colour(mesh, tri, bary / bary.sum(1, keepdims=True))
        total += image
    return (total / len(offsets)).reshape(cameras.height, cameras.width, 3)


def mesh_depth(mesh, cameras: Cameras, index: int) -> np.ndarray:
    """(H, W) distance along each unit pixel-centre ray of camera ``index`` of ``cameras`` to its first hit on
    ``mesh``, as the renderers measure depth; NaN where the ray meets nothing."""
    origins, dirs, ray, _, loc = first_hits(mesh, cameras, index)
    depth = np.full(len(origins), np.nan)
    depth[ray] = np.einsum("rc,rc->r", loc - origins[ray], dirs[ray])
    return depth.reshape(cameras.height, cameras.width)
