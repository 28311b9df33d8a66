"""IDR / NeuS / VolSDF camera folders (the "DTU format" of neural surface reconstruction).

Layout, as IDR (Yariv et al. 2020) published its DTU scans and NeuS (Wang et al. 2021) its DTU and BlendedMVS
scenes: ``<root>/image/`` (or ``images/``; the images, sorted by name), ``<root>/mask/`` (or ``masks/``; optional
object masks, white on the object, paired with the images by sorted order: IDR names them ``000.png`` beside
images named ``000000.png``) and a NumPy archive of cameras, ``cameras_sphere.npz`` (NeuS) or ``cameras.npz``
(IDR, VolSDF), holding for the ``i``-th image by name:

* ``world_mat_i``: the (4, 4) (or (3, 4)) projection ``P = K [R | t]`` from world coordinates to pixels, in
  OpenCV axes (x right, y down, z forward), with the centre of pixel ``(u, v)`` at the integer coordinates
  ``(u, v)`` (NeuS's rays go through ``K^-1 (u, v, 1)`` for integer pixel indices);
* ``scale_mat_i`` (optional, identity when absent; one for every image): the similarity from the normalised
  frame, in which the object lies inside the unit sphere, to world coordinates.

The scene is loaded in the normalised frame, turned so the cameras' up is +Z (as the colmap source finds it:
``orientation``; scale and centre are kept): each ``P @ scale_mat`` is split into intrinsics and pose by an RQ
decomposition (:func:`decompose_projection`), the pose turned to the project's OpenGL camera axes, and the
principal point moved by half a pixel to the project's convention (pixel centres at ``+0.5``). The scene box is
the cube ``[-1, 1]^3`` about the unit sphere; ``meta["input_frame"]["to_run"]`` is that turn times ``scale_mat^-1``, so
``nls export --frame input`` writes meshes in the scan's world coordinates, where DTU's evaluation scores them.
Splits follow the LLFF rule the ``colmap`` source uses: every ``test_every``-th image by name is ``test``; or, where
``<root>/test`` and ``<root>/val`` are folders of the same layout sharing ``scale_mat`` (as ``nls export --dataset
--dataset-format neus`` writes a run's splits, so that NeuS-family code, which trains on every image of a folder,
trains on the train views alone), those are the held-out splits and ``<root>`` holds the train views. Such an
export names its files ``<k>_<view>`` (the run's order) and records the view names in ``nls_run.json``, which
names the views back (:func:`exported_view_names`).

Points in world coordinates beside the cameras (``sparse_pc.ply``, as ``nls export --dataset`` writes a capture's
sparse points; ``sparse_points_interest.ply`` or ``sparse_points.ply``, as NeuS's preprocessing of a capture leaves
them; or the file ``points`` names) are moved into the normalised frame, and those in the box become the scene's
``points`` (with their colours when the file has them), which ``nls view`` shows and ``point_fit`` scores against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from pipeline.notices import warn
from pipeline.scenes.blender import (FrameList, check_load_options, kept_shares, load_frames, near_far_from_box,
                                     resolve_downscale)
from pipeline.scenes.colmap import ORIENTATIONS, scene_up, up_rotation
from pipeline.types import DataError, SceneData

#: the camera archives looked for, in this order, when none is named
CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")
#: the image folders looked for, in this order, when none is named (IDR's and NeuS's; some conversions write images/)
IMAGE_FOLDERS = ("image", "images")
#: the mask folders looked for, in this order, when none is named
MASK_FOLDERS = ("mask", "masks")
#: the point files looked for, in this order, when none is named (nls's export, NeuS's preprocessing)
POINT_FILES = ("sparse_pc.ply", "sparse_points_interest.ply", "sparse_points.ply")
#: the image suffixes read from the image folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the splits this source makes by the hold-out rule
NEUS_SPLITS = ("train", "test")
#: held-out splits that may sit in sub-folders of their own (:func:`split_folders`)
SPLIT_FOLDERS = ("val", "test")
#: the scene box: the cube about the unit sphere of the normalised frame
UNIT_BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
#: a projection whose skew moves a pixel by more than this many pixels at the image's far edge is warned about
SKEW_PIXELS = 0.05
#: relative tolerance of the checks that ``scale_mat`` is a similarity and the same for every image
_SIM_TOL = 1e-6
_MASK_USES = ("object", "ignore", "off")


def find_camera_file(root: Path, cameras: Optional[str] = None) -> Path:
    """The camera archive of the folder ``root``: ``cameras`` (under ``root`` unless absolute), else the first of
    :data:`CAMERA_FILES` there; DataError naming what was looked for when there is none."""
    if cameras is not None:
        path = root / cameras
        if not path.is_file():
            raise DataError(f"scene.cameras {cameras}: no file {path}")
        return path
    for name in CAMERA_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no camera archive ({' or '.join(CAMERA_FILES)}, IDR / NeuS format); name another "
                    f"with scene.cameras")


def is_neus_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a camera archive of :data:`CAMERA_FILES` and an image folder of
    :data:`IMAGE_FOLDERS`."""
    return path.is_dir() and any((path / n).is_dir() for n in IMAGE_FOLDERS) and \
        any((path / n).is_file() for n in CAMERA_FILES)


def _sub_folder(root: Path, given: Optional[str], defaults: Sequence[str], what: str) -> Optional[Path]:
    """``root / given``, else the first of ``root / d`` for ``d`` in ``defaults`` that is a folder (None when none is);
    DataError naming the option ``scene.<what>`` when ``given`` is not a folder."""
    if given is not None:
        if not (root / given).is_dir():
            raise DataError(f"scene.{what} {given}: no folder {root / given}")
        return root / given
    return next((root / d for d in defaults if (root / d).is_dir()), None)


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K (3, 3), c2w (4, 4))`` of the (3, 4) projection ``P = lambda K [R | t]`` (any nonzero scale lambda, of
    either sign): K upper triangular with a positive diagonal and ``K[2, 2] = 1``, and the camera-to-world pose
    ``[[R^T, C], [0, 1]]`` in the projection's (OpenCV) camera axes, ``C = -R^T t`` the camera centre. The RQ
    decomposition of ``P[:, :3]`` (scipy), its signs fixed so K's diagonal is positive and ``det R = +1`` (the
    sign of lambda is the one that puts the scene in front of the camera). ValueError when ``P[:, :3]`` is
    singular or not finite."""
    from scipy.linalg import rq

    P = np.asarray(P, dtype=np.float64)[:3, :4]
    if not np.isfinite(P).all():
        raise ValueError("it holds a value that is not finite")
    M = P[:, :3]
    det = np.linalg.det(M)
    if not abs(det) > 1e-12 * max(1.0, float(np.abs(M).max())) ** 3:
        raise ValueError(f"its 3x3 part is singular (determinant {det:.3g}): not a camera's projection")
    if det < 0:  # (P and -P project alike; -P is the one whose rotation is proper)
        P, M = -P, -M
    K, R = rq(M)
    signs = np.diag(np.sign(np.diag(K)))
    K, R = K @ signs, signs @ R  # (signs @ signs = I)
    t = np.linalg.solve(K, P[:, 3])
    K = K / K[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return K, c2w


def _matrix(archive, key: str, where: Path, shapes=((4, 4), (3, 4))) -> np.ndarray:
    """``archive[key]`` as a float64 array of one of ``shapes``; DataError naming the file and key otherwise."""
    if key not in archive.files:
        raise DataError(f"{where}: no '{key}'; the archive holds {', '.join(sorted(archive.files)[:8])}"
                        f"{' ...' if len(archive.files) > 8 else ''}")
    try:
        m = np.asarray(archive[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: '{key}' is not numeric: {exc}") from None
    if m.shape not in shapes:
        raise DataError(f"{where}: '{key}' is {m.shape}; expected {' or '.join(str(s) for s in shapes)}")
    if not np.isfinite(m).all():
        raise DataError(f"{where}: '{key}' holds a value that is not finite")
    return m


def _similarity(m: np.ndarray, key: str, where: Path) -> np.ndarray:
    """``m`` (4, 4) when it is a similarity ``[[s R, c], [0, 1]]`` (s > 0, R a rotation); DataError otherwise."""
    a = m[:3, :3]
    s = abs(np.linalg.det(a)) ** (1.0 / 3.0)
    if not (s > 0 and np.allclose(m[3], [0, 0, 0, 1], atol=_SIM_TOL)
            and np.allclose(a.T @ a, s * s * np.eye(3), atol=_SIM_TOL * s * s) and np.linalg.det(a) > 0):
        raise DataError(f"{where}: '{key}' is not a similarity [[s R, c], [0, 1]] (a scale, a rotation and a "
                        f"shift): the normalised frame must be the world's, scaled and moved")
    return m


def _same_frame(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the (4, 4) ``scale_mat`` ``a`` equals ``b`` to :data:`_SIM_TOL` (relative to b's largest entry)."""
    return bool(np.allclose(a, b, rtol=_SIM_TOL, atol=_SIM_TOL * np.abs(b).max()))


def image_files(folder: Path) -> list[Path]:
    """The images of ``folder`` (:data:`IMAGE_SUFFIXES`, any case), sorted by name; DataError when there are none."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def read_cameras(path: Path, n: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, float]:
    """The cameras of the first ``n`` images in the archive ``path`` (module docstring), in the normalised frame:
    K (3, 3) and the OpenCV camera-to-world (4, 4) of each, the (4, 4) ``scale_mat`` (normalised frame to world)
    and the largest skew shift in pixels per image row (|K[0, 1]|). DataError naming the file and key for what
    cannot be read."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a NumPy .npz archive of cameras: {exc}") from None
    with archive:
        cameras = sum(1 for key in archive.files if key.startswith("world_mat_") and key[10:].isdigit())
        if cameras > n:
            warn(f"{path}: {cameras} cameras for {n} images; cameras pair with the images by sorted order, so the "
                 f"first {n} are used, and an image taken out of the folder moves every later one onto the wrong "
                 f"camera (NeuS pairs them alike)")
        scale = None
        Ks, poses, skew = [], [], 0.0
        for i in range(n):
            world = _matrix(archive, f"world_mat_{i}", path)
            key = f"scale_mat_{i}"
            s = _similarity(_matrix(archive, key, path, ((4, 4),)), key, path) if key in archive.files else np.eye(4)
            if scale is None:
                scale = s
            elif not _same_frame(s, scale):
                raise DataError(f"{path}: '{key}' differs from 'scale_mat_0'; one normalised frame must serve "
                                f"every image")
            try:
                K, c2w = decompose_projection(world[:3, :4] @ s)
            except ValueError as exc:
                raise DataError(f"{path}: 'world_mat_{i}' times '{key}': {exc}") from None
            Ks.append(K)
            poses.append(c2w)
            skew = max(skew, abs(float(K[0, 1])))
    return Ks, poses, scale if scale is not None else np.eye(4), skew


class _Folder:
    """One IDR / NeuS folder read up to its images: ``paths`` (sorted), ``masks`` (paired, or empty), the cameras
    (:func:`read_cameras`: ``Ks``, OpenCV ``poses``, ``scale_mat``, ``skew``) and where they came from."""

    def __init__(self, root: Path, cameras: Optional[str], images: Optional[str], masks: Optional[str],
                 mask_use: str):
        self.camera_file = find_camera_file(root, cameras)
        self.image_folder = _sub_folder(root, images, IMAGE_FOLDERS, "images")
        if self.image_folder is None:
            raise DataError(f"{root}: no image folder ({' or '.join(f'{n}/' for n in IMAGE_FOLDERS)}, IDR / NeuS "
                            f"layout); name another with scene.images")
        self.paths = image_files(self.image_folder)
        self.Ks, self.poses, self.scale_mat, self.skew = read_cameras(self.camera_file, len(self.paths))
        self.mask_folder = None if mask_use == "off" else _sub_folder(root, masks, MASK_FOLDERS, "masks")
        self.masks: list[Path] = []
        if self.mask_folder is not None:
            self.masks = image_files(self.mask_folder)
            if len(self.masks) != len(self.paths):
                raise DataError(f"{self.mask_folder}: {len(self.masks)} masks for the {len(self.paths)} images of "
                                f"{self.image_folder}; masks pair with images by sorted order, one each "
                                f"(scene.mask_use: off leaves them out)")

    def add(self, sp: FrameList, i: int, mask_use: str) -> None:
        """Append view ``i`` to ``sp``: its image, pose (OpenGL camera axes), intrinsics (pixel centres at +0.5)
        and mask."""
        K = self.Ks[i]
        sp.paths.append(self.paths[i])
        sp.poses.append(self.poses[i] @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenCV camera axes -> OpenGL
        # (integer pixel centres -> centres at +0.5; the size they describe is the image's own)
        sp.intr.append((float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5, None, None))
        if self.masks:
            sp.masks.append(self.masks[i])
            sp.mask_use = mask_use


def split_folders(root: Path) -> dict[str, Path]:
    """The held-out splits of ``root`` kept as IDR / NeuS folders of their own (``root/val``, ``root/test``, as ``nls
    export --dataset --dataset-format neus`` writes them; ``root`` itself then holds the train views)."""
    return {s: root / s for s in SPLIT_FOLDERS if is_neus_folder(root / s)}


def exported_view_names(root: Path) -> dict[str, dict[str, str]]:
    """``{split: {file stem: view name}}`` of a folder ``nls export --dataset --dataset-format neus`` wrote (its
    ``nls_run.json``'s ``views``: the files are ``<k>_<name>``, so that their order is the run's); empty for other
    folders or an unreadable record."""
    import json

    try:
        views = json.loads((Path(root) / "nls_run.json").read_text()).get("views")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(views, dict):
        return {}
    return {k: {str(a): str(b) for a, b in v.items()} for k, v in views.items() if isinstance(v, dict)}


def _split_picks(main: _Folder, folders: dict, held: bool, test_every: int) -> list[tuple[str, _Folder, list[int]]]:
    """``[(split, folder, its view indices)]``: with split folders (``held``), all of ``main`` for train and all of
    each of ``folders`` for its split; else ``main``'s views by the hold-out rule (every ``test_every``-th is test)."""
    if held:
        return [("train", main, list(range(len(main.paths)))),
                *[(name, f, list(range(len(f.paths)))) for name, f in folders.items()]]
    test = set(range(0, len(main.paths), test_every)) if test_every else set()
    return [("train", main, [i for i in range(len(main.paths)) if i not in test]),
            ("test", main, sorted(test))]


def load_neus(root: Path, *, cameras: Optional[str] = None, images: Optional[str] = None, masks: Optional[str] = None,
              mask_use: str = "object", splits: Sequence[str] = NEUS_SPLITS, test_every: int = 8,
              background: Sequence[float] = (1.0, 1.0, 1.0), downscale: "int | str" = 1,
              max_images: Optional[int] = None, aabb: Optional[Sequence[float]] = None, orientation: str = "vertical",
              points: Optional[str] = None, progress: Optional[bool] = None) -> SceneData:
    """Load an IDR / NeuS camera folder (module docstring) in its normalised frame, turned +Z up.

    Args:
        root: the scene folder.
        cameras: its camera archive (default: ``cameras_sphere.npz``, else ``cameras.npz``).
        images: its image folder (default: ``image``, else ``images``).
        masks: its mask folder, paired with the images by sorted order (default: ``mask``, else ``masks``, when
            there is one; ``mask_use="off"``: none).
        mask_use: ``object`` (each image composited on ``background`` by its mask, which becomes its alpha: the
            scene is the object alone, as NeuS trains "with mask"), ``ignore`` (black pixels are neither trained
            on nor scored: PSNR inside the mask, as IDR reports it) or ``off``.
        splits: of ``train``, ``test`` (and ``val`` from split folders); test_every: every ``test_every``-th image
            by name is ``test`` (0: none), unless ``root`` has split folders (:func:`split_folders`), which give
            the held-out splits while ``root`` holds the train views.
        background, downscale, max_images: as :func:`pipeline.scenes.blender.load_blender` takes them.
        aabb: (6,) scene box in the normalised frame (default :data:`UNIT_BOX`).
        orientation: how the up direction that is turned to +Z is found from the cameras, as the colmap source
            finds it (:func:`pipeline.scenes.colmap.scene_up`: ``vertical``, ``up`` or ``none``: the normalised
            frame as it is); turntables and orbits circle +Z.
        points: a point file in world coordinates under ``root`` (default: the first of :data:`POINT_FILES` there,
            when there is one): those in the box are the scene's ``points``.
        progress: show a progress bar (default: only for >= 64 images on a terminal).

    Returns:
        SceneData with images ``(N, H, W, 3)``, ``alphas`` (object masks) or ``valid`` (ignore masks), per-image
        intrinsics, poses in the normalised frame; ``meta["input_frame"]["to_run"]`` takes world coordinates to it.
    """
    import torch

    root = Path(root)
    bg = check_load_options(background, downscale, max_images)
    if not root.is_dir():
        raise DataError(f"scene folder {root} not found" if not root.exists() else f"scene path {root} is not a folder")
    if mask_use not in _MASK_USES:
        raise DataError(f"load_neus: mask_use={mask_use!r}; give one of {', '.join(_MASK_USES)}")
    if orientation not in ORIENTATIONS:
        raise DataError(f"load_neus: orientation={orientation!r}; give one of {', '.join(ORIENTATIONS)}")
    if isinstance(test_every, bool) or not isinstance(test_every, (int, np.integer)) or test_every < 0 \
            or test_every == 1:
        raise DataError(f"test_every must be 0 (no test split) or an integer >= 2, got {test_every!r}")
    held = split_folders(root)
    known = ("train", *held) if held else NEUS_SPLITS
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise DataError(f"{root}: split(s) {unknown or list(splits)}: this IDR / NeuS folder gives "
                        f"{', '.join(known)} (" + (f"held-out views in {', '.join(s + '/' for s in held)}" if held
                                                   else f"every {test_every}th image by name is test") + ")")
    main = _Folder(root, cameras, images, masks, mask_use)
    folders = {name: _Folder(folder, cameras, images, masks, mask_use) for name, folder in held.items()
               if name in splits}
    for name, folder in folders.items():
        if not _same_frame(folder.scale_mat, main.scale_mat):
            raise DataError(f"{folder.camera_file}: its scale_mat differs from {main.camera_file}'s; the split "
                            f"folders must share the train views' normalised frame")
    up, how = scene_up(np.stack(main.poses), orientation)
    turn = np.eye(4)
    turn[:3, :3] = up_rotation(up)  # (the normalised frame turned so the cameras' up is +Z)
    for folder in (main, *folders.values()):
        folder.poses = [turn @ pose for pose in folder.poses]
    found: dict[str, FrameList] = {}
    for name, folder, picks in _split_picks(main, folders, bool(held), test_every):
        if name not in splits or not picks:
            continue
        sp = found.setdefault(name, FrameList(name, folder.camera_file))
        for i in picks[:max_images]:
            folder.add(sp, i, mask_use)
    if "train" not in found:
        raise DataError(f"{main.image_folder}: no image falls in the train split ({len(main.paths)} images, every "
                        f"{test_every}th is test)")

    out, sizes, orig_sizes = {}, {}, {}
    downscale = resolve_downscale(downscale, found["train"].paths[0])
    views = exported_view_names(root)
    for name in splits:
        if name in found:
            out[name], (w0, h0) = load_frames(found[name], bg, downscale, progress)
            named = views.get(name if name in folders else "train", {})  # (the names of the folder's files)
            out[name].names = [named.get(stem, stem) for stem in out[name].names]
            sizes[name] = [out[name].cameras.width, out[name].cameras.height]
            orig_sizes[name] = [w0, h0]
    if not main.masks and mask_use != "off":
        warn(f"{root}: no object masks ({' or '.join(f'{n}/' for n in MASK_FOLDERS)}): the images' background is "
             f"trained as part of the scene, and only the box about the unit sphere is modelled (nls has no "
             f"background model), so what lies beyond it ends up as haze in the box; masks (mask_use: object) "
             f"leave the object alone")
    skew = max([main.skew] + [f.skew for f in folders.values()])
    height = max(h for _, h in orig_sizes.values())
    if skew * height > SKEW_PIXELS:
        warn(f"{main.camera_file}: the projections have skew (K[0, 1] up to {skew:.3g}), which pinhole cameras leave "
             f"out: pixels move by up to {skew * height:.2f} px at the bottom of the images")
    box = np.asarray(UNIT_BOX if aabb is None else aabb, dtype=np.float64).reshape(6)
    near, far = near_far_from_box([p for sp in found.values() for p in sp.poses], box)
    to_run = turn @ np.linalg.inv(main.scale_mat)
    scale = float(np.linalg.det(to_run[:3, :3]) ** (1.0 / 3.0))
    meta: dict[str, Any] = {
        "source": "neus",
        "root": str(root.resolve()),
        "cameras": str(main.camera_file.resolve()),
        "images": main.image_folder.name,
        "image_size": sizes,
        "original_image_size": orig_sizes,
        "downscale": int(downscale),
        "n_images": {k: len(v) for k, v in out.items()},
        "background": [float(x) for x in bg],
        "split_rule": (f"held-out views in {', '.join(s + '/' for s in held)}" if held else
                       f"images sorted by name, every {test_every}th (from the first) is test" if test_every
                       else "no test split (test_every 0)"),
        "world_up": "+z",
        "orientation": {"method": how, "up_in_normalised_frame": up.tolist()},
        "input_frame": {"file": str(main.camera_file.resolve()), "scale": scale,
                        "centre": main.scale_mat[:3, 3].tolist(), "rotation": (to_run[:3, :3] / scale).tolist(),
                        "to_run": to_run.tolist()},
    }
    if max_images is not None:
        meta["max_images"] = int(max_images)
    if [s for s in splits if s not in found]:
        meta["splits_missing"] = [s for s in splits if s not in found]
    if main.masks:
        meta.update(masks=str(main.mask_folder.resolve()), mask_use=mask_use,
                    **({"pixels_kept": kept_shares(out)} if mask_use == "ignore" else {}))
    cloud, colours = None, None
    found = read_points(root, points, to_run, box)
    if found is not None:
        cloud, colours, meta["sparse_points"] = found
    return SceneData(splits=out, aabb=torch.tensor(box.astype(np.float32)), background=tuple(float(x) for x in bg),
                     near=float(near), far=float(far), meta=meta, points=cloud, point_colors=colours)


def read_points(root: Path, given: Optional[str], to_run: np.ndarray, box: np.ndarray):
    """:func:`pipeline.scenes.blender.ply_points` of the point file ``given`` (under ``root`` unless absolute;
    default the first of :data:`POINT_FILES` there) moved by ``to_run`` into ``box`` (6,); None without a file.
    DataError naming ``scene.points`` when ``given`` is missing."""
    from pipeline.scenes.blender import ply_points

    if given is not None:
        path = Path(given) if Path(given).is_absolute() else Path(root) / given
        if not path.is_file():
            raise DataError(f"scene.points {given}: no file {path} (points in the scan's world coordinates; relative "
                            f"paths are under scene.path)")
    else:
        path = next((Path(root) / n for n in POINT_FILES if (Path(root) / n).is_file()), None)
        if path is None:
            return None
    return ply_points(path, box, to_run, option="scene.points")


def write_neus_folder(root: Path, images: np.ndarray, world_mats: np.ndarray, scale_mat: np.ndarray,
                      masks: Optional[np.ndarray] = None, camera_file: str = "cameras_sphere.npz",
                      names: Optional[Sequence[str]] = None, mask_names: Optional[Sequence[str]] = None,
                      on_image: Optional[Callable[[], None]] = None) -> None:
    """Write an IDR / NeuS folder (module docstring) at ``root``: ``images`` (N, H, W, 3) uint8 as ``image/<name>.png``
    (``names``, default ``000000``..., which must sort in the images' order), ``masks`` (N, H, W) uint8 as
    ``mask/<mask name>`` (default ``<name>.png``; IDR names them ``000.png``), and ``world_mats`` (N, 4, 4) (world to
    pixels, integer pixel centres) with ``scale_mat`` (4, 4) (normalised frame to world) for every image in
    ``camera_file``; ``on_image`` is called after each image. ValueError when ``names`` do not sort in order."""
    from PIL import Image

    root = Path(root)
    names = [f"{i:06d}" for i in range(len(images))] if names is None else list(names)
    if names != sorted(names) or len(set(names)) != len(names):
        raise ValueError("write_neus_folder: the image names must be unique and sorted (cameras pair with images "
                         "by sorted order)")
    (root / "image").mkdir(parents=True, exist_ok=True)
    if masks is not None:
        (root / "mask").mkdir(exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(np.asarray(img, np.uint8)).save(root / "image" / f"{names[i]}.png")
        if masks is not None:
            name = mask_names[i] if mask_names is not None else f"{names[i]}.png"
            Image.fromarray(np.asarray(masks[i], np.uint8)).convert("RGB").save(root / "mask" / name)
        if on_image is not None:
            on_image()
    arrays = {}
    for i, P in enumerate(world_mats):
        arrays[f"world_mat_{i}"] = np.asarray(P, np.float64)
        arrays[f"scale_mat_{i}"] = np.asarray(scale_mat, np.float64)
    np.savez(root / camera_file, **arrays)


def projection(cameras, i: int, c2w_gl: np.ndarray) -> np.ndarray:
    """(4, 4) ``world_mat``: the projection ``K [R | t]`` of camera ``i`` of ``cameras`` (its intrinsics, the
    principal point moved to the format's integer pixel centres) placed at the OpenGL camera-to-world ``c2w_gl``
    (4, 4, unit axes; the camera's own or moved to another frame); :func:`read_cameras` gives the camera back."""
    K_cv = np.array([[float(cameras.fx[i]), 0.0, float(cameras.cx[i]) - 0.5],
                     [0.0, float(cameras.fy[i]), float(cameras.cy[i]) - 0.5], [0.0, 0.0, 1.0]])
    P = np.eye(4)
    P[:3] = K_cv @ np.linalg.inv(np.asarray(c2w_gl, np.float64) @ np.diag([1.0, -1.0, -1.0, 1.0]))[:3]
    return P
