"""Turntable videos of a trained run (mp4 through imageio-ffmpeg when present, else gif)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np


def orbit_cameras(template, n: int, radius: float, elevation_deg: float = 25.0):
    """n cameras on a circle around the origin (world +z up), looking at the origin, same
    intrinsics as camera 0 of ``template`` (a :class:`pipeline.types.Cameras`)."""
    import torch

    from pipeline.types import Cameras

    c2w = []
    el = math.radians(elevation_deg)
    for k in range(n):
        az = 2 * math.pi * k / n
        eye = np.array([radius * math.cos(el) * math.cos(az), radius * math.cos(el) * math.sin(az),
                        radius * math.sin(el)])
        f = -eye / np.linalg.norm(eye)  # forward
        r = np.cross(f, [0.0, 0.0, 1.0])
        r /= np.linalg.norm(r)
        u = np.cross(r, f)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = r, u, -f, eye
        c2w.append(m)
    t = torch.tensor(np.stack(c2w), dtype=torch.float32)
    rep = lambda v: v[:1].repeat(n)  # noqa: E731
    return Cameras(t, rep(template.fx), rep(template.fy), rep(template.cx), rep(template.cy),
                   template.width, template.height)


def write_video(frames: list[np.ndarray], path_stem: Path, fps: int = 24) -> Path:
    """Write ``frames`` (H, W, 3) uint8 as ``<path_stem>.mp4`` (libx264) when imageio-ffmpeg imports,
    else, or when the encoder fails, as a looping ``.gif`` (saying so, as GIF encoding is slow: minutes for
    hundreds of 800x800 frames); returns the path written. Either is written to a temporary file and
    renamed, so a killed render leaves the previous video, not an empty one.

    The frames go to the encoder as the list they are (a stacked copy of 3600 frames of 800x800 is 7 GB).
    libx264's yuv420p needs an even width and height: odd frames get their last row / column repeated
    (an odd size made ffmpeg write an empty file without raising)."""
    import os

    import imageio.v3 as iio

    from pipeline.runs import atomic_write_image

    frames = list(frames)
    h, w = frames[0].shape[:2]
    try:
        import imageio_ffmpeg  # noqa: F401

        path = path_stem.with_suffix(".mp4")
        even = frames if not (h % 2 or w % 2) else [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                                                    for f in frames]
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")  # ffmpeg writes a file (with the umask's mode)
        try:
            iio.imwrite(tmp, even, fps=fps, codec="libx264", macro_block_size=1)
            if Path(tmp).stat().st_size > 0:
                os.replace(tmp, path)
                return path
        finally:
            Path(tmp).unlink(missing_ok=True)
        why = "the mp4 encoder wrote an empty file"
    except ImportError:
        why = "imageio-ffmpeg is not installed (`pip install imageio-ffmpeg` writes an mp4)"
    except (OSError, RuntimeError) as exc:  # ffmpeg refused: the GIF still shows the turntable
        why = f"mp4 encoding failed ({type(exc).__name__}: {exc})"
    print(f"note: {why}; encoding the {len(frames)} frames as a GIF, which can take minutes", file=sys.stderr,
          flush=True)
    path = path_stem.with_suffix(".gif")
    atomic_write_image(path, frames, duration=1000 / fps, loop=0)
    return path


def render_frames(ld, cams, label: str, progress: bool = True, supersample: int = 1,
                  each: Optional[Callable[[int, dict], None]] = None,
                  exposure_of: Optional[int] = None) -> list[np.ndarray]:
    """Render every camera of ``cams`` (a :class:`pipeline.types.Cameras` on the run's device) with the run's
    renderer, ``supersample`` x ``supersample`` rays a pixel; (H, W, 3) uint8 frames, through training image
    ``exposure_of``'s learned exposure when given. ``label`` names them in the progress bar; ``each(i, out)``, when
    given, is called with each frame's render outputs (e.g. to keep its depth)."""
    import torch

    from pipeline.evaluate import as_shot, supersample_kwargs, to_uint8
    from pipeline.progress import StepProgress, image_progress

    frames = []
    ld.system.eval()
    with StepProgress(len(cams), 0, label, enabled=progress) as bar, torch.no_grad():
        for i in range(len(cams)):
            with image_progress(bar, i, "frame"):
                out = ld.system.renderer.render_image(cams, i, ld.system.chain, chunk=ld.cfg.eval.chunk,
                                                      **supersample_kwargs(supersample))
            frames.append(to_uint8(as_shot(ld.system, None, out, i, exposure_of)))
            if each is not None:
                each(i, out)
            bar.advance(i + 1)
    return frames


def render_turntable(ld, n: int, out_dir: Path, progress: bool = True, supersample: int = 1,
                     exposure_of: Optional[int] = None) -> Path:
    """Render ``n`` frames around the scene with the run's renderer, ``supersample`` x ``supersample`` rays
    a pixel (as the split's renders; through training image ``exposure_of``'s exposure when given); returns the
    video path. Its cameras are written beside it as
    ``turntable_cameras.json`` (:mod:`pipeline.camera_paths`), a path to start others from."""
    from pipeline.camera_paths import write_camera_path

    split = ld.scene.splits.get(ld.cfg.eval.split) or next(iter(ld.scene.splits.values()))
    radius = float(split.cameras.c2w[:, :3, 3].norm(dim=-1).mean())
    cams = orbit_cameras(split.cameras, n, radius).to(ld.device)
    frames = render_frames(ld, cams, "turntable", progress, supersample, exposure_of=exposure_of)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_camera_path(out_dir / "turntable_cameras.json", cams, [f"{k:04d}" for k in range(n)])
    return write_video(frames, out_dir / "turntable")


def render_camera_path(ld, cams, names: list[str], out_dir: Path, *, fps: int = 24, progress: bool = True,
                       supersample: int = 1, depth: bool = False,
                       exposure_of: Optional[int] = None) -> tuple[Path, Optional[Path]]:
    """Render the cameras ``cams`` (named ``names``; through training image ``exposure_of``'s exposure when
    given) with the run's renderer into ``out_dir`` (made) as
    ``NAME.png`` (with ``depth``, also the ``--depth`` arrays :func:`pipeline.evaluate.save_depth_arrays`
    writes), and, for two frames or more, the video ``out_dir`` + ``.mp4`` (or ``.gif``) at ``fps``; returns
    (the frames' folder, the video or None)."""
    from pipeline.evaluate import save_depth_arrays
    from pipeline.runs import atomic_write_image

    out_dir.mkdir(parents=True, exist_ok=True)
    keep = (lambda i, out: save_depth_arrays(out_dir, names[i], out)) if depth else None
    frames = render_frames(ld, cams.to(ld.device), out_dir.name, progress, supersample, each=keep,
                           exposure_of=exposure_of)
    for name, frame in zip(names, frames):
        atomic_write_image(out_dir / f"{name}.png", frame)
    video = write_video(frames, out_dir.parent / out_dir.name, fps=fps) if len(frames) > 1 else None
    return out_dir, video
