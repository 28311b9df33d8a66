"""Object masks for the frames of a video (the ``video`` source's ``masks``): a mask video frame for frame with the
video, or a folder of masks named by frame number; the masks of the frames taken are fitted to them, cached, and
undistorted with their cameras as a photo capture's masks are."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)
from tests.test_video_scene import _panning, _write

pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg is not installed (the video extra, also in the test "
                                             "extra): videos cannot be read")

H, W, N = 96, 128, 12


def _mask(k: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame k's mask (h, w) uint8: white on the k-th of N column bands, black elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[:, k * w // N:(k + 1) * w // N] = 255
    return m


def _band(mask: np.ndarray) -> float:
    """The column centre of a mask's white, as a band index (k + 0.5 for frame k's, within 0.07: the bands' edges
    fall on whole pixels)."""
    cols = np.asarray(mask, np.float64).mean(axis=0)
    return float((cols * (np.arange(len(cols)) + 0.5)).sum() / cols.sum()) * N / len(cols)


def _folder(root: Path, first: int = 0, scale: int = 1, name: str = "{:05d}.png") -> Path:
    import imageio.v3 as iio

    root.mkdir(parents=True)
    for k in range(N):
        iio.imwrite(root / name.format(k + first), _mask(k, H * scale, W * scale))
    return root


@pytest.fixture
def video(tmp_path):
    """12 panning frames at 10 fps, and the facts of taking every other one of them."""
    from pipeline.scenes.video_frames import take_frames

    path = _write(tmp_path / "walk.mp4", _panning(N, set()))
    frames = take_frames(path, tmp_path / "frames", frames=6, sharpest=False, spacing="time", progress=False)
    assert frames["picked"] == [0, 2, 4, 6, 8, 10]
    return path, frames


@pytest.mark.parametrize("first, scale, name", [(0, 1, "{:05d}.png"), (1, 1, "{:05d}.png"),
                                                (0, 2, "mask_{}.jpg")])
def test_numbered_masks_give_each_frame_taken_its_own(video, tmp_path, first, scale, name):
    """Masks numbered from 0 (SAM 2) or from 1 (ffmpeg), at the frames' size or twice it (scaled down), PNG or
    JPEG: frame k's mask, and no other, is written for each frame taken."""
    import imageio.v3 as iio

    from pipeline.scenes.video_masks import write_frame_masks

    _, frames = video
    masks = _folder(tmp_path / "masks", first, scale, name)
    facts = write_frame_masks(masks, frames, tmp_path / "out", progress=False)
    assert facts == {"kind": "folder", "numbered_from": first}
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == [f"frame_{k:06d}.png" for k in frames["picked"]]
    for k, p in zip(frames["picked"], written):
        m = iio.imread(p)
        assert m.shape == (H, W) and m.dtype == np.uint8
        assert abs(_band(m) - (k + 0.5)) < 0.08, (k, _band(m))


def test_a_mask_video_gives_each_frame_taken_its_own(video, tmp_path):
    """A mask video frame for frame with the video (H.264, so the edges are a little soft)."""
    import imageio.v3 as iio

    from pipeline.scenes.video_masks import write_frame_masks

    _, frames = video
    masks = _write(tmp_path / "walk_masks.mp4", [np.repeat(_mask(k)[..., None], 3, axis=2) for k in range(N)])
    assert write_frame_masks(masks, frames, tmp_path / "out", progress=False) == {"kind": "video"}
    for k in frames["picked"]:
        m = iio.imread(tmp_path / "out" / f"frame_{k:06d}.png")
        assert abs(_band(m) - (k + 0.5)) < 0.15, (k, _band(m))
        assert np.mean((m > 32) & (m < 224)) < 0.05  # nearly black and white


def test_masks_of_a_part_of_the_video_are_those_of_its_frames(tmp_path):
    """From 0.4 s (frame 4 at 10 fps): the frames taken keep their numbers in the video, and so do the masks, from
    a folder or from a mask video read over the same part."""
    import imageio.v3 as iio

    from pipeline.scenes.video_frames import take_frames
    from pipeline.scenes.video_masks import write_frame_masks

    video = _write(tmp_path / "walk.mp4", _panning(N, set()))
    frames = take_frames(video, tmp_path / "frames", frames=4, sharpest=False, spacing="time", start=0.4,
                         progress=False)
    assert frames["picked"] == [4, 6, 8, 10]
    folder = _folder(tmp_path / "masks")
    clip = _write(tmp_path / "masks.mp4", [np.repeat(_mask(k)[..., None], 3, axis=2) for k in range(N)])
    for masks in (folder, clip):
        out = tmp_path / f"out_{masks.stem}"
        write_frame_masks(masks, frames, out, progress=False)
        bands = [_band(iio.imread(out / f"frame_{k:06d}.png")) for k in frames["picked"]]
        assert np.allclose(bands, [k + 0.5 for k in frames["picked"]], atol=0.15), (masks, bands)


def test_masks_that_are_missing_sideways_or_too_few_are_data_errors(video, tmp_path):
    from pipeline.scenes.video_masks import numbered_masks, write_frame_masks

    _, frames = video
    masks = _folder(tmp_path / "masks")
    (masks / "00004.png").unlink()
    with pytest.raises(DataError, match=r"no mask for 1 of the 6 frames taken from the video, numbered 4 \(masks "
                                        r"numbered from 0"):
        write_frame_masks(masks, frames, tmp_path / "out", progress=False)
    shutil.copyfile(masks / "00003.png", masks / "frame_3.png")
    with pytest.raises(DataError, match="00003.png and frame_3.png are both numbered 3"):
        numbered_masks(masks)
    sideways = _folder(tmp_path / "sideways", scale=1)
    import imageio.v3 as iio

    iio.imwrite(sideways / "00002.png", _mask(2).T.copy())
    with pytest.raises(DataError, match=r"00002.png is 96x128 \(WxH\), the frames 128x96; it is sideways"):
        write_frame_masks(sideways, frames, tmp_path / "out2", progress=False)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no mask image named by its frame's number"):
        numbered_masks(tmp_path / "none")
    short = _write(tmp_path / "short.mp4", [np.repeat(_mask(k)[..., None], 3, axis=2) for k in range(N - 2)])
    with pytest.raises(DataError, match=r"short.mp4 holds 10 frames where the video holds 12 \(from 0 s to its end"):
        write_frame_masks(short, frames, tmp_path / "out3", progress=False)


def test_a_video_with_masks_is_composited_by_them_and_cached(tmp_path, monkeypatch, capsys,
                                                             pycolmap):  # noqa: F811
    """``scene.masks`` of a video: the frames (the capture's 10 views as a video) are posed by a stand-in for SfM
    that 'finds' the capture's model for them, then undistorted by COLMAP's own undistortion, masks and all; each
    frame's alpha is its mask. The masks are cached: a second load makes nothing again, and a changed mask makes
    only the masks again."""
    import imageio.v3 as iio

    from pipeline.scenes import sfm
    from plugins.scenes.config import VideoConfig
    from plugins.scenes.sources import build_video

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    views = sorted((cap / "images").iterdir())
    clip = tmp_path / "clip"
    clip.mkdir()
    video = _write(clip / "walk.mp4", [iio.imread(p)[..., :3] for p in views])
    masks = clip / "masks"
    masks.mkdir()
    want = {}
    for k in range(len(views)):
        m = np.zeros((32, 32), np.uint8)
        m[4 + k:20 + k, 6:26] = 255  # a block that moves down a pixel a frame
        iio.imwrite(masks / f"{k:05d}.png", m)
        want[f"frame_{k:06d}"] = m.astype(np.float32) / 255.0
    calls = []

    def posed(photos_dir: Path, out: Path, *, names, **options) -> dict:  # the capture's model, frames' names
        calls.append(1)
        model = out / "sparse" / "0"
        shutil.copytree(cap / "sparse" / "0", model)
        text = (model / "images.txt").read_text()
        for k in range(len(views)):
            text = text.replace(f" {k:03d}.png", f" frame_{k:06d}.jpg")
        (model / "images.txt").write_text(text)
        return sfm.undistort_model(photos_dir, model, out, names=names, progress=False)

    monkeypatch.setattr(sfm, "run_sfm", posed)
    cfg = VideoConfig(path=str(video), masks="masks", test_every=0, downscale=1)
    scene = build_video(cfg, None)()
    train = scene.splits["train"]
    assert len(train) == len(views) and train.alphas is not None
    for i, name in enumerate(train.names):  # pinhole cameras: undistortion leaves the masks as they were
        assert np.abs(train.alphas[i, ..., 0].numpy() - want[name]).max() < 1e-6, name
    assert scene.meta["masks"] == str(masks.resolve()) and scene.meta["frame_masks"]["numbered_from"] == 0
    from pipeline.report import capture_rows

    assert ("object masks", f"{masks.resolve()} (numbered from 0)") in capture_rows(scene.meta)
    made = sorted(p.name for p in (tmp_path / "cache" / "scenes").iterdir())
    build_video(cfg, None)()
    assert sorted(p.name for p in (tmp_path / "cache" / "scenes").iterdir()) == made and len(calls) == 1
    iio.imwrite(masks / "00003.png", np.zeros((32, 32), np.uint8))
    again = build_video(cfg, None)()
    assert len(calls) == 1  # the frames were not posed again
    k = again.splits["train"].names.index("frame_000003")
    assert float(again.splits["train"].alphas[k].max()) == 0.0
    build_video(VideoConfig(path=str(video), test_every=0, downscale=1), None)()  # (the frames and SfM cached)
    assert "holds a masks folder, which is not used; set scene.masks: masks" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"scene.masks gone is neither .*clip/gone \(beside the video\) nor .*gone;"):
        build_video(VideoConfig(path=str(video), masks="gone"), None)()
