"""The scene a data path is reconstructed with: ``nls reconstruct /data/garden`` (a Blender or instant-ngp
folder, a COLMAP capture, or a mesh file) instead of a scene YAML.

The settings are those of ``scenes/lego_dense.yaml``, the CPU-sized dense-grid radiance field with nerfacc
volume rendering, less its lego-specific box (the scene source gives the box), with 5000 steps. The run's
config.yaml holds them resolved, so ``nls resume`` and the other commands need no scene file.
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


def is_data_path(path: Path) -> bool:
    """Whether ``path`` names data (a folder, or a file that is not ``.yaml``/``.yml``) rather than a scene file."""
    return path.is_dir() or (path.is_file() and path.suffix.lower() not in YAML_SUFFIXES)


def data_scene(path: Path, scene_type: str | None) -> dict:
    """The scene dict for data at ``path``, which scene source ``scene_type`` (as ``nls_scene_type_for_path``
    detected it) reads: :data:`DATA_SCENE` with ``name`` from the path's name and ``scene.path`` made
    absolute; ConfigError when no scene source recognises the path."""
    from pipeline.types import ConfigError

    if scene_type is None:
        what = "folder" if path.is_dir() else "file"
        raise ConfigError(
            f"{path}: this {what} is neither a scene YAML nor data a scene source recognises. Give a scene file "
            f"(see scenes/), a Blender folder (transforms_train.json) or instant-ngp folder (transforms.json), a "
            f"COLMAP capture (images/ beside sparse/0/cameras.bin or .txt), or a mesh file (.obj, .off, .ply, "
            f".stl, .glb)")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.resolve().name).strip("._") or "scene"
    return {"name": name, **DATA_SCENE, "scene": {"type": scene_type, "path": str(path.resolve())}}
