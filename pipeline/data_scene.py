"""The scene a data path is reconstructed with: ``nls reconstruct /data/garden`` (a Blender or instant-ngp
folder, an IDR / NeuS folder, a COLMAP capture, a folder of photos without poses, a video, a mesh file or a point-cloud file) instead
of a scene YAML.

Data that the scene source turns into posed images trains :data:`DATA_SCENE`: the settings of
``scenes/lego_dense.yaml``, the CPU-sized dense-grid radiance field with nerfacc volume rendering, less its
lego-specific box (the scene source gives the box), with 5000 steps, ``point_fit`` as well where the source
gives points too (a COLMAP capture's sparse points), and ``train_views`` where its poses were estimated (a
COLMAP capture, photos, a video: a view the field cannot fit is named). Data that gives points and no images
(a point-cloud file) trains :data:`POINT_SCENE`: ``scenes/sample_network_spot.yaml``'s surface reconstruction
from raw points, scored against the input points by ``point_fit``, plus IGR's normal term (``point_normals``) when
the file gives normals (without them the term is left out, with a line on stderr). The run's config.yaml holds the settings
resolved, so ``nls resume`` and the other commands need no scene file.
"""

from __future__ import annotations

import re
from pathlib import Path

#: suffixes that name a scene YAML rather than data
YAML_SUFFIXES = (".yaml", ".yml")

#: the scene of a data path, less ``name`` and ``scene.path`` (:func:`data_scene`)
DATA_SCENE: dict = {
    "method": "dense_grid",
    "description": "reconstructed from a data path with nls's default settings (pipeline/data_scene.py)",
    "field": {"type": "dense_grid", "resolution": 128, "features": 8},
    "renderer": {"type": "volume", "samples_per_ray": 256, "grid_resolution": 96, "cull_after": 32},
    "extractor": {"type": "marching_cubes", "resolution": 256, "level": 25.0},
    "losses": [{"type": "photometric"}, {"type": "tv", "weight": 1.0e-4, "density_only": True}],
    "evaluators": [{"type": "psnr"}],
    "train": {"steps": 5000, "batch_rays": 4096, "lr": 0.01, "lr_final_factor": 0.1, "grid_warmup": 256,
              "checkpoint_every": 1000, "log_every": 50},
    "eval": {"split": "test", "chunk": 16384},
}


#: the scene of point-cloud data (a scene source that produces points and no images), less ``name`` and
#: ``scene.path``: scenes/sample_network_spot.yaml's method on the ``geometry`` source, scored against the points,
#: with IGR's normal term for a cloud that has normals
POINT_SCENE: dict = {
    "method": "sample_network",
    "description": "surface from a point cloud with nls's default settings (pipeline/data_scene.py)",
    "field": {"type": "mlp_sdf", "hidden": 256, "layers": 4, "init_radius": 0.35},
    "extractor": {"type": "marching_cubes", "resolution": 256, "lipschitz": 2.0},
    "losses": [{"type": "level_set_recon", "levels": [0.0], "p": 1.0, "lam": 1.0, "n_samples": 1024,
                "general_samples": 1024, "general_sigmas": [0.01, 0.1], "batch_points": 2048},
               {"type": "point_normals", "weight": 1.0, "if_missing": "skip"}],
    "evaluators": [{"type": "point_fit"}],
    "train": {"steps": 3000, "lr": 0.001, "lr_final_factor": 0.1, "log_every": 50, "checkpoint_every": 500},
}


def is_data_path(path: Path) -> bool:
    """Whether ``path`` names data (a folder, or a file that is not ``.yaml``/``.yml``) rather than a scene file."""
    return path.is_dir() or (path.is_file() and path.suffix.lower() not in YAML_SUFFIXES)


def _unrecognised(path: Path, what: str = "") -> "ConfigError":  # noqa: F821
    """The ConfigError for data at ``path`` that no scene source recognises, listing what is read."""
    from pipeline.types import ConfigError

    kind = "folder" if path.is_dir() else "file"
    return ConfigError(
        f"{what}{path}: this {kind} is neither a scene YAML nor data a scene source recognises. Give a scene file "
        f"(see scenes/), a Blender folder (transforms_train.json) or instant-ngp folder (transforms.json), an "
        f"IDR / NeuS folder (image/ beside cameras_sphere.npz or cameras.npz), a COLMAP capture (images/ beside sparse/0/cameras.bin or .txt), a folder of at least 3 photos without poses "
        f"(.jpg, .jpeg, .png, .heic, in it or in its images/), a video file (.mp4, .mov, .m4v, .avi, .mkv, .webm), a mesh "
        f"file (.obj, .off, .ply, .stl, .glb), or a "
        f"point-cloud file (.ply without faces, .xyz, .pts, .npy)")


def data_name(path: Path) -> str:
    """A run name from a data path: its file stem or folder name, with runs of other characters than letters,
    digits, ``_``, ``.`` and ``-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.resolve().name).strip("._") or "scene"


#: scene sources whose poses were estimated (by structure from motion), so that a view may be misplaced
ESTIMATED_POSES = ("colmap", "photos", "video")


def _with_checks(evaluators: list, produces: frozenset[str] | set[str], scene_type: str | None = None) -> list:
    """``evaluators`` with ``point_fit`` added when the scene source gives input points, and ``train_views`` when
    its poses were estimated (:data:`ESTIMATED_POSES`: a misplaced view shows as one the field cannot fit), each
    unless listed already."""
    listed = {(e.get("type") if isinstance(e, dict) else e) for e in evaluators}
    added = [{"type": "point_fit"}] if "points" in produces and "point_fit" not in listed else []
    if scene_type in ESTIMATED_POSES and "images" in produces and "train_views" not in listed:
        added.append({"type": "train_views"})
    return [*evaluators, *added]


def data_scene(path: Path, scene_type: str | None, produces: frozenset[str] | set[str] = frozenset({"images"})) -> dict:
    """The scene dict for data at ``path``, which scene source ``scene_type`` (as ``nls_scene_type_for_path``
    detected it) reads: :data:`POINT_SCENE` when that source ``produces`` points and no images, else
    :data:`DATA_SCENE` (with ``point_fit`` and ``train_views`` where they apply), with ``name`` from the path's name and
    ``scene.path`` made absolute; ConfigError when no scene source recognises the path."""
    if scene_type is None:
        raise _unrecognised(path)
    settings = POINT_SCENE if "points" in produces and "images" not in produces else DATA_SCENE
    return {"name": data_name(path), **settings,
            "evaluators": _with_checks(settings["evaluators"], produces, scene_type),
            "scene": {"type": scene_type, "path": str(path.resolve())}}


def with_data(scene: dict, path: Path, scene_type: str | None, produces: frozenset[str] | set[str]) -> dict:
    """``scene`` (a scene file's dict) set to train on the data at ``path`` (``nls reconstruct SCENE.yaml --data
    PATH``): its scene block becomes ``{type: scene_type, path: <absolute path>}``, as :func:`data_scene` gives
    it (the file's scene options describe its own data: its box, sample counts, crops; ``--set scene.*`` sets
    them for the new data), its name becomes the data's, and ``point_fit`` and ``train_views`` join its
    evaluators where they apply (:func:`_with_checks`). ConfigError when no scene source recognises the path."""
    if scene_type is None:
        raise _unrecognised(path, "--data ")
    block = {"type": scene_type, "path": str(path.resolve())}
    evaluators = scene.get("evaluators") if isinstance(scene.get("evaluators"), list) else []
    return {**scene, "name": data_name(path), "scene": block,
            "evaluators": _with_checks(evaluators, produces, scene_type)}
