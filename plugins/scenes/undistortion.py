"""Undistortion of captures whose cameras have lens distortion: a COLMAP capture (the ``colmap`` scene source) or
an instant-ngp / nerfstudio ``transforms.json`` with distortion keys (the ``blender`` source).

The pipeline casts a pinhole camera's rays, so a capture whose model has distortion (OPENCV, SIMPLE_RADIAL and
the like with a non-zero parameter, or a fisheye model) is first undistorted as the ``photos`` source undistorts
what structure from motion found: COLMAP's own undistortion of the registered images into pinhole images and a
PINHOLE model (:func:`pipeline.scenes.sfm.undistort_model`; cameras whose undistorted images come out at several
sizes are fitted to one). The result is cached under ``NLS_CACHE`` (``scenes/undistorted-<hash>``), keyed by the
model's files and the images' contents, and loaded as a capture; object masks are undistorted with their images
and cached beside it (and an RGBA image's alpha with its colour, by :func:`pipeline.scenes.sfm.undistort_model`).
The poses and sparse points are the model's, so the scene's frame (and ``--frame input``) is the capture's as it
would be without undistortion.

A ``transforms.json`` with ``k1, k2, p1, p2`` (OPENCV), also ``k3, k4`` (FULL_OPENCV) or ``camera_model:
OPENCV_FISHEYE`` / ``is_fisheye`` (``k1..k4``) is undistorted image by image with the same COLMAP undistortion of
each frame's camera (:func:`undistorted_transforms`), alpha included, into a cached folder whose
``transforms.json`` has the undistorted pinhole intrinsics, the same poses and each frame's split written out.
Frames of more than 8 bits (16-bit PNGs) are undistorted in floating point at the points COLMAP's undistortion
samples (:func:`_undistort_deep`; COLMAP's bitmaps hold 8 bits) and kept as 16-bit TIFFs.
nerfstudio's ``mask_path`` masks go through the same undistortion; its ``depth_file_path`` depth maps are
resampled at the nearest pixel through it (:func:`_undistort_depth`), since depths are not to be blended.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pipeline.notices import warn
from plugins.scenes.config import ColmapConfig

if TYPE_CHECKING:
    import numpy as np

#: part of every undistorted cache entry's key: raise it when what an entry holds changes
UNDISTORTION_VERSION = 1


def undistorted_capture(root: Path, cfg: ColmapConfig) -> Optional[tuple[Path, Optional[str], dict]]:
    """``(cache entry, undistorted masks folder or None, facts)`` for the capture at ``root`` when its model has
    lens distortion (:func:`pipeline.scenes.colmap.distorted_cameras`): the entry holds ``capture/`` (``images/``,
    ``sparse/``, PINHOLE) and ``meta.json``. None when no camera is distorted, or when the images are not at
    their cameras' size (a downscaled copy such as ``images_2``, which COLMAP cannot undistort with the model's
    cameras: a warning says to load ``images`` and downscale after), or when the capture is incomplete (the loader
    then says what is wrong)."""
    from pipeline.scenes.blender import image_size
    from pipeline.scenes.colmap import (MODEL_FILES, _has_pose, _pycolmap, _read_model, distorted_cameras,
                                       distortion_list, find_sparse_model)
    from pipeline.scenes.masks import mask_paths, undistort_masks
    from pipeline.scenes.sfm import undistort_model
    from plugins.scenes.sources import _fingerprint, cached_render

    folder = root / cfg.images
    if not root.is_dir() or not folder.is_dir():
        return None
    model, ext = find_sparse_model(root, cfg.sparse)
    rec = _read_model(_pycolmap(model), model, ext)
    distorted = distorted_cameras(rec, model / f"cameras{ext}")
    if not distorted:
        return None
    posed = sorted((im for im in rec.images.values() if _has_pose(im)), key=lambda im: im.name)
    paths = [folder / im.name for im in posed]
    if not posed or not all(p.is_file() for p in paths):
        return None
    first = {}
    for im, path in zip(posed, paths):
        first.setdefault(im.camera_id, path)
    for cam_id, path in first.items():
        camera, size = rec.cameras[cam_id], image_size(path)
        if tuple(size) != (camera.width, camera.height):
            warn(f"{model / f'cameras{ext}'}: camera {cam_id} is {camera.width}x{camera.height} with lens "
                 f"distortion, and COLMAP undistorts only the images the model was made from; {path} is "
                 f"{size[0]}x{size[1]}, so the images are read as pinhole ones: set scene.images: images (the "
                 f"images at the model's size; scene.downscale scales them after undistortion)")
            return None
    listed = distortion_list(distorted)
    names = [im.name for im in posed]
    key = {"version": UNDISTORTION_VERSION,
           "model": [_fingerprint(model / f"{name}{ext}") for name in MODEL_FILES],
           "images": [[im.name, *_fingerprint(p)[1:]] for im, p in zip(posed, paths)]}

    def make(tmp: Path) -> None:
        print(f"undistorting the {len(names)} images of {model} (lens distortion: {listed}); cached for next time",
              file=sys.stderr, flush=True)
        found = undistort_model(folder, model, tmp, names=names, progress=False)
        (tmp / "meta.json").write_text(json.dumps({"source": "colmap", "model": str(model.resolve()),
                                                   "images": str(folder.resolve()), "distorted": listed,
                                                   "undistortion": found}))

    entry = cached_render("undistorted", key, make)
    facts = {"capture": str(entry), "distorted": listed, "model": str(model.resolve())}
    if cfg.masks is None:
        return entry, None, facts
    masks = mask_paths(root / cfg.masks, names)
    mask_key = {"capture": entry.name, "masks": [[n, *_fingerprint(p)[1:]] for n, p in zip(names, masks)]}

    def make_masks(tmp: Path) -> None:
        undistort_masks(masks, names, model, tmp / "masks")
        (tmp / "meta.json").write_text(json.dumps({"source": "masks", "masks": str((root / cfg.masks).resolve()),
                                                   "capture": str(entry)}))

    return entry, str(cached_render("masks", mask_key, make_masks) / "masks"), facts


#: distortion keys of a ``transforms.json`` (instant-ngp's and nerfstudio's), in COLMAP's parameter order
_OPENCV_KEYS = ("k1", "k2", "p1", "p2")
_FULL_OPENCV_KEYS = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
_FISHEYE_KEYS = ("k1", "k2", "k3", "k4")
#: the keys a frame's camera is read from (intrinsics, distortion, model), at the top level or in the frame
_CAMERA_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "cx", "cy", "w", "h", "camera_model",
                "is_fisheye", *_FULL_OPENCV_KEYS)


def _frame_camera(data: dict, frame: dict, size: tuple[int, int], where: str) -> Optional[tuple]:
    """``(model, width, height, params)`` of a frame's distorted camera as COLMAP names it (its keys over the file's
    top-level ones), or None when it has no distortion."""
    from pipeline.scenes.blender import _ngp_intrinsics

    merged = {**{k: data[k] for k in _CAMERA_KEYS if k in data}, **{k: frame[k] for k in _CAMERA_KEYS if k in frame}}
    fisheye = str(merged.get("camera_model", "")).upper() == "OPENCV_FISHEYE" or merged.get("is_fisheye") is True
    keys = _FISHEYE_KEYS if fisheye else (_FULL_OPENCV_KEYS if any(merged.get(k) for k in ("k3", "k4", "k5", "k6"))
                                          else _OPENCV_KEYS)
    coeffs = [float(merged.get(k, 0.0) or 0.0) for k in keys]
    if not any(coeffs):
        return None
    fx, fy, cx, cy, w, h = _ngp_intrinsics(merged, (None, None, None, None, *map(float, size)), where)
    if fx is None:
        return None  # (the loader names the missing focal length)
    fy = fx if fy is None else fy
    cx, cy = w / 2 if cx is None else cx, h / 2 if cy is None else cy
    # an image stored at another size than w, h: its pinhole part scaled alike (distortion, in normalised
    # coordinates, is not)
    sx, sy = size[0] / w, size[1] / h
    model = "OPENCV_FISHEYE" if fisheye else ("FULL_OPENCV" if len(keys) == 8 else "OPENCV")
    return model, int(size[0]), int(size[1]), (fx * sx, fy * sy, cx * sx, cy * sy, *coeffs)


def undistorted_transforms(root: Path) -> Optional[tuple[Path, dict]]:
    """``(cache entry, facts)`` for the instant-ngp folder ``root`` when its ``transforms.json`` gives lens
    distortion (module docstring): the entry holds ``transforms.json`` and the undistorted frames as PNG, each at
    its image's path under ``root`` (so it keeps its name); frames whose cameras undistort to images of several
    sizes are fitted to one (:func:`pipeline.scenes.camera_fit.fits_to_one_size`, with a warning). None for a
    file without distortion, a NeRF-synthetic folder (``transforms_train.json``) or a file the loader will refuse
    (it then says why)."""
    from pipeline.scenes.blender import _resolve_image, image_size, ngp_frame_splits
    from pipeline.types import DataError
    from plugins.scenes.sources import _fingerprint, cached_render

    path = root / "transforms.json"
    if not path.is_file() or (root / "transforms_train.json").is_file():
        return None
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
        paths = [_resolve_image(root, fr["file_path"], f"{path}: frames[{i}]") for i, fr in enumerate(frames)]
        cameras = [_frame_camera(data, fr, image_size(p), f"{path}: frames[{i}]")
                   for i, (fr, p) in enumerate(zip(frames, paths))]
    except (KeyError, TypeError, ValueError, AttributeError, DataError, OSError):
        return None
    if not any(cameras):
        return None
    if not all(cameras):
        warn(f"{path}: some frames give lens distortion and some do not; all are read as pinhole cameras")
        return None
    try:
        import pycolmap
    except ImportError as exc:
        warn(f"{path}: its lens distortion is undistorted with pycolmap, which cannot be imported ({exc}); the "
             f"frames are read as pinhole cameras (pip install 'neural-level-sets[colmap]')")
        return None
    pycolmap.logging.minloglevel = 2
    options = pycolmap.UndistortCameraOptions()
    distinct = {cam: pycolmap.Camera(model=cam[0], width=cam[1], height=cam[2], params=list(cam[3]), camera_id=1)
                for cam in set(cameras)}
    pinhole = {cam: pycolmap.undistort_camera(options, c) for cam, c in distinct.items()}
    from pipeline.scenes.camera_fit import fits_to_one_size

    order = list(distinct)
    by_index = fits_to_one_size({k: (int(pinhole[cam].width), int(pinhole[cam].height))
                                 for k, cam in enumerate(order)})
    fits = {cam: by_index[k] for k, cam in enumerate(order)} if by_index else {}
    if fits:
        fitted = next(iter(fits.values())).size
        warn(f"{path}: its frames' {len(distinct)} distorted cameras undistort to images of "
             f"{len({(c.width, c.height) for c in pinhole.values()})} sizes, and a split loads at one: each "
             f"undistorted frame is fitted to {fitted[0]}x{fitted[1]} (scaled down and cropped, centred; its "
             f"intrinsics, mask and depth map alike)")
    listed = "; ".join(f"{cam[0]} {', '.join(f'{v:g}' for v in cam[3][4:])}" for cam in list(distinct)[:3]) + (
        f" and {len(distinct) - 3} more" if len(distinct) > 3 else "")
    key = {"version": UNDISTORTION_VERSION, "transforms": _fingerprint(path),
           "images": [_fingerprint(p) for p in paths]}
    masks = _frame_masks(root, frames)
    depths = _frame_files(root, frames, "depth_file_path")
    if not depths and any(isinstance(fr, dict) and "depth_file_path" in fr for fr in frames):
        warn(f"{path}: not every distorted frame gives a depth map file (depth_file_path), so none is undistorted "
             f"and they are left out; give one for every frame, or scene.undistort: false to read the frames as "
             f"pinhole cameras")
    if masks:  # (nerfstudio's mask_path: undistorted with their frames)
        key["masks"] = [_fingerprint(m) for m in masks]
    if depths:  # (nerfstudio's depth_file_path: likewise)
        key["depths"] = [_fingerprint(d) for d in depths]
    splits, rule = ngp_frame_splits(data, frames)

    def make(tmp: Path) -> None:
        import imageio.v3 as iio

        print(f"undistorting the {len(frames)} frames of {path} (lens distortion: {listed}); cached for next time",
              file=sys.stderr, flush=True)
        from pipeline.progress import StepProgress
        from plugins.scenes.sources import _progress_wanted

        out_frames = []
        with StepProgress(len(frames), 0, "undistorting", enabled=_progress_wanted() and len(frames) >= 32) as bar:
            for i, (frame, image, cam) in enumerate(zip(frames, paths, cameras)):
                # the image's own path under the folder (so its name, which names the view, stays), as PNG
                inside = image.resolve().relative_to(root.resolve()) if image.resolve().is_relative_to(
                    root.resolve()) else Path("images") / image.name
                target = tmp / inside.with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                out_frames.append(_undistort_frame(pycolmap, options, distinct[cam], pinhole[cam], frame, image,
                                                   target, inside.with_suffix(".png").as_posix(), iio,
                                                   fits.get(cam)))
                if masks:
                    mask_file = Path("masks") / inside.with_suffix(".png")
                    (tmp / mask_file).parent.mkdir(parents=True, exist_ok=True)
                    _undistort_mask(pycolmap, options, distinct[cam], masks[i], tmp / mask_file, iio, fits.get(cam))
                    out_frames[-1]["mask_path"] = mask_file.as_posix()
                if depths:
                    depth_file = Path("depths") / inside.with_suffix(".npy")
                    (tmp / depth_file).parent.mkdir(parents=True, exist_ok=True)
                    _undistort_depth(distinct[cam], pinhole[cam], depths[i], tmp / depth_file, fits.get(cam))
                    out_frames[-1]["depth_file_path"] = depth_file.as_posix()
                out_frames[-1]["split"] = splits[i]
                bar.advance(i + 1)
        doc = {k: v for k, v in data.items() if k not in (*_CAMERA_KEYS, "frames", "train_filenames",
                                                          "val_filenames", "test_filenames")}
        if isinstance(doc.get("ply_file_path"), str):  # (the sparse points stay where they are: found from here)
            from pipeline.scenes.blender import _posix

            doc["ply_file_path"] = str((root / _posix(doc["ply_file_path"])).resolve())
        (tmp / "transforms.json").write_text(json.dumps({**doc, "frames": out_frames}, indent=1))
        (tmp / "meta.json").write_text(json.dumps({"source": "blender", "transforms": str(path.resolve()),
                                                   "distorted": listed, "split_rule": rule}))

    entry = cached_render("undistorted", key, make)
    return entry, {"capture": str(entry), "distorted": listed, "transforms": str(path.resolve()), "split_rule": rule}


def _frame_masks(root: Path, frames: list) -> list[Path]:
    """The files of the frames' ``mask_path`` (nerfstudio's): :func:`_frame_files`."""
    return _frame_files(root, frames, "mask_path")


def _frame_files(root: Path, frames: list, key: str) -> list[Path]:
    """The files the frames' ``key`` (nerfstudio's ``mask_path``, ``depth_file_path``) name, when every frame gives
    one that is a file under ``root``; [] otherwise (the loader names what is wrong)."""
    given = [fr.get(key) for fr in frames]
    if not all(isinstance(g, str) and g for g in given):
        return []
    from pipeline.scenes.blender import _posix

    found = [root / _posix(g) for g in given]
    return found if all(p.is_file() for p in found) else []


def _undistort_depth(camera, pinhole, depth: Path, target: Path, fit=None) -> None:
    """Undistort a frame's z-depth map ``depth`` (any format :func:`pipeline.scenes.depth_maps.read_depth` reads, in
    its file's units) through its distorted ``camera`` into ``target`` (.npy float32, the same units, 0: none), at
    the ``pinhole`` camera's size: each pixel takes the depth of the distorted image's pixel its ray passes through
    (the nearest: depths are not blended across edges). Undistortion keeps each ray, its camera and so its z-depth.
    A map smaller than its image (a phone's LiDAR) is first resampled to the image by the nearest stored pixel.
    With ``fit`` (a :class:`pipeline.scenes.camera_fit.Fit` of the pinhole size), fitted as :meth:`Fit.depths`
    fits it."""
    import numpy as np

    from pipeline.runs import atomic_save_npy
    from pipeline.scenes.depth_maps import read_depth

    z = read_depth(depth, 1.0, (camera.height, camera.width))
    seen = _seen_pixels(camera, pinhole)
    col, row = np.floor(seen[:, 0]).astype(np.int64), np.floor(seen[:, 1]).astype(np.int64)
    inside = np.isfinite(seen).all(-1) & (col >= 0) & (col < camera.width) & (row >= 0) & (row < camera.height)
    out = np.zeros(len(seen), np.float32)
    out[inside] = z[row[inside], col[inside]]
    out = out.reshape(pinhole.height, pinhole.width)
    atomic_save_npy(target, out if fit is None else fit.depths(out))


def _seen_pixels(camera, pinhole) -> "np.ndarray":
    """(P, 2) where the distorted ``camera``'s image is hit by the ray of each of the ``pinhole`` camera's P pixel
    centres (row-major), in pixels (x, y) of the distorted image."""
    import numpy as np

    v, u = np.mgrid[0:pinhole.height, 0:pinhole.width] + 0.5
    rays = pinhole.cam_from_img(np.stack([u.ravel(), v.ravel()], -1))  # (P, 2) normalised pinhole coordinates
    return camera.img_from_cam(np.concatenate([rays, np.ones((len(rays), 1))], -1))


def _undistort_deep(camera, pinhole, pixels: "np.ndarray") -> "np.ndarray":
    """``pixels`` (H, W, C, more than 8 bits: uint16 or float) of a frame through its distorted ``camera``, as the
    ``pinhole`` camera sees them: (H', W', C) float64 in the pixels' own units. COLMAP's undistortion done in floating
    point (pycolmap's bitmaps hold 8 bits): each pinhole pixel takes the bilinear sample at the point its ray hits
    (edges held), which is what ``pycolmap.undistort_image`` gives an 8-bit image, to the grey level
    (``tests/test_colmap_undistortion.py``)."""
    import numpy as np
    from scipy.ndimage import map_coordinates

    seen = _seen_pixels(camera, pinhole) - 0.5  # (P, 2) in map_coordinates' pixel units (centres at integers)
    planes = np.asarray(pixels, dtype=np.float64).reshape(*pixels.shape[:2], -1)
    return np.stack([map_coordinates(planes[..., c], [seen[:, 1], seen[:, 0]], order=1, mode="nearest")
                     for c in range(planes.shape[-1])], -1).reshape(pinhole.height, pinhole.width, -1)


def _write_deep(target: Path, pixels: "np.ndarray", fit, dtype) -> None:
    """(H, W, C) float ``pixels`` in the units of ``dtype`` (uint16, or a float type: written as float32) to
    ``target``, a .tiff (neither Pillow nor imageio writes 16-bit colour PNGs; the loader reads TIFFs with tifffile,
    all bits kept), fitted by ``fit`` when given (:meth:`pipeline.scenes.camera_fit.Fit.array`)."""
    import numpy as np
    import tifffile

    if fit is not None:
        pixels = fit.array(pixels.astype(np.float32))
    out = np.round(pixels).clip(0, 65535).astype(np.uint16) if dtype == np.uint16 else pixels.astype(np.float32)
    tifffile.imwrite(target, out, photometric="rgb", compression="zlib",
                     extrasamples=["unassalpha"] if out.shape[-1] == 4 else None)


def _undistort_mask(pycolmap, options, camera, mask: Path, target: Path, iio, fit=None) -> None:
    """Undistort the grey ``mask`` of a frame through its distorted ``camera`` into ``target`` (8-bit PNG), fitted by
    ``fit`` when given (:func:`_fitted`)."""
    import numpy as np

    from pipeline.scenes.masks import read_mask

    grey = np.round(read_mask(mask) * 255).astype(np.uint8)
    bitmap, _ = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(np.ascontiguousarray(grey)), camera)
    iio.imwrite(target, _fitted(np.asarray(bitmap.to_array()).reshape(bitmap.height, bitmap.width), fit))


def _fitted(pixels: "np.ndarray", fit) -> "np.ndarray":
    """``pixels`` (H, W[, C] uint8, the undistorted size) fitted by ``fit`` (a
    :class:`pipeline.scenes.camera_fit.Fit`; Lanczos through PIL, as the COLMAP captures' are), or as they are
    without one."""
    if fit is None:
        return pixels
    import numpy as np
    from PIL import Image

    return np.asarray(fit.image(Image.fromarray(np.ascontiguousarray(pixels))))


def _undistort_frame(pycolmap, options, camera, pinhole, frame: dict, image: Path, target: Path, file_path: str,
                     iio, fit=None) -> dict:
    """Undistort one frame's ``image`` through its distorted ``camera`` into ``target`` (PNG, 8 bits, alpha kept;
    an image of more bits, a 16-bit PNG, into a TIFF of as many beside it: :func:`_undistort_deep`),
    fitted by ``fit`` when given (frames whose cameras undistort to several sizes: :func:`_fitted`), and return the
    frame for the new ``transforms.json``: its keys less the camera's, with ``pinhole``'s intrinsics (fitted
    alike) and ``file_path``, the new image's path in the new folder."""
    import numpy as np

    from pipeline.scenes.blender import _pixels

    pixels = _pixels(image)  # (all 16 bits of a 16-bit PNG)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] in (1, 2):  # grey (+ alpha)
        pixels = np.concatenate([np.repeat(pixels[..., :1], 3, -1), pixels[..., 1:]], -1)
    if pixels.dtype != np.uint8:  # more than 8 bits: COLMAP's undistortion in floating point, as many bits kept
        target, file_path = target.with_suffix(".tiff"), Path(file_path).with_suffix(".tiff").as_posix()
        _write_deep(target, _undistort_deep(camera, pinhole, pixels), fit, pixels.dtype)
    else:
        channels = [pixels[..., :3]] + ([pixels[..., 3]] if pixels.shape[-1] == 4 else [])
        out = []
        for part in channels:
            bitmap, _ = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(np.ascontiguousarray(part)),
                                                 camera)
            out.append(np.asarray(bitmap.to_array()).reshape(bitmap.height, bitmap.width, -1))
        iio.imwrite(target, _fitted(np.concatenate(out, -1), fit))
    fx, fy, cx, cy = pinhole.params
    (fx, fy, cx, cy), (w, h) = ((fx, fy, cx, cy), (pinhole.width, pinhole.height)) if fit is None else \
        (fit.intrinsics(fx, fy, cx, cy), fit.size)
    kept = {k: v for k, v in frame.items() if k not in (*_CAMERA_KEYS, "depth_file_path")}
    return {**kept, "file_path": file_path, "fl_x": float(fx), "fl_y": float(fy), "cx": float(cx),
            "cy": float(cy), "w": int(w), "h": int(h)}


def distorted_view(photo, model: str, params) -> "np.ndarray":
    """``photo`` (H, W, C, a pinhole camera's image, any dtype) as a camera with COLMAP ``model`` (e.g. OPENCV) and
    ``params`` (its intrinsics, the pinhole camera's, then its distortion) sees it: at each pixel's centre the
    photo sampled (bilinear, edges held) at the point the camera's undistortion (pycolmap's ``cam_from_img``) gives,
    as uint8 (H, W, C). For simulating lens distortion on rendered or synthetic views (the tests and the colmap
    benchmark)."""
    import numpy as np
    import pycolmap
    from scipy.ndimage import map_coordinates

    pixels = np.asarray(photo, dtype=np.float64)
    h, w = pixels.shape[:2]
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if model.startswith("SIMPLE") else params[:4]
    camera = pycolmap.Camera(model=model, width=w, height=h, params=list(map(float, params)), camera_id=1)
    v, u = np.mgrid[0:h, 0:w] + 0.5
    seen = camera.cam_from_img(np.stack([u.ravel(), v.ravel()], -1))  # (P, 2) normalised pinhole coordinates
    x, y = fx * seen[:, 0] + cx, fy * seen[:, 1] + cy
    warped = np.stack([map_coordinates(pixels[..., c], [y - 0.5, x - 0.5], order=1, mode="nearest")
                       for c in range(pixels.shape[-1])], -1).reshape(h, w, -1)
    return np.round(warped).clip(0, 255).astype(np.uint8)
