"""Blender / instant-ngp loader: intrinsics, compositing, downscale, splits, errors."""

from __future__ import annotations

import json
import math
import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.scenes import data_path
from pipeline.scenes.blender import load_blender
from pipeline.types import DataError

ANGLE = 0.8


def _rgba(size=8, h=None):
    """Red image; left half opaque, right half transparent, one column half-transparent."""
    h = h or size
    img = np.zeros((h, size, 4), np.uint8)
    img[..., 0] = 255
    img[:, : size // 2, 3] = 255
    img[:, size // 2, 3] = 128
    return img


def _pose(tz=4.0):
    m = np.eye(4)
    m[2, 3] = tz
    return m.tolist()


def make_blender(root, n=2, size=8, ext=False, json_extra=None, splits=("train", "test")):
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        (root / split).mkdir(exist_ok=True)
        frames = []
        for i in range(n):
            iio.imwrite(root / split / f"r_{i}.png", _rgba(size))
            frames.append({"file_path": f"./{split}/r_{i}" + (".png" if ext else ""),
                           "rotation": 0.0, "transform_matrix": _pose(4.0 + i)})
        doc = {"camera_angle_x": ANGLE, "frames": frames, **(json_extra or {})}
        (root / f"transforms_{split}.json").write_text(json.dumps(doc))
    return root


def test_focal_from_own_width_and_compositing(tmp_path):
    root = make_blender(tmp_path / "s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no val split here
        sc = load_blender(root)
    assert set(sc.splits) == {"train", "test"} and sc.meta["splits_missing"] == ["val"]
    tr = sc.splits["train"]
    assert tuple(tr.images.shape) == (2, 8, 8, 3) and tuple(tr.alphas.shape) == (2, 8, 8, 1)
    f = 0.5 * 8 / math.tan(0.5 * ANGLE)
    assert np.allclose(tr.cameras.fx.numpy(), f) and np.allclose(tr.cameras.fy.numpy(), f)
    assert np.allclose(tr.cameras.cx.numpy(), 4.0) and np.allclose(tr.cameras.cy.numpy(), 4.0)
    assert tr.cameras.width == 8 and tr.cameras.height == 8
    assert np.allclose(tr.cameras.c2w[1].numpy()[2, 3], 5.0)
    assert tr.names == ["r_0", "r_1"]
    im = tr.images[0].numpy()
    assert np.allclose(im[:, 0], [1, 0, 0])          # opaque red
    assert np.allclose(im[:, -1], [1, 1, 1])         # transparent -> white background
    a = 128 / 255
    assert np.allclose(im[:, 4], [1, 1 - a, 1 - a], atol=1e-6)
    assert sc.near == 2.0 and sc.far == 6.0
    assert np.allclose(sc.aabb.numpy(), [-1.5] * 3 + [1.5] * 3)
    assert sc.meta["source"] == "blender" and sc.meta["image_size"]["train"] == [8, 8]
    assert sc.gt_mesh is None

    black = load_blender(root, splits=("train",), background=(0, 0, 0))
    imb = black.splits["train"].images[0].numpy()
    assert np.allclose(imb[:, -1], 0) and np.allclose(imb[:, 4], [a, 0, 0], atol=1e-6)


def test_downscale_and_max_images_and_ext(tmp_path):
    root = make_blender(tmp_path / "s", n=3, ext=True)
    sc = load_blender(root, splits=("train",), downscale=2, max_images=2)
    tr = sc.splits["train"]
    assert tuple(tr.images.shape) == (2, 4, 4, 3)
    f = 0.5 * 8 / math.tan(0.5 * ANGLE)
    assert np.allclose(tr.cameras.fx.numpy(), f / 2) and np.allclose(tr.cameras.cx.numpy(), 2)
    al = tr.alphas[0, 0, :, 0].numpy()
    assert np.allclose(al, [1, 1, (128 / 255 + 0) / 2, 0])  # area filter
    # 2x2 block mean of the composited full-resolution image
    full = load_blender(root, splits=("train",)).splits["train"].images[0].numpy()
    assert np.allclose(tr.images[0].numpy(), full.reshape(4, 2, 4, 2, 3).mean((1, 3)),
                       atol=1e-6)
    # non-divisible factor: trailing pixels cropped, intrinsics divided by the factor
    tr3 = load_blender(root, splits=("train",), downscale=3).splits["train"]
    assert tuple(tr3.images.shape[1:3]) == (2, 2)
    assert np.allclose(tr3.cameras.cx.numpy(), 4 / 3)


def test_overrides_from_transforms(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",),
                        json_extra={"near": 0.5, "far": 3.0, "aabb": [-1, -1, -1, 1, 1, 1]})
    sc = load_blender(root, splits=("train",))
    assert sc.near == 0.5 and sc.far == 3.0 and np.allclose(sc.aabb.numpy()[3:], 1)


def test_instant_ngp_variant(tmp_path):
    root = tmp_path / "ngp"
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(9):
        rgb = np.full((6, 10, 3), 20 * i, np.uint8)  # stored at half the JSON size
        iio.imwrite(root / "images" / f"{i:03d}.png", rgb)
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": _pose()})
    doc = {"fl_x": 30.0, "fl_y": 32.0, "cx": 10.0, "cy": 6.0, "w": 20, "h": 12,
           "aabb_scale": 2, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(doc))
    sc = load_blender(root)
    assert sc.meta["source"] == "instant-ngp"
    assert len(sc.splits["test"]) == 2 and len(sc.splits["train"]) == 7
    assert sc.splits["test"].names == ["000", "008"]
    tr = sc.splits["train"]
    assert tr.alphas is None and tuple(tr.images.shape) == (7, 6, 10, 3)
    assert np.allclose(tr.cameras.fx.numpy(), 15) and np.allclose(tr.cameras.fy.numpy(), 16)
    assert np.allclose(tr.cameras.cx.numpy(), 5) and np.allclose(tr.cameras.cy.numpy(), 3)
    assert np.allclose(tr.images[0].numpy(), 20 / 255)
    half = 0.5 * 2 / 0.33
    assert np.allclose(sc.aabb.numpy(), [-half] * 3 + [half] * 3, atol=1e-5)
    assert 0 < sc.near < sc.far
    # explicit split keys win over the every-8th rule
    for i, fr in enumerate(doc["frames"]):
        fr["split"] = "val" if i == 3 else "train"
    (root / "transforms.json").write_text(json.dumps(doc))
    sc2 = load_blender(root)
    assert set(sc2.splits) == {"train", "val"} and sc2.splits["val"].names == ["003"]
    # a non-uniform offset is added before instant-ngp cycles the axes: the box centre is
    # (0.5 - offset) / scale in the NeRF frame, axis for axis
    doc.update(offset=[0.5, 0.5, 0.9], scale=0.5)
    (root / "transforms.json").write_text(json.dumps(doc))
    box = load_blender(root).aabb.numpy()
    assert np.allclose((box[:3] + box[3:]) / 2, [0.0, 0.0, -0.8], atol=1e-6)
    assert np.allclose(box[3:] - box[:3], 2 / 0.5)


# --------------------------------------------------------------------------- errors


def _edit(root, split, fn):
    p = root / f"transforms_{split}.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))
    return p


def _raises(root, *needles, **kw):
    with pytest.raises(DataError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_blender(root, **kw)
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_missing_directory_and_transforms(tmp_path):
    _raises(tmp_path / "nope", "not found", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", "transforms_{train,val,test}.json", "transforms.json")


def test_malformed_json(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",))
    (root / "transforms_train.json").write_text('{"camera_angle_x": 0.8, "frames": [')
    _raises(root, "malformed JSON", "transforms_train.json")


@pytest.mark.parametrize("key", ["frames", "camera_angle_x"])
def test_missing_top_key(tmp_path, key):
    root = make_blender(tmp_path / "s", splits=("train",))
    _edit(root, "train", lambda d: d.pop(key))
    _raises(root, f"'{key}'", "transforms_train.json")


@pytest.mark.parametrize("key", ["transform_matrix", "file_path"])
def test_missing_frame_key(tmp_path, key):
    root = make_blender(tmp_path / "s", splits=("train",))
    _edit(root, "train", lambda d: d["frames"][1].pop(key))
    _raises(root, f"'{key}'", "frames[1]", "transforms_train.json")


def test_missing_image(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",))
    (root / "train" / "r_1.png").unlink()
    _raises(root, "image file not found", "r_1", "frames[1]")


def test_mismatched_sizes(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",))
    iio.imwrite(root / "train" / "r_1.png", _rgba(6))
    _raises(root, "different sizes", "r_0.png", "r_1.png", "8x8", "6x6")


@pytest.mark.parametrize("bad,needle", [
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, float("nan")], [0, 0, 0, 1]], "non-finite"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4]], "4x4"),
])
def test_bad_pose(tmp_path, bad, needle):
    root = make_blender(tmp_path / "s", splits=("train",))
    p = root / "transforms_train.json"
    doc = json.loads(p.read_text())
    doc["frames"][0]["transform_matrix"] = bad
    p.write_text(json.dumps(doc))  # NaN is written as a bare NaN token
    _raises(root, needle, "frames[0]", "transform_matrix")


def test_bad_options(tmp_path):
    root = make_blender(tmp_path / "s", splits=("train",))
    _raises(root, "downscale", downscale=0)
    _raises(root, "background", background=(2, 0, 0))


# --------------------------------------------------------------------------- real data


def test_real_lego_two_images():
    lego, why = data_path("nerf", "lego")
    if lego is None:
        pytest.skip(f"real lego data unavailable: {why}")
    sc = load_blender(lego, splits=("train",), max_images=2)
    tr = sc.splits["train"]
    assert tuple(tr.images.shape) == (2, 400, 400, 3) and tr.alphas is not None
    angle = json.loads((lego / "transforms_train.json").read_text())["camera_angle_x"]
    assert np.allclose(tr.cameras.fx.numpy(), 0.5 * 400 / math.tan(0.5 * angle), rtol=1e-5)
    assert float(tr.images.min()) >= 0 and float(tr.images.max()) <= 1
