"""Read one object in the 3D-R2N2 layout::

    <object>/rendering/00.png .. 23.png     RGBA renderings (137x137)
    <object>/rendering/rendering_metadata.txt  one line per view: azimuth elevation in-plane distance-ratio fov
    <object>/model.binvox                   32^3 occupancy

Every fault (missing folder, missing view or model.binvox, a metadata file with the wrong number of
lines or columns, a corrupt or all-empty binvox) is a DataError naming the file and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.types import DataError
from plugins.shapes.binvox import Voxels, read_binvox

METADATA = "rendering_metadata.txt"


@dataclass
class R2N2Object:
    """images: (V, H, W, 4) uint8 RGBA; metadata: (V, 5) float; voxels: the binvox grid."""

    name: str
    folder: Path
    images: np.ndarray
    metadata: np.ndarray
    voxels: Voxels


def find_objects(root: Path) -> list[Path]:
    """Object folders under ``root``: every folder holding a ``model.binvox`` or a ``rendering/`` folder,
    sorted (:func:`check_objects` then says which lack a file, rather than leaving them out)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"R2N2 folder {root} does not exist (give the folder holding the object folders)")
    found = {p.parent for p in root.rglob("model.binvox")}
    found |= {p.parent for p in root.rglob("rendering") if p.is_dir()}
    if not found:
        raise DataError(f"R2N2 folder {root}: no object folders found (an object folder holds model.binvox "
                        f"and rendering/00.png..23.png with {METADATA})")
    return sorted(found)


def check_objects(folders: list[Path]) -> None:
    """DataError naming every folder of ``folders`` that has no ``model.binvox``."""
    lacking = [str(f) for f in folders if not (Path(f) / "model.binvox").is_file()]
    if lacking:
        raise DataError(f"R2N2 object folder(s) {', '.join(lacking)}: no model.binvox (an object folder holds "
                        f"model.binvox and rendering/00.png..23.png with {METADATA}); add it, or leave the "
                        f"object out (move its folder away, or list the others in scene.objects)")


def read_voxels(path: Path) -> Voxels:
    """The object's binvox at ``path``: DataError when it is missing, corrupt, not cubic or empty."""
    if not path.is_file():
        raise DataError(f"R2N2 object {path.parent}: no model.binvox (an object folder holds model.binvox "
                        f"and rendering/ with the views and {METADATA})")
    vox = read_binvox(path)
    if len(set(vox.occ.shape)) != 1:
        raise DataError(f"R2N2 binvox {path}: grid {vox.occ.shape} is not cubic")
    if not vox.occ.any():
        raise DataError(f"R2N2 binvox {path}: no occupied voxel (an empty grid), so the object has no shape to "
                        f"train on or evaluate; replace the file, or leave the object out (move its folder "
                        f"away, or list the others in scene.objects)")
    return vox


def to_rgba8(a: np.ndarray, what: str) -> np.ndarray:
    """An image as read by imageio -> ``(H, W, 4)`` uint8 RGBA: grey, grey+alpha, RGB and RGBA; 8- or
    16-bit (scaled, not truncated) or float in [0, 1]. Other layouts raise DataError naming ``what``."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{what}: expected a grey, grey+alpha, RGB or RGBA image, got an array of shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 257.0).round()
    elif a.dtype.kind == "f":
        a = np.clip(a, 0.0, 1.0) * 255.0
    elif a.dtype != np.uint8:
        raise DataError(f"{what}: pixel type {a.dtype} not supported (8- or 16-bit integer, or float)")
    a = a.astype(np.uint8)
    c = a.shape[-1]
    rgb = np.repeat(a[..., :1], 3, -1) if c in (1, 2) else a[..., :3]
    alpha = a[..., -1:] if c in (2, 4) else np.full(a.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([rgb, alpha], -1)


def read_metadata(path: Path, views: int) -> np.ndarray:
    """Read a metadata file of ``views`` lines of 5 numbers -> (views, 5) float64; DataError otherwise."""
    if not path.is_file():
        raise DataError(f"R2N2 metadata {path} is missing (one line per view: azimuth elevation in-plane "
                        f"distance-ratio fov)")
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise DataError(f"R2N2 metadata {path} is not text; expected one line of 5 numbers per view") from None
    if len(lines) != views:
        raise DataError(f"R2N2 metadata {path} has {len(lines)} lines but the object has {views} views; "
                        f"expected one line per rendering")
    rows = []
    for i, ln in enumerate(lines, 1):
        values = ln.split()
        try:
            row = [float(v) for v in values]
        except ValueError:
            raise DataError(f"R2N2 metadata {path}, line {i}: {ln.strip()!r} holds a non-numeric entry; expected "
                            f"5 numbers (azimuth elevation in-plane distance-ratio fov)") from None
        if len(row) != 5:
            raise DataError(f"R2N2 metadata {path}, line {i}: {len(row)} numbers, expected 5 (azimuth elevation "
                            f"in-plane distance-ratio fov)")
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def read_object(folder: Path, views: int = 24) -> R2N2Object:
    """Read the object folder ``folder`` with ``views`` renderings into an :class:`R2N2Object`; grey and
    RGB views get an opaque alpha channel. An empty binvox is a DataError (:func:`read_voxels`)."""
    import imageio.v3 as iio

    folder = Path(folder)
    vox = read_voxels(folder / "model.binvox")  # first: it is quick, the views are not
    render = folder / "rendering"
    if not render.is_dir():
        raise DataError(f"R2N2 object {folder}: no rendering/ folder")
    missing = [f"{i:02d}.png" for i in range(views) if not (render / f"{i:02d}.png").is_file()]
    if missing:
        raise DataError(f"R2N2 object {folder}: missing view(s) {', '.join(missing)} in {render} "
                        f"(expected 00.png..{views - 1:02d}.png)")
    meta = read_metadata(render / METADATA, views)
    imgs = []
    for i in range(views):
        p = render / f"{i:02d}.png"
        try:
            a = np.asarray(iio.imread(p))
        except Exception as exc:  # imageio raises many types for broken files
            raise DataError(f"R2N2 view {p} cannot be read: {type(exc).__name__}: {exc}") from None
        a = to_rgba8(a, f"R2N2 view {p}")
        if imgs and a.shape != imgs[0].shape:
            raise DataError(f"R2N2 view {p} is {a.shape[1]}x{a.shape[0]}, other views are "
                            f"{imgs[0].shape[1]}x{imgs[0].shape[0]}")
        imgs.append(a)
    return R2N2Object(folder.name, folder, np.stack(imgs), meta, vox)
