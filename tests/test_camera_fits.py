"""Photos of several cameras fitted to one size after undistortion (:func:`pipeline.scenes.sfm.undistorted_fits`):
the pixels, the pinhole cameras and the keypoints move alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.types import DataError
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

    from pipeline.scenes.camera_fit import Fit

    w, h, out = 200, 160, (90, 60)
    bw, bh = out[0] / scale, out[1] / scale
    left, top = (w - bw) / 2, (h - bh) / 2
    if scale == 1.0:
        left, top = int(left), int(top)
    fit = Fit((left, top, left + bw, top + bh), out, scale, (w, h))
    xy = np.array([96.3, 77.8])
    dot = _dot(w, h, *xy, sigma=4.0 / scale)
    got = np.asarray(fit.image(Image.fromarray(dot)))
    assert got.shape == (out[1], out[0])
    assert np.abs(_centroid(got) - fit.point(xy)).max() < 0.05, (_centroid(got), fit.point(xy))
    floats = fit.array(np.stack([dot, 255 - dot], -1).astype(np.float32) / 255)  # (H, W, C) float, as loaded
    assert floats.shape == (out[1], out[0], 2) and floats.dtype == np.float32
    assert np.abs(floats[..., 0] * 255 - got).max() < 1.0  # (the 8-bit one is rounded)
    assert np.abs(floats.sum(-1) - 1).max() < 1e-3


def test_every_fitted_box_lies_in_its_image_and_pillow_takes_it():
    """The boxes of :func:`fits_to_one_size` lie within their images for every pair of sizes up to 64 px (round-off
    put 31 px over 29 px at left -1.8e-15, which Pillow refuses with "box offset can't be negative"), and each
    fitted image has the common size."""
    from PIL import Image

    from pipeline.scenes.camera_fit import fits_to_one_size

    for a in range(8, 65):
        for b in range(8, a):
            for sizes in ({0: (a, a), 1: (b, b)}, {0: (a, b), 1: (b, a)}):
                for fit in fits_to_one_size(sizes).values():
                    left, top, right, bottom = fit.box
                    assert 0 <= left and 0 <= top and right <= fit.source[0] and bottom <= fit.source[1], fit
    fit = fits_to_one_size({0: (31, 31), 1: (29, 29)})[0]
    assert fit.image(Image.new("RGB", (31, 31))).size == (29, 29)


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


def write_lego_capture(root, frames, lego, cameras: str, image, camera_of) -> None:
    """A COLMAP text capture under ``root`` of lego's views ``frames`` at their true poses: ``cameras`` the
    cameras.txt text, image ``{k:02d}.png`` of frame k ``image(k, path)`` (an array, from lego's RGBA file at
    ``path``) taken by camera ``camera_of(k)``; no points."""
    import imageio.v3 as iio
    from scipy.spatial.transform import Rotation

    (root / "images").mkdir(parents=True)
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "sparse" / "0" / "cameras.txt").write_text(cameras)
    lines = []
    for k, frame in enumerate(frames):
        iio.imwrite(root / "images" / f"{k:02d}.png", image(k, lego / (frame["file_path"] + ".png")))
        c2w = np.asarray(frame["transform_matrix"])
        rot = (c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])).T  # world to camera, OpenCV axes
        x, y, z, w = Rotation.from_matrix(rot).as_quat()
        t = -rot @ c2w[:3, 3]
        lines += [f"{k + 1} {w} {x} {y} {z} {t[0]} {t[1]} {t[2]} {camera_of(k)} {k:02d}.png", ""]
    (root / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "sparse" / "0" / "points3D.txt").write_text("")


def _lego_capture(root, frames, lego) -> None:
    """:func:`write_lego_capture` of lego's views ``frames`` on white: even ones whole (400x400, camera 1), odd ones
    cut to their centred 360x270 (camera 2, the principal point moved with the cut)."""
    from tests.test_photos_scene import on_white

    f = 200.0 / np.tan(0.5 * 0.6911112070083618)
    cameras = f"1 PINHOLE 400 400 {f} {f} 200 200\n2 PINHOLE 360 270 {f} {f} 180 135\n"

    def image(k: int, path):
        photo = on_white(path)
        return photo[65:335, 20:380] if k % 2 else photo

    write_lego_capture(root, frames, lego, cameras, image, lambda k: 1 + k % 2)


@pytest.mark.parametrize("images, half", [("images", 1), ("images_2", 2)])
def test_a_capture_of_two_camera_sizes_loads_fitted_to_one_with_rays_on_the_same_pixels(tmp_path, capsys, pycolmap,
                                                                                         images, half):  # noqa: F811
    """Lego's views at their true poses from two cameras, 400x400 and 360x270: the capture loads at 360x270, the
    whole views scaled by 0.9 and cropped. Truth is the original photo: each loaded pixel's ray (the project's
    own ray generation from the loaded camera) is projected through lego's true camera into the original photo,
    and the colour there (bilinear) matches the loaded pixel's at over 35 dB on every view (38.3-39.9 dB when
    written; cropped views: over 60 dB, as they are not resampled). A quarter of a fitted pixel off, a whole view
    scored 33.6 dB (half: 28.6, one: 23.5). The same from half-size copies (``images_2``: 200x200 and 180x135,
    every other pixel), loaded at 180x135 against the copies: over 33 dB (34.6-36.0 when written; a quarter of a
    pixel off: 30.0)."""
    import imageio.v3 as iio
    from scipy.ndimage import map_coordinates

    from pipeline.rays import pixel_rays
    from pipeline.scenes.colmap import load_colmap
    from tests.test_photos_scene import lego_path_views

    lego, doc = lego_path_views()
    frames = doc["frames"][:8]
    root = tmp_path / "cap"
    _lego_capture(root, frames, lego)
    if half > 1:
        (root / images).mkdir()
        for path in (root / "images").iterdir():
            iio.imwrite(root / images / path.name, iio.imread(path)[::half, ::half])
    scene = load_colmap(root, images=images, test_every=0, downscale=1)
    w, h = 360 // half, 270 // half
    assert f"cameras are of 2 sizes (4 of {400 // half}x{400 // half}, 4 of {w}x{h})" in capsys.readouterr().err
    assert scene.meta["fitted"] == {"size": [w, h], "cameras": 2, "scaled": 1}
    train = scene.splits["train"]
    assert (train.cameras.width, train.cameras.height) == (w, h)
    f = 200.0 / np.tan(0.5 * doc["camera_angle_x"]) / half
    v, u = np.mgrid[0:h, 0:w] + 0.5

    def psnr_at(i: int, shift: float = 0.0) -> float:
        k = int(train.names[i])
        original = iio.imread(root / images / f"{k:02d}.png").astype(np.float64) / 255
        idx = torch.full((u.size,), i, dtype=torch.long)
        _, d = pixel_rays(train.cameras, idx, torch.from_numpy(u.ravel() + shift), torch.from_numpy(v.ravel()))
        d_cam = d.double().numpy() @ train.cameras.c2w[i, :3, :3].double().numpy()  # (R^T d, OpenGL axes)
        cx, cy = (200.0 / half, 200.0 / half) if k % 2 == 0 else (180.0 / half, 135.0 / half)
        x, y = f * d_cam[:, 0] / -d_cam[:, 2] + cx, f * -d_cam[:, 1] / -d_cam[:, 2] + cy
        want = np.stack([map_coordinates(original[..., ch], [y - 0.5, x - 0.5], order=1, mode="nearest")
                         for ch in range(3)], -1)
        err = np.mean((want - train.images[i].double().numpy().reshape(-1, 3)) ** 2)
        return float(10 * np.log10(1.0 / max(err, 1e-12)))

    scores = {int(train.names[i]): psnr_at(i) for i in range(len(train.names))}
    good = 35 if half == 1 else 33  # (the half-size copies are every other pixel, so aliased)
    assert min(s for k, s in scores.items() if k % 2 == 0) > good, scores
    assert min(s for k, s in scores.items() if k % 2 == 1) > 60, scores
    whole = next(i for i in range(len(train.names)) if int(train.names[i]) % 2 == 0)
    assert psnr_at(whole, shift=0.25) < good, psnr_at(whole, shift=0.25)


def test_masks_are_fitted_with_their_images_and_an_image_of_another_size_is_named(tmp_path, pycolmap):  # noqa: F811
    """The same two-camera capture with lego's alpha as object masks (cut alike): fitted with their images,
    the masks cover lego's pixels (intersection over union at least 0.9; 0.71 was measured for masks cropped
    without the scale in the photos test). An image of another size than its camera's first one is named."""
    import imageio.v3 as iio

    from pipeline.scenes.colmap import load_colmap
    from tests.test_photos_scene import lego_path_views

    lego, doc = lego_path_views()
    frames = doc["frames"][:4]
    root = tmp_path / "cap"
    _lego_capture(root, frames, lego)
    (root / "masks").mkdir()
    for k, frame in enumerate(frames):
        alpha = iio.imread(lego / (frame["file_path"] + ".png"))[..., 3]
        iio.imwrite(root / "masks" / f"{k:02d}.png", alpha[65:335, 20:380] if k % 2 else alpha)
    train = load_colmap(root, test_every=0, downscale=1, masks="masks").splits["train"]
    for image, alpha in zip(train.images.numpy(), train.alphas.numpy()):
        on, lego_pixels = alpha[..., 0] > 0.5, np.abs(image - 1.0).max(-1) > 0.1
        assert (on & lego_pixels).sum() / (on | lego_pixels).sum() >= 0.9
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    iio.imwrite(root / "images" / "02.png", iio.imread(root / "images" / "02.png")[:300])
    with pytest.raises(DataError, match=r"02.png is 400x300 \(WxH\), but the first image of its camera in .* is "
                                        r"400x400; the images of one camera must share one size"):
        load_colmap(root, test_every=0, downscale=1)


@pytest.mark.parametrize("scale", [1.0, 0.75])
def test_a_fitted_depth_map_keeps_each_depth_in_the_pixel_its_point_moves_to(scale):
    """``Fit.depths``: a keypoint's depth lands in the fitted pixel that holds ``Fit.point`` of its pixel centre; a
    plane of one depth stays that depth wherever anything lands; a crop is the crop, pixel for pixel."""
    from pipeline.scenes.camera_fit import Fit

    w, h = 40, 32
    box = (4.0, 2.0, 36.0, 30.0) if scale == 1.0 else (0.0, 0.0, 40.0, 32.0)
    size = (32, 28) if scale == 1.0 else (30, 24)
    fit = Fit(box, size, scale, (w, h))
    sparse = np.zeros((h, w), np.float32)
    sparse[10, 17], sparse[25, 6] = 2.5, 4.0
    got = fit.depths(sparse)
    assert got.shape == (size[1], size[0]) and (got > 0).sum() == 2
    for (v, u), z in (((10, 17), 2.5), ((25, 6), 4.0)):
        x, y = fit.point(np.array([u + 0.5, v + 0.5]))
        assert got[int(y), int(x)] == z
    plane = np.full((h, w), 1.5, np.float32)
    assert np.all(fit.depths(plane) == 1.5)
    if scale == 1.0:
        dense = np.random.default_rng(0).uniform(1, 2, (h, w)).astype(np.float32)
        assert np.array_equal(fit.depths(dense), dense[2:30, 4:36])


def test_depth_maps_of_a_capture_of_two_camera_sizes_are_fitted_with_their_images(tmp_path, pycolmap):  # noqa: F811
    """The tiny sphere as a COLMAP capture whose odd images are cut to 31x30 (a second camera, its principal point
    moved alike), with stereo depth maps of its mesh at each image's size: loaded fitted to one size (the even
    images cropped), each pixel's depth along its ray meets the mesh where the mesh's own ray cast does."""
    import imageio.v3 as iio
    import trimesh

    from pipeline.mesh_views import mesh_depth
    from pipeline.rays import pixel_rays
    from pipeline.scenes.colmap import load_colmap
    from pipeline.train import ray_distance
    from tests.test_colmap_scene import _fmt, _source_folder, G, make_colmap, truth
    from tests.test_depth_supervision import _write_colmap_array, colmap_mesh_z

    f = truth()["frames"][0][2]
    made = make_colmap(tmp_path / "cap", cameras=f"1 PINHOLE 32 32 {_fmt([f, f, 16, 16])}\n"
                                                 f"2 PINHOLE 31 30 {_fmt([f, f, 15, 15])}\n")
    root = made["root"]
    mesh = trimesh.load(_source_folder() / "gt_mesh.ply")
    (root / "depths").mkdir()
    for k, (_, c2w, _) in enumerate(truth()["frames"]):
        z = colmap_mesh_z(mesh, c2w, f)
        if k % 2:  # (the second camera: 31x30 of the view)
            z = z[1:31, 1:32]
            iio.imwrite(root / "images" / f"{k:03d}.png", iio.imread(root / "images" / f"{k:03d}.png")[1:31, 1:32])
        _write_colmap_array(root / "depths" / f"{k:03d}.png.geometric.bin", z)
    scene = load_colmap(root, test_every=0, downscale=1, depths="depths")
    train = scene.splits["train"]
    assert (train.cameras.width, train.cameras.height) == (31, 30)
    in_run = mesh.copy().apply_transform(np.asarray(scene.meta["input_frame"]["to_run"]) @ G())
    for i in range(len(train)):
        cast = mesh_depth(in_run, train.cameras, i)
        v, u = torch.meshgrid(torch.arange(30) + 0.5, torch.arange(31) + 0.5, indexing="ij")
        index = torch.full((30 * 31,), i)
        _, d = pixel_rays(train.cameras, index, u.reshape(-1), v.reshape(-1))
        got = ray_distance(train.depths[i].reshape(-1), d, train.cameras.c2w[index])[:, 0].reshape(30, 31).numpy()
        hit = np.isfinite(cast)
        assert hit.sum() > 50 and np.array_equal(hit, got > 0), i
        assert np.allclose(got[hit], cast[hit], rtol=1e-4), i


def test_the_report_names_the_fitted_size():
    from pipeline.report import capture_rows

    fitted = {"size": [360, 270], "cameras": 2, "scaled": 1}
    assert ("cameras", "images of 2 cameras fitted to 360x270 (1 scaled)") in capture_rows({"fitted": fitted})
    assert capture_rows({"fitted": {"size": "big"}}) == []
