"""COLMAP capture loader: an image folder and a COLMAP sparse model, read with pycolmap.

Layout: ``<root>/images/`` (or a downscaled copy such as ``images_2/``) and a sparse model, ``cameras``,
``images`` and ``points3D`` as ``.bin`` or ``.txt``, in ``<root>/sparse/0/`` or ``<root>/sparse/``. The
model is read with pycolmap (the ``colmap`` extra, ``pip install 'neural-level-sets[colmap]'``), 3.11 to
4.x: ``Image.cam_from_world`` is a property up to 3.11 and a method from 3.12 on, where it also composes
a camera rig's pose.

* Cameras: PINHOLE and SIMPLE_PINHOLE give ``fx, fy, cx, cy``. The perspective models with lens distortion
  (:data:`COLMAP_DISTORTED_MODELS`) are read as their pinhole part, with a warning where a distortion
  parameter is not zero (undistort with COLMAP's image_undistorter; the ``colmap`` scene source does it itself,
  :mod:`plugins.scenes.undistortion`); fisheye, spherical and other models
  are refused. Intrinsics are per image, scaled from the camera's size to the image's (``images_2`` holds
  half-size copies).
* Poses: COLMAP's world-to-camera ``[R | t]`` in OpenCV axes (x right, y down, z forward) becomes the
  project's camera-to-world in Blender/OpenGL axes (y up, looking down -z):
  ``c2w = [[R^T, -R^T t], [0, 1]] @ diag(1, -1, -1, 1)``.
* Normalisation: the rotation is the smallest one that takes the scene's up direction to +Z. By default
  (``orientation="vertical"``, as nerfstudio's ``auto_orient_and_center_poses`` method of that name) up is
  the direction most nearly perpendicular to every camera's x axis (the eigenvector of ``X^T X`` with the
  smallest eigenvalue, ``X`` (N, 3) the x axes), signed to agree with the cameras' mean up: exact for
  cameras held without roll, whatever their elevation and azimuths. When the x axes are nearly parallel
  (the middle eigenvalue below :data:`PARALLEL_AXES` x N, a spread of about 10 degrees: a forward-facing
  capture) it is the mean up made perpendicular to them. ``orientation="up"`` takes the cameras' mean up
  (nerfstudio's ``up``), which tilts when the cameras look inward from uneven azimuths (lego's train views:
  9.6 degrees); ``"none"`` keeps COLMAP's axes; ``up`` gives the direction. Centre and scale come from the sparse
  points rather than nerfstudio's camera positions: the 1st-99th percentile box of the points nearer to the
  cameras' focus (the point closest to all optical axes) than the median camera is (what lies inside the
  ring of cameras), enlarged by 10% and made the cube ``[-1, 1]^3``; with object masks, only the points that
  most of their observations place on the object (:func:`pipeline.scenes.masks.points_on_masks`), so the box
  is the object's and not the table's it stands on. Without such points the box is the
  cube about the focus whose half side is the radius of the largest ball about it that every camera sees
  whole, ``min_i d_i sin(a_i)`` (``d_i`` the camera's distance to the focus, ``a_i`` the half angle of the
  cone inscribed in its frustum), enlarged by 10% likewise: an object kept in frame in every view lies
  inside it. A COLMAP point ``p`` maps to ``p' = s R (p - c)``, the 4x4 ``meta["input_frame"]["to_run"]``,
  which ``nls export --frame input`` inverts.
* Sparse points: those inside the scene box, in the run's frame, are the scene's ``points`` (P, 3), which
  ``nls view`` shows and the ``point_fit`` evaluator scores the mesh against.
* Splits: the LLFF / mip-NeRF 360 rule: the images sorted by name, every ``test_every``-th from the first
  is ``test``, the others ``train``.

The pipeline renders bounded, object-centric scenes: there is no contraction of unbounded space, so what
lies far outside the scene box (the background of a 360-degree capture) is not modelled.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.notices import warn
from pipeline.scenes.blender import (FrameList, check_load_options, image_size, in_box, load_frames,
                                     near_far_from_box, resolve_downscale, rotation_fault, warn_distortion)
from pipeline.scenes.camera_fit import fit_facts, fits_to_one_size
from pipeline.types import DataError, SceneData

__all__ = ["load_colmap", "find_sparse_model", "colmap_normalisation", "scene_up", "COLMAP_PINHOLE_MODELS",
           "COLMAP_DISTORTED_MODELS", "COLMAP_SPLITS"]

#: what installs pycolmap, the reader of COLMAP models
INSTALL = "pip install 'neural-level-sets[colmap]'"
#: the oldest pycolmap tested (3.11.1, 3.12.6 and 4.2.1 were)
PYCOLMAP_MIN = (3, 11)
#: the files of a sparse model, each ``.bin`` or ``.txt``
MODEL_FILES = ("cameras", "images", "points3D")
#: the splits a COLMAP capture is cut into
COLMAP_SPLITS = ("train", "test")
#: pinhole models: their parameters in COLMAP's order
COLMAP_PINHOLE_MODELS = {"SIMPLE_PINHOLE": ("f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy")}
#: perspective models with lens distortion, read as their pinhole part (non-zero distortion is warned about)
COLMAP_DISTORTED_MODELS = {
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
    "SIMPLE_DIVISION": ("f", "cx", "cy", "k"),
    "DIVISION": ("fx", "fy", "cx", "cy", "k"),
}
_PINHOLE_PARAMS = ("f", "fx", "fy", "cx", "cy")
#: percentiles of the sparse points that bound the scene box, and how much the box is enlarged
BOX_PERCENTILES = (1.0, 99.0)
BOX_MARGIN = 0.1
#: fewer points than this inside the ring of cameras: the box comes from all points
_MIN_INNER_POINTS = 10
#: how far a pose quaternion's norm may be from 1
_QUAT_TOL = 1e-4
#: ways of finding the scene's up direction (see the module docstring)
ORIENTATIONS = ("vertical", "up", "none")
#: the cameras' x axes count as parallel when the middle eigenvalue of X^T X is below this times N
PARALLEL_AXES = 0.03


# --------------------------------------------------------------------------- the model


def find_sparse_model(root: Path, sparse: Optional[str] = None) -> tuple[Path, str]:
    """``(folder, ext)``: the sparse model under ``root`` (``sparse`` when given, else ``sparse/0`` then
    ``sparse``) whose cameras, images and points3D files all end in ``ext`` (``.bin`` first, then ``.txt``);
    DataError naming the folders tried and what they lack."""
    tried = [root / sparse] if sparse else [root / "sparse" / "0", root / "sparse"]
    for folder in tried:
        for ext in (".bin", ".txt"):
            if all((folder / f"{name}{ext}").is_file() for name in MODEL_FILES):
                return folder, ext
    hints = []
    for folder in tried:
        have = sorted(p.name for p in folder.glob("*") if p.stem in MODEL_FILES) if folder.is_dir() else []
        if have:
            hints.append(f"{folder} has only {', '.join(have)}")
    models = sorted(p.name for p in (root / "sparse").glob("*") if p.is_dir() and p.name.isdigit()) \
        if not sparse and (root / "sparse").is_dir() else []
    if models and models != ["0"]:
        hints.append(f"{root / 'sparse'} holds the models {', '.join(models)}: name one with sparse: sparse/N")
    raise DataError(f"{root}: no COLMAP sparse model: expected {', '.join(MODEL_FILES)} (all .bin or all .txt) in "
                    f"{' or '.join(map(str, tried))}" + (f" ({'; '.join(hints)})" if hints else ""))


def _pycolmap(where: Path):
    """The pycolmap module; DataError saying how to install it when it is missing or older than 3.11."""
    try:
        import pycolmap
    except ImportError as exc:
        raise DataError(f"{where}: reading a COLMAP model needs pycolmap, which is not installed ({exc}); "
                        f"{INSTALL}") from None
    version = tuple(int(x) for x in re.findall(r"\d+", getattr(pycolmap, "__version__", "0"))[:2])
    if version < PYCOLMAP_MIN:
        raise DataError(f"{where}: pycolmap {pycolmap.__version__} is older than the "
                        f"{'.'.join(map(str, PYCOLMAP_MIN))} nls reads COLMAP models with; pip install -U "
                        f"'neural-level-sets[colmap]'")
    return pycolmap


def _camera_ids(pycolmap, model: Path, ext: str) -> Optional[list[int]]:
    """The camera ids of ``model``'s cameras file read alone (beside an empty model), or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            empty = pycolmap.Reconstruction()
            (empty.write_binary if ext == ".bin" else empty.write_text)(tmp)
            for p in Path(tmp).iterdir():
                if p.stem not in MODEL_FILES:  # rigs, frames: made anew, one per camera, without them
                    p.unlink()
            shutil.copyfile(model / f"cameras{ext}", Path(tmp) / f"cameras{ext}")
            rec = pycolmap.Reconstruction()
            (rec.read_binary if ext == ".bin" else rec.read_text)(tmp)
            return sorted(int(i) for i in rec.cameras)
    except Exception:  # the diagnosis is best-effort: the caller's message stands without it
        return None


def _read_model(pycolmap, model: Path, ext: str):
    """``model``'s reconstruction as pycolmap reads it; DataError on a file it cannot read."""
    rec = pycolmap.Reconstruction()
    try:
        (rec.read_binary if ext == ".bin" else rec.read_text)(str(model))
    except Exception as exc:  # pycolmap raises ValueError, IndexError, RuntimeError on malformed files
        text = " ".join(str(exc).split())
        dangling = re.search(r"(?:Camera|Rig) with ID (\d+) does not exist", text)
        if dangling:
            ids = _camera_ids(pycolmap, model, ext)
            held = f" (it holds camera ids {', '.join(map(str, ids))})" if ids else ""
            raise DataError(f"{model / f'images{ext}'}: an image refers to camera id {dangling[1]}, which "
                            f"{model / f'cameras{ext}'} does not hold{held}; each image's CAMERA_ID must be "
                            f"one of the cameras file's") from None
        raise DataError(f"cannot read the COLMAP model {model} ({', '.join(n + ext for n in MODEL_FILES)}) "
                        f"with pycolmap {pycolmap.__version__}: {type(exc).__name__}: {text}") from None
    return rec


def _intrinsics(cam_id: int, camera, where: Path) -> tuple[tuple, list[str]]:
    """``((fx, fy, cx, cy, width, height), distortion)`` of a pycolmap camera, ``distortion`` naming its
    non-zero distortion parameters; DataError for a model that is not a perspective one."""
    model = camera.model.name
    names = COLMAP_PINHOLE_MODELS.get(model) or COLMAP_DISTORTED_MODELS.get(model)
    if names is None:
        valid = ", ".join([*COLMAP_PINHOLE_MODELS, *COLMAP_DISTORTED_MODELS])
        raise DataError(f"{where}: camera {cam_id} has the model {model}, whose rays are not a pinhole camera's "
                        f"(fisheye, spherical and the like); valid models: {valid}. The colmap scene source "
                        f"undistorts such a capture itself (scene.undistort: true, its default), or undistort the "
                        f"images with COLMAP's image_undistorter, which writes a PINHOLE model")
    params = np.asarray(camera.params, dtype=np.float64)
    if params.shape != (len(names),) or not np.isfinite(params).all():
        raise DataError(f"{where}: camera {cam_id} ({model}) has parameters {params.tolist()}; expected "
                        f"{len(names)} finite numbers {', '.join(names)}")
    p = dict(zip(names, params.tolist()))
    fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
    w, h = int(camera.width), int(camera.height)
    if not (fx > 0 and fy > 0 and w > 0 and h > 0):
        raise DataError(f"{where}: camera {cam_id} ({model}) has focal length {fx}, {fy} and size {w}x{h}; "
                        f"each must be positive")
    distortion = [n for n in names if n not in _PINHOLE_PARAMS and p[n] != 0]
    return (fx, fy, p["cx"], p["cy"], float(w), float(h)), distortion


def distorted_cameras(rec, cameras_file: Path) -> dict[int, str]:
    """Camera id -> ``"MODEL k1, p1"`` (the model and its non-zero distortion parameters; the model alone for a
    fisheye or other non-perspective one) for each camera of the pycolmap reconstruction ``rec`` (read from
    ``cameras_file``) whose rays are not a pinhole camera's; {} when every camera is a pinhole one or has zero
    distortion."""
    out = {}
    for cam_id, camera in sorted(rec.cameras.items()):
        name = camera.model.name
        if name in COLMAP_DISTORTED_MODELS:
            _, distortion = _intrinsics(cam_id, camera, cameras_file)
            if distortion:
                out[int(cam_id)] = f"{name} {', '.join(distortion)}"
        elif name not in COLMAP_PINHOLE_MODELS:
            out[int(cam_id)] = name
    return out


def distortion_list(distorted: dict[int, str]) -> str:
    """``"camera 1 OPENCV k1, p2; camera 3 ..."`` of :func:`distorted_cameras`' result, the first three and how
    many more."""
    listed = "; ".join(f"camera {i} {what}" for i, what in list(distorted.items())[:3])
    return listed + (f" and {len(distorted) - 3} more cameras" if len(distorted) > 3 else "")


def view_half_angle(fx: float, fy: float, cx: float, cy: float, width: float, height: float) -> float:
    """Radians: the half angle of the widest cone about the optical axis inside a pinhole camera's frustum
    (the principal point's nearest image edge, in units of the focal length along that axis)."""
    return float(np.arctan(min(cx / fx, (width - cx) / fx, cy / fy, (height - cy) / fy)))


def _world_to_camera(pycolmap, image, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(R (3, 3), t (3,))`` of the image's world-to-camera pose; DataError when R is not a rotation."""
    pose = image.cam_from_world
    if not isinstance(pose, pycolmap.Rigid3d):  # a method from pycolmap 3.12 on (rig-aware)
        pose = pose()
    quat = np.asarray(pose.rotation.quat, dtype=np.float64)  # x, y, z, w
    rot = np.asarray(pose.rotation.matrix(), dtype=np.float64)
    t = np.asarray(pose.translation, dtype=np.float64).reshape(3)
    what = f"{where}: image {image.image_id} {image.name!r}"
    if not (np.isfinite(quat).all() and np.isfinite(t).all()):
        raise DataError(f"{what}: its pose has non-finite values (quaternion {quat.tolist()}, translation "
                        f"{t.tolist()})")
    norm = float(np.linalg.norm(quat))
    fault = (f"comes from a quaternion of norm {norm:.6g}, not 1 (within {_QUAT_TOL:g})"
             if abs(norm - 1.0) > _QUAT_TOL else rotation_fault(rot))
    if fault is not None:
        q = [quat[3], *quat[:3]]
        raise DataError(f"{what}: its rotation (QW, QX, QY, QZ = {', '.join(f'{v:.6g}' for v in q)}) {fault}; a "
                        f"pose's quaternion must be a unit quaternion")
    return rot, t


def _has_pose(image) -> bool:
    """Whether the image is registered (``has_pose`` from pycolmap 3.11, ``registered`` before)."""
    has = getattr(image, "has_pose", None)
    return bool(getattr(image, "registered", True) if has is None else has)


# --------------------------------------------------------------------------- normalisation


def up_rotation(up: np.ndarray) -> np.ndarray:
    """(3, 3): the smallest rotation taking the unit vector ``up`` to +Z."""
    z = np.array([0.0, 0.0, 1.0])
    axis, cos = np.cross(up, z), float(up @ z)
    sin = float(np.linalg.norm(axis))
    if sin < 1e-12:
        return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])  # a half turn about x
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k * ((1.0 - cos) / sin ** 2)


def scene_up(c2w: np.ndarray, orientation: str = "vertical") -> tuple[np.ndarray, str]:
    """``(up (3,), how)``: the unit up direction of cameras ``c2w`` (N, 4, 4), OpenCV axes, in their world,
    by ``orientation`` (see the module docstring), and the method that gave it."""
    mean_up = -c2w[:, :3, 1].sum(0)  # OpenCV: y points down
    norm = float(np.linalg.norm(mean_up))
    if orientation == "none" or (orientation == "up" and norm <= 1e-9 * len(c2w)):
        return np.array([0.0, 0.0, 1.0]), "none"
    mean_up = mean_up / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
    if orientation == "up":
        return mean_up, "up"
    x = c2w[:, :3, 0]
    values, vectors = np.linalg.eigh(x.T @ x)  # ascending
    if values[1] < PARALLEL_AXES * len(c2w):  # x axes nearly parallel: only their normal plane is known
        axis = vectors[:, 2]
        up = mean_up - axis * float(axis @ mean_up)
        how = "vertical (x axes parallel: the mean up, made perpendicular to them)"
    else:
        up, how = vectors[:, 0], "vertical"
    n = float(np.linalg.norm(up))
    if n < 1e-9:
        return mean_up, "up (no vertical found)"
    up = up / n
    return (up if float(up @ mean_up) >= 0 else -up), how


def _focus(origins: np.ndarray, dirs: np.ndarray) -> Optional[np.ndarray]:
    """(3,): the point nearest to all optical axes (``origins`` (N, 3), unit ``dirs`` (N, 3)) in least
    squares, or None when the axes are near parallel or it lies behind most cameras."""
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3): onto each axis's normal plane
    a, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    if np.linalg.eigvalsh(a)[0] < 0.01 * len(origins):
        return None
    focus = np.linalg.solve(a, b)
    return focus if np.mean(((focus - origins) * dirs).sum(-1) > 0) >= 0.5 else None


def _box(origins: np.ndarray, dirs: np.ndarray, points: np.ndarray,
         half_angles: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(lo, hi, how)``: the robust box (3,), (3,) of the scene in the frame of ``origins``/``dirs`` (N, 3)
    and ``points`` (P, 3) (see the module docstring), and a record of how it was found; ``half_angles``
    (N,): each camera's inscribed view cone, for the box without points (None: half the median distance)."""
    focus = _focus(origins, dirs)
    if len(points):
        used = points
        if focus is not None:
            ring = np.median(np.linalg.norm(origins - focus, axis=1))
            inner = points[np.linalg.norm(points - focus, axis=1) < ring]
            used = inner if len(inner) >= _MIN_INNER_POINTS else points
        lo, hi = np.percentile(used, BOX_PERCENTILES, axis=0)
        if float((hi - lo).max()) > 0:
            return lo, hi, {"aabb_from": "points3D", "points": int(len(points)), "points_used": int(len(used)),
                            "percentiles": list(BOX_PERCENTILES)}
    centre = origins.mean(0) if focus is None else focus
    dist = np.linalg.norm(origins - centre, axis=1)
    if focus is None:
        half, how = float(dist.max()), "the cameras' spread"
    elif half_angles is not None and (half_angles > 0).any():  # the largest ball about the focus every view holds
        seen = half_angles > 0  # (a principal point outside its image bounds no cone)
        half, how = float(np.min(dist[seen] * np.sin(half_angles[seen]))), "the ball every camera sees whole"
    else:
        half, how = 0.5 * float(np.median(dist)), "half the cameras' median distance"
    half = half if half > 0 else 1.0  # a single camera without points: an arbitrary unit box
    return centre - half, centre + half, {"aabb_from": "cameras", "points": int(len(points)), "box_rule": how}


def colmap_normalisation(c2w: np.ndarray, points: np.ndarray, *, center: Optional[Sequence[float]] = None,
                         scale: Optional[float] = None, orientation: str = "vertical",
                         up: Optional[Sequence[float]] = None,
                         half_angles: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(T, box, how)``: the 4x4 similarity ``T`` taking COLMAP world points ``p`` to the normalised frame
    (``p' = s R (p - c)``, +Z up), the scene box (6,) there, and a record of how they were found.

    Args:
        c2w: (N, 4, 4) camera-to-world poses in COLMAP's world, OpenCV camera axes.
        points: (P, 3) sparse points (P may be 0).
        center: COLMAP-world point ``c`` that becomes the origin (default: the box's centre).
        scale: ``s`` (default: the box's largest half-side becomes 1).
        orientation: how the up direction is found (:func:`scene_up`), unless ``up`` gives it.
        up: (3,) the up direction in COLMAP coordinates.
        half_angles: (N,) half angles (radians) of the cones inscribed in the cameras' frusta, which bound
            the box when there are no points (:func:`view_half_angle`).
    """
    origins = c2w[:, :3, 3]
    if up is not None:
        given = np.asarray(up, dtype=np.float64)
        found, oriented = given / np.linalg.norm(given), "the up option"
    else:
        found, oriented = scene_up(c2w, orientation)
    rot = up_rotation(found)
    lo, hi, how = _box(origins @ rot.T, c2w[:, :3, 2] @ rot.T, points @ rot.T, half_angles)
    mid = 0.5 * (lo + hi)
    centre = mid if center is None else rot @ np.asarray(center, dtype=np.float64)  # in the rotated frame
    half = 0.5 * float((hi - lo).max()) * (1.0 + BOX_MARGIN)
    s = 1.0 / half if scale is None else float(scale)
    T = np.eye(4)
    T[:3, :3] = s * rot
    T[:3, 3] = -s * centre
    box = np.concatenate([s * (mid - centre) - s * half, s * (mid - centre) + s * half])
    how.update({"rotation": rot.tolist(), "scale": s, "centre": (rot.T @ centre).tolist(), "orientation": oriented,
                "up": found.tolist()})
    return T, box, how


# --------------------------------------------------------------------------- entry point


def _missing_images(folder: Path, missing: list[str], where: Path, total: int) -> DataError:
    """The error for images the model names that ``folder`` lacks: the first few, and the files with the first
    one's stem when its extension differs."""
    first = Path(missing[0])
    others = sorted(p.name for p in (folder / first.parent).glob(f"{first.stem}.*")) if folder.is_dir() else []
    hint = (f"; the folder has {', '.join(others[:3])} (another extension: convert or rename the files)"
            if others else "")
    names = ", ".join(repr(m) for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    return DataError(f"{where}: {len(missing)} of its {total} posed images are not in the images folder {folder} "
                     f"({names}){hint}; the folder must hold the images under the names the model gives them "
                     f"(the images option names another folder, e.g. images_2)")


def _check_size(path: Path, cam_id: int, size: tuple[int, int], cams: dict, where: Path) -> None:
    """DataError when the image at ``path``, of ``size`` (W0, H0) on disk, is not its camera's picture scaled by one
    factor (1 pixel of rounding); ``cams`` maps a camera id to its :func:`_intrinsics`."""
    (w0, h0), (w, h) = size, cams[cam_id][0][4:]
    if abs(h * w0 / w - h0) > 1.0 + 1e-9:
        raise DataError(f"{path} is {w0}x{h0} (WxH) but its camera {cam_id} in {where} is "
                        f"{int(w)}x{int(h)}: not the same picture scaled; the images folder must hold "
                        f"the model's images, or copies all downscaled by one factor (images_2)")


def _check_sizes(loaded: dict, cams: dict, where: Path) -> None:
    """:func:`_check_size` for every image loaded: ``loaded`` maps a split to ``(FrameList, camera id per frame,
    (W0, H0) on disk)``."""
    for sp, frame_cams, size in loaded.values():
        for path, cam_id in zip(sp.paths, frame_cams):
            _check_size(path, cam_id, size, cams, where)


def _warn_fitted(where: Path, fits: dict, posed: list) -> None:
    """Warn that the images of cameras of several sizes are fitted to one (``fits``: camera id -> Fit)."""
    count: dict[tuple[int, int], int] = {}
    for im in posed:
        count[fits[im.camera_id].source] = count.get(fits[im.camera_id].source, 0) + 1
    w, h = next(iter(fits.values())).size
    listed = ", ".join(f"{n} of {sw}x{sh}" for (sw, sh), n in sorted(count.items(), key=lambda kv: -kv[1])[:6])
    warn(f"{where}: the images' cameras are of {len(count)} sizes ({listed}{' ...' if len(count) > 6 else ''}), "
         f"and a split loads at one: each image is fitted to {w}x{h}, scaled down and cropped, centred, its "
         f"intrinsics alike")


def load_colmap(root: Path, *, images: str = "images", sparse: Optional[str] = None,
                splits: Sequence[str] = COLMAP_SPLITS, test_every: int = 8,
                background: Sequence[float] = (1.0, 1.0, 1.0), downscale: "int | str" = 1,
                max_images: Optional[int] = None, aabb: Optional[Sequence[float]] = None,
                center: Optional[Sequence[float]] = None, scale: Optional[float] = None,
                orientation: str = "vertical", up: Optional[Sequence[float]] = None,
                exclude: Sequence[str] = (), masks: Optional[str] = None, mask_use: str = "object",
                depths: Optional[str] = None, sparse_depth: bool = False,
                progress: Optional[bool] = None) -> SceneData:
    """Load a COLMAP capture (see the module docstring for the layout, axes and normalisation).

    Args:
        root: the capture folder.
        images: its image folder (``images_2``: copies downscaled by 2; intrinsics follow the image size).
        sparse: its model folder (default: ``sparse/0``, else ``sparse``).
        splits: of ``train``, ``test``; a split with no image is left out (``meta["splits_missing"]``).
        test_every: every ``test_every``-th image by name, from the first, is ``test`` (0: none).
        background: RGB in [0, 1] that RGBA images are composited onto.
        downscale: integer area-filter factor on top of ``images``, or ``"auto"``
            (:func:`pipeline.scenes.blender.resolve_downscale`).
        max_images: keep only the first ``max_images`` images of every split.
        aabb: (6,) scene box in the normalised frame (default: the cube [-1, 1]^3 of the normalisation).
        center, scale: override the normalisation's centre (3,) (COLMAP coordinates) and scale.
        orientation: ``vertical``, ``up`` or ``none``: how the up direction is found.
        up: (3,) the up direction in COLMAP coordinates, instead of finding it.
        exclude: names of images left out, as if the model had not registered them (before the normalisation
            and the split rule); a name the model does not hold is warned about.
        masks: a folder of object masks, one per image (under ``root`` unless absolute;
            :mod:`pipeline.scenes.masks`): each image is composited on ``background`` by its mask, which becomes
            its alpha.
        mask_use: ``object`` (the above) or ``ignore``: the masks mark the pixels that count (``valid``), black
            where something moved; those pixels are neither trained on nor scored. Either way the box is fitted
            to the sparse points that most of their observations place on white.
        depths: a folder of depth maps, one per image (under ``root`` unless absolute; COLMAP's
            ``dense/stereo/depth_maps``: :mod:`pipeline.scenes.depth_maps`), in COLMAP units, read into ``depths``
            in the normalised frame's units.
        sparse_depth: instead, each image's sparse depth map from the model's keypoints: the z-depth of the 3D
            point each keypoint observes, at its pixel (:func:`pipeline.scenes.depth_maps.keypoint_depths`).
        progress: show a progress bar (default: only for >= 64 images on a terminal).

    Returns:
        SceneData with images ``(N, H, W, 3)`` float32 (``alphas`` ``(N, H, W, 1)`` for RGBA images or masks),
        per-image intrinsics, ``(N, 4, 4)`` camera-to-world poses in the normalised frame, near/far from the
        box and the cameras; ``meta["input_frame"]`` holds the 4x4 ``to_run`` from COLMAP coordinates.

    Example:
        >>> scene = load_colmap(Path("garden"), images="images_4", max_images=4)
        >>> scene.splits["train"].cameras.c2w.shape
        torch.Size([4, 4, 4])
    """
    import torch

    root = Path(root)
    bg = check_load_options(background, downscale, max_images)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    bad = [s for s in splits if s not in COLMAP_SPLITS]
    if not splits or bad:
        raise DataError(f"load_colmap: splits {list(splits)}: a COLMAP capture has the splits "
                        f"{', '.join(COLMAP_SPLITS)} (every {test_every}th image by name is test)")
    if isinstance(test_every, bool) or not isinstance(test_every, (int, np.integer)) or test_every < 0 \
            or test_every == 1:
        raise DataError(f"test_every must be 0 (no test split) or an integer >= 2, got {test_every!r}")
    if orientation not in ORIENTATIONS:
        raise DataError(f"orientation {orientation!r}: valid ones are {', '.join(ORIENTATIONS)}")
    if mask_use not in ("object", "ignore"):
        raise DataError(f"mask_use {mask_use!r}: valid ones are object, ignore")
    if up is not None and not (np.shape(up) == (3,) and np.isfinite(up).all() and np.linalg.norm(up) > 0):
        raise DataError(f"up {up!r}: the up direction is 3 finite numbers, not all 0 (COLMAP coordinates)")
    if not root.is_dir():
        raise DataError(f"scene directory not found: {root}" if not root.exists() else
                        f"scene path is not a directory: {root}")
    model, ext = find_sparse_model(root, sparse)
    folder = root / images
    if not folder.is_dir():
        have = sorted(p.name for p in root.glob("images*") if p.is_dir())
        raise DataError(f"{root}: no image folder {images!r} ({folder}); "
                        + (f"it has {', '.join(have)}: name one with the images option" if have else
                           "a COLMAP capture keeps its images in images/"))
    pycolmap = _pycolmap(model)
    rec = _read_model(pycolmap, model, ext)
    images_file, cameras_file = model / f"images{ext}", model / f"cameras{ext}"
    if not len(rec.images) or not len(rec.cameras):
        raise DataError(f"{model}: the COLMAP model is empty ({len(rec.cameras)} cameras in {cameras_file.name}, "
                        f"{len(rec.images)} images in {images_file.name}); a capture needs posed images")

    left_out = set(exclude)
    posed = sorted((im for im in rec.images.values() if _has_pose(im) and im.name not in left_out),
                   key=lambda im: im.name)
    unknown = sorted(left_out - {im.name for im in rec.images.values()})
    if unknown:
        warn(f"{images_file}: exclude names {len(unknown)} image(s) it does not hold: {', '.join(unknown[:5])}"
             f"{' ...' if len(unknown) > 5 else ''}")
    unposed = sorted(im.name for im in rec.images.values() if not _has_pose(im))
    if not posed:
        raise DataError(f"{images_file}: none of its {len(rec.images)} images has a pose (none is registered)"
                        + (f", once the {len(left_out)} excluded are left out" if left_out else ""))
    if unposed:
        warn(f"{images_file}: {len(unposed)} of its {len(rec.images)} images have no pose and are left out "
             f"({', '.join(unposed[:3])}{', ...' if len(unposed) > 3 else ''})")
    cams: dict[int, tuple] = {}
    for im in posed:
        if im.camera_id not in rec.cameras:
            raise DataError(f"{images_file}: image {im.image_id} {im.name!r} refers to camera id {im.camera_id}, "
                            f"which {cameras_file} does not hold (it holds {sorted(rec.cameras)})")
        if im.camera_id not in cams:
            cams[im.camera_id] = _intrinsics(im.camera_id, rec.cameras[im.camera_id], cameras_file)
    distorted = {i: f"{rec.cameras[i].model.name} {', '.join(d)}" for i, (_, d) in sorted(cams.items()) if d}
    if distorted:
        warn_distortion(str(cameras_file), distortion_list(distorted),
                        "load the folder it writes (its images are undistorted, its model PINHOLE); the colmap "
                        "scene source does that itself with scene.undistort: true (its default) and the images at "
                        "the model's size")

    paths = [folder / im.name for im in posed]
    missing = [im.name for im, p in zip(posed, paths) if not p.is_file()]
    if missing:
        raise _missing_images(folder, missing, images_file, len(posed))
    if masks is not None:
        from pipeline.scenes.masks import mask_paths

        mask_of = mask_paths(root / masks, [im.name for im in posed])
    elif (root / "masks").is_dir():
        warn(f"{root} holds a masks folder, which is not used; set scene.masks: masks (--set scene.masks=masks) "
             f"to composite each image on the background by its object mask")
    if depths is not None and sparse_depth:
        raise DataError(f"give depth maps (depths: {depths}) or the keypoints' sparse depth (sparse_depth), not both")
    if depths is not None:
        from pipeline.scenes.depth_maps import depth_paths

        depth_of = depth_paths(root / depths, [im.name for im in posed])
    c2w_cv = np.zeros((len(posed), 4, 4))
    for i, im in enumerate(posed):
        rot, t = _world_to_camera(pycolmap, im, images_file)
        c2w_cv[i, :3, :3], c2w_cv[i, :3, 3], c2w_cv[i, 3, 3] = rot.T, -rot.T @ t, 1.0
    points = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    colours = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
    if masks is not None:  # the points on the object only: the box is the object's, not the table's
        from pipeline.scenes.masks import points_on_masks

        on_object = points_on_masks(rec, {im.image_id: m for im, m in zip(posed, mask_of)})
        off_object = int((~on_object).sum())
        points, colours = points[on_object], colours[on_object]
    points = points[np.isfinite(points).all(1)]
    half_angles = np.array([view_half_angle(*cams[im.camera_id][0]) for im in posed])
    T, box, how = colmap_normalisation(c2w_cv, points, center=center, scale=scale, orientation=orientation, up=up,
                                       half_angles=half_angles)
    if aabb is not None:
        box, how["aabb_from"] = np.asarray(aabb, dtype=np.float64).reshape(6), "the aabb option"
    poses = T @ c2w_cv @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes -> OpenGL
    poses[:, :3, :3] /= how["scale"]  # T scales the rotation part too: undo it (the camera frame stays orthonormal)

    disk: dict[int, tuple[int, int]] = {}  # camera id -> (W, H) of its images in the folder (its first one's)
    if len({c[0][4:] for c in cams.values()}) > 1:  # (cameras of one size: nothing to fit, no header to read)
        for im, path in zip(posed, paths):
            if im.camera_id not in disk:
                disk[im.camera_id] = image_size(path)
                _check_size(path, im.camera_id, disk[im.camera_id], cams, cameras_file)
    fits = fits_to_one_size(disk)
    if fits:  # (depth maps are fitted with their images: Fit.depths)
        _warn_fitted(cameras_file, fits, posed)
    if sparse_depth:
        depth_of, error_of = _keypoint_depths(pycolmap, rec, posed, cams, images_file)
    found: dict[str, tuple[FrameList, list[int]]] = {}
    for i, im in enumerate(posed):
        name = "test" if test_every and i % test_every == 0 else "train"
        if name not in splits:
            continue
        sp, ids = found.setdefault(name, (FrameList(name, images_file), []))
        if max_images is not None and len(sp.paths) >= max_images:
            continue
        sp.paths.append(paths[i])
        if masks is not None:
            sp.masks.append(mask_of[i])
            sp.mask_use = mask_use
        if depths is not None or sparse_depth:  # (COLMAP units, which the normalisation scales by how["scale"])
            sp.depths.append(depth_of[i])
            sp.depth_scale = how["scale"]
            if sparse_depth:
                sp.depth_errors.append(error_of[i])
        sp.poses.append(poses[i])
        if fits:  # (cameras of several sizes: each image fitted to one size, its intrinsics alike)
            fx, fy, cx, cy, w, h = cams[im.camera_id][0]
            fit, sx, sy = fits[im.camera_id], disk[im.camera_id][0] / w, disk[im.camera_id][1] / h  # (images_2)
            sp.intr.append((*fit.intrinsics(fx * sx, fy * sy, cx * sx, cy * sy), *map(float, fit.size)))
            sp.fits.append(fit)
        else:
            sp.intr.append(cams[im.camera_id][0])
        ids.append(im.camera_id)
    missing_splits = [name for name in splits if name not in found]
    if "train" in missing_splits or not found:
        raise DataError(f"{images_file}: no image falls in the split(s) {missing_splits} ({len(posed)} posed "
                        f"images, every {test_every}th is test)")

    out, sizes, orig_sizes, loaded = {}, {}, {}, {}
    downscale = resolve_downscale(downscale, next(iter(found.values()))[0].paths[0],
                                  next(iter(fits.values())).size if fits else None)
    for name in splits:
        if name in found:
            out[name], (w0, h0) = load_frames(found[name][0], bg, downscale, progress)
            loaded[name] = (found[name][0], found[name][1], (w0, h0))
            sizes[name] = [out[name].cameras.width, out[name].cameras.height]
            orig_sizes[name] = [w0, h0]
    if not fits:  # (fitted images were checked against their cameras one by one)
        _check_sizes(loaded, cams, cameras_file)
    all_poses = [p for sp, _ in found.values() for p in sp.poses]
    near, far = near_far_from_box(all_poses, box)

    meta: dict[str, Any] = {
        "source": "colmap",
        "root": str(root.resolve()),
        "sparse": str(model.resolve()),
        "images": images,
        "image_size": sizes,
        "original_image_size": orig_sizes,
        "downscale": int(downscale),
        "n_images": {k: len(v) for k, v in out.items()},
        "background": [float(x) for x in bg],
        "split_rule": (f"images sorted by name, every {test_every}th (from the first) is test" if test_every
                       else "no test split (test_every 0)"),
        "world_up": "+z",
        "camera_models": sorted({rec.cameras[i].model.name for i in cams}),
        "normalisation": {k: v for k, v in how.items() if k not in ("rotation", "scale", "centre")},
        "input_frame": {"file": str(model.resolve()), "scale": how["scale"], "centre": how["centre"],
                        "rotation": how["rotation"], "to_run": T.tolist()},
    }
    if fits:
        meta["fitted"] = fit_facts(fits)
    if missing_splits:
        meta["splits_missing"] = missing_splits
    if unposed:
        meta["unposed_images"] = len(unposed)
    if max_images is not None:
        meta["max_images"] = int(max_images)
    if left_out:
        meta["excluded"] = sorted(left_out - set(unknown))
    if masks is not None:
        meta["masks"] = str((root / masks).resolve())
        meta["mask_use"] = mask_use
        if mask_use == "ignore":
            from pipeline.scenes.blender import kept_shares

            meta["pixels_kept"] = kept_shares(out)
    if depths is not None or sparse_depth:
        from pipeline.scenes.depth_maps import depth_facts

        meta["depths"] = depth_facts(str((root / depths).resolve()) if depths is not None else
                                     f"the keypoints of {images_file} (sparse_depth)", how["scale"], out)
    moved = points @ T[:3, :3].T + T[:3, 3]
    kept = in_box(moved, box)
    inside = moved[kept]
    meta["sparse_points"] = {"total": int(len(points)), "in_box": int(len(inside)),
                             **({"off_masks": off_object} if masks is not None else {})}
    return SceneData(splits=out, aabb=torch.tensor(np.asarray(box, np.float32)),
                     background=tuple(float(x) for x in bg), near=float(near), far=float(far), meta=meta,
                     points=inside.astype(np.float32) if len(inside) else None,
                     point_colors=colours[kept] if len(inside) else None)


def _keypoint_depths(pycolmap, rec, posed: list, cams: dict,
                     images_file: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each posed image's sparse depth map (COLMAP units) at its camera's size from the keypoints of ``rec`` that
    observe a 3D point (:func:`pipeline.scenes.depth_maps.keypoint_maps`), and beside it the map of those points'
    mean reprojection errors (pixels; COLMAP's ``Point3D.error``), DS-NeRF's measure of a keypoint's uncertainty."""
    from pipeline.scenes.depth_maps import keypoint_maps

    maps, errors = [], []
    for im in posed:
        seen = [(p.xy, p.point3D_id) for p in im.points2D if p.has_point3D()]
        w, h = (int(v) for v in cams[im.camera_id][0][4:6])
        if not seen:
            maps.append(np.zeros((h, w), np.float32))
            errors.append(np.zeros((h, w), np.float32))
            continue
        xy = np.array([s[0] for s in seen], dtype=np.float64).reshape(-1, 2)
        xyz = np.array([rec.points3D[s[1]].xyz for s in seen], dtype=np.float64).reshape(-1, 3)
        error = np.maximum([rec.points3D[s[1]].error for s in seen], 1e-6)  # (0 means "none" in the map)
        rot, t = _world_to_camera(pycolmap, im, images_file)
        depth, err = keypoint_maps(xy, (xyz @ rot.T + t)[:, 2], (h, w), error)
        maps.append(depth)
        errors.append(err)
    return maps, errors

