"""The ``video`` scene source: frames taken from a video file (the sharpest of each stretch, upright, scaled down),
cached by the video's contents, then posed by structure from motion as a folder of photos is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)

ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg is not installed (the video extra, also in "
                                                      "the test extra): videos cannot be read")


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A sharp random texture (H, W, 3) uint8: blocks of 4 px, so H.264 keeps its edges."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 4, 0), 4, 1)[:h, :w]


def _write(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    h, w = frames[0].shape[:2]
    writer = ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=9, macro_block_size=16)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f).tobytes())
    writer.close()
    return path


def _panning(n: int, blurred: set[int], h: int = 96, w: int = 128) -> list[np.ndarray]:
    """``n`` frames panning across one texture by 3 px a frame; those in ``blurred`` smeared as by motion."""
    from scipy.ndimage import uniform_filter1d

    big = _texture(h, w + 3 * n)
    out = []
    for k in range(n):
        frame = big[:, 3 * k:3 * k + w]
        if k in blurred:
            frame = uniform_filter1d(frame, 9, axis=1)
        out.append(frame)
    return out


def test_the_sharpest_frame_of_each_stretch_is_taken(tmp_path):
    """20 frames in 10 stretches of 2, one of each pair smeared (first or second by turns): the sharp one of each is
    kept, named by its index in the video; taking the first of each instead keeps the smeared ones of 5."""
    from pipeline.scenes.video_frames import take_frames

    blurred = {k for k in range(20) if (k % 4 in (0, 3))}  # pairs (0,1),(2,3),...: the 1st smeared, then the 2nd
    video = _write(tmp_path / "pan.mp4", _panning(20, blurred))
    found = take_frames(video, tmp_path / "sharp", frames=10, progress=False)
    assert found["decoded"] == 20 and found["size"] == [128, 96] and found["fps"] == 10
    assert found["picked"] == [k for k in range(20) if k not in blurred]
    assert sorted(p.name for p in (tmp_path / "sharp").iterdir()) == [f"frame_{k:06d}.jpg" for k in found["picked"]]
    first = take_frames(video, tmp_path / "first", frames=10, sharpest=False, progress=False)
    assert first["picked"] == list(range(0, 20, 2)) and len(set(first["picked"]) & blurred) == 5


def test_a_short_video_gives_every_frame_and_a_large_one_is_scaled_down(tmp_path):
    import imageio.v3 as iio

    from pipeline.scenes.video_frames import take_frames

    video = _write(tmp_path / "short.mp4", _panning(6, set(), h=96, w=160))
    found = take_frames(video, tmp_path / "all", frames=100, max_size=80, progress=False)
    assert found["picked"] == list(range(6)) and found["size"] == [80, 48]
    assert iio.imread(tmp_path / "all" / "frame_000003.jpg").shape == (48, 80, 3)


def test_a_part_of_the_video_is_read_from_start_to_end(tmp_path):
    """start 0.5 s and end 1.5 s of a 10 fps video: its frames 5 to 14 are read (each matches its original best),
    named by their index in the whole video; a start past the end is a DataError giving the video's length."""
    import imageio.v3 as iio

    from pipeline.scenes.video_frames import take_frames

    original = _panning(20, set())
    video = _write(tmp_path / "pan.mp4", original)
    found = take_frames(video, tmp_path / "part", frames=100, start=0.5, end=1.5, progress=False)
    assert found["decoded"] == 10 and found["picked"] == list(range(5, 15))
    for k in (5, 14):
        got = iio.imread(tmp_path / "part" / f"frame_{k:06d}.jpg").astype(np.float32)
        assert int(np.argmin([np.abs(got - f).mean() for f in original])) == k
    with pytest.raises(DataError, match=r"pan.mp4: start 3 s is not before the video's end \(2.00 s\)"):
        take_frames(video, tmp_path / "none", frames=10, start=3.0, progress=False)


def test_a_rotated_phone_video_comes_out_upright(tmp_path):
    """A video stored landscape with a 90 degree display rotation (as phones write portrait video) gives portrait
    frames: ffmpeg turns them, and the frame size read is the turned one."""
    from pipeline.scenes.video_frames import probe, take_frames

    flat = _write(tmp_path / "flat.mp4", _panning(4, set(), h=64, w=128))
    turned = tmp_path / "turned.mp4"
    done = subprocess.run([ffmpeg.get_ffmpeg_exe(), "-y", "-display_rotation", "90", "-i", str(flat), "-c", "copy",
                           str(turned)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this ffmpeg cannot tag a rotation (-display_rotation needs ffmpeg 6.1): {done.stderr[-200:]}")
    assert probe(turned)["size"] == (64, 128)
    found = take_frames(turned, tmp_path / "frames", frames=4, progress=False)
    assert found["size"] == [64, 128]


def test_what_is_not_a_readable_video_is_a_data_error(tmp_path, monkeypatch):
    from pipeline.scenes.video_frames import take_frames

    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video")
    with pytest.raises(DataError, match=r"notes.mp4: ffmpeg cannot read it as a video"):
        take_frames(fake, tmp_path / "out", frames=5, progress=False)
    two = _write(tmp_path / "two.mp4", _panning(2, set()))
    with pytest.raises(DataError, match=r"two.mp4: 2 frame\(s\) decoded; structure from motion needs at least 3"):
        take_frames(two, tmp_path / "out2", frames=5, progress=False)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(DataError, match=r"two.mp4: reading a video needs imageio-ffmpeg.*\[video\]"):
        take_frames(two, tmp_path / "out3", frames=5, progress=False)


def test_a_video_file_is_detected_and_reconstructed_with_its_frames_cached(tmp_path, monkeypatch):
    """``nls reconstruct clip.mp4``: the video source, its frames taken once (a second load reads the cache), posed
    (a stand-in for SfM here), trained, and the report says how many frames came from the video."""
    from pipeline.cli import main
    from pipeline.scenes import sfm, video_frames
    from pipeline.testing import plugin_host

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    video = _write(tmp_path / "walk.MOV", _panning(12, set()))
    assert plugin_host().scene_type_for_path(video) == "video"
    taken = []
    take = video_frames.take_frames

    def counted(*args, **kwargs):
        taken.append(1)
        return take(*args, **kwargs)

    def posed(photos: Path, out: Path, *, names, **options) -> dict:  # 'finds' the capture's model for any frames
        assert options["matcher"] == "exhaustive" and len(names) == 6
        shutil.copytree(cap / "sparse" / "0", out / "sparse" / "0")
        shutil.copytree(cap / "images", out / "capture" / "images")
        shutil.copytree(cap / "sparse" / "0", out / "capture" / "sparse")
        return {"photos": len(names), "registered": len(names), "unregistered": [], "points": 9,
                "mean_reprojection_error": 0.5, "seconds": {"mapping": 1.0}}

    monkeypatch.setattr(video_frames, "take_frames", counted)
    monkeypatch.setattr(sfm, "run_sfm", posed)
    runs = tmp_path / "runs"
    assert main(["reconstruct", str(video), "--set", "scene.frames=6", "--steps", "2", "--no-eval", "-q",
                 "--output", str(runs)]) == 0
    [run] = runs.glob("walk/*/*")
    scene = json.loads((run / "scene.json").read_text())
    assert scene["source"] == "video" and [k // 2 for k in scene["frames"]["picked"]] == list(range(6))  # 1 a pair
    assert (run / "kept" / "model").is_dir()
    assert main(["eval", str(run), "-q"]) == 0
    assert len(taken) == 1  # the second load found the frames cached
    from pipeline.report import capture_rows

    assert capture_rows(scene)[0] == ("video", "6 frames of 12 (walk.MOV, 10 fps, 1.2 s), the sharpest of each stretch")


def test_a_video_path_that_is_missing_or_a_folder_is_a_data_error(tmp_path):
    from pydantic import ValidationError

    from plugins.scenes.config import VideoConfig
    from plugins.scenes.sources import build_video

    with pytest.raises(ValidationError, match=r"end \(2 s\) must come after start \(2.5 s\)"):
        VideoConfig(path="v.mp4", start=2.5, end=2)

    with pytest.raises(DataError, match=r"scene.path .*gone.mp4 is not found; give a video file"):
        build_video(VideoConfig(path=str(tmp_path / "gone.mp4")), None)()
    with pytest.raises(DataError, match=r"is a folder; give a video file \(a folder of photos is the photos source\)"):
        build_video(VideoConfig(path=str(tmp_path)), None)()


def test_frames_of_a_lego_video_are_posed_by_real_structure_from_motion(tmp_path, pycolmap):  # noqa: F811
    """50 views of lego's test path (1.8 degrees apart) encoded as H.264, 25 frames taken (the sharper of each pair),
    and pycolmap's SIFT, sequential matching and mapping register every one of them."""
    import imageio.v3 as iio

    from pipeline.scenes import data_path
    from pipeline.scenes.sfm import run_sfm
    from pipeline.scenes.video_frames import take_frames

    lego, why = data_path("nerf", "lego")
    if lego is None:
        pytest.skip(why)
    views = []
    for f in json.loads((lego / "transforms_test.json").read_text())["frames"][:50]:
        rgba = iio.imread(lego / (f["file_path"] + ".png")).astype(np.float32) / 255.0
        views.append(np.round(255 * (rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:])).astype(np.uint8))
    video = _write(tmp_path / "lego.mp4", views)
    frames = tmp_path / "frames"
    taken = take_frames(video, frames, frames=25, progress=False)
    assert taken["decoded"] == 50 and len(taken["picked"]) == 25
    out = tmp_path / "sfm"
    out.mkdir()
    found = run_sfm(frames, out, names=sorted(p.name for p in frames.iterdir()), camera_model="SIMPLE_PINHOLE",
                    matcher="sequential", progress=False)
    assert found["registered"] == 25 and not found["unregistered"], found
