"""Images of cameras of several sizes fitted to one size, as a split is loaded at one size: each camera's image
is scaled down by the least factor that covers the smallest width and the smallest height among them (never up),
and the rest of its longer side cropped, centred. The pinhole intrinsics, keypoints, masks and pixels move alike.

Used after structure from motion (:func:`pipeline.scenes.sfm.undistorted_fits`: photos of several sizes, or
``single_camera: false``, come out of undistortion at several sizes) and when a COLMAP capture's cameras are of
several sizes (:func:`pipeline.scenes.colmap.load_colmap`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: a camera whose image needs scaling by no less than this to fit the common size is cropped to it instead,
#: unresampled (several cameras of one kind come out of undistortion a few pixels apart)
CROP_ONLY_SCALE = 0.95


class Fit(NamedTuple):
    """How one camera's images (``source``: (W, H)) are fitted to the common size: the centred ``box`` (left,
    top, right, bottom, in pixels, edges at whole numbers; fractional when scaled) is resampled to ``size`` (W,
    H), which scales by ``scale`` (1: a crop, no resampling)."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    scale: float
    source: tuple[int, int]

    def point(self, xy: "np.ndarray") -> np.ndarray:
        """(..., 2) pixel coordinates (COLMAP's: a pixel's centre at +0.5) in the fitted image."""
        return (np.asarray(xy, np.float64) - self.box[:2]) * self.scale

    def intrinsics(self, fx: float, fy: float, cx: float, cy: float) -> tuple[float, float, float, float]:
        """Pinhole (fx, fy, cx, cy) of this camera in the fitted image."""
        (x, y), s = self.point((cx, cy)), self.scale
        return fx * s, fy * s, float(x), float(y)

    def image(self, image):
        """The PIL ``image`` (``source`` size) fitted: cropped, or resampled (Lanczos) from the box."""
        from PIL import Image

        if self.scale == 1.0:
            return image.crop(tuple(int(v) for v in self.box))
        return image.resize(self.size, Image.Resampling.LANCZOS, box=self.box)

    def array(self, a: np.ndarray) -> np.ndarray:
        """(H, W, C) float32 ``a`` (``source`` size) fitted to (H', W', C), channel by channel."""
        from PIL import Image

        if self.scale == 1.0:
            left, top, right, bottom = (int(v) for v in self.box)
            return np.ascontiguousarray(a[top:bottom, left:right])
        return np.stack([np.asarray(self.image(Image.fromarray(np.ascontiguousarray(a[..., c], np.float32))))
                         for c in range(a.shape[-1])], axis=-1)  # (a 2D float32 array is PIL mode F)


    def depths(self, a: np.ndarray) -> np.ndarray:
        """(H, W) depth map ``a`` (``source`` size, 0: none) fitted to (H', W'): each fitted pixel holds the mean
        of the given depths whose pixel centres fall in it (one depth per pixel of a crop; a sparse map's
        keypoints each land in the pixel their point moves to), 0 where none does. Depths are not interpolated
        across edges, as an image's colours are."""
        w, h = self.size
        v, u = np.nonzero(a > 0)
        xy = self.point(np.stack([u + 0.5, v + 0.5], -1))
        col, row = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        cell = row[inside] * w + col[inside]
        sums = np.bincount(cell, weights=a[v[inside], u[inside]].astype(np.float64), minlength=w * h)
        counts = np.bincount(cell, minlength=w * h)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).reshape(h, w).astype(np.float32)


def fits_to_one_size(sizes: dict[int, tuple[int, int]]) -> dict[int, Fit]:
    """camera id -> :class:`Fit` of each camera of size ``sizes[id]`` (W, H) to the smallest width and the
    smallest height among them (see the module docstring; within :data:`CROP_ONLY_SCALE` a crop alone). Empty
    when they are one size already."""
    if len(set(sizes.values())) <= 1:
        return {}
    w, h = min(s[0] for s in sizes.values()), min(s[1] for s in sizes.values())
    fits = {}
    for cid, (sw, sh) in sizes.items():
        scale = max(w / sw, h / sh)
        if scale >= CROP_ONLY_SCALE:
            left, top = (sw - w) // 2, (sh - h) // 2
            fits[cid] = Fit((left, top, left + w, top + h), (w, h), 1.0, (sw, sh))
        else:
            bw, bh = min(w / scale, sw), min(h / scale, sh)  # (the side that sets the scale: the whole side,
            left, top = (sw - bw) / 2, (sh - bh) / 2          # without round-off, which Pillow refuses below 0)
            fits[cid] = Fit((left, top, left + bw, top + bh), (w, h), scale, (sw, sh))
    return fits


def fit_facts(fits: dict[int, Fit]) -> dict:
    """JSON facts of ``fits`` (non-empty) for the run record: ``{"size": [W, H], "cameras": n, "scaled": k}``."""
    return {"size": list(next(iter(fits.values())).size), "cameras": len(fits),
            "scaled": sum(f.scale != 1.0 for f in fits.values())}
