"""nerfstudio's camera paths (``camera_path.json``, from its viewer's render panel) as cameras of an nls run.

nerfstudio trains in its own frame: its dataparser turns and centres the poses of the dataset's
``transforms.json`` and scales them, and writes what it did to ``dataparser_transforms.json`` beside the
run's ``config.yml`` (``transform``, a 3x4 ``[A | b]`` with A a rotation, and ``scale`` s): a point p of the
dataset is ``s (A p + b)`` in nerfstudio's frame. A camera path's cameras lie in that frame, so this module
takes them back to the dataset's by the inverse: rotation ``A^T R``, centre ``A^T (c / s - b)``. That is the
frame of an nls run on the same ``transforms.json`` (the ``blender`` source keeps a transforms.json's own
frame).

The path file: ``render_width`` / ``render_height`` (pixels), ``camera_type`` (``perspective``: the only one a
pinhole camera renders) and ``camera_path``, a list of ``{"camera_to_world": 16 numbers (a 4x4, row by row,
OpenGL axes as nls's), "fov": the vertical field of view in degrees, ...}``; each camera's focal length is
``render_height / 2 / tan(fov / 2)`` for both axes, with the principal point at the image's centre (as
nerfstudio renders it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.types import Cameras, DataError

#: how the command line names the file of nerfstudio's dataparser transform
OPTION = "--dataparser-transforms"


def is_nerfstudio_path(doc) -> bool:
    """Whether the JSON document ``doc`` is a nerfstudio camera path (a ``camera_path`` list, no ``frames``)."""
    return isinstance(doc, dict) and "camera_path" in doc and "frames" not in doc


def read_dataparser_transform(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """``(A (3, 3), b (3,), s)`` of nerfstudio's ``dataparser_transforms.json`` at ``path`` (module docstring);
    DataError naming the file and key for what cannot be read, or when A is not a rotation or s not > 0."""
    from pipeline.camera_paths import read_json

    where = f"{OPTION} {path}"
    doc = read_json(path, where)
    if not isinstance(doc, dict) or "transform" not in doc or "scale" not in doc:
        raise DataError(f"{where}: nerfstudio's dataparser_transforms.json holds 'transform' (3x4) and 'scale'; "
                        f"this file has {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    try:
        m = np.asarray(doc["transform"], dtype=np.float64)
        s = float(doc["scale"])
    except (TypeError, ValueError):
        m, s = None, float("nan")
    if m is None or m.shape != (3, 4) or not np.isfinite(m).all():
        raise DataError(f"{where}: 'transform' must be a 3x4 matrix of finite numbers, got {doc['transform']!r:.80}")
    if not (math.isfinite(s) and s > 0):
        raise DataError(f"{where}: 'scale' must be a number > 0, got {doc['scale']!r}")
    from pipeline.camera_paths import rotation_problem

    fault = rotation_problem(m[:, :3])
    if fault:
        raise DataError(f"{where}: the 3x3 part of 'transform' is not a rotation: it {fault}")
    return m[:, :3], m[:, 3], s


def _number(d: dict, key: str, where: str, low: float = 0.0, high: float = math.inf) -> float:
    """``d[key]`` as a finite number in (low, high); DataError naming ``where`` and the key otherwise."""
    if key not in d:
        raise DataError(f"{where} has no '{key}'")
    try:
        v = float(d[key])
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and low < v < high):
        raise DataError(f"{where}: '{key}' must be a number in ({low:g}, {high:g}), got {d[key]!r:.40}")
    return v


def nerfstudio_cameras(doc: dict, path: Path, transforms: Optional[Path],
                       default_size: Optional[tuple[int, int]]) -> tuple[Cameras, list[str]]:
    """The cameras of the nerfstudio camera path ``doc`` (read from ``path``) in the dataset's frame, by the
    dataparser transform in the file ``transforms`` (module docstring), named ``0000``, ``0001``, ...;
    ``default_size`` (W, H) stands in for a missing ``render_width`` / ``render_height``. DataError naming the
    file, the camera and the key for what cannot be read, and when ``transforms`` is None."""
    import torch

    from pipeline.camera_paths import _matrix

    where = f"--cameras {path}"
    if transforms is None:
        raise DataError(f"{where} is a nerfstudio camera path, whose cameras lie in the frame nerfstudio trained "
                        f"in; give {OPTION} with the dataparser_transforms.json of that nerfstudio run (beside its "
                        f"config.yml) to take them back to the dataset's frame, or a transforms.json in the run's "
                        f"frame (nls render writes one beside each render: renders/*_cameras.json)")
    kind = str(doc.get("camera_type", "perspective")).lower()
    if kind != "perspective":
        raise DataError(f"{where}: camera_type {doc.get('camera_type')!r}: only perspective cameras render here "
                        f"(nls's cameras are pinhole ones)")
    cameras = doc.get("camera_path")
    if not isinstance(cameras, list) or not cameras or not all(isinstance(c, dict) for c in cameras):
        raise DataError(f"{where}: 'camera_path' must be a non-empty list of cameras, each with 'camera_to_world' "
                        f"and 'fov'")
    if default_size is None and not ("render_width" in doc and "render_height" in doc):
        raise DataError(f"{where}: no image size; give render_width and render_height (the run has no views to "
                        f"take it from)")
    w = int(_number(doc, "render_width", where)) if "render_width" in doc else int(default_size[0])
    h = int(_number(doc, "render_height", where)) if "render_height" in doc else int(default_size[1])
    a, b, s = read_dataparser_transform(transforms)
    c2w, focal = [], []
    for k, cam in enumerate(cameras):
        at = f"{where}: camera_path[{k}]"
        if "camera_to_world" not in cam:
            raise DataError(f"{at} has no 'camera_to_world' (16 numbers: its 4x4 camera-to-world, row by row)")
        m = _matrix(cam["camera_to_world"], f"{at}.camera_to_world")
        m[:3, :3] = a.T @ m[:3, :3]
        m[:3, 3] = a.T @ (m[:3, 3] / s - b)
        c2w.append(m)
        focal.append(0.5 * h / math.tan(math.radians(_number(cam, "fov", at, 0.0, 180.0)) / 2))
    f = torch.tensor(focal, dtype=torch.float32)
    cams = Cameras(torch.tensor(np.stack(c2w), dtype=torch.float32), f, f.clone(), torch.full_like(f, 0.5 * w),
                   torch.full_like(f, 0.5 * h), w, h)
    return cams, [f"{k:04d}" for k in range(len(cameras))]
