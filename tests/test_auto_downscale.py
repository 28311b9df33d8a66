"""``downscale: auto`` (the capture sources' default): images load at the least whole factor that brings their
longer side within ``AUTO_MAX_SIDE`` pixels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)


@pytest.mark.parametrize("size, factor", [((4032, 3024), 3), ((3024, 4032), 3), ((1920, 1080), 2),
                                          ((1600, 1200), 1), ((800, 800), 1), ((1601, 10), 2)])
def test_auto_is_the_least_factor_within_1600_pixels_and_says_so(tmp_path, capsys, size, factor):
    from PIL import Image

    from pipeline.scenes.blender import resolve_downscale

    path = tmp_path / "a.png"
    Image.new("RGB", size).save(path)
    assert resolve_downscale("auto", path) == factor
    assert resolve_downscale(2, path) == 2  # (a number is taken as it is)
    err = capsys.readouterr().err
    w, h = size
    said = f"the scene's images, {w}x{h}, are loaded at 1/{factor} of their size, {w // factor}x{h // factor}"
    assert (said in err) == (factor > 1), err


def test_a_capture_loads_with_auto_as_with_the_factor_it_picks(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """The tiny capture's 32x32 images with the limit at 10 px: auto picks 4 and loads the images and cameras
    that downscale 4 loads; the run record names the factor used."""
    from pipeline.scenes import blender
    from pipeline.scenes.colmap import load_colmap

    root = make_colmap(tmp_path / "cap")["root"]
    monkeypatch.setattr(blender, "AUTO_MAX_SIDE", 10)
    auto, four = load_colmap(root, downscale="auto"), load_colmap(root, downscale=4)
    assert auto.meta["downscale"] == 4 and auto.meta["image_size"] == four.meta["image_size"] == {
        "train": [8, 8], "test": [8, 8]}
    for split in ("train", "test"):
        a, b = auto.splits[split], four.splits[split]
        assert np.array_equal(a.images.numpy(), b.images.numpy())
        for key in ("fx", "fy", "cx", "cy"):
            assert np.array_equal(getattr(a.cameras, key).numpy(), getattr(b.cameras, key).numpy())
    with pytest.raises(DataError, match="downscale must be an integer >= 1 or auto, got 'half'"):
        load_colmap(root, downscale="half")


def test_the_capture_sources_default_to_auto_and_blender_to_1():
    from pydantic import ValidationError

    from plugins.scenes.config import BlenderConfig, ColmapConfig, PhotosConfig, VideoConfig

    assert ColmapConfig(path="c").downscale == PhotosConfig(path="p").downscale == "auto"
    assert VideoConfig(path="v.mp4").downscale == "auto" and BlenderConfig(path="b").downscale == 1
    assert ColmapConfig(path="c", downscale="2").downscale == 2 and BlenderConfig(path="b", downscale="auto")
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ValidationError, match=r"give a whole number >= 1 \(1: the images as they are\) or "
                                                  rf"auto, not {bad!r}"):
            ColmapConfig(path="c", downscale=bad)
