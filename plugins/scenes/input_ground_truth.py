"""A ground-truth mesh given in a capture's own coordinates (``scene.gt_mesh``): a scan registered to a COLMAP
model, the mesh of a BlendedMVS scene beside its NeuS folder. The capture sources load in a normalised frame, so
the mesh is moved into it by the scene's ``input_frame.to_run`` once, cached by the mesh file's contents and that
transform, and becomes the scene's ground truth for the ``chamfer`` and ``depth`` evaluators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.types import DataError, SceneData

#: the option that names the mesh, in messages
OPTION = "scene.gt_mesh"


def with_input_gt_mesh(scene: SceneData, root: Path, given: Optional[str]) -> SceneData:
    """``scene`` with ``gt_mesh`` the mesh file ``given`` (under ``root``, the capture folder, unless absolute),
    moved from the input's coordinates into the run's frame (``scene.meta["input_frame"]["to_run"]``) and cached
    as ``gt_mesh.ply``; ``meta["gt_mesh_input"]`` names the file and its sha256. As it is without ``given``.
    DataError naming the option when the file is missing, cannot be read or has no faces."""
    if given is None:
        return scene
    from pipeline.runs import file_sha256
    from plugins.scenes.sources import cached_render

    path = Path(given) if Path(given).is_absolute() else Path(root) / given
    if not path.is_file():
        raise DataError(f"{OPTION} {given}: no file {path} (a mesh in the capture's coordinates; relative paths are "
                        f"under scene.path)")
    to_run = np.asarray(scene.meta["input_frame"]["to_run"], dtype=np.float64)
    digest = file_sha256(path)

    def make(tmp: Path) -> None:
        from pipeline.scenes.mesh_render import load_mesh
        from plugins.scenes.point_files import is_point_cloud_file

        if is_point_cloud_file(path):
            raise DataError(f"{OPTION} {given}: {path} holds points without faces; the chamfer and depth evaluators "
                            f"need a surface (a mesh with faces)")
        mesh = load_mesh(path)
        mesh.apply_transform(to_run)
        mesh.export(tmp / "gt_mesh.ply")
        (tmp / "meta.json").write_text(json.dumps({"source": "gt_mesh", "file": str(path.resolve()),
                                                   "sha256": digest, "to_run": to_run.tolist()}))

    entry = cached_render("gt-mesh", {"sha256": digest, "to_run": np.round(to_run, 12).tolist()}, make)
    scene.gt_mesh = entry / "gt_mesh.ply"
    scene.meta["gt_mesh_input"] = {"file": str(path.resolve()), "sha256": digest}
    return scene
