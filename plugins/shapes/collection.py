"""Shape collections: objects with R2N2-style views, 32^3 voxels, optional fine occupancy and GT mesh.

Both scene sources (``r2n2`` and ``shape_families``) load into a :class:`ShapeCollection` in one
frame: the voxel grid's cube is the unit box ``[-0.5, 0.5]^3`` (voxel ``(i,j,k)`` has its centre at
``-0.5 + (i+0.5)/32``). Procedural families are rendered by nls into the R2N2 layout under
``$NLS_CACHE/scenes/shape_families-<hash>`` (plus ``occupancy_fine.npy`` and ``gt_mesh.ply``), so one
reader serves both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.types import DataError
from plugins.shapes.r2n2 import R2N2Object, check_objects, find_objects, read_object

#: bumped when the generated layout changes so stale caches are not reused
FAMILIES_VERSION = 1
BOX = (-0.5, -0.5, -0.5, 0.5, 0.5, 0.5)


@dataclass
class ShapeCollection:
    """All objects of a scene, in the unit-box frame.

    images: (O, V, 3, S, S) uint8, composited on white and resized to the input size.
    vox: (O, 32, 32, 32) bool [x, y, z]; labels: (O, R, R, R) bool grid used for point labels
    (the fine grid when there is one, else ``vox``); surface: (O, P, 3) float32 GT surface points;
    dist: (O, 32, 32, 32) float32 distance from voxel centres to the GT surface points;
    meshes: GT mesh path per object or None; splits: split -> [(object, view)].
    """

    names: list[str]
    images: torch.Tensor
    vox: torch.Tensor
    labels: torch.Tensor
    surface: torch.Tensor
    dist: torch.Tensor
    meshes: list[Optional[Path]]
    splits: dict[str, list[tuple[int, int]]]
    meta: dict = field(default_factory=dict)


def voxel_centres(res: int) -> np.ndarray:
    """(res, res, res, 3) centres of the voxels of the unit box, indexed [x, y, z]."""
    c = -0.5 + (np.arange(res) + 0.5) / res
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)


def voxels_to_mesh(occ: np.ndarray):
    """Marching cubes of a voxel grid (level 0.5 of the zero-padded grid) in the unit-box frame."""
    from pipeline.mesh import grid_to_mesh

    R = occ.shape[0]
    pad = np.pad(occ.astype(np.float32), 1)
    h = 1.0 / R  # padded grid sample i sits at the centre of voxel i-1
    lo = -0.5 - 0.5 * h
    return grid_to_mesh(pad, [lo] * 3 + [lo + (R + 1) * h] * 3, 0.5, inside="above")


def surface_samples(mesh, n: int, seed: int) -> np.ndarray:
    """``n`` points sampled on ``mesh``'s surface (trimesh, seeded by ``seed``) -> (n, 3) float32."""
    import trimesh

    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, np.float32)


def distance_grid(surface: np.ndarray, res: int = 32) -> np.ndarray:
    """(res,res,res) distance from each voxel centre to the nearest surface point."""
    from pipeline.metrics import nearest_distances

    d, _ = nearest_distances(voxel_centres(res).reshape(-1, 3), surface)
    return d.reshape(res, res, res).astype(np.float32)


def prepare_images(rgba: np.ndarray, size: int) -> np.ndarray:
    """(V, H, W, 4) uint8 RGBA -> (V, 3, size, size) uint8 on white (PIL bilinear with antialiasing)."""
    from PIL import Image

    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1 - a)
    out = []
    for img in np.clip(rgb + 0.5, 0, 255).astype(np.uint8):
        im = Image.fromarray(img)
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        out.append(np.asarray(im).transpose(2, 0, 1))
    return np.stack(out)


def assemble(objects: list[dict], splits: dict, image_size: int, surface_points: int, seed: int,
             meta: dict) -> ShapeCollection:
    """objects: dicts with name, rgba (V,H,W,4), vox (32^3 bool), fine (R^3 bool | None), mesh (path | None)
    and optionally mesh_data (the mesh at that path, already loaded)."""
    from pipeline.scenes.mesh_render import load_mesh

    imgs, vox, labels, surf, dist, meshes = [], [], [], [], [], []
    for i, ob in enumerate(objects):
        imgs.append(prepare_images(ob["rgba"], image_size))
        vox.append(ob["vox"])
        labels.append(ob["fine"] if ob.get("fine") is not None else ob["vox"])
        mesh = ob.get("mesh_data")  # already loaded (and so checked) by the reader
        if mesh is None:
            mesh = load_mesh(ob["mesh"]) if ob.get("mesh") else voxels_to_mesh(ob["vox"])
        s = surface_samples(mesh, surface_points, seed + i)
        surf.append(s)
        dist.append(distance_grid(s, ob["vox"].shape[0]))
        meshes.append(Path(ob["mesh"]) if ob.get("mesh") else None)
    if len({v.shape for v in vox}) != 1 or len({lab.shape for lab in labels}) != 1:
        raise DataError("shape collection: objects have voxel grids of different sizes "
                        f"(voxels {sorted({v.shape for v in vox})}, fine labels "
                        f"{sorted({lab.shape for lab in labels})}); all must match")
    return ShapeCollection([o["name"] for o in objects], torch.from_numpy(np.stack(imgs)),
                           torch.from_numpy(np.stack(vox)), torch.from_numpy(np.stack(labels)),
                           torch.from_numpy(np.stack(surf)), torch.from_numpy(np.stack(dist)), meshes,
                           splits, meta)


# -- R2N2 -----------------------------------------------------------------------------------

def load_r2n2(cfg) -> ShapeCollection:
    """Read the R2N2 objects under ``cfg.path`` (``R2N2Config``) into a :class:`ShapeCollection`, split
    by held-out views or, with ``split_by="objects"``, by a seeded permutation of the objects."""
    folders = find_objects(Path(cfg.path))
    if cfg.objects:
        names = {f.name: f for f in folders}
        unknown = [o for o in cfg.objects if o not in names]
        if unknown:
            raise DataError(f"scene.objects: {', '.join(unknown)} not found under {cfg.path}; "
                            f"available: {', '.join(sorted(names))}")
        folders = [names[o] for o in cfg.objects]
    check_objects(folders)
    objs: list[R2N2Object] = [read_object(f, cfg.views) for f in folders]
    bad = [v for v in (*cfg.val_views, *cfg.test_views) if not 0 <= v < cfg.views]
    if bad and cfg.split_by == "views":  # split_by="objects" does not use the view lists
        raise DataError(f"scene.val_views/test_views: view index {bad[0]} is outside 0..{cfg.views - 1}")
    O = len(objs)
    if cfg.split_by == "views":
        held = set(cfg.val_views) | set(cfg.test_views)
        splits = {"train": [(o, v) for o in range(O) for v in range(cfg.views) if v not in held],
                  "val": [(o, v) for o in range(O) for v in cfg.val_views],
                  "test": [(o, v) for o in range(O) for v in cfg.test_views]}
    else:
        order = np.random.default_rng(cfg.seed).permutation(O)
        n_test = max(1, round(0.2 * O)) if O > 2 else 0
        parts = {"test": order[:n_test], "val": order[n_test:n_test + (1 if O > 4 else 0)]}
        parts["train"] = order[n_test + len(parts["val"]):]
        splits = {k: [(int(o), v) for o in sorted(idx) for v in range(cfg.views)] for k, idx in parts.items()}
    obs = [{"name": o.name, "rgba": o.images, "vox": o.voxels.occ, "fine": None, "mesh": None} for o in objs]
    meta = {"source": "r2n2", "path": str(cfg.path), "objects": [o.name for o in objs], "split_by": cfg.split_by,
            "note": "split_by=views: val/test are held-out views of seen shapes"}
    return assemble(obs, splits, cfg.image_size, cfg.surface_points, cfg.seed, meta)


# -- procedural families --------------------------------------------------------------------

def _write_family_object(shape, out: Path, views: int, size: int, fine: int, seed: int) -> None:
    """Render ``shape`` into ``out`` in the R2N2 layout, plus fine occupancy and the GT mesh."""
    import shutil
    import tempfile

    from pipeline.mesh import extract_mesh
    from pipeline.scenes.mesh_render import render_mesh_views
    from plugins.shapes.binvox import write_binvox

    mesh = extract_mesh(shape.sdf, list(BOX), fine, 0.0, inside="below")
    radius = 2.6  # with a 25 deg field of view the unit box fills ~80% of the frame, as in R2N2
    (out / "rendering").mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        render_mesh_views(mesh, Path(tmp), n_train=views, n_val=0, n_test=0, width=size, height=size,
                          camera_angle_x=math.radians(25.0), radius=radius, seed=seed, hemisphere=True)
        frames = json.loads((Path(tmp) / "transforms_train.json").read_text())["frames"]
        lines = []
        for i, fr in enumerate(frames):
            shutil.move(Path(tmp) / "train" / f"r_{i}.png", out / "rendering" / f"{i:02d}.png")
            eye = np.asarray(fr["transform_matrix"])[:3, 3]
            az, el = math.degrees(math.atan2(eye[1], eye[0])) % 360, math.degrees(math.asin(eye[2] / radius))
            # column 4 holds the camera distance in world units, not R2N2's distance ratio; nothing reads it
            lines.append(f"{az:.6f} {el:.6f} 0 {radius:.6f} 25")
    (out / "rendering" / "rendering_metadata.txt").write_text("\n".join(lines) + "\n")
    with torch.no_grad():
        occ32 = shape.sdf(torch.from_numpy(voxel_centres(32).reshape(-1, 3)).float()) < 0
        occf = shape.sdf(torch.from_numpy(voxel_centres(fine).reshape(-1, 3)).float()) < 0
    write_binvox(out / "model.binvox", occ32.reshape(32, 32, 32).numpy(), (-0.5, -0.5, -0.5), 1.0)
    np.save(out / "occupancy_fine.npy", np.packbits(occf.numpy()))
    mesh.export(out / "gt_mesh.ply")


def family_split(n: int, fractions, rng: np.random.Generator) -> dict[str, list[int]]:
    """Fixed split of ``n`` objects of one family by fractions (train, val, test); test gets >= 1 when n >= 2."""
    order = rng.permutation(n)
    n_test = max(1 if n >= 2 else 0, int(round(fractions[2] * n)))
    n_val = int(round(fractions[1] * n)) if n - n_test > 1 else 0
    return {"test": sorted(order[:n_test].tolist()), "val": sorted(order[n_test:n_test + n_val].tolist()),
            "train": sorted(order[n_test + n_val:].tolist())}


def generate_families(cfg, out: Path) -> None:
    """Render ``cfg.per_family`` objects of each of ``cfg.families`` into ``out/objects/<name>`` and
    write ``splits.json``, ``objects.json`` (each object's primitives) and ``meta.json`` to ``out``."""
    from plugins.shapes.families import make_shape

    objects, splits = [], {"train": [], "val": [], "test": []}
    for fi, fam in enumerate(cfg.families):
        for k in range(cfg.per_family):
            name = f"{fam}_{k:03d}"
            shape = make_shape(fam, np.random.default_rng([cfg.dataset_seed, fi, k]))
            _write_family_object(shape, out / "objects" / name, cfg.views, cfg.render_size, cfg.fine_resolution,
                                 seed=cfg.dataset_seed * 1000 + fi * 100 + k)
            objects.append({"name": name, "family": fam,
                            "parts": [{"kind": p.kind, **p.params} for p in shape.parts]})
        for split, idx in family_split(cfg.per_family, cfg.split,
                                       np.random.default_rng([cfg.dataset_seed, fi, 999])).items():
            splits[split] += [f"{fam}_{k:03d}" for k in idx]
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    (out / "objects.json").write_text(json.dumps(objects, indent=1))
    (out / "meta.json").write_text(json.dumps({"generator": "plugins.shapes.collection.generate_families",
                                               "version": FAMILIES_VERSION}))


def families_folder(cfg) -> Path:
    """The cached folder of the generated families (``ShapeFamiliesConfig``), keyed by
    ``FAMILIES_VERSION`` and the generation options; generated when it is not cached yet."""
    from plugins.scenes.sources import cached_render

    opts = {"version": FAMILIES_VERSION, **cfg.model_dump(include={"families", "per_family", "dataset_seed", "split",
                                                                  "views", "render_size", "fine_resolution"})}
    return cached_render("shape_families", opts, lambda out: generate_families(cfg, out))


SPLITS = ("train", "val", "test")


def cache_note(folder: Path) -> str:
    """What a damaged-cache error adds: the entry and how to get a fresh one."""
    return (f"it is part of the shape_families cache entry {folder} (under $NLS_CACHE), which can be deleted "
            f"to be rebuilt")


def read_splits(folder: Path) -> dict[str, list[str]]:
    """``folder/splits.json`` -> {train, val, test: [object name]}; DataError when it is missing or damaged."""
    path = folder / "splits.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"shape_families splits file {path} cannot be read ({type(exc).__name__}: {exc}); "
                        f"{cache_note(folder)}") from None
    ok = isinstance(data, dict) and all(isinstance(data.get(s), list) and
                                        all(isinstance(n, str) for n in data[s]) for s in SPLITS)
    if not ok:
        raise DataError(f"shape_families splits file {path}: expected {{train, val, test: [object name]}}; "
                        f"{cache_note(folder)}")
    return {s: data[s] for s in SPLITS}


def read_fine(path: Path, res: int) -> np.ndarray:
    """The packed fine occupancy grid at ``path`` -> (res, res, res) bool; DataError when missing or damaged."""
    try:
        packed = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"shape_families occupancy file {path} cannot be read ({type(exc).__name__}: "
                        f"{exc})") from None
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size * 8 < res ** 3:
        raise DataError(f"shape_families occupancy file {path}: holds {packed.dtype} {packed.shape}, expected "
                        f"{res}^3 packed bits (uint8, {(res ** 3 + 7) // 8} entries)")
    return np.unpackbits(packed)[:res ** 3].astype(bool).reshape(res, res, res)


def read_family_object(folder: Path, cfg) -> dict:
    """The generated object in ``folder`` as an :func:`assemble` dict; DataError for any missing or damaged file."""
    from pipeline.scenes.mesh_render import load_mesh

    ob = read_object(folder, cfg.views)
    fine = read_fine(folder / "occupancy_fine.npy", cfg.fine_resolution)
    mesh = folder / "gt_mesh.ply"
    return {"name": folder.name, "rgba": ob.images, "vox": ob.voxels.occ, "fine": fine, "mesh": mesh,
            "mesh_data": load_mesh(mesh)}


def read_families_entry(folder: Path, cfg) -> tuple[list[dict], dict[str, list[str]]]:
    """The objects (sorted by name) and splits of the cache entry ``folder``; a missing or damaged file is a
    DataError naming it and the entry."""
    if not (folder / "meta.json").is_file():
        raise DataError(f"shape_families cache file {folder / 'meta.json'} is missing; {cache_note(folder)}")
    splits = read_splits(folder)
    try:
        obs = [read_family_object(folder / "objects" / n, cfg) for n in sorted(n for s in SPLITS for n in splits[s])]
    except DataError as exc:
        raise DataError(f"{exc}; {cache_note(folder)}") from None
    return obs, splits


def families_entry(cfg) -> tuple[Path, list[dict], dict[str, list[str]]]:
    """The cache entry of ``cfg`` (:func:`families_folder`) with its objects and splits; a damaged entry
    (a file deleted or truncated) is rebuilt once, with a warning."""
    from pipeline.notices import warn
    from plugins.scenes.sources import discard_cache_entry

    folder = families_folder(cfg)
    try:
        return (folder, *read_families_entry(folder, cfg))
    except DataError as exc:
        warn(f"shape_families cache entry {folder} is damaged, rebuilding it: {exc}")
    discard_cache_entry(folder)
    folder = families_folder(cfg)
    return (folder, *read_families_entry(folder, cfg))


def load_families(cfg) -> ShapeCollection:
    """Load the generated families (:func:`families_entry`) into a :class:`ShapeCollection`: objects
    sorted by name, labels from the fine occupancy grid, split by object."""
    folder, obs, splits_by_name = families_entry(cfg)
    index = {ob["name"]: i for i, ob in enumerate(obs)}
    splits = {s: [(index[n], v) for n in splits_by_name[s] for v in range(cfg.views)] for s in splits_by_name}
    meta = {"source": "shape_families", "folder": str(folder), "families": list(cfg.families),
            "objects": {s: splits_by_name[s] for s in splits_by_name},
            "note": "val/test objects are unseen shapes (split by object)"}
    return assemble(obs, splits, cfg.image_size, cfg.surface_points, cfg.seed, meta)
