"""``nls export RUN --dataset -o DIR``: the posed images of a run as an instant-ngp / nerfstudio folder.

What a run trained and was evaluated on, as it loaded it: the images after undistortion, fitting and downscaling,
each split's cameras as the trained system sees them (:func:`pipeline.pose_refinement.refined_scene`: refined poses
and focal lengths), ignore masks and depth maps. Other tools train on exactly the same data from it, and so does
``nls reconstruct`` (the ``blender`` source), which is what makes it a fair comparison: poses that structure from
motion found once, undistorted images, the same splits.

The folder (:func:`write_dataset`):

* ``transforms.json``: per frame ``file_path``, ``transform_matrix`` (camera to world, OpenGL axes, in the run's
  frame, or the input's with ``--frame input``), ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (pixels, pinhole),
  ``split``, and ``mask_path`` / ``depth_file_path`` where the run had them; top-level
  ``train_filenames``/``val_filenames``/``test_filenames`` (nerfstudio's split lists; nerfstudio evaluates on
  ``val``, so a run without a val split lists its test views there), the scene box ``aabb`` and ``near``/``far``
  (which the blender source reads back), ``depth_unit_scale_factor``, and ``nls_run``: the run it came from (folder,
  step, scene, method, frame).
* ``images/<split>/<name>.png``: 8-bit RGB, or RGBA with the straight colour where the run had alpha (the loaded
  images are composited on the scene's background: :func:`straight_colour` takes it off again).
* ``masks/<split>/<name>.png``: 255 where a pixel counts (nerfstudio's ``mask_path``), when any split has an ignore
  mask (the others all 255: nerfstudio wants every frame's or none).
* ``depths/<split>/<name>.npy``: float32 z-depths in thousandths of a world unit, 0 where none (nerfstudio reads
  ``.npy`` depths times its ``depth_unit_scale_factor``, 0.001 by default), when any split has depth maps.
* ``gt_mesh.ply``: the scene's ground-truth mesh in the same frame, when it has one (the blender source reads it).
* ``sparse_pc.ply``: structure from motion's sparse points with their colours (``ply_file_path``, which nerfstudio's
  splatfacto starts its Gaussians from and the blender source reads as the scene's points), when the scene has
  coloured points (COLMAP captures, photos, videos).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.scenes.blender import box_corners
from pipeline.types import NLSError, SceneData

#: world units per stored depth unit in the written ``.npy`` depth maps (nerfstudio's default
#: ``depth_unit_scale_factor``, which nerfstudio takes from its own option rather than the file)
DEPTH_UNITS = 1e-3


def straight_colour(images: np.ndarray, alphas: np.ndarray, background) -> np.ndarray:
    """(N, H, W, 4) RGBA in [0, 1]: ``images`` (N, H, W, 3, composited ``c a + b (1 - a)`` on ``background`` (3,))
    with their straight colour ``c`` and ``alphas`` (N, H, W, 1); 0 colour where alpha is 0. Composited again on
    ``background``, the 8-bit straight colour gives the image to within half a grey level."""
    b = np.asarray(background, dtype=np.float64)
    a = alphas.astype(np.float64)
    c = np.where(a > 0, (images - b * (1.0 - a)) / np.maximum(a, 1e-12), 0.0)
    return np.concatenate([np.clip(c, 0.0, 1.0), a], -1)


def moved_cameras(c2w: np.ndarray, m: Optional[np.ndarray]) -> tuple[np.ndarray, float]:
    """Camera-to-world ``c2w`` (N, 4, 4) taken to another frame by the similarity ``m`` (4, 4: a rotation scaled by
    ``s``, and a shift), their axes kept unit, and ``s``, which takes a length to the new frame; as they are, and 1,
    without one."""
    if m is None:
        return c2w, 1.0
    m = np.asarray(m, dtype=np.float64)
    scale = float(np.cbrt(np.linalg.det(m[:3, :3])))
    out = m @ c2w
    out[:, :3, :3] /= scale  # (the rotation alone: the similarity's scale is lengths, not the camera's axes)
    return out, scale


def write_dataset(scene: SceneData, out: Path, to_run: Optional[np.ndarray] = None, progress: bool = True,
                  source: Optional[dict] = None) -> dict:
    """Write ``scene``'s splits into the new folder ``out`` as the module docstring says (made beside it and
    renamed into place, so a stopped export leaves no half folder), the cameras in the run's frame or, with
    ``to_run`` (the 4x4 similarity taking the input's frame to the run's), the input's; ``source`` (the run it came
    from: its folder, step, scene and method) goes into transforms.json as ``nls_run``. Returns what was written:
    ``{"splits": {name: count}, "masks": bool, "depths": bool, "gt_mesh": bool, "points": count, "size": [[W, H],
    ...]}``."""
    splits = _image_splits(scene)
    from_run = None if to_run is None else np.linalg.inv(np.asarray(to_run, dtype=np.float64))
    staging = _staging(out)
    frames, facts = _write_frames(scene, splits, staging, from_run, progress)
    doc: dict = {"nls": "exported by nls export --dataset: each split as the run loaded it, its cameras as the trained "
                        "system sees them (OpenGL axes, pinhole)",
                 "frames": frames, "depth_unit_scale_factor": DEPTH_UNITS, **({"nls_run": source} if source else {})}
    lists = {s: [fr["file_path"] for fr in frames if fr["split"] == s] for s in ("train", "val", "test")}
    doc.update({f"{s}_filenames": names for s, names in lists.items()})
    if not doc["val_filenames"]:  # (nerfstudio evaluates on val and wants every list once one is given)
        doc["val_filenames"] = doc["test_filenames"]
    doc.update(_write_scene_files(scene, staging, from_run))
    (staging / "transforms.json").write_text(json.dumps(doc, indent=1) + "\n")
    _into_place(staging, out)
    return {**facts, "gt_mesh": "gt_mesh.ply" in os.listdir(out),
            "points": len(scene.points) if "ply_file_path" in doc else 0}


def _image_splits(scene: SceneData) -> dict:
    """The splits of ``scene`` that hold views; NLSError when none does."""
    splits = {name: split for name, split in scene.splits.items() if len(split)}
    if not splits:
        raise NLSError("--dataset: this run's scene has no posed images (a geometry, point-cloud or shape-collection "
                       "scene), so there is no dataset to write")
    return splits


def _staging(out: Path) -> Path:
    """A new, empty folder beside ``out`` to write the export into (:func:`_into_place` renames it to ``out``)."""
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _into_place(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out`` (which, if it exists, the caller checked is empty)."""
    if out.exists():
        out.rmdir()
    os.replace(staging, out)


def write_neus_dataset(scene: SceneData, out: Path, to_run: Optional[np.ndarray] = None, progress: bool = True,
                       source: Optional[dict] = None) -> dict:
    """Write ``scene``'s splits into the new folder ``out`` as IDR / NeuS folders (:mod:`pipeline.scenes.neus`), for
    the neural surface reconstruction codes that read that layout: the train split in ``out``, each other split in
    ``out/<split>/`` of the same layout (those codes train on every image of a folder; the neus source reads the
    sub-folders back as the held-out splits). Each holds ``image/<k>_<name>.png`` (8-bit RGB: the straight colour
    where the run had alpha; ``k`` the view's place in the split, zero-padded, so that the order by name, which
    pairs images with cameras, is the run's), ``mask/<k>_<name>.png`` (the alpha, times the ignore mask where there
    is one; 255 everywhere without either, since those codes read a mask per image) and ``cameras_sphere.npz``:
    ``world_mat_k`` the view's projection (:func:`pipeline.scenes.neus.projection`) and ``scale_mat_k`` the
    similarity from the normalised frame, in which the scene box lies inside the unit sphere (:func:`neus_frame`), to
    the run's frame or, with ``to_run``, the input's. ``out`` also gets ``gt_mesh.ply`` and ``sparse_pc.ply`` when
    the scene has them (in the frame written) and ``nls_run.json``: ``source``, the box in the normalised frame, the
    splits and each file's view name (``views``, which the neus source names the views by). Depth maps are not
    written (the layout has none). Returns :func:`write_dataset`'s facts, with ``aabb``: the box in the normalised
    frame."""
    from pipeline.progress import StepProgress

    splits = _image_splits(scene)
    from_run = None if to_run is None else np.linalg.inv(np.asarray(to_run, dtype=np.float64))
    scale_mat, aabb = neus_frame(scene.aabb.detach().cpu().double().numpy(), from_run)
    staging = _staging(out)
    views: dict[str, dict[str, str]] = {}
    total = sum(len(s) for s in splits.values())
    written = iter(range(1, total + 1))
    with StepProgress(total, 0, "writing the dataset", enabled=progress and total >= 16) as bar:
        for name, split in splits.items():
            views[name] = _write_neus_split(scene, split, staging if name == "train" else staging / name, from_run,
                                            scale_mat, lambda: bar.advance(next(written)))
    keys = _write_scene_files(scene, staging, from_run)
    facts = {"splits": {name: len(split) for name, split in splits.items()}, "aabb": aabb,
             "size": [[int(s.cameras.width), int(s.cameras.height)] for s in splits.values()]}
    doc = {"nls": "exported by nls export --dataset --dataset-format neus: the train views here, the others in "
                  "<split>/; cameras_sphere.npz's scale_mat_i takes the normalised frame to the frame written",
           **({"nls_run": source} if source else {}), "aabb_normalised": aabb, "splits": facts["splits"],
           "frame_aabb": keys["aabb"], **({"near": keys["near"], "far": keys["far"]} if "near" in keys else {}),
           "views": views}
    (staging / "nls_run.json").write_text(json.dumps(doc, indent=1) + "\n")
    _into_place(staging, out)
    return {**facts, "masks": True, "depths": False, "gt_mesh": (out / "gt_mesh.ply").is_file(),
            "points": len(scene.points) if "ply_file_path" in keys else 0}


def neus_frame(box: np.ndarray, from_run: Optional[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """``(scale_mat (4, 4), aabb (6,))``: the similarity from a normalised frame to the frame written (the run's, or
    ``from_run``'s), in which the scene ``box`` (6,) lies inside the unit sphere, centred on it with its half
    diagonal the radius, and the axis-aligned bounds of the box's corners in that normalised frame."""
    corners = _moved_points(box_corners(box), from_run)
    centre = corners.mean(0)
    radius = float(np.linalg.norm(corners - centre, axis=1).max())
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= radius
    scale_mat[:3, 3] = centre
    normalised = (corners - centre) / radius
    return scale_mat, [float(v) for v in np.concatenate([normalised.min(0), normalised.max(0)])]


def _write_neus_split(scene: SceneData, split, folder: Path, from_run: Optional[np.ndarray], scale_mat: np.ndarray,
                      on_image) -> dict[str, str]:
    """Write ``split`` as the IDR / NeuS folder ``folder`` (:func:`write_neus_dataset`); returns ``{file stem: view
    name}``."""
    from pipeline.scenes.neus import projection, write_neus_folder

    cams = split.cameras
    c2w, _ = moved_cameras(cams.c2w.detach().cpu().double().numpy(), from_run)
    colours, masks = [], []
    for i in range(len(split)):  # (a view at a time: float copies of a whole split run to gigabytes)
        stored = _stored_colour(split, i, scene.background)
        colours.append(np.round(stored[..., :3] * 255).astype(np.uint8))
        keep = stored[..., 3] if stored.shape[-1] == 4 else np.ones(stored.shape[:2])
        if split.valid is not None:
            keep = keep * split.valid[i].cpu().numpy()
        masks.append(np.round(keep * 255).astype(np.uint8))
    stems = _unique_names(split.names, len(split))
    width = max(4, len(str(len(split) - 1)))
    files = [f"{k:0{width}d}_{stem}" for k, stem in enumerate(stems)]
    write_neus_folder(folder, np.stack(colours), np.stack([projection(cams, i, c2w[i]) for i in range(len(split))]),
                      scale_mat, masks=np.stack(masks), names=files, on_image=on_image)
    return dict(zip(files, stems))


def _stored_colour(split, i: int, background) -> np.ndarray:
    """(H, W, 3 or 4) in [0, 1]: view ``i`` of ``split`` as an export stores it: RGBA with the straight colour
    (:func:`straight_colour`) where the split has alpha, else its RGB."""
    image = split.images[i].detach().cpu().numpy()
    return image if split.alphas is None else straight_colour(image, split.alphas[i].detach().cpu().numpy(),
                                                              background)


def _write_frames(scene: SceneData, splits: dict, staging: Path, from_run: Optional[np.ndarray],
                  progress: bool) -> tuple[list[dict], dict]:
    """Write every view's image, mask and depth map of ``splits`` under ``staging``; returns the transforms.json
    frames and ``{"splits", "masks", "depths", "size"}`` of :func:`write_dataset`'s facts. ``from_run``: the
    similarity to the frame written, or None for the run's."""
    from pipeline.progress import StepProgress

    masks = any(s.valid is not None for s in splits.values())
    depths = any(s.depths is not None for s in splits.values())
    frames, sizes = [], []
    total = sum(len(s) for s in splits.values())
    with StepProgress(total, 0, "writing the dataset", enabled=progress and total >= 16) as bar:
        for name, split in splits.items():
            cams = split.cameras
            c2w, scale = moved_cameras(cams.c2w.detach().cpu().double().numpy(), from_run)
            sizes.append([int(cams.width), int(cams.height)])
            for i, stem in enumerate(_unique_names(split.names, len(split))):
                frame = {"file_path": f"images/{name}/{stem}.png", "transform_matrix": c2w[i].tolist(), "split": name,
                         "fl_x": float(cams.fx[i]), "fl_y": float(cams.fy[i]), "cx": float(cams.cx[i]),
                         "cy": float(cams.cy[i]), "w": int(cams.width), "h": int(cams.height)}
                _write_png(staging / frame["file_path"],
                           np.round(_stored_colour(split, i, scene.background) * 255).astype(np.uint8))
                if masks:
                    frame["mask_path"] = f"masks/{name}/{stem}.png"
                    kept = np.ones((cams.height, cams.width), bool) if split.valid is None else \
                        split.valid[i].cpu().numpy()
                    _write_png(staging / frame["mask_path"], np.where(kept, 255, 0).astype(np.uint8))
                if depths:
                    frame["depth_file_path"] = f"depths/{name}/{stem}.npy"
                    z = np.zeros((cams.height, cams.width)) if split.depths is None else \
                        split.depths[i].cpu().numpy().astype(np.float64) * scale / DEPTH_UNITS
                    (staging / frame["depth_file_path"]).parent.mkdir(parents=True, exist_ok=True)
                    np.save(staging / frame["depth_file_path"], np.asarray(z, np.float32))
                frames.append(frame)
                bar.advance(len(frames))
    return frames, {"splits": {name: len(split) for name, split in splits.items()}, "masks": masks,
                    "depths": depths, "size": sizes}


def _write_scene_files(scene: SceneData, staging: Path, from_run: Optional[np.ndarray]) -> dict:
    """Write the scene's ground-truth mesh and coloured sparse points (when it has them) under ``staging``, in the
    frame ``from_run`` takes the run's to (None: the run's); returns transforms.json's top-level keys for them and
    for the box (the axis-aligned bounds of its corners there) and near/far."""
    import trimesh

    _, scale = moved_cameras(np.eye(4)[None], from_run)
    corners = _moved_points(box_corners(scene.aabb.detach().cpu().double().numpy()), from_run)
    keys: dict = {"aabb": [float(v) for v in np.concatenate([corners.min(0), corners.max(0)])]}
    if np.isfinite(scene.far) and scene.far > scene.near:
        keys["near"], keys["far"] = float(scene.near) * scale, float(scene.far) * scale
    if scene.gt_mesh is not None and Path(scene.gt_mesh).is_file():
        if from_run is None and Path(scene.gt_mesh).suffix.lower() == ".ply":  # (the same file: the same sha256)
            shutil.copyfile(scene.gt_mesh, staging / "gt_mesh.ply")
        else:
            mesh = trimesh.load(scene.gt_mesh, force="mesh", process=False)
            if from_run is not None:
                mesh.apply_transform(from_run)
            mesh.export(staging / "gt_mesh.ply")
    if scene.points is not None and scene.point_colors is not None and len(scene.points) > 0:
        points = _moved_points(np.asarray(scene.points, np.float64), from_run)
        trimesh.PointCloud(points, colors=np.asarray(scene.point_colors, np.uint8)).export(staging / "sparse_pc.ply")
        keys["ply_file_path"] = "sparse_pc.ply"
    return keys


def _moved_points(points: np.ndarray, m: Optional[np.ndarray]) -> np.ndarray:
    """(P, 3) ``points`` through the similarity ``m`` (4, 4), or as they are without one."""
    return points if m is None else points @ m[:3, :3].T + m[:3, 3]


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """``pixels`` (H, W[, C] uint8) as the PNG ``path``, its folder made (the whole export is renamed into place at
    the end, so one file need not be written atomically)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, pixels)


def _unique_names(names: list, n: int) -> list[str]:
    """A file stem per image: its name (path separators replaced), or its index; repeats get ``_<k>`` after them."""
    out, seen = [], set()
    for i in range(n):
        stem = str(names[i]).replace("/", "_").replace("\\", "_") if i < len(names) and names[i] else f"{i:04d}"
        base, k = stem, 1
        while stem in seen:
            stem, k = f"{base}_{k}", k + 1
        seen.add(stem)
        out.append(stem)
    return out


def check_dataset_folder(path: Path) -> Path:
    """``-o`` of ``--dataset``: a folder that does not exist yet (or is empty) in a folder that can be written;
    NLSError saying which otherwise."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise NLSError(f"--dataset -o {path}: {'is a file' if not path.is_dir() else 'is a folder with files in it'}; "
                       f"give a new folder (the export writes transforms.json, images/ and more into it)")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise NLSError(f"--dataset -o {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise NLSError(f"--dataset -o {path}: {parent} cannot be written")
    return path
