"""Blender / NeRF-synthetic scene loader (and the instant-ngp single-file variant).

Two layouts are read:

* **NeRF-synthetic** (``transforms_{train,val,test}.json``): ``camera_angle_x`` plus
  ``frames[i].file_path`` (usually without extension, e.g. ``./train/r_0``) and a 4x4
  camera-to-world ``transform_matrix`` in Blender/OpenGL axes. Images are RGBA PNGs; the
  focal length is derived from ``camera_angle_x`` and *each image's own width* (the copies
  may be downscaled while the JSON still describes the originals).
* **instant-ngp** (one ``transforms.json``): intrinsics ``fl_x``/``fl_y`` (or
  ``camera_angle_x``/``camera_angle_y``), ``cx``, ``cy``, ``w``, ``h`` (global or per
  frame), ``aabb_scale``; RGB(A) images. Splits come from per-frame ``"split"`` keys or
  top-level ``{train,val,test}_filenames`` lists; without them every 8th frame is held out
  as ``test`` and the rest are ``train``.

Optional top-level ``near``, ``far`` and ``aabb`` keys (written by
:func:`pipeline.scenes.mesh_render.render_mesh_views`) override the defaults. A
``gt_mesh.ply`` next to the transforms becomes ``SceneData.gt_mesh``, and nerfstudio's ``ply_file_path`` (structure
from motion's sparse points, in the frames' frame) ``SceneData.points`` with their colours, those in the box.

Every malformed input raises :class:`pipeline.types.DataError` naming the file and key.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from pipeline.notices import warn
from pipeline.scenes import AUTO_MAX_SIDE
from pipeline.types import DataError, SceneData

__all__ = ["load_blender", "BLENDER_AABB", "BLENDER_NEAR", "BLENDER_FAR"]

#: Default scene box of NeRF-synthetic scenes (lego fits inside).
BLENDER_AABB = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
BLENDER_NEAR = 2.0
BLENDER_FAR = 6.0

_IMAGE_EXTS = (".png", ".PNG", ".jpg", ".jpeg", ".JPG", ".JPEG", ".exr", ".webp")
_PROGRESS_MIN_IMAGES = 64
#: How far ``|det|`` of a pose's 3x3 part may be from 1 before it is refused as scaled or degenerate.
_DET_TOL = 1e-2
#: How far any entry of ``R^T R`` may be from the identity's: float32 round-off (lego's poses are within
#: 1.3e-6), but a shear that moves a pixel at 1000 px focal by 0.1 px is refused.
_ORTHO_TOL = 1e-4
#: PIL modes read as they are (``I``: 32-bit TIFF, refused later as an unsupported pixel type).
_KEEP_MODES = ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I", "F")


# --------------------------------------------------------------------------- helpers


#: the split names of NeRF-synthetic data; a dataset may lack one (many have no val), so a ``scene.splits``
#: entry among them that the folder lacks is only warned about, any other name is an error (the blender
#: scene source's check_split_names)
NERF_SPLITS = ("train", "val", "test")


def _split_order(name: str) -> tuple:
    """Sort key: the NeRF split names first, in their usual order, then the others by name."""
    return (NERF_SPLITS.index(name), "") if name in NERF_SPLITS else (len(NERF_SPLITS), name)


def dataset_splits(root: Path, asked: Sequence[str] = ()) -> Optional[tuple[list[str], str]]:
    """``(splits, where)``: the splits the Blender-format folder ``root`` holds (NeRF-synthetic: one per
    ``transforms_<split>.json``; instant-ngp: those its ``transforms.json`` assigns frames to) and a few
    words on where they come from; None when the folder is neither (or its ``transforms.json`` cannot be
    read: the loader says why). The layout is told apart as :func:`load_blender` does, ``asked`` being
    the splits asked for."""
    files = sorted(p for p in root.glob("transforms_*.json") if p.is_file()) if root.is_dir() else []
    if any((root / f"transforms_{s}.json").is_file() for s in (*NERF_SPLITS, *asked)):
        names = sorted((p.name[len("transforms_"):-len(".json")] for p in files), key=_split_order)
        return names, ", ".join(f"transforms_{s}.json" for s in names)
    ngp = root / "transforms.json"
    if not ngp.is_file():
        return None
    try:
        data = json.loads(ngp.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list):
        return None
    frames = [fr for fr in frames if isinstance(fr, dict)]
    if any("split" in fr for fr in frames):  # as the loader assigns them: a frame without one is train
        names = {str(fr.get("split", "train")) for fr in frames}
        how = "the frames' 'split' keys"
    else:  # *_filenames lists (a frame in none is train), else every 8th frame held out as test
        listed = {s for s in NERF_SPLITS if data.get(f"{s}_filenames") is not None}
        names = {"train", *listed} if listed else {"train", "test"}
        how = "its frames"
    return sorted(names, key=_split_order), f"{how} in {ngp}"


def _read_json(path: Path) -> dict:
    """The top-level object of a UTF-8 (optionally BOM-prefixed) JSON file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read transforms file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}); save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON in {path}: {e.msg} at line {e.lineno}, "
                        f"column {e.colno}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at top level, got "
                        f"{type(data).__name__}")
    return data


def _require(d: dict, key: str, where: str) -> Any:
    if key not in d:
        have = ", ".join(sorted(map(str, d.keys()))) or "nothing"
        raise DataError(f"{where}: missing key '{key}' (keys present: {have})")
    return d[key]


def _as_float(value: Any, key: str, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: key '{key}' must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise DataError(f"{where}: key '{key}' must be finite, got {value!r}")
    return f


def _pose(frame: dict, where: str) -> np.ndarray:
    """The frame's 4x4 camera-to-world ``transform_matrix``, whose 3x3 part must be a rotation (a reflection
    is accepted): ``|det| = 1`` within 1e-2 and ``max |R^T R - I| <= 1e-4`` (float32 exports round off about
    1e-6)."""
    raw = _require(frame, "transform_matrix", where)
    try:
        m = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'transform_matrix' is not a numeric 4x4 matrix") from None
    if m.shape != (4, 4):
        raise DataError(f"{where}: 'transform_matrix' must be 4x4, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise DataError(f"{where}: 'transform_matrix' contains non-finite values (NaN/inf)")
    fault = rotation_fault(m[:3, :3])
    if fault is not None:
        raise DataError(f"{where} ({frame.get('file_path')!r}): 'transform_matrix' {fault}")
    return m


def rotation_fault(r: np.ndarray) -> Optional[str]:
    """Why the (3, 3) ``r`` is not a rotation (a reflection passes), as the end of a sentence, or None:
    ``|det|`` must be 1 within 1e-2 and ``max |R^T R - I|`` at most 1e-4."""
    det = float(np.linalg.det(r))
    if not abs(abs(det) - 1.0) <= _DET_TOL:
        return (f"has a 3x3 part with determinant {det:.6g}, not a rotation; it must be +1 or -1 "
                f"(within {_DET_TOL:g})")
    skew = float(np.abs(r.T @ r - np.eye(3)).max())
    if not skew <= _ORTHO_TOL:  # det +-1 with sheared or unequally scaled axes
        return (f"has a 3x3 part whose axes are not orthonormal (max |R^T R - I| = {skew:.3g}, allowed "
                f"{_ORTHO_TOL:g}): a sheared or unequally scaled matrix, not a rotation")
    return None


def _posix(file_path: Any) -> Any:
    """``file_path`` with Windows backslashes turned into forward slashes."""
    return file_path.replace("\\", "/") if isinstance(file_path, str) else file_path


def _resolve_image(root: Path, file_path: str, where: str) -> Path:
    if not isinstance(file_path, str) or not file_path:
        raise DataError(f"{where}: 'file_path' must be a non-empty string, got {file_path!r}")
    p = (root / _posix(file_path))
    if p.is_file():
        return p
    tried = [p]
    for ext in _IMAGE_EXTS:
        q = p.with_name(p.name + ext)
        if q.is_file():
            return q
        tried.append(q)
    others = sorted(q.name for q in p.parent.glob(f"{p.stem}.*") if q.suffix in _IMAGE_EXTS) if p.parent.is_dir() else []
    hint = f"; {p.parent} has {', '.join(others[:3])}: fix the extension in 'file_path'" if others else ""
    raise DataError(f"{where}: image file not found: {p} (also tried "
                    f"{', '.join(t.name for t in tried[1:4])}, ...){hint}")


def _frame_file(root: Path, frame: dict, key: str, what: str, where: str) -> Path:
    """The file of a frame's ``key`` (nerfstudio's ``mask_path``, ``depth_file_path``: relative to ``root``);
    DataError naming the frame and ``what`` it is when it is not a string or not a file."""
    given = frame[key]
    if not isinstance(given, str) or not given:
        raise DataError(f"{where}: {key!r} must be a non-empty string, got {given!r}")
    p = root / _posix(given)
    if not p.is_file():
        raise DataError(f"{where}: {what} not found: {p} ({key!r})")
    return p


def _given_by_all_or_none(frames: list, key: str, where: str, off: str) -> bool:
    """Whether the frames give ``key`` (every one of them); DataError naming a frame without it when only some do
    (``off``: how to leave the key unused)."""
    given = [isinstance(fr, dict) and key in fr for fr in frames]
    if any(given) and not all(given):
        raise DataError(f"{where}: {sum(given)} of its {len(frames)} frames give a {key!r} but "
                        f"frames[{given.index(False)}] does not; give every frame one, or none ({off} leaves them "
                        f"unused)")
    return all(given)


#: what the ``mask_path`` of a transforms.json's frames may be used as (:func:`load_blender`)
FRAME_MASK_USES = ("ignore", "object", "off")


def _pil_mode(im: Any) -> Optional[str]:
    """The mode to convert a PIL image to before reading its pixels (None: keep it)."""
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        return "RGBA"
    if im.mode == "P":  # as imageio reads it: the palette's own mode
        return "RGBA" if im.palette.mode == "RGBA" else "RGB"
    if im.mode == "I" and im.format == "PNG":  # 16-bit grey PNG on older Pillow
        return "I;16"
    if im.mode in _KEEP_MODES:
        return None
    if im.mode == "1":
        return "L"
    return "RGBA" if {"A", "a"} & set(im.getbands()) else "RGB"  # CMYK, YCbCr, LA, ...


def _imageio_pixels(path: Path) -> Optional[np.ndarray]:
    """Pixels of a format PIL cannot open (EXR with an imageio backend), else None."""
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception:  # imageio raises many types for files it cannot read
        return None


#: Pillow's raw modes of 16-bit colour and grey+alpha PNGs (it keeps the high byte of each sample), each with a
#: raw mode of as many bits per pixel that keeps the low bytes: decoding a file with both gives all 16 bits
#: (``RGBA`` keeps all four bytes of a grey+alpha pixel)
_PNG16_LOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}


def _decode_as(path: Path, rawmode: str) -> np.ndarray:
    """The pixels of the PNG ``path`` decoded by Pillow with raw mode ``rawmode`` instead of its own."""
    from PIL import Image

    with Image.open(path) as im:
        im.tile = [t._replace(args=rawmode) if hasattr(t, "_replace") else (*t[:3], rawmode) for t in im.tile]
        im.load()
        return np.asarray(im)


def _png16(path: Path, im: Any, rawmode: str) -> Optional[np.ndarray]:
    """All 16 bits of the 16-bit colour or grey+alpha PNG ``path`` as (H, W, C) uint16, given ``im``, the
    file as Pillow loaded it from raw mode ``rawmode`` (high bytes only); None where this Pillow cannot
    decode the low bytes."""
    try:
        low = _decode_as(path, _PNG16_LOW[rawmode])
    except Exception:  # a Pillow without the raw mode, or whose decoder works otherwise
        return None
    high = np.asarray(im)
    if rawmode == "LA;16B":  # bytes: grey high, grey low, alpha high, alpha low
        high, low = low[..., 0::2], low[..., 1::2]
    if high.shape != low.shape:
        return None
    return (high.astype(np.uint16) << 8) | low


def _key_alpha(img: np.ndarray, key: Any) -> np.ndarray:
    """16-bit grey (H, W) or RGB (H, W, 3) ``img`` with an alpha channel: 0 where a pixel equals the PNG's
    transparency colour ``key`` (its tRNS chunk), else opaque."""
    grey = img.ndim == 2
    px = img[..., None] if grey else img
    opaque = (px != np.reshape(np.asarray(key, img.dtype), -1)).any(-1)
    return np.dstack([px, opaque.astype(img.dtype) * np.iinfo(img.dtype).max])


def _deep_tiff(path: Path) -> Optional[np.ndarray]:
    """The first page of the TIFF ``path`` as (H, W[, C]) when its samples have more than 8 bits and it is grey or
    RGB(A), read with tifffile (Pillow reads 16-bit colour TIFFs at 8 bits); None otherwise (Pillow reads it)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.bitspersample <= 8 or page.photometric not in (tifffile.PHOTOMETRIC.RGB,
                                                                   tifffile.PHOTOMETRIC.MINISBLACK):
                return None
            img = page.asarray()
    except Exception:  # not a TIFF tifffile can decode (e.g. a codec it lacks): Pillow tries it
        return None
    if img.ndim == 3 and img.shape[0] in (2, 3, 4) and img.shape[-1] not in (2, 3, 4):  # planar: (C, H, W)
        img = np.moveaxis(img, 0, -1)
    return img if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 2, 3, 4)) else None


def _pixels(path: Path) -> np.ndarray:
    """The pixels of ``path`` as stored: grey, grey+alpha, RGB or RGBA (uint8/uint16/float), with a PNG's
    transparency colour as alpha; 16-bit PNGs and TIFFs keep all 16 bits."""
    from PIL import Image, UnidentifiedImageError

    deep = _deep_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else None
    if deep is not None:
        return deep if deep.dtype.byteorder in "=|" else deep.astype(deep.dtype.newbyteorder("="))
    try:
        with Image.open(path) as im:
            rawmode = im.tile[0][3] if im.format == "PNG" and len(im.tile) == 1 else None
            im.load()
            if rawmode in _PNG16_LOW:
                img = _png16(path, im, rawmode)
                if img is None:
                    warn(f"{path.parent}: 16-bit colour PNGs are read at 8 bits per channel (this Pillow decodes "
                         f"no more); the lost precision caps PSNR near 59 dB")
                    img = np.asarray(im)
            else:
                mode = _pil_mode(im)
                img = np.asarray(im.convert(mode) if mode else im)
            if img.dtype == np.uint16 and im.info.get("transparency") is not None and img.shape[2:] in ((), (3,)):
                img = _key_alpha(img, im.info["transparency"])
    except UnidentifiedImageError:
        img, reason = _imageio_pixels(path), ""
    except Exception as e:  # truncated or corrupt data
        img, reason = None, f": {e}"
    if img is None:
        size = path.stat().st_size if path.is_file() else 0
        raise DataError(f"{path}: not a readable PNG/JPG image ({size} bytes){reason}")
    if img.dtype.byteorder not in "=|":
        img = img.astype(img.dtype.newbyteorder("="))
    return img


def _read_image(path: Path) -> np.ndarray:
    """(H, W, C) float32 in [0, 1], C in {3, 4}."""
    img = _pixels(path)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float32)
    else:
        raise DataError(f"image {path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=-1), img[..., 1:]], axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise DataError(f"image {path}: expected an RGB or RGBA image, got shape {img.shape}")
    return img


def area_downscale(a: np.ndarray, d: int) -> np.ndarray:
    """(H, W, C) -> (H // d, W // d, C) float32: the area filter by an integer factor; trailing rows/columns
    that do not fill a block are cropped so that pixel centres stay exact (intrinsics simply divide by ``d``)."""
    if d == 1:
        return a
    h, w = a.shape[0] // d, a.shape[1] // d
    a = a[: h * d, : w * d]
    return a.reshape(h, d, w, d, a.shape[-1]).mean(axis=(1, 3), dtype=np.float32)


def available_memory() -> Optional[int]:
    """Bytes of memory that new allocations can take now without swapping (Linux ``MemAvailable``, else
    the free physical pages), or None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(sp: FrameList, first: Path, size: tuple, downscale: int, channels: int) -> None:
    """DataError when the split's images, as float32 with ``channels`` channels per pixel at ``size`` (H, W) on
    disk and ``downscale``, need more memory than is available: it names the need, what is free, and the
    smallest further downscale that fits (instead of the system's out-of-memory killer ending the process)."""
    free = available_memory()
    if free is None:
        return
    n, (h, w) = len(sp.paths), size

    def need(d: int) -> int:
        return n * (h // d) * (w // d) * channels * 4

    if need(downscale) <= free:
        return
    fits = next((d for d in range(downscale + 1, min(h, w) + 1) if need(d) <= free), None)
    hint = (f"load a downscaled copy of the images, or set scene.downscale: {fits} ({need(fits) / 1e9:.1f} GB)"
            if fits else "load fewer images (scene.max_images)")
    raise DataError(f"split '{sp.name}' ({sp.source}): its {n} images ({first} is {w}x{h}, WxH"
                    f"{f', downscaled by {downscale}' if downscale > 1 else ''}) need {need(downscale) / 1e9:.1f} GB "
                    f"as float32, more than the {free / 1e9:.1f} GB of memory available now; {hint}")


def _progress(total: int, label: str, enabled: Optional[bool]):
    """A rich progress bar for many images on an interactive terminal, else a no-op."""
    if enabled is None:
        enabled = total >= _PROGRESS_MIN_IMAGES and sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from pipeline.progress import stderr_progress
    except ImportError:  # pragma: no cover
        return None
    prog = stderr_progress()
    task = prog.add_task(label, total=total)
    return prog, task


class FrameList:
    """Frames of one split before images are read (what :func:`load_frames` reads): image ``paths``,
    (4, 4) camera-to-world ``poses`` in Blender/OpenGL axes and per-frame intrinsics ``intr``."""

    def __init__(self, name: str, source: Path):
        self.name = name
        self.source = source  # the file they came from (a transforms JSON, a COLMAP images.bin)
        self.paths: list[Path] = []
        self.poses: list[np.ndarray] = []
        # per-frame intrinsics as described by the file: (fx, fy, cx, cy, w_ref, h_ref);
        # None entries are derived from the image size (cx = W/2 ...)
        self.intr: list[tuple] = []
        self.masks: list[Path] = []  # a mask per image, or none (pipeline.scenes.masks)
        #: what ``masks`` mean: ``object`` (the image is composited on the background by its mask, which becomes
        #: its alpha) or ``ignore`` (black pixels are neither trained on nor scored: ``PosedImages.valid``)
        self.mask_use = "object"
        #: a depth map per image (nerfstudio's depth_file_path, a COLMAP stereo map; or its values, an array: SfM
        #: keypoints'), or none
        self.depths: list = []
        self.depth_scale = 1e-3  # world units per stored depth unit (nerfstudio's depth_unit_scale_factor)
        #: beside SfM keypoints' depths: each keypoint's reprojection error (pixels), an array per image, or none
        self.depth_errors: list = []
        # per frame, how its image is fitted to the split's one size (cameras of several sizes), or none;
        # ``intr`` then describes the fitted image (pipeline.scenes.camera_fit)
        self.fits: list = []


def _check_downscale(sp: FrameList, first: Path, size: tuple, downscale: int) -> None:
    """A downscale that leaves no pixel of the split's (H, W) ``size`` is an error."""
    h, w = size
    if h // downscale == 0 or w // downscale == 0:
        raise DataError(
            f"split '{sp.name}' ({sp.source}): downscale {downscale} is larger than its images "
            f"({first} is {w}x{h}, WxH); the largest valid downscale is {min(w, h)}")


def _mask_of(mask: Path, image: Path, size: tuple) -> np.ndarray:
    """(H, W, 1) float32 in [0, 1]: the ``mask`` file of ``image``, area-averaged when it is a whole multiple of
    the image's (H, W) ``size`` (full-size masks for ``images_2``). DataError when it is neither that size nor such
    a multiple."""
    from pipeline.scenes.masks import read_mask

    m = read_mask(mask)
    k = m.shape[0] // max(1, size[0])
    if k > 1 and m.shape == (size[0] * k, size[1] * k):
        m = area_downscale(m[..., None], k)[..., 0]
    if m.shape != tuple(size):
        raise DataError(f"mask {mask} is {m.shape[1]}x{m.shape[0]} but its image {image} is {size[1]}x{size[0]} "
                        f"(WxH); a mask must be its image's size, or a whole multiple of it")
    return m[..., None]


#: a pixel of a downscaled or fitted image counts when at least this share of what it averages is unmasked
VALID_SHARE = 0.5


def load_frames(sp: FrameList, background: np.ndarray, downscale: int,
                progress: Optional[bool]):
    """``(PosedImages, (W0, H0))``: the images of ``sp`` read (RGBA composited on ``background`` (3,)), area-
    downscaled by ``downscale``, intrinsics scaled from each frame's reference size to its image's; ``(W0,
    H0)`` is the size on disk. Its masks become alphas (object masks) or ``valid`` (ignore masks), its depth
    maps ``depths``. DataError when the images differ in size or the downscale leaves no pixel."""
    import torch

    from pipeline.types import Cameras, PosedImages

    n = len(sp.paths)
    images = alphas = valid = depths = errors = None
    ignoring = bool(sp.masks) and sp.mask_use == "ignore"
    has_alpha = visible = False
    size0 = None
    first = None
    bar = _progress(n, f"loading {sp.name} ({n} images)", progress)
    if bar is not None:
        bar[0].start()
    try:
        for i, path in enumerate(sp.paths):
            img = _read_image(path)
            fit = sp.fits[i] if sp.fits else None
            if fit is not None and (img.shape[1], img.shape[0]) != tuple(fit.source):
                raise DataError(f"{path} is {img.shape[1]}x{img.shape[0]} (WxH), but the first image of its camera "
                                f"in {sp.source} is {fit.source[0]}x{fit.source[1]}; the images of one camera must "
                                f"share one size")
            shape = (fit.size[1], fit.size[0]) if fit is not None else img.shape[:2]
            if size0 is None:
                size0, first = shape, path
                _check_downscale(sp, first, size0, downscale)
                _check_fits(sp, first, size0, downscale, img.shape[-1])
            elif shape != size0:
                raise DataError(
                    f"split '{sp.name}' ({sp.source}): images of different sizes: {first} is "
                    f"{size0[1]}x{size0[0]} but {path} is {img.shape[1]}x{img.shape[0]} "
                    "(WxH); all images of a split must share one size")
            a = img[..., 3:4] if img.shape[-1] == 4 else None
            keep = _mask_of(sp.masks[i], path, img.shape[:2]) if ignoring else None
            if sp.masks and not ignoring:  # (an object mask: the image's alpha, times the alpha it has)
                m = _mask_of(sp.masks[i], path, img.shape[:2])
                a = m if a is None else a * m
            if a is not None:
                rgb = img[..., :3] * a + background * (1.0 - a)
                visible = visible or bool((a > 0).any())
            else:
                rgb = img
            if fit is not None:
                rgb, a = fit.array(np.asarray(rgb, np.float32)), (None if a is None else
                                                                  np.clip(fit.array(np.asarray(a, np.float32)), 0, 1))
                keep = None if keep is None else fit.array(keep)
            rgb = area_downscale(np.clip(rgb, 0.0, 1.0).astype(np.float32), downscale)
            if keep is not None:
                if valid is None:
                    valid = np.empty((n,) + rgb.shape[:2], bool)
                valid[i] = area_downscale(keep, downscale)[..., 0] >= VALID_SHARE
            if sp.depths:
                if depths is None:
                    depths = np.empty((n,) + rgb.shape[:2], np.float32)
                from pipeline.scenes.depth_maps import depth_downscale, read_depth

                d = read_depth(sp.depths[i], sp.depth_scale, img.shape[:2])
                d = d if fit is None else fit.depths(d)  # (the image's fit, block means of the depths given)
                # (where the image is transparent, or its object mask leaves it out, a depth is not the object's)
                depths[i] = depth_downscale(d if a is None else np.where(a[..., 0] >= 0.5, d, 0.0), downscale)
                if sp.depth_errors:  # (the keypoints' errors, fitted and downscaled as their depths are)
                    errors = np.zeros_like(depths) if errors is None else errors
                    e = read_depth(sp.depth_errors[i], 1.0, img.shape[:2])
                    e = e if fit is None else fit.depths(e)
                    e = depth_downscale(e, downscale)
                    errors[i] = np.where(depths[i] > 0, e, 0.0)
            if images is None:
                images = np.empty((n,) + rgb.shape, np.float32)
            images[i] = rgb
            if a is not None:
                if alphas is None:  # only a split with an alpha channel holds alphas (RGB photos: none)
                    alphas = np.ones((n,) + rgb.shape[:2] + (1,), np.float32)
                    has_alpha = True
                alphas[i] = area_downscale(a.astype(np.float32), downscale)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    if has_alpha and not visible:
        warn(f"split '{sp.name}' ({sp.source}): its images are fully transparent (alpha 0 "
             f"everywhere), so it trains on blank background-coloured images")
    if valid is not None:
        _check_ignored(sp, valid)
    H0, W0 = size0
    H, W = images.shape[1:3]
    fx = np.empty(n, np.float32)
    fy = np.empty(n, np.float32)
    cx = np.empty(n, np.float32)
    cy = np.empty(n, np.float32)
    for i, (f_x, f_y, c_x, c_y, w_ref, h_ref) in enumerate(sp.intr):
        # scale from the resolution the file describes to the image's own resolution
        # (square pixels when only one focal / one reference size is given)
        sx = W0 / w_ref if w_ref else 1.0
        sy = H0 / h_ref if h_ref else sx
        f_y = (f_y if f_y is not None else f_x) * sy
        f_x = f_x * sx
        c_x = c_x * sx if c_x is not None else 0.5 * W0
        c_y = c_y * sy if c_y is not None else 0.5 * H0
        fx[i], fy[i] = f_x / downscale, f_y / downscale
        cx[i], cy[i] = c_x / downscale, c_y / downscale
    cams = Cameras(
        c2w=torch.from_numpy(np.stack(sp.poses).astype(np.float32)),
        fx=torch.from_numpy(fx), fy=torch.from_numpy(fy),
        cx=torch.from_numpy(cx), cy=torch.from_numpy(cy),
        width=int(W), height=int(H))
    names = [p.stem for p in sp.paths]
    return PosedImages(images=torch.from_numpy(images), cameras=cams,
                       alphas=torch.from_numpy(alphas) if has_alpha else None,
                       names=names, valid=None if valid is None else torch.from_numpy(valid),
                       depths=None if depths is None else torch.from_numpy(depths),
                       depth_errors=None if errors is None else torch.from_numpy(errors)), (W0, H0)


def kept_shares(splits: dict) -> dict[str, float]:
    """``{split: share of its pixels that count}`` of the splits with ignore masks (``PosedImages.valid``), for
    scene.json."""
    return {name: round(float(sp.valid.float().mean()), 4) for name, sp in splits.items() if sp.valid is not None}


def _check_ignored(sp: FrameList, valid: np.ndarray) -> None:
    """Ignore masks ``valid`` (N, H, W) bool that leave no pixel of the split are a DataError naming the first
    mask; images left with none are warned about by name (they take no part in training or scoring)."""
    kept = valid.reshape(len(valid), -1).mean(1)
    if not kept.any():
        raise DataError(f"split '{sp.name}' ({sp.source}): its ignore masks leave no pixel to train on or score "
                        f"(e.g. {sp.masks[0]} is black everywhere); white marks the pixels that count, black the "
                        f"ones left out")
    empty = [p.name for p, k in zip(sp.paths, kept) if k == 0]
    if empty:
        warn(f"split '{sp.name}' ({sp.source}): the ignore masks of {len(empty)} image(s) leave none of their "
             f"pixels ({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}), so they count for nothing")


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of the image at ``path``, from its header (the whole image when PIL cannot read it)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # (a format PIL does not read: read it whole)
        h, w = _read_image(path).shape[:2]
        return w, h


def resolve_downscale(downscale, first: Path, size: Optional[tuple[int, int]] = None) -> int:
    """``downscale`` as the loaders apply it: an integer as it is; ``"auto"``: the least whole factor that brings
    the longer side of the image ``first`` (and so of its split), or of ``size`` (W, H) when given (the size the
    images are fitted to), within :data:`AUTO_MAX_SIDE` pixels, said in a warning when it is above 1 (a 12 MP
    phone photo, 4032x3024, loads at 1/3: 1344x1008)."""
    if downscale != "auto":
        return int(downscale)
    w, h = size if size is not None else image_size(first)
    factor = max(1, math.ceil(max(w, h) / AUTO_MAX_SIDE))
    if factor > 1:
        warn(f"the scene's images, {w}x{h}, are loaded at 1/{factor} of their size, {w // factor}x{h // factor} "
             f"(scene.downscale: auto keeps the longer side within {AUTO_MAX_SIDE} px; set scene.downscale: 1 for "
             f"the full size)")
    return factor


def check_load_options(background, downscale, max_images) -> np.ndarray:
    """The loaders' common options checked (DataError naming the bad one): ``background`` as (3,) float32."""
    try:
        bg = np.asarray(background, dtype=np.float32).reshape(3)
    except (TypeError, ValueError):
        raise DataError(f"background must be 3 floats in [0, 1], got {background!r}") from None
    if not (np.isfinite(bg).all() and (bg >= 0).all() and (bg <= 1).all()):
        raise DataError(f"background must be 3 floats in [0, 1], got {background!r}")
    if downscale != "auto" and (isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer))
                                or downscale < 1):
        raise DataError(f"downscale must be an integer >= 1 or auto, got {downscale!r}")
    if max_images is not None and (not isinstance(max_images, (int, np.integer))
                                   or max_images < 1):
        raise DataError(f"max_images must be a positive integer or None, got {max_images!r}")
    return bg


def _optional_box(data: dict, where: str):
    if "aabb" not in data:
        return None
    try:
        box = np.asarray(data["aabb"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.size != 6 or not np.isfinite(box).all() or (box[3:] <= box[:3]).any():
        raise DataError(f"{where}: 'aabb' must be 6 finite numbers [xmin, ymin, zmin, xmax, "
                        f"ymax, zmax] with min < max, got {data['aabb']!r}")
    return box


# --------------------------------------------------------------------------- layouts


def _nerf_synthetic(root: Path, splits: Sequence[str]):
    found: dict[str, FrameList] = {}
    missing, empty = [], []
    extra: dict[str, Any] = {}
    angle_x = None
    for split in splits:
        path = root / f"transforms_{split}.json"
        if not path.is_file():
            missing.append(split)
            continue
        data = _read_json(path)
        where = str(path)
        ax = _as_float(_require(data, "camera_angle_x", where), "camera_angle_x", where)
        if not 0.0 < ax < math.pi:
            raise DataError(f"{where}: 'camera_angle_x' must be in (0, pi) radians, got {ax}")
        angle_x = ax if angle_x is None else angle_x
        frames = _require(data, "frames", where)
        if not isinstance(frames, list):
            raise DataError(f"{where}: 'frames' must be a list, got {type(frames).__name__}")
        for key in ("near", "far"):
            if key in data:
                extra.setdefault(key, _as_float(data[key], key, where))
        box = _optional_box(data, where)
        if box is not None:
            extra.setdefault("aabb", box)
        if not frames:
            empty.append(split)
            continue
        sp = FrameList(split, path)
        for i, fr in enumerate(frames):
            fw = f"{where}: frames[{i}]"
            if not isinstance(fr, dict):
                raise DataError(f"{fw} must be an object, got {type(fr).__name__}")
            sp.paths.append(_resolve_image(root, _require(fr, "file_path", fw), fw))
            sp.poses.append(_pose(fr, fw))
            # focal from the angle and the reference width 1 (scaled by the image's width)
            f_unit = 0.5 / math.tan(0.5 * ax)
            sp.intr.append((f_unit, None, None, None, 1.0, None))
        found[split] = sp
    return found, missing, empty, extra, angle_x


def _positive(d: dict, key: str, where: str) -> float:
    """``d[key]`` as a number > 0."""
    v = _as_float(d[key], key, where)
    if v <= 0:
        raise DataError(f"{where}: '{key}' must be positive, got {v}")
    return v


def _angle(d: dict, key: str, where: str) -> float:
    """``d[key]`` as a field-of-view angle in (0, pi) radians."""
    v = _as_float(d[key], key, where)
    if not 0.0 < v < math.pi:
        raise DataError(f"{where}: '{key}' must be in (0, pi) radians, got {v}")
    return v


def _ngp_intrinsics(d: dict, base: tuple, where: str) -> tuple:
    """(fx, fy, cx, cy, w, h) from a dict (global or frame), falling back on ``base``."""
    fx, fy, cx, cy, w, h = base
    if "w" in d:
        w = _positive(d, "w", where)
    if "h" in d:
        h = _positive(d, "h", where)
    if "fl_x" in d:
        fx = _positive(d, "fl_x", where)
    elif "camera_angle_x" in d:
        if w is None:
            raise DataError(f"{where}: 'camera_angle_x' given without image width 'w'")
        fx = 0.5 * w / math.tan(0.5 * _angle(d, "camera_angle_x", where))
    if "fl_y" in d:
        fy = _positive(d, "fl_y", where)
    elif "camera_angle_y" in d:
        if h is None:
            raise DataError(f"{where}: 'camera_angle_y' given without image height 'h'")
        fy = 0.5 * h / math.tan(0.5 * _angle(d, "camera_angle_y", where))
    if "cx" in d:
        cx = _as_float(d["cx"], "cx", where)
    if "cy" in d:
        cy = _as_float(d["cy"], "cy", where)
    return fx, fy, cx, cy, w, h


#: instant-ngp / COLMAP lens-distortion keys (OPENCV and fisheye models)
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _warn_if_distorted(data: dict, where: str) -> None:
    """Warn that lens distortion in ``transforms.json`` is not modelled (rays are pinhole): the images
    should be undistorted first (e.g. COLMAP's image_undistorter)."""
    given = [k for k in _DISTORTION_KEYS if isinstance(data.get(k), (int, float)) and data[k] != 0]
    model = data.get("camera_model")
    if given or (isinstance(model, str) and model.upper() not in ("PINHOLE", "SIMPLE_PINHOLE")):
        warn_distortion(where, ", ".join(given) or f"camera_model {model}", "drop the distortion keys (the blender "
                        "scene source undistorts the frames itself with scene.undistort: true, its default)")


def warn_distortion(where: str, what: str, then: str) -> None:
    """Warn that the lens distortion ``what`` (its keys, or the camera model) of ``where`` is not modelled,
    rays being a pinhole camera's: undistort the images first (e.g. COLMAP's image_undistorter) and
    ``then`` (what the user does next with the undistorted data)."""
    warn(f"{where}: lens distortion ({what}) is not modelled, so rays are those of a pinhole camera and "
         f"the geometry is off towards the image borders; undistort the images first (e.g. COLMAP's "
         f"image_undistorter) and {then}")


def _ngp_offset(data: dict, where: str) -> np.ndarray:
    """instant-ngp's ``offset``: 3 finite numbers (default 0.5 each)."""
    raw = data.get("offset", [0.5, 0.5, 0.5])
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        raise DataError(f"{where}: 'offset' must be 3 finite numbers, got {raw!r}")
    return np.array([_as_float(v, f"offset[{k}]", where) for k, v in enumerate(raw)])


def ngp_frame_splits(data: dict, frames: list) -> tuple[list[str], str]:
    """The split of each of an instant-ngp ``transforms.json``'s ``frames`` (``data`` the whole file), and the rule
    that gave it: per-frame ``"split"`` keys, else the top-level ``train_filenames`` / ``val_filenames`` /
    ``test_filenames`` lists (nerfstudio's), else every 8th frame held out as test."""
    lists = {s: data.get(f"{s}_filenames") for s in ("train", "val", "test")}
    if any(isinstance(fr, dict) and "split" in fr for fr in frames):
        return [str(fr.get("split", "train")) if isinstance(fr, dict) else "train" for fr in frames], \
            "per-frame 'split' keys"
    if any(v is not None for v in lists.values()):
        sets = {s: {Path(_posix(str(x))).as_posix().lstrip("./") for x in (v or [])}
                for s, v in lists.items()}
        assign = []
        for fr in frames:
            fp = Path(_posix(str(fr.get("file_path", ""))) if isinstance(fr, dict) else "")
            key = fp.as_posix().lstrip("./")
            assign.append(next((s for s, names in sets.items()
                                if key in names or fp.name in {Path(n).name for n in names}), "train"))
        return assign, "top-level *_filenames lists"
    return ["test" if i % 8 == 0 else "train" for i in range(len(frames))], \
        "no split info: every 8th frame held out as test"


def _instant_ngp(root: Path, splits: Sequence[str], mask_use: str = "ignore", depths: bool = True):
    path = root / "transforms.json"
    where = str(path)
    data = _read_json(path)
    frames = _require(data, "frames", where)
    if not isinstance(frames, list):
        raise DataError(f"{where}: 'frames' must be a list, got {type(frames).__name__}")
    if not frames:
        raise DataError(f"{where}: 'frames' is empty")
    base = _ngp_intrinsics(data, (None,) * 6, where)
    _warn_if_distorted(data, where)
    assign, how = ngp_frame_splits(data, frames)
    masked = mask_use != "off" and _given_by_all_or_none(frames, "mask_path", where, "scene.mask_use: off")
    deep = depths and _given_by_all_or_none(frames, "depth_file_path", where, "scene.depths: false")
    depth_scale = _as_float(data.get("depth_unit_scale_factor", 1e-3), "depth_unit_scale_factor", where) \
        if deep else 1e-3
    if not depth_scale > 0:
        raise DataError(f"{where}: 'depth_unit_scale_factor' must be positive (world units per stored depth unit; "
                        f"nerfstudio's default 0.001 reads millimetres as metres), got {depth_scale}")

    found: dict[str, FrameList] = {}
    for i, fr in enumerate(frames):
        fw = f"{where}: frames[{i}]"
        if not isinstance(fr, dict):
            raise DataError(f"{fw} must be an object, got {type(fr).__name__}")
        s = assign[i]
        img_path = _resolve_image(root, _require(fr, "file_path", fw), fw)
        pose = _pose(fr, fw)
        if s not in splits:
            continue
        fx, fy, cx, cy, w, h = _ngp_intrinsics(fr, base, fw)
        if fx is None:
            raise DataError(f"{fw}: missing key 'fl_x' (or 'camera_angle_x'), neither in the "
                            "frame nor at top level")
        sp = found.setdefault(s, FrameList(s, path))
        sp.paths.append(img_path)
        sp.poses.append(pose)
        sp.intr.append((fx, fy, cx, cy, w, h))
        if masked:
            sp.masks.append(_frame_file(root, fr, "mask_path", "mask file", fw))
            sp.mask_use = mask_use
        if deep:
            sp.depths.append(_frame_file(root, fr, "depth_file_path", "depth map", fw))
            sp.depth_scale = depth_scale

    aabb_scale = _as_float(data.get("aabb_scale", 1), "aabb_scale", where)
    if aabb_scale <= 0:
        raise DataError(f"{where}: 'aabb_scale' must be positive, got {aabb_scale}")
    scale = _as_float(data.get("scale", 0.33), "scale", where)
    if scale <= 0:
        raise DataError(f"{where}: 'scale' must be positive, got {scale}")
    offset = _ngp_offset(data, where)
    # instant-ngp maps a NeRF-frame point p to ngp space as p*scale + offset, then cycles the axes
    # (ngp x,y,z = nerf y,z,x): the offset is added in NeRF axis order (nerf_loader.h,
    # nerf_position_to_ngp). Its box [0.5 -/+ aabb_scale/2]^3 is a cube about (0.5, 0.5, 0.5), which
    # the cycle leaves in place, so the NeRF-frame centre is (0.5 - offset) / scale, axis for axis.
    centre = (0.5 - offset) / scale
    half = 0.5 * aabb_scale / scale
    extra: dict[str, Any] = {"aabb": np.concatenate([centre - half, centre + half]),
                             "aabb_scale": aabb_scale, "split_rule": how}
    for key in ("near", "far"):
        if key in data:
            extra[key] = _as_float(data[key], key, where)
    box = _optional_box(data, where)
    if box is not None:
        extra["aabb"] = box
    if "ply_file_path" in data:  # (nerfstudio's: structure from motion's sparse points, in the frames' frame)
        extra["ply"] = _frame_file(root, data, "ply_file_path", "point cloud", where)
    missing = [s for s in splits if s not in found]
    return found, missing, extra


def ply_points(path: Path, box: np.ndarray, to_frame: Optional[np.ndarray] = None,
               option: str = "'ply_file_path'") -> tuple[Optional[np.ndarray], Optional[np.ndarray], dict]:
    """The points of the point cloud ``path`` (nerfstudio's ``ply_file_path``; a NeuS folder's point file), moved by
    ``to_frame`` (4, 4) when given, inside ``box`` (6,): (P, 3) float32, their (P, 3) uint8 colours (None when the
    file has none) and the facts for scene.json; None for no point in the box. DataError naming the file (and the
    ``option`` that gave it) when it cannot be read or holds no points."""
    import trimesh

    try:
        cloud = trimesh.load(path, process=False)
    except Exception as exc:  # (trimesh raises many types for files it cannot parse)
        raise DataError(f"{path}: not a point cloud trimesh can read ({option}): {exc}") from None
    points = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    if not len(points):
        raise DataError(f"{path}: holds no points ({option})")
    colours = np.asarray(getattr(cloud, "colors", ()) if isinstance(cloud, trimesh.PointCloud) else
                         getattr(getattr(cloud, "visual", None), "vertex_colors", ()))
    colours = colours[:, :3].astype(np.uint8) if colours.ndim == 2 and len(colours) == len(points) else None
    if to_frame is not None:
        points = points @ to_frame[:3, :3].T + to_frame[:3, 3]
    kept = in_box(points, box)  # (a NaN coordinate is in no box)
    facts = {"file": str(path.resolve()), "total": int(len(points)), "in_box": int(kept.sum())}
    if not kept.any():
        return None, None, facts
    return points[kept].astype(np.float32), None if colours is None else colours[kept], facts


def in_box(points: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """(P,) bool: which rows of ``points`` (P, 3) lie inside ``box`` (6: min xyz, max xyz), boundary included."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)
    return ((points >= box[0]) & (points <= box[1])).all(axis=1)


def box_corners(box: Sequence[float]) -> np.ndarray:
    """(8, 3) float64: the corners of ``box`` (6: min xyz, max xyz)."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)
    return np.array(np.meshgrid(*box.T, indexing="ij")).reshape(3, -1).T


def near_far_from_box(poses: Iterable[np.ndarray], box: np.ndarray) -> tuple[float, float]:
    """``(near, far)`` for cameras with (4, 4) ``poses`` and the (6,) ``box``: the nearest camera's distance to
    the box (at least 0.01) and the farthest box corner from any camera."""
    lo, hi = box[:3], box[3:]
    corners = box_corners(box)
    near, far = np.inf, 0.0
    for m in poses:
        o = m[:3, 3]
        d_box = np.linalg.norm(np.maximum(np.maximum(lo - o, o - hi), 0.0))
        near = min(near, d_box)
        far = max(far, float(np.linalg.norm(corners - o, axis=1).max()))
    return max(float(near), 0.01), far


# --------------------------------------------------------------------------- entry point


def load_blender(root: Path, *, splits: Sequence[str] = ("train", "val", "test"),
                 background: Sequence[float] = (1.0, 1.0, 1.0), downscale: "int | str" = 1,
                 max_images: Optional[int] = None, masks: str = "ignore", depths: bool = True,
                 progress: Optional[bool] = None) -> SceneData:
    """Load a Blender-format (NeRF-synthetic or instant-ngp) posed-image scene.

    Args:
        root: folder with ``transforms_{split}.json`` or ``transforms.json``.
        splits: splits to load; a split whose file is absent or has no frames is left
            out of ``SceneData.splits`` (noted in ``meta["splits_missing"]``), but at
            least one must be present.
        background: RGB in [0, 1] that RGBA images are composited onto.
        downscale: integer area-filter factor (trailing rows/columns that do not fill a
            block are cropped; intrinsics are divided by the factor), or ``"auto"``
            (:func:`resolve_downscale`).
        max_images: keep only the first ``max_images`` frames of every split.
        masks: what the frames' ``mask_path`` (nerfstudio's; every frame gives one or none does) are:
            ``ignore`` (nerfstudio's meaning: black pixels are neither trained on nor scored), ``object``
            (object masks: each image composited on ``background`` by its mask) or ``off`` (unused).
        depths: read the frames' ``depth_file_path`` (nerfstudio's: every frame gives one or none does; z-depth
            in the file's units times its ``depth_unit_scale_factor``, default 0.001) as ``PosedImages.depths``.
        progress: show a progress bar (default: only for >= 64 images on a terminal).

    Returns:
        SceneData with images ``(N, H, W, 3)`` float32, ``alphas`` ``(N, H, W, 1)`` when the
        images have alpha (or object masks), ``valid`` ``(N, H, W)`` with ignore masks, cameras with per-image
        intrinsics scaled to the image's own size.
        NeRF-synthetic: ``aabb`` [-1.5]*3 + [1.5]*3, ``near=2``, ``far=6`` unless the file
        says otherwise; instant-ngp: ``aabb`` from ``aabb_scale`` and near/far from the
        cameras and the box.

    Example:
        >>> scene = load_blender(data_root() / "nerf/lego", splits=("train",), max_images=2)
        >>> scene.splits["train"].images.shape
        torch.Size([2, 400, 400, 3])
    """
    import torch

    root = Path(root)
    bg = check_load_options(background, downscale, max_images)
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    if not splits:
        raise DataError("load_blender: 'splits' is empty; ask for e.g. ('train', 'test')")
    if masks not in FRAME_MASK_USES:
        raise DataError(f"load_blender: masks={masks!r}; give one of {', '.join(FRAME_MASK_USES)}")
    if not root.exists():
        raise DataError(f"scene directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"scene path is not a directory: {root}")

    per_split = [root / f"transforms_{s}.json" for s in ("train", "val", "test", *splits)]
    empty: list[str] = []
    if any(p.is_file() for p in per_split):
        source = "blender"
        found, missing, empty, extra, angle_x = _nerf_synthetic(root, splits)
        if not found:
            raise DataError(
                f"{root}: none of the requested splits {list(splits)} has frames "
                f"(missing files: {[f'transforms_{s}.json' for s in missing]}, "
                f"empty: {empty})")
    elif (root / "transforms.json").is_file():
        source = "instant-ngp"
        found, missing, extra = _instant_ngp(root, splits, masks, depths)
        angle_x = None
        if not found:
            raise DataError(f"{root / 'transforms.json'}: no frames fall in the requested "
                            f"splits {list(splits)}")
    else:
        others = sorted(p.name[len("transforms_"):-len(".json")] for p in root.glob("transforms_*.json"))
        hint = (f"; it holds transforms_*.json for the split(s) {', '.join(others)}: name them in scene.splits"
                if others else "")
        raise DataError(
            f"no transforms file in {root} for the splits {list(splits)}: expected transforms_{{train,val,test}}.json "
            f"(NeRF-synthetic) or transforms.json (instant-ngp){hint}")
    if missing and source == "blender":
        held = dataset_splits(root, splits)
        warnings.warn(f"{root}: no transforms file for split(s) {missing}; loading "
                      f"{list(found)}" + (f" (the folder holds {', '.join(held[0])})" if held else ""), stacklevel=2)

    if max_images is not None:
        for sp in found.values():
            for attr in ("paths", "poses", "intr", "masks", "depths"):
                setattr(sp, attr, getattr(sp, attr)[:max_images])

    out, sizes, orig_sizes = {}, {}, {}
    downscale = resolve_downscale(downscale, next(iter(found.values())).paths[0])
    for name in splits:
        if name not in found:
            continue
        out[name], (w0, h0) = load_frames(found[name], bg, downscale, progress)
        cams = out[name].cameras
        sizes[name] = [cams.width, cams.height]
        orig_sizes[name] = [w0, h0]

    all_poses = [p for sp in found.values() for p in sp.poses]
    if source == "blender":
        box = extra.get("aabb", np.asarray(BLENDER_AABB, np.float64))
        near = extra.get("near", BLENDER_NEAR)
        far = extra.get("far", BLENDER_FAR)
    else:
        box = extra["aabb"]
        nf = near_far_from_box(all_poses, box)
        near, far = extra.get("near", nf[0]), extra.get("far", nf[1])
    if not far > near >= 0:
        raise DataError(f"{root}: invalid ray interval near={near}, far={far}")

    meta: dict[str, Any] = {
        "source": source,
        "root": str(root.resolve()),
        "image_size": sizes,              # {split: [W, H]} after downscale
        "original_image_size": orig_sizes,  # {split: [W, H]} as stored on disk
        "downscale": int(downscale),
        "n_images": {k: len(v) for k, v in out.items()},
        "background": [float(x) for x in bg],
    }
    if angle_x is not None:
        meta["camera_angle_x"] = angle_x
    if missing:
        meta["splits_missing"] = missing
    if empty:
        meta["splits_empty"] = empty
    if max_images is not None:
        meta["max_images"] = int(max_images)
    masked = next((sp for sp in found.values() if sp.masks), None)
    if masked is not None:  # (as a capture's: where the masks are, what they are, and what they keep)
        meta.update(masks=f"the frames' mask_path in {masked.source.resolve()}", mask_use=masked.mask_use,
                    **({"pixels_kept": kept_shares(out)} if masked.mask_use == "ignore" else {}))
    deep = next((sp for sp in found.values() if sp.depths), None)
    if deep is not None:
        from pipeline.scenes.depth_maps import depth_facts

        meta["depths"] = depth_facts(f"the frames' depth_file_path in {deep.source.resolve()}", deep.depth_scale, out)
    for k in ("aabb_scale", "split_rule"):
        if k in extra:
            meta[k] = extra[k]
    render_meta = root / "meta.json"
    if render_meta.is_file():
        try:
            meta["generator"] = json.loads(render_meta.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):  # unreadable, not UTF-8 or malformed JSON
            meta["generator"] = f"unreadable {render_meta}"
    points = colours = None
    if "ply" in extra:
        points, colours, meta["sparse_points"] = ply_points(extra["ply"], box)
    gt = root / "gt_mesh.ply"
    return SceneData(
        splits=out,
        aabb=torch.tensor(np.asarray(box, np.float32)),
        background=tuple(float(x) for x in bg),
        near=float(near), far=float(far),
        gt_mesh=gt if gt.is_file() else None,
        points=points, point_colors=colours,
        meta=meta,
    )
