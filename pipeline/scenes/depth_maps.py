"""Depth maps of posed images (``PosedImages.depths``): a depth sensor's, or multi-view stereo's.

A depth map holds each pixel's z-depth along its camera's optical axis (not the distance along the ray), 0 or
less, or not finite, where there is none. It is read from:

* ``.npy``: a float (H, W) array;
* ``.bin``: COLMAP's dense depth maps (``patch_match_stereo``: ``stereo/depth_maps/NAME.geometric.bin`` or
  ``.photometric.bin``), a text header ``width&height&channels&`` then float32 values, x fastest;
* any other file: a one-channel image (a 16-bit PNG keeps its 16 bits), as nerfstudio's ``depth_file_path``.

Its values are multiplied by a scale into the scene's units (nerfstudio's ``depth_unit_scale_factor``; for a COLMAP
capture, the normalisation's scale). A map of another size than its image is resampled to it by the nearest stored
pixel (sensors' maps are often smaller than the photos), and a downscaled image's depth is the mean of the given
depths of each block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.types import DataError

#: the names a COLMAP capture's depth map of image ``NAME`` may have in its depths folder, in the order looked for
DEPTH_NAMES = ("{name}.geometric.bin", "{name}.photometric.bin", "{name}.npy", "{stem}.npy", "{name}.png",
               "{stem}.png")


def read_colmap_array(path: Path) -> np.ndarray:
    """(H, W) or (H, W, C) float32 of a COLMAP dense array file (module docstring)."""
    raw = path.read_bytes()
    fields, at = [], 0
    for _ in range(3):
        end = raw.index(b"&", at)
        fields.append(int(raw[at:end]))
        at = end + 1
    width, height, channels = fields
    values = np.frombuffer(raw[at:], dtype=np.float32)
    if values.size != width * height * channels:
        raise ValueError(f"its header says {width}x{height}x{channels} values, and it holds {values.size}")
    return values.reshape(channels, height, width).transpose(1, 2, 0).squeeze(-1) if channels == 1 else \
        values.reshape(channels, height, width).transpose(1, 2, 0)


def _stored(path: Path) -> np.ndarray:
    """The values a depth map file holds, as stored."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix == ".bin":
        return read_colmap_array(path)
    import imageio.v3 as iio

    return iio.imread(path)  # (imageio: PIL would turn a 16-bit PNG into 8 bits)


def read_depth(path, scale: float, size: tuple) -> np.ndarray:
    """(H, W) float32 z-depth in scene units of the depth map ``path`` (or an (h, w) array of its values, such as
    :func:`keypoint_depths`), times ``scale``, for an image of (H, W) ``size`` (module docstring); 0 where there is
    none. A map a whole multiple of the size is averaged over blocks (:func:`depth_downscale`), any other size
    resampled by the nearest stored pixel. DataError naming the file when it cannot be read or holds more than one
    value a pixel."""
    try:
        d = path if isinstance(path, np.ndarray) else _stored(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"depth map {path}: cannot be read ({exc})") from None
    d = np.squeeze(np.asarray(d, dtype=np.float64))
    if d.ndim != 2:
        raise DataError(f"depth map {path} has shape {d.shape}; a depth map holds one value per pixel (H, W)")
    d = np.where(np.isfinite(d) & (d > 0), d * scale, 0.0).astype(np.float32)
    h, w = size
    k = d.shape[0] // max(h, 1)
    if k > 1 and d.shape == (h * k, w * k):
        return depth_downscale(d, k)
    if d.shape != (h, w):
        rows = np.minimum(((np.arange(h) + 0.5) * d.shape[0] / h).astype(np.int64), d.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * d.shape[1] / w).astype(np.int64), d.shape[1] - 1)
        d = d[rows][:, cols]
    return d


def keypoint_depths(xy: np.ndarray, z: np.ndarray, size: tuple) -> np.ndarray:
    """(H, W) float32 sparse depth map of an image of (H, W) ``size`` from structure from motion's keypoints: the
    z-depth ``z`` (P,) of the 3D point each keypoint ``xy`` (P, 2; COLMAP pixel coordinates, the top-left pixel's
    centre at (0.5, 0.5)) observes, at the keypoint's pixel (the nearest when several fall in one); 0 elsewhere.
    DS-NeRF (Deng et al. 2022) supervises depth with these keypoints."""
    return keypoint_maps(xy, z, size)[0]


def keypoint_maps(xy: np.ndarray, z: np.ndarray, size: tuple,
                  values: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`keypoint_depths`, and beside it the (H, W) float32 map of ``values`` (P,), one per keypoint (such as
    its 3D point's reprojection error), taken from the keypoint whose depth each pixel keeps (0 where none, and
    all 0 without ``values``)."""
    h, w = size
    col, row = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (z > 0) & np.isfinite(z)
    cell, zi = row[inside] * w + col[inside], z[inside]
    order = np.lexsort((zi, cell))  # (by pixel, nearest first)
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]] if len(order) else order
    depth, other = np.zeros(h * w, np.float32), np.zeros(h * w, np.float32)
    depth[cell[first]] = zi[first]
    if values is not None:
        other[cell[first]] = np.asarray(values, np.float64)[inside][first]
    return depth.reshape(h, w), other.reshape(h, w)


def depth_downscale(depth: np.ndarray, d: int) -> np.ndarray:
    """(H // d, W // d) mean of each d x d block's depths that are given (> 0); 0 for a block with none."""
    from pipeline.scenes.blender import area_downscale

    if d == 1:
        return depth
    given = (depth > 0).astype(np.float32)[..., None]
    total = area_downscale((depth[..., None] * given), d)[..., 0]
    share = area_downscale(given, d)[..., 0]
    return np.where(share > 0, total / np.maximum(share, 1e-12), 0.0).astype(np.float32)


def depth_candidates(folder: Path, name: str) -> list[Path]:
    """Where the depth map of the image ``name`` may be in ``folder`` (:data:`DEPTH_NAMES`), in the order looked for."""
    return [folder / pattern.format(name=name, stem=Path(name).stem) for pattern in DEPTH_NAMES]


def depth_paths(folder: Path, names: Sequence[str]) -> list[Path]:
    """The depth map of each image of ``names`` in ``folder``
    (:func:`pipeline.scenes.masks.files_per_image`)."""
    from pipeline.scenes.masks import files_per_image

    return files_per_image(folder, names, depth_candidates, "depth map",
                           "give the folder that holds a depth map per image (COLMAP's dense/stereo/depth_maps)")


def depth_facts(source: str, scale: float, splits: dict) -> dict:
    """scene.json's ``depths``: where the maps came from (``source``), the ``scale`` they were read with, the
    share of each split's pixels that have a depth (the splits of ``{name: PosedImages}`` with depth maps) and,
    for keypoint depths, the mean reprojection error of their points (pixels)."""
    facts = {"from": source, "unit_scale": scale,
             "pixels_with_depth": {name: round(float((sp.depths > 0).float().mean()), 4)
                                   for name, sp in splits.items() if sp.depths is not None}}
    errors = {name: sp.depth_errors[sp.depth_errors > 0] for name, sp in splits.items()
              if getattr(sp, "depth_errors", None) is not None}
    if errors:
        facts["mean_reprojection_error_px"] = {name: round(float(e.mean()), 4) if e.numel() else None
                                               for name, e in errors.items()}
    return facts
