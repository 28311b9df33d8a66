"""Photos of several cameras fitted to one size after undistortion (:func:`pipeline.scenes.sfm.undistorted_fits`):
the pixels, the pinhole cameras and the keypoints move alike."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_colmap_scene import pycolmap  # noqa: F401  (the fixture)


def _dot(w: int, h: int, x: float, y: float, sigma: float = 3.0) -> np.ndarray:
    """(h, w) uint8: a Gaussian dot centred at the continuous pixel coordinates (x, y) (a pixel's centre at +0.5)."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    return np.round(255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))).astype(np.uint8)


def _centroid(a: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]] + 0.5
    m = a.astype(np.float64)
    return np.array([(m * xx).sum(), (m * yy).sum()]) / m.sum()


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.62])
def test_a_fitted_image_moves_a_point_where_the_fit_says(scale):
    """A dot at a known place, fitted by a crop (scale 1) or a resample from a fractional box: its centroid in the
    fitted image is where :meth:`Fit.point` puts it, within 0.05 px."""
    from PIL import Image

    from pipeline.scenes.sfm import Fit

    w, h, out = 200, 160, (90, 60)
    bw, bh = out[0] / scale, out[1] / scale
    left, top = (w - bw) / 2, (h - bh) / 2
    if scale == 1.0:
        left, top = int(left), int(top)
    fit = Fit((left, top, left + bw, top + bh), out, scale)
    xy = np.array([96.3, 77.8])
    got = np.asarray(fit.image(Image.fromarray(_dot(w, h, *xy, sigma=4.0 / scale))))
    assert got.shape == (out[1], out[0])
    assert np.abs(_centroid(got) - fit.point(xy)).max() < 0.05, (_centroid(got), fit.point(xy))


def test_cameras_of_several_sizes_are_fitted_to_the_smallest_width_and_height(pycolmap):  # noqa: F811
    """Pinhole cameras (undistortion keeps their size) of 400x400, 360x270 and 370x280: the common size is 360x270.
    The 400x400 one is scaled by 0.9 (to cover 360 wide) and its height cropped, centred; 370x280 needs 0.973,
    within CROP_ONLY_SCALE, so it is cropped alone; 360x270 is as it is. One size already: nothing to fit."""
    from pipeline.scenes.sfm import undistorted_fits

    rec = pycolmap.Reconstruction()
    for cid, (w, h) in enumerate([(400, 400), (360, 270), (370, 280)], start=1):
        rec.add_camera(pycolmap.Camera(model="PINHOLE", width=w, height=h, params=[300.0, 300.0, w / 2, h / 2],
                                       camera_id=cid))
    fits = undistorted_fits(pycolmap, rec)
    assert {f.size for f in fits.values()} == {(360, 270)}
    assert fits[1].scale == pytest.approx(0.9) and fits[1].box == pytest.approx((0.0, 50.0, 400.0, 350.0))
    assert fits[2].scale == 1.0 and fits[2].box == (0, 0, 360, 270)
    assert fits[3].scale == 1.0 and fits[3].box == (5, 5, 365, 275)
    one = pycolmap.Reconstruction()
    one.add_camera(pycolmap.Camera(model="PINHOLE", width=400, height=300, params=[300.0, 300.0, 200, 150],
                                   camera_id=1))
    assert undistorted_fits(pycolmap, one) == {}
