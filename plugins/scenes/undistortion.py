"""Undistortion of a COLMAP capture whose cameras have lens distortion, for the ``colmap`` scene source.

The pipeline casts a pinhole camera's rays, so a capture whose model has distortion (OPENCV, SIMPLE_RADIAL and
the like with a non-zero parameter, or a fisheye model) is first undistorted as the ``photos`` source undistorts
what structure from motion found: COLMAP's own undistortion of the registered images into pinhole images and a
PINHOLE model (:func:`pipeline.scenes.sfm.undistort_model`; cameras whose undistorted images come out at several
sizes are fitted to one). The result is cached under ``NLS_CACHE`` (``scenes/undistorted-<hash>``), keyed by the
model's files and the images' contents, and loaded as a capture; object masks are undistorted with their images
and cached beside it. The poses and sparse points are the model's, so the scene's frame (and ``--frame input``)
is the capture's as it would be without undistortion.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from pipeline.notices import warn
from plugins.scenes.config import ColmapConfig


def undistorted_capture(root: Path, cfg: ColmapConfig) -> Optional[tuple[Path, Optional[str], dict]]:
    """``(cache entry, undistorted masks folder or None, facts)`` for the capture at ``root`` when its model has
    lens distortion (:func:`pipeline.scenes.colmap.distorted_cameras`): the entry holds ``capture/`` (``images/``,
    ``sparse/``, PINHOLE) and ``meta.json``. None when no camera is distorted, or when the images are not at
    their cameras' size (a downscaled copy such as ``images_2``, which COLMAP cannot undistort with the model's
    cameras: a warning says to load ``images`` and downscale after), or when the capture is incomplete (the loader
    then says what is wrong)."""
    from pipeline.scenes.blender import image_size
    from pipeline.scenes.colmap import MODEL_FILES, _has_pose, _pycolmap, distorted_cameras, find_sparse_model
    from pipeline.scenes.masks import mask_paths, undistort_masks
    from pipeline.scenes.sfm import undistort_model
    from plugins.scenes.sources import _fingerprint, cached_render

    folder = root / cfg.images
    if not root.is_dir() or not folder.is_dir():
        return None
    model, ext = find_sparse_model(root, cfg.sparse)
    distorted = distorted_cameras(model, ext)
    if not distorted:
        return None
    rec = _pycolmap(model).Reconstruction(str(model))
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
    listed = "; ".join(f"camera {i} {what}" for i, what in list(distorted.items())[:3]) + (
        f" and {len(distorted) - 3} more" if len(distorted) > 3 else "")
    names = [im.name for im in posed]
    key = {"model": [_fingerprint(model / f"{name}{ext}") for name in MODEL_FILES],
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
