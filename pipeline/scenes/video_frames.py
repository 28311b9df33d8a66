"""Frames for structure from motion, taken from a video file (the ``video`` scene source).

A video holds far more frames than SfM needs, many of them blurred by the camera's motion. The video is cut into
``frames`` stretches of equal length, and one frame of each is kept: the sharpest, by the variance of the
Laplacian of its grey levels (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy"), or the
first. The frames are decoded once, in order, by ffmpeg through imageio-ffmpeg (the ``video`` extra), which turns
them upright by the video's rotation tag and can scale them down; only the best frame of the current stretch is
held in memory. They are written as JPEG files named by their index in the video, so the names sort in time, as
sequential matching needs.
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


def take_frames(video: Path, out: Path, *, frames: int, sharpest: bool = True, max_size: int = 1920,
                start: float = 0.0, end: Optional[float] = None, progress: bool = True) -> dict:
    """Write ``frames`` frames of ``video`` into the folder ``out`` (made) as ``frame_NNNNNN.jpg``, the index in
    the video: the sharpest (:func:`sharpness`) or the first of each of ``frames`` equal stretches of the part
    from ``start`` to ``end`` seconds (None: its end), scaled so the longer side is at most ``max_size``. Returns
    ``{"video", "codec", "fps", "duration", "start", "end", "size" (W, H written), "decoded" (frames read from start
    to end), "sharpest", "picked" (indices), "sharpness" (of each picked), "seconds"}``. A part of fewer frames than
    ``frames`` gives all of them. DataError when the video cannot be read, ends before ``start``, or holds fewer
    than 3 frames in the part read."""
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
    output = ([] if size == info["size"] else ["-vf", f"scale={size[0]}:{size[1]}:flags=area"]) \
        + ([] if end is None else ["-t", f"{end - start:.6f}"])
    seek = ["-ss", f"{start:.6f}"] if start > 0 else []
    picked: list[int] = []
    scores: list[float] = []
    best: tuple[float, int, np.ndarray] | None = None  # (sharpness, index, frame) of the current stretch
    stretch = 0
    decoded = 0

    def keep(entry: tuple[float, int, np.ndarray]) -> None:
        import imageio.v3 as iio

        score, index, frame = entry
        iio.imwrite(out / f"frame_{index:06d}.jpg", frame, quality=FRAME_QUALITY)
        picked.append(index)
        scores.append(round(score, 2))

    with StepProgress(expected, 0, f"reading {video.name}", enabled=progress) as bar, _quiet_size_notes():
        try:
            reader = ffmpeg.read_frames(str(video), input_params=seek, output_params=output)
            w, h = next(reader)["size"]
            for k, raw in enumerate(reader):
                decoded, index = k + 1, first + k
                now = min(frames - 1, k * frames // expected)  # the stretch this frame falls in
                if best is not None and now != stretch:
                    keep(best)
                    best = None
                stretch = now
                if best is None or sharpest:
                    frame = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
                    score = sharpness(frame) if sharpest else 0.0
                    if best is None or score > best[0]:
                        best = (score, index, frame.copy())
                bar.advance(min(decoded, expected), "frames")
            reader.close()
        except (OSError, RuntimeError) as exc:
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{video}: ffmpeg failed after {decoded} frames ({why})") from None
    if best is not None:
        keep(best)
    if len(picked) < MIN_PHOTOS:
        raise DataError(f"{video}: {decoded} frame(s) decoded; structure from motion needs at least {MIN_PHOTOS}")
    return {"video": video.name, "codec": info["codec"], "fps": fps, "duration": duration, "start": start,
            "end": end, "size": [int(w), int(h)], "decoded": decoded, "sharpest": sharpest, "picked": picked, "sharpness": scores,
            "seconds": round(time.perf_counter() - t, 2)}
