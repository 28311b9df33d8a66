"""Object masks for captures: one mask per image, white on the object and black on what is to be left out (a
table, a room, people walking by). A masked image is the image composited on the scene's background by its mask,
which also becomes the image's alpha: the field then models the object alone, as NeRF-synthetic scenes show it.

Masks sit in a folder of their own, each named as its image (``0001.jpg``), as the image with ``.png`` added
(``0001.jpg.png``, COLMAP's convention) or as the image's stem with ``.png`` (``0001.png``). Grey levels scale
to [0, 1], so soft edges stay soft; a colour mask is read by its luma, a cut-out (an image with transparency, as
background removers write them) by its alpha.

Photos posed by structure from motion are undistorted before they are trained on, so their masks are undistorted
with the same cameras (:func:`undistort_masks`, COLMAP's own undistortion of one image at a time), after the same
turn and crop as their photos (:mod:`pipeline.scenes.upright_photos`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.types import DataError


def mask_candidates(folder: Path, name: str) -> list[Path]:
    """Where the mask of the image ``name`` may be in ``folder`` (see the module docstring), in the order looked for."""
    return [folder / name, folder / f"{name}.png", (folder / name).with_suffix(".png")]


def files_per_image(folder: Path, names: Sequence[str], candidates, what: str, missing_folder: str) -> list[Path]:
    """The file of each image of ``names`` in ``folder``: the first of ``candidates(folder, name)`` (paths) that
    is a file. DataError when the folder is missing (``what`` folder ... not found; ``missing_folder`` says what to
    give) or some image has none, naming the first few and, for the first, the names looked for."""
    if not folder.is_dir():
        raise DataError(f"{what}s folder {folder} not found; {missing_folder}")
    found = [next((p for p in candidates(folder, n) if p.is_file()), None) for n in names]
    missing = [n for n, p in zip(names, found) if p is None]
    if missing:
        n = missing[0]
        looked = [p.name for p in candidates(folder, n)]
        raise DataError(f"{folder}: no {what} for {len(missing)} of the {len(names)} images: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (for {n} it looked for "
                        f"{', '.join(looked[:-1])} and {looked[-1]}); every image needs its {what}")
    return [p for p in found if p is not None]


def mask_paths(folder: Path, names: Sequence[str]) -> list[Path]:
    """The mask of each image of ``names`` in ``folder`` (:func:`files_per_image`)."""
    return files_per_image(folder, names, mask_candidates, "mask", "give the folder that holds one mask per image")


def read_mask(path: Path) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the mask at ``path``, 1 on the object. An image with an alpha channel that is not
    opaque everywhere (a cut-out, as background removers write them) is read by its alpha; others by their grey
    level. DataError when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA", "PA") else None
            if alpha is not None and alpha.min() < 255:
                a = alpha.astype(np.float32) / 255.0
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode != "I" or np.asarray(im).max() > 255
                                                        else 255.0)
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float32)
            else:
                a = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read the mask {path}: {exc}") from None
    return np.clip(a, 0.0, 1.0)


def undistort_masks(masks: Sequence[Path], names: Sequence[str], model: Path, out: Path,
                    turn=None, read=None) -> None:
    """Write the mask of each image ``names[i]`` (``masks[i]``) of the sparse ``model`` (distorted cameras, as
    structure from motion found them) into ``out``, undistorted as COLMAP undistorts the photos, as PNG named
    ``<image name>.png``. ``turn(name, mask)`` first gives each mask (H, W) uint8 as its photo was posed (turned
    upright, cropped; :func:`pipeline.scenes.upright_photos.shape_mask`). ``read(path)`` reads a mask as (H, W)
    in [0, 1] (default :func:`read_mask`; e.g. an RGBA image's alpha). Images the model did not register are
    skipped. DataError when a mask's size is not its camera's."""
    from PIL import Image

    from pipeline.scenes.colmap import _pycolmap

    from pipeline.scenes.sfm import undistorted_fits

    pycolmap = _pycolmap(model)
    rec = pycolmap.Reconstruction(model)
    by_name = {im.name: im for im in rec.images.values()}
    options = pycolmap.UndistortCameraOptions()
    fits = undistorted_fits(pycolmap, rec)  # (several cameras: fitted to one size as the photos were)
    out.mkdir(parents=True, exist_ok=True)
    for path, name in zip(masks, names):
        if name not in by_name:
            continue
        camera = rec.cameras[by_name[name].camera_id]
        grey = np.round((read or read_mask)(path) * 255.0).astype(np.uint8)
        if turn is not None:
            grey = turn(name, grey)
        if grey.shape != (camera.height, camera.width):
            raise DataError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} (WxH) as its photo was posed, but the "
                            f"photo {name} is {camera.width}x{camera.height}; a mask must be its photo's size")
        bitmap, _ = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(grey), camera)
        undistorted = Image.fromarray(np.asarray(bitmap.to_array()).reshape(-1, bitmap.width))
        if fits:
            undistorted = fits[int(camera.camera_id)].image(undistorted)
        target = out / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        undistorted.save(target)


def points_on_masks(rec, masks: dict[int, Path]) -> "np.ndarray":
    """(P,) bool over ``rec.points3D`` (a pycolmap reconstruction, in its order): whether each sparse point lies
    on the object, by the masks ``masks`` (image id -> mask file) of the images that see it: kept when most of
    its observations in those images fall on mask values of at least 0.5 (a mask of another size than its
    camera's, as for ``images_2``, is read at the scaled pixel). A point none of them sees is kept."""
    read: dict[int, np.ndarray] = {}
    keep = []
    for point in rec.points3D.values():
        on = seen = 0
        for element in point.track.elements:
            if element.image_id not in masks:
                continue
            if element.image_id not in read:
                read[element.image_id] = read_mask(masks[element.image_id])
            m = read[element.image_id]
            image = rec.images[element.image_id]
            camera = rec.cameras[image.camera_id]  # (a mask of a downscaled image: its pixel scaled alike)
            xy = np.asarray(image.points2D[element.point2D_idx].xy) * (m.shape[1] / camera.width,
                                                                        m.shape[0] / camera.height)
            x, y = np.floor(xy).astype(int)
            seen += 1
            on += bool(0 <= y < m.shape[0] and 0 <= x < m.shape[1] and m[y, x] >= 0.5)
        keep.append(seen == 0 or 2 * on > seen)
    return np.asarray(keep, dtype=bool)
