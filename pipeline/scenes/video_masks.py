"""Object masks of the frames taken from a video (the ``video`` source's ``masks``): white on the object, black on
what is to be left out, as a capture's masks are (:mod:`pipeline.scenes.masks`).

Video segmentation tools give a video's masks in one of two forms, and both are read:

* **a mask video**, frame for frame with the video (an editor's matte, a tracker's export). It is decoded over the
  same part (``start`` to ``end``), turned upright by its own rotation tag and scaled to the frames' size, and the
  masks of the frames taken are kept. It must hold as many frames in that part as the video does.
* **a folder of mask images, one per frame, named by the frame's number**: the last run of digits in the name
  (``00042.png``, ``frame_42.png``, ``mask-0042.jpg``). Numbers count from 0, as SAM 2 and OpenCV number frames,
  unless no mask is numbered 0 and one is numbered 1: ffmpeg numbers the images it writes from 1. Only the masks
  of the frames taken are read; a missing one is an error that names it.

Masks are drawn on the frames as a player shows them, upright. A mask of another size than the frames is scaled to
theirs (Lanczos, clipped to [0, 1]) when its aspect ratio is theirs within 1%; one that is theirs turned a quarter
(sideways) or of another shape is an error. The masks of the frames taken are written as 8-bit grey PNG files
named as the frames (``frame_NNNNNN.png``), which the photos source then undistorts with their cameras.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.types import DataError

#: the image files a folder of frame masks may hold
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: a mask's aspect ratio may differ from the frames' by this fraction and still be scaled to them
ASPECT_SLACK = 0.01


def numbered_masks(folder: Path) -> tuple[dict[int, Path], int]:
    """``({frame index: mask file}, first number)`` of the mask images in ``folder``: each is the mask of the frame
    its name's last run of digits numbers, counted from the first number (0, or 1 when no mask is numbered 0 and
    one is numbered 1). Files without digits are left out. DataError when two files number one frame, or none
    is numbered."""
    numbered: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        digits = re.findall(r"\d+", p.stem)
        if p.name.startswith(".") or p.suffix.lower() not in MASK_SUFFIXES or not digits:
            continue
        n = int(digits[-1])
        if n in numbered:
            raise DataError(f"{folder}: {numbered[n].name} and {p.name} are both numbered {n}; keep one mask per "
                            f"frame")
        numbered[n] = p
    if not numbered:
        raise DataError(f"{folder}: no mask image named by its frame's number ({', '.join(MASK_SUFFIXES)}, e.g. "
                        f"00000.png for the video's first frame)")
    first = 1 if 0 not in numbered and 1 in numbered else 0
    return {n - first: p for n, p in numbered.items()}, first


def check_shape(w: int, h: int, size: tuple[int, int], what: str) -> None:
    """DataError naming ``what`` unless a ``w`` x ``h`` mask has the aspect ratio of the frames' ``size`` (W, H)
    within :data:`ASPECT_SLACK`; it says when the mask is sideways."""
    aspect, want = w / h, size[0] / size[1]
    if abs(aspect / want - 1) > ASPECT_SLACK:
        sideways = abs(aspect * want - 1) <= ASPECT_SLACK
        raise DataError(f"{what} is {w}x{h} (WxH), the frames {size[0]}x{size[1]}"
                        + ("; it is sideways: draw the masks on the frames as a player shows them, upright"
                           if sideways else "; a mask must have the frames' shape (any size of it)"))


def fit_mask(mask: np.ndarray, size: tuple[int, int], what: str) -> np.ndarray:
    """``mask`` (H, W) float32 in [0, 1] scaled to ``size`` (W, H) (Lanczos, clipped to [0, 1]), or as it is when
    it has that size; :func:`check_shape` first."""
    h, w = mask.shape
    if (w, h) == tuple(size):
        return mask
    check_shape(w, h, size, what)
    from PIL import Image

    scaled = Image.fromarray(mask.astype(np.float32), mode="F").resize(tuple(size), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def _write(path: Path, mask: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.round(mask * 255.0).astype(np.uint8))


def write_frame_masks(masks: Path, frames: dict, out: Path, *, progress: bool = True) -> dict:
    """Write the mask of each frame ``frames`` took (the facts :func:`pipeline.scenes.video_frames.take_frames`
    returns: ``picked``, ``size``, ``start``, ``end``, ``fps``, ``decoded``) from ``masks``, a folder of numbered
    mask images or a mask video, into the folder ``out`` (made) as ``frame_NNNNNN.png``. Returns ``{"kind":
    "folder" or "video", "numbered_from" (a folder's first number)}``. DataError when a mask is missing, cannot
    be read, or does not fit the frames, and when a mask video holds another number of frames than the video."""
    from pipeline.scenes.masks import read_mask

    out.mkdir(parents=True, exist_ok=True)
    picked, size = [int(k) for k in frames["picked"]], tuple(frames["size"])
    if masks.is_dir():
        numbered, first = numbered_masks(masks)
        missing = [k for k in picked if k not in numbered]
        if missing:
            listed = ", ".join(str(k + first) for k in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise DataError(f"{masks}: no mask for {len(missing)} of the {len(picked)} frames taken from the video, "
                            f"numbered {listed} (masks numbered from {first}, by the last number in their names); "
                            f"every frame taken needs its mask")
        for k in picked:
            _write(out / f"frame_{k:06d}.png", fit_mask(read_mask(numbered[k]), size, f"the mask {numbered[k]}"))
        return {"kind": "folder", "numbered_from": first}
    return _masks_of_video(masks, frames, picked, size, out, progress)


def _masks_of_video(masks: Path, frames: dict, picked: Sequence[int], size: tuple[int, int], out: Path,
                    progress: bool) -> dict:
    """:func:`write_frame_masks` of a mask video: decoded over the video's part, scaled to the frames' size."""
    from pipeline.progress import StepProgress
    from pipeline.scenes.video_frames import decode, part_params, probe

    info = probe(masks)
    first = int(round(frames["fps"] * frames["start"]))  # the video's index of the first frame of the part
    wanted = {k - first: k for k in picked}
    check_shape(*info["size"], size, f"the mask video {masks}")
    seek, cut = part_params(frames["start"], frames["end"])
    scale = [] if tuple(info["size"]) == size else ["-vf", f"scale={size[0]}:{size[1]}:flags=lanczos"]
    grey = np.array([0.299, 0.587, 0.114], np.float32) / np.float32(255.0)

    with StepProgress(frames["decoded"], 0, f"reading {masks.name} (the frames' masks)", enabled=progress) as bar:
        def keep(j: int, frame: np.ndarray) -> None:
            if j in wanted:
                _write(out / f"frame_{wanted[j]:06d}.png", np.clip(frame.astype(np.float32) @ grey, 0.0, 1.0))
            bar.advance(min(j + 1, frames["decoded"]), "frames")

        decoded, _, _ = decode(masks, seek, scale + cut, keep)
    if decoded != frames["decoded"]:
        until = "its end" if frames["end"] is None else f"{frames['end']:g} s"
        raise DataError(f"the mask video {masks} holds {decoded} frames where the video holds {frames['decoded']} "
                        f"(from {frames['start']:g} s to {until}); a mask video has a mask for every frame of the "
                        f"video")
    return {"kind": "video"}
