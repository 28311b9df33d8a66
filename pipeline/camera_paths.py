"""Camera paths for ``nls render --cameras``: cameras read from, and written as, a NeRF ``transforms.json``.

The format is the one NeRF's Blender scenes, instant-ngp and nerfstudio share: ``frames``, each with a 4x4
camera-to-world ``transform_matrix`` (OpenGL axes: x right, y up, the camera looking down -z), and the
intrinsics given once at the top or per frame: ``fl_x`` / ``fl_y`` / ``cx`` / ``cy`` in pixels, or
``camera_angle_x`` (the horizontal field of view, radians; ``camera_angle_y`` likewise), with the image size
``w`` / ``h``, read as the instant-ngp loader reads them (:func:`pipeline.scenes.blender._ngp_intrinsics`). What a frame
does not give is taken from the top, then from the run's eval split (its size; the principal point at the
centre; ``fl_y`` = ``fl_x``). All frames share one image size.

nerfstudio's own camera paths (``camera_path.json``) are read too, with ``--dataparser-transforms``
(:mod:`pipeline.nerfstudio_paths`).

With ``--interpolate N`` the file's cameras are keyframes of a smooth path of ``N`` frames
(:func:`interpolate_cameras`).

The cameras are in the run's frame: the frame its splits' cameras and ``--spiral``'s turntable lie in. For a
Blender or instant-ngp scene that is the dataset's own frame; for a COLMAP capture, photos or a video it is
the normalised frame the run trained in (scene.json's ``input_frame``), so ``nls render`` writes the cameras of
every split and turntable it renders as such a file (``<name>_cameras.json``), to start a path from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.types import Cameras, DataError

#: what a written file says of its cameras
FRAME_NOTE = ("camera-to-world matrices in the nls run's frame, OpenGL axes (x right, y up, looking down -z); "
              "nls render RUN --cameras FILE renders them")


def cameras_to_json(cams: Cameras, names: Sequence[str]) -> dict:
    """``cams`` (N cameras) as a transforms.json document, each frame named by ``names`` (``file_path``) with its
    own intrinsics."""
    c2w = cams.c2w.detach().cpu().double().numpy()
    frames = [{"file_path": str(name), "transform_matrix": [[float(v) for v in row] for row in c2w[i]],
               "fl_x": float(cams.fx[i]), "fl_y": float(cams.fy[i]), "cx": float(cams.cx[i]),
               "cy": float(cams.cy[i])} for i, name in enumerate(names)]
    return {"nls": FRAME_NOTE, "w": int(cams.width), "h": int(cams.height), "frames": frames}


def write_camera_path(path: Path, cams: Cameras, names: Sequence[str]) -> Path:
    """Write :func:`cameras_to_json` to ``path`` (atomically); returns ``path``."""
    from pipeline.runs import atomic_write_text

    atomic_write_text(path, json.dumps(cameras_to_json(cams, names), indent=1) + "\n")
    return path


def read_json(path: Path, where: str) -> Any:
    """The JSON document in the file ``path``; DataError starting with ``where`` (how the user named it) when it
    cannot be read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: not JSON ({exc})") from None


def rotation_problem(r: np.ndarray) -> Optional[str]:
    """What keeps the (3, 3) ``r`` from being a rotation (the Blender loader's
    :func:`pipeline.scenes.blender.rotation_fault`, or a mirror: determinant -1), as words after "it"; None for a
    rotation."""
    from pipeline.scenes.blender import rotation_fault

    return rotation_fault(r) or ("mirrors (determinant -1)" if np.linalg.det(r) < 0 else None)


def _matrix(value: Any, what: str) -> np.ndarray:
    """A frame's ``transform_matrix`` as a (4, 4) rigid camera-to-world; DataError naming ``what`` when it is not
    4x4 finite numbers, its last row is not 0 0 0 1, or its upper 3x3 is not a rotation (the Blender loader's
    :func:`pipeline.scenes.blender.rotation_fault`, and not mirrored)."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.size != 16 or not np.isfinite(m).all():
        raise DataError(f"{what} must be a 4x4 matrix of finite numbers (rows of camera-to-world), got {value!r:.80}")
    m = m.reshape(4, 4)
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-4):
        raise DataError(f"{what}: its last row is {m[3].tolist()}, not [0, 0, 0, 1]")
    fault = rotation_problem(m[:3, :3])
    if fault:
        raise DataError(f"{what}: its upper 3x3 is not a rotation: it {fault}; give camera-to-world matrices of rigid "
                        f"cameras")
    return m


def read_camera_path(path: Path, default_size: Optional[tuple[int, int]],
                     dataparser: Optional[Path] = None) -> tuple[Cameras, list[str]]:
    """The cameras of the transforms.json ``path`` (see the module docstring) and a name for each (its
    ``file_path``'s stem, else its index as ``0000``; indices when names repeat). ``default_size``: (W, H) for a
    file that gives no image size (None: the run has no split, and the file must give it). A nerfstudio camera
    path is read by :func:`pipeline.nerfstudio_paths.nerfstudio_cameras`, with its run's ``dataparser``
    transforms. DataError naming the file, the frame and the key for what cannot be read."""
    import torch

    from pipeline.nerfstudio_paths import OPTION, is_nerfstudio_path, nerfstudio_cameras

    doc = read_json(path, f"--cameras {path}")
    if is_nerfstudio_path(doc):
        return nerfstudio_cameras(doc, path, dataparser, default_size)
    if dataparser is not None:
        raise DataError(f"{OPTION} takes a nerfstudio camera path back to its dataset's frame, and --cameras {path} "
                        f"is not one (a transforms.json's cameras are in the run's frame already); leave it out")
    frames = doc.get("frames") if isinstance(doc, dict) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise DataError(f"--cameras {path}: a transforms.json holds a non-empty list 'frames' of objects, each with "
                        f"a 'transform_matrix'")
    from pipeline.scenes.blender import _ngp_intrinsics

    top = {k: v for k, v in doc.items() if k != "frames"}  # (a frame's own keys win over the file's)
    base = (None, None, None, None, *(default_size or (None, None)))
    c2w, intr, sizes, names = [], [], set(), []
    for k, f in enumerate(frames):
        where = f"--cameras {path}: frames[{k}]"
        if "transform_matrix" not in f:
            raise DataError(f"{where} has no 'transform_matrix' (its 4x4 camera-to-world)")
        c2w.append(_matrix(f["transform_matrix"], f"{where}.transform_matrix"))

        given = {**top, **f}
        if default_size is None and not ("w" in given and "h" in given):
            raise DataError(f"{where}: no image size; give w and h (pixels), for the file or for each frame (the run "
                            f"has no views to take it from)")
        fx, fy, cx, cy, w, h = _ngp_intrinsics(given, base, where)  # (instant-ngp's keys, as its loader reads them)
        w, h = int(w), int(h)
        if fx is None:
            raise DataError(f"{where}: no focal length; give fl_x (pixels) or camera_angle_x (radians), for the file "
                            f"or for each frame")
        intr.append((fx, fy if fy is not None else fx, cx if cx is not None else 0.5 * w,
                     cy if cy is not None else 0.5 * h))
        sizes.add((w, h))
        stem = Path(str(f.get("file_path") or "")).name
        names.append(Path(stem).stem if stem and Path(stem).suffix.lower() in (".png", ".jpg", ".jpeg", ".exr")
                     else stem or f"{k:04d}")
    if len(sizes) > 1:
        raise DataError(f"--cameras {path}: the frames have {len(sizes)} image sizes "
                        f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); one render holds one size")
    if len(set(names)) < len(names) or any(not n or n.startswith(".") or "/" in n for n in names):
        names = [f"{k:04d}" for k in range(len(frames))]
    (w, h), intr_t = sizes.pop(), torch.tensor(intr, dtype=torch.float32)
    cams = Cameras(torch.tensor(np.stack(c2w), dtype=torch.float32), intr_t[:, 0], intr_t[:, 1], intr_t[:, 2],
                   intr_t[:, 3], w, h)
    return cams, names


#: how an interpolated path spends its frames: evenly along the way, or as many between any two keyframes
PACES = ("distance", "keyframes")
#: samples per frame of the dense walk along the path that spaces the frames of the ``distance`` pace
ARC_SAMPLES = 64


def turn_scale(c2w: np.ndarray) -> float:
    """The length one radian of turning counts as along a path through ``c2w`` (K, 4, 4): the cameras' mean
    distance from their centroid (1 when they share one centre), so an orbit turns and moves at one rate."""
    return float(np.linalg.norm(c2w[:, :3, 3] - c2w[:, :3, 3].mean(0), axis=1).mean()) or 1.0


def path_steps(centres: np.ndarray, turns, scale: float) -> np.ndarray:
    """(M - 1,) length of each step along cameras with ``centres`` (M, 3) and orientations ``turns`` (a scipy
    Rotation of M): the distance between the centres plus ``scale`` times the angle between the orientations."""
    return np.linalg.norm(np.diff(centres, axis=0), axis=1) + scale * (turns[1:] * turns[:-1].inv()).magnitude()


def keyframe_knots(c2w: np.ndarray, loop: bool, pace: str) -> np.ndarray:
    """The path parameter at each keyframe of ``c2w`` (K, 4, 4), and at the first again when ``loop``: (K,) or
    (K + 1,), from 0. ``keyframes``: 0, 1, 2, ... ``distance``: the running sum of :func:`path_steps` between
    consecutive keyframes (chord-length knots), so a camera that only turns still moves along the path. DataError
    when two consecutive keyframes are the same camera, which that pace cannot spend frames between."""
    from scipy.spatial.transform import Rotation

    k = len(c2w)
    if pace not in PACES:
        raise DataError(f"pace must be one of {', '.join(PACES)}; got {pace!r}")
    if pace == "keyframes":
        return np.arange(k + 1 if loop else k, dtype=np.float64)
    order = np.arange(k + 1) % k if loop else np.arange(k)
    scale = turn_scale(c2w)
    step = path_steps(c2w[order, :3, 3], Rotation.from_matrix(c2w[order, :3, :3]), scale)
    still = step <= 1e-9 * max(scale, float(step.max()))
    if still.any():
        j = int(np.argmax(still))
        raise DataError(f"keyframes {j} and {(j + 1) % k} are the same camera, so the path does not move between "
                        f"them; drop one of them, or give --pace keyframes to hold the camera still there")
    return np.concatenate([[0.0], np.cumsum(step)])


def interpolate_cameras(keys: Cameras, n: int, loop: bool = False, pace: str = "distance") -> Cameras:
    """``n`` cameras along a smooth path through the keyframes ``keys`` (two or more, in order), from the first
    to the last: the camera centres on a cubic spline (scipy's ``CubicSpline``, natural ends), the orientations on
    a rotation spline (scipy's ``RotationSpline``: the angular velocity and acceleration are continuous), the
    intrinsics linearly.

    ``pace`` ``distance`` (the default): the splines are parametrised by the distance between the keyframes
    (:func:`keyframe_knots`), and the frames are placed at equal steps of distance travelled plus angle turned
    along the fitted path (:func:`path_steps`, measured on a walk of :data:`ARC_SAMPLES` points per frame), so
    the camera moves at one speed however unevenly the keyframes lie. ``keyframes``: everything is
    parametrised by the keyframe index, so the path spends as many frames between any two keyframes; when
    ``n - 1`` is a multiple of ``len(keys) - 1``, frame ``j * (n - 1) / (len(keys) - 1)`` is keyframe ``j``.

    ``loop``: the path goes on from the last keyframe back to the first and closes there, as smoothly as
    anywhere else (the centres on a periodic spline; the rotation spline fitted through the keyframes wrapped
    round by three on each side), and the ``n`` frames stop one step short of the first again, so a video of
    them repeats without a seam. With the ``keyframes`` pace, when ``n`` is a multiple of ``len(keys)``, frame
    ``j * n / len(keys)`` is keyframe ``j``."""
    import torch
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, RotationSpline

    k = len(keys)
    if k < 2:
        raise DataError(f"a path is interpolated through two or more keyframes; the file holds {k} camera")
    c2w = keys.c2w.detach().cpu().double().numpy()
    intr = np.stack([v.detach().cpu().double().numpy() for v in (keys.fx, keys.fy, keys.cx, keys.cy)], 1)
    t = keyframe_knots(c2w, loop, pace)
    if loop:
        period = t[-1]
        centre_at = CubicSpline(t, np.concatenate([c2w[:, :3, 3], c2w[:1, :3, 3]]), bc_type="periodic")
        wrap = np.arange(-3, k + 3)
        turn_at = RotationSpline(t[wrap % k] + np.floor_divide(wrap, k) * period,
                                 Rotation.from_matrix(c2w[wrap % k, :3, :3]))
        intr = np.concatenate([intr, intr[:1]])
        fractions = np.arange(n) / n  # of the way round: stops one step short of the start
    else:
        centre_at = CubicSpline(t, c2w[:, :3, 3], bc_type="natural")
        turn_at = RotationSpline(t, Rotation.from_matrix(c2w[:, :3, :3]))
        fractions = np.linspace(0.0, 1.0, n)
    if pace == "distance":  # equal steps of distance along the fitted path, not of its parameter
        walk = np.linspace(0.0, t[-1], ARC_SAMPLES * n + 1)
        along = np.concatenate([[0.0], np.cumsum(path_steps(centre_at(walk), turn_at(walk), turn_scale(c2w)))])
        s = np.interp(fractions * along[-1], along, walk)
    else:
        s = fractions * t[-1]
    out = np.tile(np.eye(4), (n, 1, 1))
    out[:, :3, :3], out[:, :3, 3] = turn_at(s).as_matrix(), centre_at(s)
    lens = torch.tensor(np.stack([np.interp(s, t, v) for v in intr.T], 1), dtype=torch.float32)
    return Cameras(torch.tensor(out, dtype=torch.float32), lens[:, 0], lens[:, 1], lens[:, 2], lens[:, 3],
                   keys.width, keys.height)
