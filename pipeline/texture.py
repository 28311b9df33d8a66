"""Lighter meshes for ``nls export``: quadric decimation (``--faces``, fast-simplification through trimesh) and
a baked colour texture (``--texture``): the mesh is cut into charts and packed into a UV atlas with xatlas, every
texel that a triangle covers is mapped back to its point on the surface, and the field's colour there, seen from
the training views as :func:`pipeline.mesh.bake_vertex_colors` sees it (:mod:`pipeline.view_colours`), is its
value. Texels no triangle covers take
the colour of the nearest covered one, so filtering across a chart's border samples no background.

A texture keeps the field's colour at a density set by the texture and not by the mesh, so a mesh decimated to a
few thousand faces can keep the appearance that vertex colours would need millions of vertices for.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Optional

import numpy as np

from pipeline.types import Cameras, NLSError

if TYPE_CHECKING:
    import trimesh

#: the Python module each option needs, and the pip requirement that installs it (the ``export`` extra has both)
TOOLS = {"--texture": ("xatlas", "xatlas"), "--faces": ("fast_simplification", "fast-simplification")}
#: texels of empty border that xatlas keeps between charts
PADDING = 2


def check_tool(option: str) -> None:
    """NLSError naming ``option`` when the package it needs is not installed (before any work)."""
    module, requirement = TOOLS[option]
    if importlib.util.find_spec(module) is None:
        raise NLSError(f"{option} needs the {requirement} package, which is not installed: pip install "
                       f"'.[export]' (or pip install {requirement})")


def decimate(mesh: "trimesh.Trimesh", faces: int) -> "trimesh.Trimesh":
    """``mesh`` simplified to about ``faces`` faces by quadric error decimation (Garland & Heckbert 1997, as
    fast-simplification implements it); a mesh with no more faces than that is returned as it is."""
    if len(mesh.faces) <= faces:
        return mesh
    out = mesh.simplify_quadric_decimation(face_count=faces)
    out.metadata.update(mesh.metadata)
    return out


def unwrap(mesh: "trimesh.Trimesh", size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas's charts of ``mesh`` packed for a ``size`` x ``size`` texture: (vertex of ``mesh`` behind each new
    vertex (V',), new faces (F, 3), UVs (V', 2) in [0, 1], origin at the image's bottom left)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, np.float32), np.ascontiguousarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = size, PADDING, True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, faces, uvs = atlas.get_mesh(0)
    return vmapping.astype(np.int64), faces.astype(np.int64), uvs.astype(np.float64)


def rasterize(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texels whose centres lie in a face, of a ``size`` x ``size`` image whose texel (row r, column c) has
    its centre at UV ((c + 0.5) / size, 1 - (r + 0.5) / size): (flat texel index r * size + c (T,), the face
    covering it (T,), barycentric coordinates there (T, 3)). A texel on an edge shared by two faces goes to one.

    Faces are grouped by the size of their texel bounding box (powers of two), and each group is tested on a grid
    of that size at once."""
    corners = np.empty((len(faces), 3, 2))
    corners[..., 0] = uvs[faces, 0] * size - 0.5  # continuous texel coordinates: centres at integers
    corners[..., 1] = (1.0 - uvs[faces, 1]) * size - 0.5
    lo = np.clip(np.ceil(corners.min(1) - 1e-9), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(corners.max(1) + 1e-9), 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 1).max(1)
    bucket = np.ceil(np.log2(extent)).astype(np.int64)
    texels, owners, barys = [], [], []
    for b in np.unique(bucket):
        side = 1 << int(b)
        for chunk in np.array_split(np.nonzero(bucket == b)[0], max(1, (bucket == b).sum() * side * side // 4_000_000)):
            grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="xy"), -1).reshape(-1, 2)
            pts = lo[chunk, None, :] + grid[None]  # (n, side^2, 2) candidate texel centres (x = column, y = row)
            a, e1, e2 = corners[chunk, 0], corners[chunk, 1] - corners[chunk, 0], corners[chunk, 2] - corners[chunk, 0]
            det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
            ok = np.abs(det) > 1e-12
            q = pts - a[:, None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                w1 = (q[..., 0] * e2[:, None, 1] - q[..., 1] * e2[:, None, 0]) / det[:, None]
                w2 = (e1[:, None, 0] * q[..., 1] - e1[:, None, 1] * q[..., 0]) / det[:, None]
            w0 = 1.0 - w1 - w2
            eps = 1e-9
            inside = ok[:, None] & (w0 >= -eps) & (w1 >= -eps) & (w2 >= -eps) & (pts <= hi[chunk, None, :]).all(-1)
            f_idx, t_idx = np.nonzero(inside)
            p = pts[f_idx, t_idx]
            texels.append(p[:, 1] * size + p[:, 0])
            owners.append(chunk[f_idx])
            barys.append(np.stack([w0[f_idx, t_idx], w1[f_idx, t_idx], w2[f_idx, t_idx]], 1))
    texel = np.concatenate(texels) if texels else np.zeros(0, np.int64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    bary = np.clip(np.concatenate(barys), 0.0, 1.0) if barys else np.zeros((0, 3))
    texel, first = np.unique(texel, return_index=True)
    return texel, owner[first], bary[first] / bary[first].sum(1, keepdims=True)


def fill_uncovered(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) with each texel outside ``covered`` (H, W) bool set to its nearest covered texel's
    value (scipy's Euclidean distance transform)."""
    from scipy.ndimage import distance_transform_edt

    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def material(picture, name: str, ext: str):
    """The material of a texture ``picture`` (a PIL image) for a file of extension ``ext``: for .obj a plain one
    (its .mtl's map_Kd, with white Kd and Ka and no Ks, so viewers show the texture as it is), else a PBR one
    (base colour texture, no metal, fully rough), which glTF takes."""
    import trimesh

    if ext == ".obj":
        return trimesh.visual.material.SimpleMaterial(image=picture, name=name, diffuse=[255, 255, 255, 255],
                                                      ambient=[255, 255, 255, 255], specular=[0, 0, 0, 255])
    return trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=picture, metallicFactor=0.0,
                                               roughnessFactor=1.0)


def bake_texture(mesh: "trimesh.Trimesh", chain, device, size: int, *, chunk: int = 65536,
                 name: str = "texture", ext: str = ".glb", cameras: Optional[Cameras] = None) -> "trimesh.Trimesh":
    """A copy of ``mesh`` cut along xatlas's chart seams, with UVs and a ``size`` x ``size`` sRGB texture of the
    field's colour (:func:`unwrap`, :func:`rasterize`, :func:`fill_uncovered`): at each covered texel's point on
    the surface, ``chain(x, d)["rgb"]`` averaged over the rays of the training ``cameras`` that see all three corners
    of its triangle (:mod:`pipeline.view_colours`), or seen along the inward normal ``d`` (the vertex normals
    interpolated) where none does or without ``cameras``, as :func:`pipeline.mesh.bake_vertex_colors` colours the
    vertices; in :func:`material` for a file of extension ``ext``, named ``name``. NLSError when the chain has no
    colour."""
    import trimesh
    from PIL import Image

    from pipeline.view_colours import seeing_views, view_colour

    views = seeing_views(mesh, cameras) if cameras is not None and len(cameras) else None
    vmapping, faces, uvs = unwrap(mesh, size)
    texel, owner, bary = rasterize(uvs, faces, size)
    vertices, normals = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    rgb = np.zeros((len(texel), 3), np.float32)
    for i in range(0, len(texel), chunk):  # (points made a chunk at a time: an 8192^2 texture has ~40M)
        corners, w = vmapping[faces[owner[i:i + chunk]]], bary[i:i + chunk]  # (t, 3) vertices of ``mesh``
        rgb[i:i + chunk] = view_colour(chain, np.einsum("tk,tkc->tc", w, vertices[corners]),
                                       np.einsum("tk,tkc->tc", w, normals[corners]), device, views=views,
                                       seen=views.faces(corners) if views is not None else None, chunk=chunk,
                                       what="--texture")
    image = np.zeros((size * size, 3), np.float32)
    image[texel] = rgb
    covered = np.zeros(size * size, bool)
    covered[texel] = True
    image = fill_uncovered(image.reshape(size, size, 3), covered.reshape(size, size))
    picture = Image.fromarray(np.round(image * 255).astype(np.uint8))
    out = trimesh.Trimesh(np.asarray(mesh.vertices)[vmapping], faces, process=False,
                          visual=trimesh.visual.TextureVisuals(uv=uvs, material=material(picture, name, ext)))
    out.metadata.update(mesh.metadata)
    out.metadata["texture"] = {"size": size, "covered": float(covered.mean()), "charts_faces": int(len(faces))}
    return out


def surface_colour(mesh: "trimesh.Trimesh", faces: np.ndarray, bary: np.ndarray, *,
                   linear_vertex_colours: bool = False) -> np.ndarray:
    """(P, 3) the colour ``mesh`` shows at the points with barycentric coordinates ``bary`` (P, 3) in ``faces``
    (P,), sRGB in [0, 1]: its texture looked up bilinearly at the interpolated UV (texel centres at
    ((c + 0.5) / W, 1 - (r + 0.5) / H)), else its vertex colours interpolated (``linear_vertex_colours``: they
    are linear, as glTF stores them, and are converted to sRGB after the interpolation), else NLSError."""
    from pipeline.mesh import linear_to_srgb

    corners = np.asarray(mesh.faces)[faces]
    kind = getattr(mesh.visual, "kind", None)
    if kind == "texture":
        mat = mesh.visual.material
        picture = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        image = np.asarray(picture.convert("RGB"), np.float64) / 255
        uv = np.einsum("pk,pkc->pc", bary, np.asarray(mesh.visual.uv)[corners])
        h, w = image.shape[:2]
        x, y = uv[:, 0] * w - 0.5, (1 - uv[:, 1]) * h - 0.5
        x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
        fx, fy = np.clip(x - x0, 0, 1)[:, None], np.clip(y - y0, 0, 1)[:, None]
        return ((1 - fx) * (1 - fy) * image[y0, x0] + fx * (1 - fy) * image[y0, x0 + 1]
                + (1 - fx) * fy * image[y0 + 1, x0] + fx * fy * image[y0 + 1, x0 + 1])
    if kind == "vertex":
        colours = np.asarray(mesh.visual.vertex_colors, np.float64)[:, :3] / 255
        mixed = np.einsum("pk,pkc->pc", bary, colours[corners])
        return np.clip(linear_to_srgb(mixed), 0, 1) if linear_vertex_colours else mixed
    raise NLSError("the mesh has neither a texture nor vertex colours")
