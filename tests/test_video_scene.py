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
    found = take_frames(video, tmp_path / "sharp", frames=10, spacing="time", progress=False)
    assert found["decoded"] == 20 and found["size"] == [128, 96] and found["fps"] == 10
    assert found["picked"] == [k for k in range(20) if k not in blurred]
    assert sorted(p.name for p in (tmp_path / "sharp").iterdir()) == [f"frame_{k:06d}.jpg" for k in found["picked"]]
    first = take_frames(video, tmp_path / "first", frames=10, sharpest=False, spacing="time", progress=False)
    assert first["picked"] == list(range(0, 20, 2)) and len(set(first["picked"]) & blurred) == 5


def test_stretches_of_equal_motion_give_a_pause_one_frame():
    """30 frames: moving by 1 for 9 frames, still for 10, moving by 1 for 10. Five stretches of equal motion (the
    running sum of motion, 0 to 19, cut at 19/5 apart) begin at frames 0, 4, 8, 22 and 26: the pause falls in
    the stretch of frame 8. Five of equal time begin at 0, 6, 12, 18, 24, two of them in the pause."""
    from pipeline.scenes.video_frames import pick_frames

    motion = np.array([0.0] + [1.0] * 9 + [0.0] * 10 + [1.0] * 10)
    assert pick_frames(30, 5, motion=motion) == [0, 4, 8, 22, 26]
    assert pick_frames(30, 5) == [0, 6, 12, 18, 24]
    scores = np.zeros(30)
    scores[[2, 15, 23]] = 1.0  # the sharpest frames of the 1st, 3rd (the one holding the pause) and 4th stretches
    assert pick_frames(30, 5, scores, motion) == [2, 4, 15, 23, 26]
    assert pick_frames(30, 5, motion=np.zeros(30)) == [0, 6, 12, 18, 24]  # no motion at all: by time
    assert pick_frames(4, 5, motion=motion[:4]) == [0, 1, 2, 3]
    jump = np.array([0.0, 0.0, 100.0, 0.0, 1.0, 1.0])  # one jump counts 4 median steps, and crosses a stretch
    assert pick_frames(6, 4, motion=jump) == [0, 2, 4]  # (uncapped, frames 2-5 would all be in the last)


def test_a_pause_in_the_video_gives_one_frame_when_spaced_by_motion(tmp_path):
    """A pan of 10 frames, 20 frames standing still, and 10 more of the pan (H.264): 8 frames by motion take at
    most one from the pause and space the rest evenly along the pan; 8 by time take 4 from the pause."""
    from pipeline.scenes.video_frames import take_frames

    pan = _panning(20, set())
    video = _write(tmp_path / "pause.mp4", pan[:10] + [pan[9]] * 20 + pan[10:])
    found = take_frames(video, tmp_path / "motion", frames=8, sharpest=False, progress=False)
    picked = found["picked"]
    assert found["spacing"] == "motion" and found["still"] >= 18, found
    assert len([k for k in picked if 10 <= k < 30]) <= 1, picked
    place = [k if k < 10 else 9 if k < 30 else k - 20 for k in picked]  # where along the pan each was taken
    gaps = np.diff(place)
    assert len(picked) >= 7 and gaps.min() >= 1 and gaps.max() <= 4, picked
    by_time = take_frames(video, tmp_path / "time", frames=8, sharpest=False, spacing="time", progress=False)
    assert by_time["picked"] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert sorted(p.name for p in (tmp_path / "motion").iterdir()) == [f"frame_{k:06d}.jpg" for k in picked]


def test_a_pause_while_the_exposure_changes_is_still_a_pause(tmp_path):
    """The same pan and pause (levels kept within 20-230), the paused picture brightening by 1.5% and half a level
    a frame and back (a camera's automatic exposure: gain and offset): spaced by motion, at most one frame comes
    from the pause. The plain change of the thumbnails, before their brightness is matched, counts the
    brightening as motion (every step above STILL_LEVELS). At 384x288 the video's compression leaves matched
    steps of up to 0.34 levels in the pause (at 128x96, whose thumbnail blocks are 2 px, 0.58)."""
    from pipeline.scenes.video_frames import STILL_LEVELS, picture_change, take_frames, thumbnail

    pan = [np.round(20 + 0.7 * f).astype(np.uint8) for f in _panning(20, set(), h=288, w=384)]  # (20-199 levels)
    held = pan[9].astype(np.float32)
    ramp = [np.round(held * (1 + 0.015 * min(k, 19 - k)) + 0.5 * min(k, 19 - k)).astype(np.uint8)
            for k in range(20)]  # (at most 1.135 x 199 + 4.5 = 230: nothing clips)
    steps = [float(np.abs(thumbnail(b) - thumbnail(a)).mean()) for a, b in zip(ramp, ramp[1:])]
    assert min(steps[:8]) > STILL_LEVELS, steps  # (the plain change would count it)
    assert max(picture_change(thumbnail(b), thumbnail(a)) for a, b in zip(ramp, ramp[1:])) < STILL_LEVELS
    video = _write(tmp_path / "exposure.mp4", pan[:10] + ramp + pan[10:])
    found = take_frames(video, tmp_path / "motion", frames=8, sharpest=False, progress=False)
    assert found["still"] >= 18 and len([k for k in found["picked"] if 10 <= k < 30]) <= 1, found


def test_sharpness_tells_a_smeared_frame_from_a_sharp_one_at_full_hd_too():
    """At 1080p a frame is judged at every 2nd pixel; a 9-pixel motion smear still scores far lower."""
    from scipy.ndimage import uniform_filter1d

    from pipeline.scenes.video_frames import sharpness

    for h, w in ((96, 128), (1080, 1920)):
        sharp = _texture(h, w)
        assert sharpness(sharp) > 3 * sharpness(uniform_filter1d(sharp, 9, axis=1)), (h, w)


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

    assert capture_rows(scene)[0] == ("video", "6 frames of 12 (walk.MOV, 10 fps, 1.2 s), the sharpest of each stretch "
                                               "of equal motion")
    scene["sfm"]["off_path"] = ["frame_000004.jpg"]
    assert capture_rows(scene)[1] == ("structure from motion", "6 of 6 frames registered, mean reprojection error "
                                      "0.50 px, 1 s; placed off the camera's path, left out: frame_000004.jpg")


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


def test_keyframe_pairs_are_the_neighbours_and_every_pair_of_key_frames():
    from pipeline.scenes.sfm import keyframe_pairs

    pairs = keyframe_pairs(25, 5, overlap=3)
    assert (0, 1) in pairs and (0, 3) in pairs and (0, 4) not in pairs and (1, 4) in pairs
    assert (0, 20) in pairs and (5, 20) in pairs and (1, 20) not in pairs
    assert len(pairs) == len(set(pairs)) == (3 * 22 + 2 + 1) + 10  # neighbours, and the 10 pairs of 5 key frames
    assert all(i < j for i, j in pairs)


def test_frames_of_a_lego_video_are_posed_by_real_structure_from_motion(tmp_path, capsys, pycolmap):  # noqa: F811
    """50 views of lego's test path (1.8 degrees apart) encoded as H.264, 25 frames taken (the sharper of each pair),
    and pycolmap's SIFT, keyframes matching and mapping register every one of them."""
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
                    matcher="keyframes", keyframe_every=5)
    assert found["registered"] == 25 and not found["unregistered"], found
    assert "matching (keyframes: neighbours and every 5th, 198 pairs)" in capsys.readouterr().err
    assert not (out / "pairs.txt").exists()


def _ring_capture(root: Path, n: int, moved: dict[int, tuple[float, float, float]]) -> Path:
    """A COLMAP text capture of ``n`` frames ``frame_{k:06d}.jpg`` (16x16 grey) taken in time order around a circle
    of radius 3 at height 1, looking at the origin; frame k in ``moved`` sits at that centre instead."""
    import imageio.v3 as iio
    from scipy.spatial.transform import Rotation

    model = root / "sparse"
    model.mkdir(parents=True)
    (root / "images").mkdir()
    (model / "cameras.txt").write_text("1 PINHOLE 16 16 14.0 14.0 8.0 8.0\n")
    lines = []
    for k in range(n):
        a = 2 * np.pi * k / n * 0.75  # three quarters of a turn
        c = np.array(moved.get(k, (3 * np.cos(a), 3 * np.sin(a), 1.0)))
        z = -c / np.linalg.norm(c)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        rot = np.stack([x, np.cross(z, x), z], 1).T  # world -> camera (OpenCV axes)
        qx, qy, qz, qw = Rotation.from_matrix(rot).as_quat()
        t = -rot @ c
        name = f"frame_{k:06d}.jpg"
        pose = " ".join(repr(float(v)) for v in (qw, qx, qy, qz, *t))
        lines += [f"{k + 1} {pose} 1 {name}", ""]
        iio.imwrite(root / "images" / name, np.full((16, 16, 3), 100 + k, np.uint8))
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 3))
    (model / "points3D.txt").write_text("".join(f"{i + 1} {' '.join(repr(float(v)) for v in p)} 200 200 200 0.5\n"
                                                for i, p in enumerate(pts)))
    return root


def test_path_spikes_finds_frames_placed_off_the_path_and_nothing_on_it():
    """A helix of 60 frames with frame 20 moved across the circle, and the first one too: both found. The camera
    speeding up five-fold, standing still (with jitter), or frames missing between others make no spike."""
    from pipeline.scenes.sfm import path_spikes

    k = np.arange(60, dtype=np.float64)
    helix = np.stack([np.cos(k / 20), np.sin(k / 20), 0.01 * k], 1)
    names = [f"f{i:02d}" for i in range(60)]
    moved = helix.copy()
    moved[20] = -moved[20]
    moved[0] = [0.0, 3.0, 1.0]
    assert path_spikes(names, moved, k) == ["f00", "f20"]
    assert path_spikes(names, helix, k) == []
    fast = np.concatenate([helix[:30], helix[29] + 5 * (helix[30:] - helix[29])])  # speeds up five-fold
    assert path_spikes(names, fast, k) == []
    still = helix.copy()
    still[10:40] = helix[10] + np.random.default_rng(0).normal(0, 1e-4, (30, 3))  # stands still, then moves on
    still[40:] = helix[10] + (helix[40:] - helix[40]) + (helix[11] - helix[10])
    assert path_spikes(names, still, k) == []
    kept = [i for i in range(60) if i % 7 != 3]  # frames left unregistered between others
    assert path_spikes([names[i] for i in kept], helix[kept], k[kept]) == []


def test_frames_placed_off_the_path_are_left_out_of_a_video_capture(tmp_path, monkeypatch, capsys, pycolmap):  # noqa: F811
    """pose_photos on frames in time order: SfM (a stand-in giving a ring capture in which frame 9 sits across the
    ring) placed frame 9 off the path; it is named in a warning and left out of the splits. Photos without an
    order keep it, and ``exclude`` leaves out a frame by name."""
    from pipeline.scenes import sfm
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import pose_photos

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = _ring_capture(tmp_path / "ring", 24, {9: (-3.0, -0.5, 1.0)})

    def posed(photos: Path, out: Path, *, names, **options) -> dict:
        shutil.copytree(cap / "sparse", out / "sparse" / "0")
        shutil.copytree(cap, out / "capture")
        return {"photos": len(names), "registered": len(names), "unregistered": [], "points": 200,
                "mean_reprojection_error": 0.5, "seconds": {}}

    monkeypatch.setattr(sfm, "run_sfm", posed)
    cfg = PhotosConfig(path=str(cap / "images"), test_every=0)
    scene = pose_photos(cap / "images", cfg, what="frames of walk.mp4", ordered=True)
    assert scene.meta["sfm"]["off_path"] == ["frame_000009.jpg"] and scene.meta["excluded"] == ["frame_000009.jpg"]
    assert len(scene.splits["train"]) == 23
    assert "placed 1 of the frames of walk.mp4 off the camera's path" in capsys.readouterr().err
    assert len(pose_photos(cap / "images", cfg).splits["train"]) == 24  # photos: no order, no check
    left = pose_photos(cap / "images", cfg.model_copy(update={"exclude": ["frame_000003.jpg", "nope.jpg"]}))
    assert len(left.splits["train"]) == 23 and left.meta["excluded"] == ["frame_000003.jpg"]
    assert "exclude names 1 image(s) it does not hold: nope.jpg" in capsys.readouterr().err


def test_a_thumbnail_is_the_grey_mean_of_each_block():
    from pipeline.scenes.video_frames import THUMB_SIDE, thumbnail

    frame = np.random.default_rng(0).integers(0, 256, (2 * THUMB_SIDE + 1, 3 * THUMB_SIDE + 5, 3), dtype=np.uint8)
    grey = frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    want = np.array([[grey[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range((3 * THUMB_SIDE + 5) // 2)]
                     for i in range(THUMB_SIDE)])
    assert np.allclose(thumbnail(frame), want, atol=1e-3)


def test_matcher_auto_matches_every_pair_of_a_few_frames_and_keyframes_of_many(tmp_path, monkeypatch,
                                                                             pycolmap):  # noqa: F811
    """A video's default matcher: exhaustive up to AUTO_EXHAUSTIVE frames, keyframes beyond (a stand-in SfM
    records what it was asked for; the cache key holds the matcher chosen, so exhaustive caches stay valid)."""
    from pipeline.scenes import sfm
    from plugins.scenes import config
    from plugins.scenes.sources import pose_photos
    from tests.test_photos_scene import _fake_sfm

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    calls: list = []
    monkeypatch.setattr(sfm, "run_sfm", _fake_sfm(cap, calls))
    cfg = config.VideoConfig(path="walk.mp4")
    assert cfg.matcher == "auto" and len(list((cap / "images").iterdir())) == 10
    pose_photos(cap / "images", cfg)
    monkeypatch.setattr(config, "AUTO_EXHAUSTIVE", 9)
    pose_photos(cap / "images", cfg)
    assert [c["matcher"] for c in calls] == ["exhaustive", "keyframes"] and calls[1]["keyframe_every"] == 10
