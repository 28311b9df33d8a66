"""Turn a mesh into a Blender-format posed-image scene (and load/normalise meshes).

:func:`render_mesh_views` ray-casts a triangle mesh (embree through trimesh) from cameras
on a sphere around the origin and writes what :func:`pipeline.scenes.blender.load_blender`
reads: ``transforms_{train,val,test}.json`` + RGBA PNGs (alpha = hit), plus the mesh as
``gt_mesh.ply`` and ``meta.json`` describing how the views were made. Shading is
Lambertian + ambient with the (camera-facing) face normal under a fixed world light, so a
surface point has the same colour in every view, with a mild procedural colour
variation by position so that views are not textureless.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.types import DataError, NLSError

__all__ = ["load_mesh", "normalize_mesh", "render_mesh_views", "look_at", "pixel_rays",
           "camera_positions"]


# --------------------------------------------------------------------------- meshes


#: the mesh formats named when a file cannot be read (trimesh reads these and more)
MESH_FORMATS = ("obj", "off", "ply", "stl", "glb", "gltf")


def load_mesh(path) -> "trimesh.Trimesh":  # noqa: F821
    """Read a triangle mesh (OBJ/OFF/PLY/STL/GLB...); scenes are concatenated into one mesh.

    Duplicate vertices along UV/normal seams are merged so closed models are watertight.
    Raises DataError for a missing, unreadable or empty file.
    """
    import trimesh

    path = Path(path)
    if not path.exists():
        raise DataError(f"mesh file not found: {path}")
    if not path.is_file():
        raise DataError(f"mesh path is not a file: {path}")
    try:  # unprocessed, so a NaN vertex is seen here rather than silently dropped with its faces
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for unreadable files
        known = path.suffix.lower().lstrip(".") in trimesh.available_formats()
        hint = "" if known else f" (readable: {', '.join('.' + f for f in MESH_FORMATS)})"
        raise DataError(f"cannot read mesh {path}: {type(e).__name__}: {e}{hint}") from None
    if isinstance(loaded, trimesh.Scene):
        geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
        if not geoms:
            raise DataError(f"mesh file {path} holds no triangle geometry")
        loaded = trimesh.util.concatenate(geoms)
    if isinstance(loaded, list):  # some loaders return a list of meshes
        geoms = [g for g in loaded if isinstance(g, trimesh.Trimesh)]
        loaded = trimesh.util.concatenate(geoms) if geoms else None
    if not isinstance(loaded, trimesh.Trimesh):
        raise DataError(f"mesh file {path} does not hold a triangle mesh "
                        f"(got {type(loaded).__name__})")
    if len(loaded.faces) == 0 or len(loaded.vertices) == 0:
        points = _point_count(path)
        if points:
            raise DataError(f"mesh file {path} holds {points} points and no faces (a point cloud); point clouds "
                            f"are read by the scene types geometry and scan")
        raise DataError(f"{path} is empty: {len(loaded.vertices)} vertices and 0 faces, so neither a mesh nor a "
                        f"point cloud to reconstruct from")
    bad = int((~np.isfinite(loaded.vertices).all(axis=1)).sum())
    if bad:
        raise DataError(f"mesh file {path} has {bad} vertices with NaN or inf coordinates; fix or remove them")
    loaded.process()  # what trimesh.load does by default: merge duplicate vertices
    loaded.merge_vertices(merge_tex=True, merge_norm=True)
    return loaded


def _point_count(path: Path) -> int:
    """How many points ``path`` holds when trimesh reads it as a point cloud, else 0."""
    import trimesh

    try:
        loaded = trimesh.load(path, process=False)
    except Exception:  # any reader failure: not a point cloud it can read
        return 0
    return len(loaded.vertices) if isinstance(loaded, trimesh.PointCloud) else 0


def normalize_mesh(mesh, extent: float = 1.0):
    """Centre the bounding box at the origin and scale its largest side to ``extent``.

    Duplicate vertices (UV/normal seams) are merged first. Returns ``(new_mesh, T)`` where
    ``T`` (4x4 float64) maps original coordinates to the new ones: ``p' = s * (p - c)``.
    The input mesh is not modified.
    """
    if not (extent > 0 and math.isfinite(extent)):
        raise NLSError(f"normalize_mesh: extent must be a positive number, got {extent!r}")
    m = mesh.copy()
    m.merge_vertices(merge_tex=True, merge_norm=True)
    if len(m.vertices) == 0:
        raise DataError("normalize_mesh: the mesh has no vertices")
    lo, hi = m.bounds
    side = float((hi - lo).max())
    if not side > 0:
        raise DataError("normalize_mesh: the mesh is degenerate (zero-size bounding box)")
    s = extent / side
    c = 0.5 * (lo + hi)
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * c
    m.apply_transform(T)
    return m, T


# --------------------------------------------------------------------------- cameras


def look_at(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) camera-to-world in Blender/OpenGL axes (camera looks down its -z)."""
    eye = np.asarray(eye, np.float64)
    z = eye - np.asarray(target, np.float64)
    z /= np.linalg.norm(z)
    up = np.asarray(up, np.float64)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-8:  # looking straight along `up`
        x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def pixel_rays(c2w: np.ndarray, width: int, height: int, focal: float,
               cx: Optional[float] = None, cy: Optional[float] = None):
    """Origins and unit directions (H*W, 3) of pixel-centre rays, row-major (v, u)."""
    cx = 0.5 * width if cx is None else cx
    cy = 0.5 * height if cy is None else cy
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5, indexing="xy")
    d_cam = np.stack([(u - cx) / focal, -(v - cy) / focal, -np.ones_like(u)], -1)
    d = d_cam.reshape(-1, 3) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(c2w[:3, 3], d.shape).copy()
    return o, d


def camera_positions(n: int, radius: float, kind: str, seed: int = 0,
                     hemisphere: bool = False) -> np.ndarray:
    """(n, 3) camera centres. ``kind``: ``"random"`` (uniform on the sphere or upper
    hemisphere, seeded, poles excluded), ``"ring"`` (evenly spaced azimuths on two
    elevation rings), ``"ring_val"`` (one ring, offset azimuths)."""
    if n <= 0:
        return np.zeros((0, 3))
    if kind == "random":
        rng = np.random.default_rng(seed)
        z = rng.uniform(0.05 if hemisphere else -0.9, 0.95, n)
        phi = rng.uniform(0.0, 2 * math.pi, n)
    elif kind == "ring":
        el = np.where(np.arange(n) % 2 == 0, math.radians(30.0),
                      math.radians(10.0 if hemisphere else -20.0))
        z = np.sin(el)
        phi = 2 * math.pi * (np.arange(n) + 0.5) / n
    elif kind == "ring_val":
        z = np.full(n, math.sin(math.radians(15.0)))
        phi = 2 * math.pi * (np.arange(n) + 0.25) / n
    else:
        raise ValueError(f"unknown camera layout {kind!r}")
    r = np.sqrt(np.clip(1 - z * z, 0.0, None))
    return radius * np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


# --------------------------------------------------------------------------- rendering


def _intersector(mesh):
    import trimesh

    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh), "embree"
    except Exception as e:  # embreex missing or broken
        warnings.warn(f"embree ray intersector unavailable ({e}); falling back to trimesh's "
                      "slow triangle intersector", stacklevel=3)
        return trimesh.ray.ray_triangle.RayMeshIntersector(mesh), "trimesh"


def _cast(isect, origins: np.ndarray, dirs: np.ndarray):
    """First hits: (ray_index, tri_index, location)."""
    try:
        tri, ray, loc = isect.intersects_id(origins, dirs, multiple_hits=False,
                                            return_locations=True)
    except ImportError as e:  # trimesh's fallback needs rtree
        raise NLSError(f"ray casting needs embreex (preferred) or rtree: {e}") from None
    return np.asarray(ray, np.int64), np.asarray(tri, np.int64), np.asarray(loc, np.float64)


def rays_hit(mesh, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """``(R,)`` bool: whether each ray ``origins (R,3) + t dirs (R,3)``, ``t > 0``, hits ``mesh``."""
    isect, _ = _intersector(mesh)
    try:
        return np.asarray(isect.intersects_any(np.asarray(origins, np.float64), np.asarray(dirs, np.float64)),
                          dtype=bool)
    except ImportError as e:  # trimesh's fallback needs rtree
        raise NLSError(f"ray casting needs embreex (preferred) or rtree: {e}") from None


def _albedo(mesh, tri: np.ndarray, loc: np.ndarray, base_color, strength: float,
            lo: np.ndarray, side: float) -> np.ndarray:
    kind = getattr(mesh.visual, "kind", None)
    if kind == "vertex":
        import trimesh

        vc = np.asarray(mesh.visual.vertex_colors, np.float64)[:, :3] / 255.0
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], loc)
        col = np.einsum("nk,nkc->nc", np.clip(bary, 0, 1), vc[mesh.faces[tri]])
    elif kind == "face":
        col = np.asarray(mesh.visual.face_colors, np.float64)[tri, :3] / 255.0
    else:
        col = np.broadcast_to(np.asarray(base_color, np.float64), loc.shape).copy()
    if strength > 0:
        q = (loc - lo) / side  # position in the mesh's unit box: pattern independent of units
        dirs = np.array([[1.0, 0.6, 0.3], [-0.4, 1.0, 0.7], [0.5, -0.3, 1.0]])
        t = 0.5 + 0.5 * np.sin(2 * math.pi * 3.0 * q @ dirs.T
                               + np.array([0.0, 2.1, 4.2]))
        t2 = 0.5 + 0.5 * np.sin(2 * math.pi * 7.0 * q[:, [1, 2, 0]] @ dirs.T)
        col = col * (1.0 - strength + strength * (0.7 * t + 0.3 * t2))
    return col


def render_mesh_views(mesh, out_dir: Path, *, n_train: int = 50, n_val: int = 0,
                      n_test: int = 10, width: int = 128, height: int = 128,
                      camera_angle_x: float = 0.69, radius: float = 2.5, seed: int = 0,
                      base_color: Sequence[float] = (0.8, 0.5, 0.3),
                      light_dir: Sequence[float] = (0.3, -0.4, 1.0), ambient: float = 0.3,
                      texture_strength: float = 0.3, hemisphere: bool = False,
                      supersample: int = 1, depth: bool = False,
                      on_view: Optional[Callable[[int], None]] = None) -> Path:
    """Render ``mesh`` (in its own world frame; normalise it first) into a Blender-format
    scene folder and return ``out_dir``.

    Cameras sit at distance ``radius`` from the origin looking at it, world ``+z`` up:
    train views random on the sphere (upper hemisphere with ``hemisphere=True``; seeded),
    test views evenly spaced on two elevation rings (30 deg and -20 deg), val views on a
    15 deg ring. Pixels: Lambertian + ``ambient`` with the face normal flipped towards the
    camera, light from ``light_dir`` (world), albedo = per-vertex/face colours when the mesh
    has them, else ``base_color``, times a mild positional pattern (``texture_strength``,
    0 disables). ``supersample`` > 1 anti-aliases (s x s rays per pixel, alpha = coverage).
    ``depth=True`` also writes ``{split}/r_{i}_depth.npy``: float32 ``(H, W)`` distance
    along the (unit) pixel ray to the first hit (mean over the hit sub-rays when
    supersampling), 0 where nothing is hit. ``on_view(done)``, when given, is called after each
    written view with the number of views written so far (for a progress bar).

    Writes ``transforms_{train,val,test}.json`` (``camera_angle_x``, frames with
    ``file_path`` ``./train/r_0`` and ``transform_matrix``; plus ``near``, ``far`` and
    ``aabb`` of the scene), ``{split}/r_{i}.png`` (RGBA, 8 bit), ``gt_mesh.ply`` and
    ``meta.json``.
    """
    import imageio.v3 as iio
    import trimesh

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError("render_mesh_views: need a non-empty trimesh.Trimesh")
    for name, val in (("width", width), ("height", height), ("supersample", supersample)):
        if int(val) != val or val < 1:
            raise NLSError(f"render_mesh_views: {name} must be a positive integer, got {val!r}")
    if min(n_train, n_val, n_test) < 0:
        raise NLSError("render_mesh_views: view counts must be >= 0")
    if not 0 < camera_angle_x < math.pi:
        raise NLSError(f"render_mesh_views: camera_angle_x must be in (0, pi), got "
                       f"{camera_angle_x}")
    light = np.asarray(light_dir, np.float64).reshape(-1)
    if light.size != 3 or not np.isfinite(light).all() or not np.linalg.norm(light) > 0:
        raise NLSError(f"render_mesh_views: light_dir must be a non-zero 3-vector, got "
                       f"{light_dir!r}")
    light = light / np.linalg.norm(light)
    if not 0.0 <= ambient <= 1.0:
        raise NLSError(f"render_mesh_views: ambient must be in [0, 1], got {ambient!r}")
    bound_r = float(np.linalg.norm(mesh.vertices, axis=1).max())
    if radius <= bound_r:
        raise NLSError(f"render_mesh_views: camera radius {radius} must exceed the mesh's "
                       f"bounding radius {bound_r:.3g} (normalise the mesh first)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from pipeline.runs import mkdir_failure

        raise NLSError(f"cannot create output folder {out_dir}: {mkdir_failure(e, out_dir)}") from None

    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    isect, engine = _intersector(mesh)
    face_n = np.asarray(mesh.face_normals, np.float64)
    lo, hi = mesh.bounds
    side = float((hi - lo).max())
    ss = int(supersample)
    W, H = int(width) * ss, int(height) * ss

    layouts = {"train": (n_train, "random"), "val": (n_val, "ring_val"),
               "test": (n_test, "ring")}
    done = 0
    for split, (n, kind) in layouts.items():
        eyes = camera_positions(n, radius, kind, seed=seed + {"train": 0, "val": 1,
                                                              "test": 2}[split],
                                hemisphere=hemisphere)
        frames = []
        if n:
            (out_dir / split).mkdir(exist_ok=True)
        for i, eye in enumerate(eyes):
            c2w = look_at(eye)
            o, d = pixel_rays(c2w, W, H, focal * ss)
            ray, tri, loc = _cast(isect, o, d)
            n_f = face_n[tri]
            flip = np.einsum("ij,ij->i", n_f, d[ray]) > 0
            n_f[flip] *= -1.0
            shade = ambient + (1.0 - ambient) * np.clip(n_f @ light, 0.0, None)
            col = _albedo(mesh, tri, loc, base_color, texture_strength, lo, side)
            rgba = np.zeros((H * W, 4), np.float64)
            rgba[ray, :3] = np.clip(col * shade[:, None], 0.0, 1.0)
            rgba[ray, 3] = 1.0
            rgba = rgba.reshape(H, W, 4)
            if depth:
                dist = np.zeros(H * W, np.float64)
                dist[ray] = np.linalg.norm(loc - o[ray], axis=1)
                dist = dist.reshape(height, ss, width, ss).sum(axis=(1, 3))
                cnt = rgba[..., 3].reshape(height, ss, width, ss).sum(axis=(1, 3))
                dist = np.where(cnt > 0, dist / np.maximum(cnt, 1), 0.0)
                np.save(out_dir / split / f"r_{i}_depth.npy", dist.astype(np.float32))
            if ss > 1:  # box filter; colour premultiplied by coverage, then un-premultiplied
                rgba = rgba.reshape(height, ss, width, ss, 4).mean(axis=(1, 3))
                a = rgba[..., 3:4]
                rgba[..., :3] = np.where(a > 0, rgba[..., :3] / np.maximum(a, 1e-12), 0.0)
            png = np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)
            iio.imwrite(out_dir / split / f"r_{i}.png", png)
            frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.0,
                           "transform_matrix": c2w.tolist()})
            done += 1
            if on_view is not None:
                on_view(done)
        near = max(0.01, radius - 1.05 * bound_r)
        far = radius + 1.05 * bound_r
        pad = 0.05 * side
        aabb = np.concatenate([lo - pad, hi + pad]).tolist()
        doc = {"camera_angle_x": float(camera_angle_x), "near": near, "far": far,
               "aabb": aabb, "frames": frames}
        (out_dir / f"transforms_{split}.json").write_text(json.dumps(doc, indent=2))

    mesh.export(out_dir / "gt_mesh.ply")
    meta = {
        "generator": "pipeline.scenes.mesh_render.render_mesh_views",
        "ray_engine": engine,
        "n_views": {"train": n_train, "val": n_val, "test": n_test},
        "image_size": [int(width), int(height)],
        "camera_angle_x": float(camera_angle_x), "focal_px": focal, "radius": float(radius),
        "seed": int(seed), "hemisphere": bool(hemisphere), "supersample": ss,
        "depth": ("{split}/r_{i}_depth.npy: float32 (H, W) ray distance, 0 = miss"
                  if depth else None),
        "camera_layout": {"train": "uniform random on sphere" + (" (upper half)"
                                                                 if hemisphere else ""),
                          "val": "ring at 15 deg elevation",
                          "test": "evenly spaced azimuths, rings at 30 and "
                                  + ("10" if hemisphere else "-20") + " deg"},
        "world_up": "+z", "camera_axes": "Blender/OpenGL (looks down -z, +y up)",
        "shading": {"model": "lambert + ambient, face normals, fixed world light",
                    "light_dir": light.tolist(), "ambient": float(ambient),
                    "base_color": [float(c) for c in base_color],
                    "vertex_colors": getattr(mesh.visual, "kind", None) == "vertex",
                    "texture_strength": float(texture_strength)},
        "mesh": {"file": "gt_mesh.ply", "n_vertices": int(len(mesh.vertices)),
                 "n_faces": int(len(mesh.faces)), "bounds": mesh.bounds.tolist(),
                 "watertight": bool(mesh.is_watertight)},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return out_dir
