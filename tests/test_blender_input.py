"""Blender / instant-ngp loader: image modes, broken cameras and intrinsics, oversized downscale,
empty splits, JSON encodings, fully transparent images and Windows paths."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from pipeline import notices
from pipeline.evaluate import missing_split_message
from pipeline.scenes import data_path
from pipeline.scenes.blender import _pose, _read_image, load_blender
from tests.test_blender import _edit, _raises, make_blender


def _train(tmp_path, n=2, size=8, **kw):
    """A NeRF-synthetic folder with only a train split of ``n`` RGBA ``size``-pixel PNGs."""
    return make_blender(tmp_path / "s", n=n, size=size, splits=("train",), **kw)


def _replace_images(root, save, n=2, ext=".png"):
    """Swap ``train/r_i.png`` for an image written by ``save(path)`` (file_path has no ext)."""
    for i in range(n):
        (root / "train" / f"r_{i}.png").unlink()
        save(root / "train" / f"r_{i}{ext}")


def _ngp(tmp_path, n=2, drop=(), **top):
    """An instant-ngp folder with ``n`` 4x6 RGB images, top-level keys ``top``, less ``drop``."""
    root = tmp_path / "ngp"
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        iio.imwrite(root / "images" / f"{i}.png", np.full((4, 6, 3), 100, np.uint8))
        m = np.eye(4)
        m[2, 3] = 4.0
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": m.tolist(),
                       "split": "train"})
    doc = {"fl_x": 5.0, "w": 6, "h": 4, "frames": frames, **top}
    for key in drop:
        doc.pop(key)
    (root / "transforms.json").write_text(json.dumps(doc))
    return root


# --------------------------------------------------------------------------- image modes


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    root = _train(tmp_path)
    red = Image.new("RGB", (8, 8), (255, 0, 0)).convert("CMYK")
    _replace_images(root, lambda p: red.save(p, quality=95), ext=".jpg")
    tr = load_blender(root, splits=("train",)).splits["train"]
    assert tr.alphas is None  # K is not taken for alpha
    assert np.allclose(tr.images.numpy(), [1, 0, 0], atol=0.05)


def test_palette_png_transparency_becomes_alpha(tmp_path):
    root = _train(tmp_path)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0])  # index 0: black, transparent; index 1: green
    for x in range(4):
        for y in range(8):
            pal.putpixel((x, y), 1)
    _replace_images(root, lambda p: pal.save(p, transparency=0))
    tr = load_blender(root, splits=("train",)).splits["train"]
    assert tr.alphas is not None
    im = tr.images[0].numpy()
    assert np.allclose(im[:, :4], [0, 1, 0]) and np.allclose(im[:, 4:], [1, 1, 1])  # white bg
    assert np.allclose(tr.alphas[0, :, 4:].numpy(), 0)


def test_rgb_png_transparency_key_becomes_alpha(tmp_path):
    root = _train(tmp_path)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (0, 0, 255)
    _replace_images(root, lambda p: Image.fromarray(rgb).save(p, transparency=(0, 0, 0)))
    im = load_blender(root, splits=("train",)).splits["train"].images[0].numpy()
    assert np.allclose(im[:, :4], [0, 0, 1]) and np.allclose(im[:, 4:], 1)


@pytest.mark.parametrize("shape,dtype", [((4, 5), np.uint8), ((4, 5), np.uint16),
                                         ((4, 5, 2), np.uint8), ((4, 5, 3), np.uint8),
                                         ((4, 5, 4), np.uint8)])
def test_plain_modes_read_as_before(tmp_path, shape, dtype):
    """Grey, 16-bit grey, grey+alpha, RGB and RGBA PNGs: the values imageio gives."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    path = tmp_path / "x.png"
    iio.imwrite(path, arr)
    got = _read_image(path)
    ref = arr.astype(np.float32) / np.iinfo(dtype).max
    if ref.ndim == 2:
        ref = np.repeat(ref[..., None], 3, axis=-1)
    elif ref.shape[-1] == 2:
        ref = np.concatenate([np.repeat(ref[..., :1], 3, axis=-1), ref[..., 1:]], axis=-1)
    assert got.dtype == np.float32 and got.shape == ref.shape and np.allclose(got, ref)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_unreadable_image(tmp_path, data):
    root = _train(tmp_path)
    (root / "train" / "r_1.png").write_bytes(data)
    msg = _raises(root, "r_1.png", "not a readable PNG/JPG image", f"({len(data)} bytes)",
                  splits=("train",))
    assert "pip install" not in msg


# --------------------------------------------------------------------------- cameras


def _rot_scaled(s):
    m = np.eye(4)
    m[:3, :3] *= s
    m[2, 3] = 4.0
    return m.tolist()


@pytest.mark.parametrize("bad,det", [
    (np.zeros((4, 4)).tolist(), "determinant 0"),
    (_rot_scaled(0.0), "determinant 0"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 4], [0, 0, 0, 1]], "determinant 0"),  # singular
    (_rot_scaled(2.0), "determinant 8"),
])
def test_degenerate_pose(tmp_path, bad, det):
    root = _train(tmp_path)
    _edit(root, "train", lambda d: d["frames"][1].update(transform_matrix=bad))
    _raises(root, "transforms_train.json", "frames[1]", "./train/r_1", "'transform_matrix'",
            det, "+1 or -1", splits=("train",))


@pytest.mark.parametrize("r33", [
    [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]],  # shear, det 1
    [[2, 0, 0], [0, 0.5, 0], [0, 0, 1]],  # unequal scales, det 1
])
def test_det_one_non_rotation_refused(tmp_path, r33):
    root = _train(tmp_path)
    m = np.eye(4)
    m[:3, :3] = r33
    m[2, 3] = 4.0
    _edit(root, "train", lambda d: d["frames"][1].update(transform_matrix=m.tolist()))
    _raises(root, "transforms_train.json", "frames[1]", "'transform_matrix'", "not orthonormal",
            "R^T R - I", splits=("train",))


def test_reflected_pose_loads(tmp_path):
    root = _train(tmp_path)
    m = np.diag([1.0, 1.0, -1.0, 1.0])
    m[2, 3] = 4.0
    _edit(root, "train", lambda d: d["frames"][0].update(transform_matrix=m.tolist()))
    assert len(load_blender(root, splits=("train",)).splits["train"]) == 2


def test_real_lego_poses_pass():
    lego, why = data_path("nerf", "lego")
    if lego is None:
        pytest.skip(f"real lego data unavailable: {why}")
    for split in ("train", "val", "test"):
        doc = json.loads((lego / f"transforms_{split}.json").read_text())
        for i, fr in enumerate(doc["frames"]):
            _pose(fr, f"{split}: frames[{i}]")


@pytest.mark.parametrize("key,value,needle", [
    ("fl_x", 0.0, "'fl_x' must be positive, got 0.0"),
    ("fl_y", -3.0, "'fl_y' must be positive, got -3.0"),
    ("camera_angle_x", 0.0, "'camera_angle_x' must be in (0, pi) radians, got 0.0"),
    ("camera_angle_x", 4.0, "'camera_angle_x' must be in (0, pi) radians, got 4.0"),
    ("camera_angle_y", -1.0, "'camera_angle_y' must be in (0, pi) radians, got -1.0"),
    ("offset", ["a", 0.5, 0.5], "'offset[0]' must be a number, got 'a'"),
    ("offset", [0.5, 0.5], "'offset' must be 3 finite numbers"),
])
def test_ngp_bad_intrinsics(tmp_path, key, value, needle):
    # the angle is read only without fl_x
    root = _ngp(tmp_path, drop=("fl_x",) if key == "camera_angle_x" else (), **{key: value})
    _raises(root, str(root / "transforms.json"), needle, splits=("train",))


def test_ngp_good_angles_load(tmp_path):
    root = _ngp(tmp_path, drop=("fl_x",), camera_angle_x=0.8, camera_angle_y=0.9)
    cams = load_blender(root, splits=("train",)).splits["train"].cameras
    assert np.allclose(cams.fx.numpy(), 3 / math.tan(0.4))
    assert np.allclose(cams.fy.numpy(), 2 / math.tan(0.45))


# --------------------------------------------------------------------------- downscale


@pytest.mark.parametrize("d", [9, 1000])
def test_downscale_larger_than_images(tmp_path, d):
    root = _train(tmp_path)
    _raises(root, f"downscale {d}", "8x8", "largest valid downscale is 8", "'train'",
            splits=("train",), downscale=d)


def test_downscale_to_one_pixel_loads(tmp_path):
    tr = load_blender(_train(tmp_path), splits=("train",), downscale=8).splits["train"]
    assert tuple(tr.images.shape) == (2, 1, 1, 3)


# --------------------------------------------------------------------------- splits, JSON


def test_empty_split_message(tmp_path):
    root = make_blender(tmp_path / "s")
    _edit(root, "test", lambda d: d.update(frames=[]))
    scene = load_blender(root, splits=("train", "test"))
    assert scene.meta["splits_empty"] == ["test"]
    msg = missing_split_message(scene, "test", "eval.split")
    assert "transforms_test.json has no frames" in msg and "scene.splits" not in msg
    assert "eval.split = 'test'" in msg and "it has train" in msg


def test_latin1_json(tmp_path):
    root = _train(tmp_path)
    p = root / "transforms_train.json"
    doc = json.loads(p.read_text())
    doc["comment"] = "caméra"
    p.write_bytes(json.dumps(doc, ensure_ascii=False).encode("latin-1"))
    _raises(root, str(p), "is not UTF-8 text", splits=("train",))


def test_utf8_bom_json(tmp_path):
    root = _train(tmp_path)
    p = root / "transforms_train.json"
    p.write_bytes(p.read_text().encode("utf-8-sig"))
    assert len(load_blender(root, splits=("train",)).splits["train"]) == 2


# --------------------------------------------------------------------------- images, paths


def test_fully_transparent_split_warns(tmp_path):
    root = _train(tmp_path)
    clear = np.zeros((8, 8, 4), np.uint8)
    _replace_images(root, lambda p: iio.imwrite(p, clear))
    notices.reset()
    load_blender(root, splits=("train",))
    kept = [m for m in notices.kept() if "fully transparent" in m]
    assert len(kept) == 1 and "'train'" in kept[0]
    notices.reset()
    load_blender(_train(tmp_path / "ok"), splits=("train",))
    assert not [m for m in notices.kept() if "fully transparent" in m]


def test_windows_backslash_file_path(tmp_path):
    root = _train(tmp_path)
    _edit(root, "train", lambda d: [fr.update(file_path=fr["file_path"].replace("/", "\\"))
                                    for fr in d["frames"]])
    tr = load_blender(root, splits=("train",)).splits["train"]
    assert tr.names == ["r_0", "r_1"]


@pytest.mark.parametrize("extra, what", [({"k1": -0.05, "p2": 0.001}, "k1, p2"),
                                         ({"camera_model": "OPENCV_FISHEYE"}, "camera_model OPENCV_FISHEYE")])
def test_ngp_lens_distortion_is_warned_about(tmp_path, extra, what):
    """COLMAP -> NeRF exports write distortion the pinhole rays do not model; it was ignored silently."""
    notices.reset()
    load_blender(_ngp(tmp_path, **extra), splits=("train",))
    kept = [m for m in notices.kept() if "lens distortion" in m]
    assert len(kept) == 1 and f"lens distortion ({what}) is not modelled" in kept[0], notices.kept()
    notices.reset()
    load_blender(_ngp(tmp_path / "plain", k1=0.0, camera_model="PINHOLE"), splits=("train",))
    assert not [m for m in notices.kept() if "lens distortion" in m]


def test_a_file_path_with_the_wrong_extension_names_the_file_that_is_there(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",))
    _edit(root, "train", lambda d: [fr.update(file_path=fr["file_path"] + ".jpg")
                                    for fr in d["frames"]])
    _raises(root, "image file not found", "has r_0.png: fix the extension in 'file_path'", splits=("train",))


def test_images_that_do_not_fit_in_memory_are_refused_with_the_downscale_that_fits(tmp_path, monkeypatch):
    """A capture of large photos filled its float32 array until the out-of-memory killer ended the process
    (silently); the loader now reckons the need from the first image and names a downscale that fits."""
    import pipeline.scenes.blender as blender

    root = _train(tmp_path, n=4, size=16)  # RGBA: 4 images x 16 x 16 x 4 channels x 4 bytes = 16384 bytes
    monkeypatch.setattr(blender, "available_memory", lambda: 16383)
    with pytest.raises(Exception, match=r"split 'train' .*its 4 images .* need 0\.0 GB as float32, more than the "
                                        r"0\.0 GB .*set scene\.downscale: 2") as err:
        load_blender(root, splits=("train",))
    assert type(err.value).__name__ == "DataError"
    monkeypatch.setattr(blender, "available_memory", lambda: 16384)
    assert load_blender(root, splits=("train",)).splits["train"].images.shape == (4, 16, 16, 3)
    monkeypatch.setattr(blender, "available_memory", lambda: 4096)  # a quarter: downscale 2 fits exactly
    assert load_blender(root, splits=("train",), downscale=2).splits["train"].images.shape == (4, 8, 8, 3)
    monkeypatch.setattr(blender, "available_memory", lambda: None)  # unknown: no check
    assert load_blender(root, splits=("train",)).splits["train"].alphas.shape == (4, 16, 16, 1)
    monkeypatch.undo()  # the real one reads /proc/meminfo here
    free = blender.available_memory()
    assert free is None or free > 0


def test_rgb_images_hold_no_alpha_array_and_a_mixed_split_gets_ones(tmp_path):
    root = _train(tmp_path, n=3, size=8)
    (root / "train" / "r_1.png").unlink()  # one RGB frame among RGBA ones: its alpha is 1
    iio.imwrite(root / "train" / "r_1.png", np.full((8, 8, 3), 200, np.uint8))
    tr = load_blender(root, splits=("train",)).splits["train"]
    assert tr.alphas is not None and bool((tr.alphas[1] == 1).all())
    assert np.allclose(tr.images[1].numpy(), 200 / 255, atol=1e-6)
    _replace_images(root, lambda p: iio.imwrite(p, np.full((8, 8, 3), 10, np.uint8)), n=3)
    assert load_blender(root, splits=("train",)).splits["train"].alphas is None
