"""Frames for structure from motion, taken from a video file (the ``video`` scene source).

A video holds far more frames than SfM needs, many of them blurred by the camera's motion, and a handheld one
has stretches where the camera stands still or sweeps fast. The video is cut into ``frames`` stretches of equal
motion (the summed change of a grey thumbnail from frame to frame, its brightness matched first so that automatic
exposure is not taken for motion, with changes below the flicker of noise taken as none), so a pause gives one
frame and a fast sweep several; or of equal time. One frame of each is kept: the
sharpest, by the variance of the Laplacian of its grey levels (Pech-Pacheco et al. 2000, "Diatom autofocusing in
brightfield microscopy"), or the first. The video is decoded twice, in order, by ffmpeg through imageio-ffmpeg (the
``video`` extra), which turns the frames upright by the video's rotation tag and can scale them down: the first
pass judges every frame, the second writes those taken, so no more than one frame is held in memory. They are
written as JPEG files named by their index in the video, so the names sort in time, as sequential matching needs.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from pipeline.types import DataError

#: suffixes of the video files a data path may name (case-insensitive)
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
#: JPEG quality of the frames written (95: no visible loss on top of the video's own compression)
FRAME_QUALITY = 95


def _ffmpeg(video: Path):
    """The imageio_ffmpeg module; DataError naming ``video`` and the extra when it is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DataError(f"{video}: reading a video needs imageio-ffmpeg, which is not installed; "
                        f"pip install 'neural-level-sets[video]' (or pip install imageio-ffmpeg), or give a "
                        f"folder of its frames as photos") from None
    return imageio_ffmpeg


@contextmanager
def _quiet_size_notes() -> Iterator[None]:
    """imageio-ffmpeg logs a warning whenever the frames it reads differ in size from those stored, which they do
    by design when the video is scaled or turned upright; hide those for the duration."""
    log = logging.getLogger("imageio_ffmpeg")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


#: frames are judged at every k-th pixel, k = the shorter side // this (1080p: every 2nd, 4K: every 4th)
SHARPNESS_SIDE = 540


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of ``frame``'s grey levels (H, W, 3) uint8, in grey levels²: larger is sharper.
    Motion blur and defocus take out the high frequencies the Laplacian responds to. A large frame is judged at
    every k-th pixel (:data:`SHARPNESS_SIDE`), which keeps the high frequencies of a sharp frame (aliased) and
    costs less: a 1080p frame takes 6 ms at every 2nd pixel on 2 cores, 18 ms at every pixel."""
    from scipy.ndimage import laplace

    k = max(1, min(frame.shape[:2]) // SHARPNESS_SIDE)
    grey = frame[::k, ::k].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(laplace(grey, mode="nearest").var())


def probe(video: Path) -> dict:
    """What ffmpeg says of ``video`` before decoding it: ``{"size": (W, H) upright, "fps", "duration" (s),
    "codec"}``. DataError when ``video`` is not a video ffmpeg can read."""
    ffmpeg = _ffmpeg(video)
    try:
        with _quiet_size_notes():
            reader = ffmpeg.read_frames(str(video))
            meta = next(reader)
            reader.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{video}: ffmpeg cannot read it as a video ({why}); give a video file "
                        f"({', '.join(VIDEO_SUFFIXES)}) or a folder of photos") from None
    return {"size": tuple(int(v) for v in meta["size"]), "fps": float(meta.get("fps") or 0.0),
            "duration": float(meta.get("duration") or 0.0), "codec": str(meta.get("codec", ""))}


def scaled_size(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """``size`` (W, H) scaled down so its longer side is at most ``max_size``, each side even (what the encoders
    of most videos give), or ``size`` as it is when it is small enough already."""
    w, h = size
    if max(w, h) <= max_size:
        return w, h
    s = max_size / max(w, h)
    return max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)


#: the motion between frames is judged on grey thumbnails of about this shorter side (block means of k x k pixels)
THUMB_SIDE = 48
#: mean absolute change of a thumbnail's grey levels (of 255) below which a frame is taken as standing still.
#: Pixel noise of σ levels changes a thumbnail of k x k block means by 1.13·σ/k on average (0.15 at σ = 3 and a
#: 1080p frame's k = 22); on the lego video the held frames changed by 0.002 and the moving ones by 3.5 to 9.4
STILL_LEVELS = 0.5

#: a step between frames counts at most this many times the median step that moves (:func:`pick_frames`)
MOTION_CAP = 4.0


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """(h, w) float32 grey thumbnail of ``frame`` (H, W, 3) uint8: means of k x k blocks, k = the shorter side //
    :data:`THUMB_SIDE` (at least 1), the remainder rows and columns left out."""
    k = max(1, min(frame.shape[:2]) // THUMB_SIDE)
    h, w = frame.shape[0] // k * k, frame.shape[1] // k * k
    rows = frame[:h, :w].reshape(h // k, k, w, 3).sum(axis=1, dtype=np.uint32)  # (summing rows first: 3x faster)
    sums = rows.reshape(h // k, w // k, k, 3).sum(axis=2)
    return sums.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / np.float32(k * k)


def picture_change(thumb: np.ndarray, last: np.ndarray) -> float:
    """Mean absolute change (grey levels) from thumbnail ``last`` to ``thumb`` (h, w), after ``last``'s levels are
    matched to ``thumb``'s by a gain and an offset (its mean and spread made ``thumb``'s): a camera's automatic
    exposure, which brightens or darkens the whole picture, is not taken for motion. A flat thumbnail (spread
    under 0.5 levels) is matched by its mean alone."""
    spread_t, spread_l = float(thumb.std()), float(last.std())
    gain = spread_t / spread_l if spread_l >= 0.5 and spread_t >= 0.5 else 1.0
    matched = (last - last.mean()) * np.float32(gain) + thumb.mean()
    return float(np.abs(thumb - matched).mean())


def pick_frames(count: int, frames: int, scores: Optional[np.ndarray] = None,
                motion: Optional[np.ndarray] = None) -> list[int]:
    """Which of ``count`` frames to take: one from each of ``frames`` stretches, the highest ``scores`` (count,)
    of each (None: the first). Stretches are of equal time, or, with ``motion`` (count,) the change from each
    frame's predecessor (the first 0), of equal motion: a frame's stretch is where its running sum of motion falls,
    so stretches where the camera stands still shrink to nothing and fast ones widen. A step counts at most
    :data:`MOTION_CAP` times the median step that moves, so one jump (a flash, a cut) does not take up the
    stretches of the rest. A video without motion is cut by time. Fewer frames come back when a step crosses
    whole stretches; all when ``count <= frames``."""
    if count <= frames:
        return list(range(count))
    if motion is not None and float(np.sum(motion)) > 0:
        motion = np.asarray(motion, np.float64)
        cap = MOTION_CAP * float(np.median(motion[motion > 0]))
        run = np.cumsum(np.minimum(motion, cap))
        stretch = np.minimum(frames - 1, (run / run[-1] * frames).astype(np.int64))
    else:
        stretch = np.arange(count) * frames // count
    order = np.arange(count) if scores is None else np.lexsort((np.arange(count), -np.asarray(scores)))
    best: dict[int, int] = {}
    for k in order:  # the first (by score, then by time) of each stretch wins
        best.setdefault(int(stretch[k]), int(k))
    return sorted(best.values())


def part_params(start: float, end: Optional[float]) -> tuple[list[str], list[str]]:
    """ffmpeg's input and output parameters that read a video from ``start`` to ``end`` seconds (None: its end)."""
    return (["-ss", f"{start:.6f}"] if start > 0 else []), ([] if end is None else ["-t", f"{end - start:.6f}"])


def decode(video: Path, input_params: list[str], output_params: list[str], each) -> tuple[int, int, int]:
    """Decode ``video`` with ffmpeg, upright by its rotation tag, calling ``each(k, frame)`` on every frame ((H, W, 3)
    uint8, a view of the decoder's buffer); returns ``(decoded, width, height)``. DataError when ffmpeg fails part
    way."""
    ffmpeg = _ffmpeg(video)
    decoded, w, h = 0, 0, 0
    with _quiet_size_notes():
        try:
            reader = ffmpeg.read_frames(str(video), input_params=input_params, output_params=output_params)
            w, h = next(reader)["size"]
            for k, raw in enumerate(reader):
                each(k, np.frombuffer(raw, np.uint8).reshape(h, w, 3))
                decoded = k + 1
            reader.close()
        except (OSError, RuntimeError) as exc:
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{video}: ffmpeg failed after {decoded} frames ({why})") from None
    return decoded, int(w), int(h)


def take_frames(video: Path, out: Path, *, frames: int, sharpest: bool = True, spacing: str = "motion",
                max_size: int = 1920, start: float = 0.0, end: Optional[float] = None, progress: bool = True) -> dict:
    """Write ``frames`` frames of ``video`` into the folder ``out`` (made) as ``frame_NNNNNN.jpg``, the index in
    the video: the sharpest (:func:`sharpness`) or the first of each of ``frames`` stretches of equal ``spacing``
    (``motion``: equal change of the picture, :func:`pick_frames`; ``time``) of the part from ``start`` to ``end``
    seconds (None: its end), scaled so the longer side is at most ``max_size``. Two decoding passes: the first
    judges every frame, the second writes those taken. Returns ``{"video", "codec", "fps", "duration", "start",
    "end", "size" (W, H written), "decoded" (frames read from start to end), "sharpest", "spacing", "picked"
    (indices), "sharpness" (of each picked), "still" (frames judged standing still), "seconds"}``. A part of fewer
    frames than ``frames`` gives all of them. DataError when the video cannot be read, ends before ``start``, or
    holds fewer than 3 frames in the part read."""
    import imageio.v3 as iio

    from pipeline.progress import StepProgress
    from pipeline.scenes.sfm import MIN_PHOTOS

    t = time.perf_counter()
    info = probe(video)
    ffmpeg = _ffmpeg(video)
    size = scaled_size(info["size"], max_size)
    fps, duration = info["fps"], info["duration"]
    if fps <= 0 or duration <= 0:  # the container does not say: count them (a decoding pass)
        count, duration = ffmpeg.count_frames_and_secs(str(video))
        fps = count / duration if duration > 0 else 0.0
    if duration > 0 and start >= duration:
        raise DataError(f"{video}: start {start:g} s is not before the video's end ({duration:.2f} s)")
    stop = duration if end is None else min(end, duration) if duration > 0 else end
    expected = max(int(round(fps * (stop - start))), 1)
    first = int(round(fps * start))  # the index in the video of the first frame read
    out.mkdir(parents=True, exist_ok=True)
    seek, cut = part_params(start, end)
    output = ([] if size == info["size"] else ["-vf", f"scale={size[0]}:{size[1]}:flags=area"]) + cut
    scores: list[float] = []
    motion: list[float] = []
    last: list[np.ndarray] = []  # the previous frame's thumbnail

    with StepProgress(expected, 0, f"reading {video.name} (1/2: judging frames)", enabled=progress) as bar:
        def judge(k: int, frame: np.ndarray) -> None:
            if sharpest:
                scores.append(sharpness(frame))
            if spacing == "motion":
                thumb = thumbnail(frame)
                change = picture_change(thumb, last[0]) if last else 0.0
                motion.append(change if change > STILL_LEVELS else 0.0)
                last[:] = [thumb]
            bar.advance(min(k + 1, expected), "frames")

        decoded, w, h = decode(video, seek, output, judge)
    if decoded < MIN_PHOTOS:
        raise DataError(f"{video}: {decoded} frame(s) decoded; structure from motion needs at least {MIN_PHOTOS}")
    chosen = pick_frames(decoded, frames, np.asarray(scores) if sharpest else None,
                         np.asarray(motion) if spacing == "motion" else None)
    if len(chosen) < MIN_PHOTOS:  # (motion spacing: a few steps crossed every stretch)
        raise DataError(f"{video}: the picture changes in only {len(chosen)} step(s) over {decoded} frames; "
                        f"structure from motion needs at least {MIN_PHOTOS} views (spacing: time takes frames "
                        f"evenly in time)")
    wanted = set(chosen)
    with StepProgress(decoded, 0, f"reading {video.name} (2/2: writing frames)", enabled=progress) as bar:
        def write(k: int, frame: np.ndarray) -> None:
            if k in wanted:
                iio.imwrite(out / f"frame_{first + k:06d}.jpg", frame, quality=FRAME_QUALITY)
            bar.advance(k + 1, "frames")

        again, _, _ = decode(video, seek, output, write)
    if again != decoded:
        raise DataError(f"{video}: ffmpeg decoded {decoded} frames, then {again} from the same part; the video "
                        f"cannot be read the same way twice")
    return {"video": video.name, "codec": info["codec"], "fps": fps, "duration": duration, "start": start,
            "end": end, "size": [w, h], "decoded": decoded, "sharpest": sharpest, "spacing": spacing,
            "picked": [first + k for k in chosen],
            "sharpness": [round(scores[k], 2) for k in chosen] if sharpest else [0.0] * len(chosen),
            **({"still": int(sum(m == 0.0 for m in motion[1:]))} if spacing == "motion" else {}),
            "seconds": round(time.perf_counter() - t, 2)}
