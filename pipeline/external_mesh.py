"""``nls eval RUN --mesh FILE``: another method's mesh of a run's scene (NeuS's, a COLMAP / MVS surface, an earlier
nls export) scored by the run's geometry evaluators (``chamfer``, ``dtu``, ``point_fit``: those that read the mesh
and no render), against the run's ground truth with the run's options and code, so that two methods' meshes are
scored exactly alike.

The mesh is taken to be in the coordinates of the data the run was made from (``--mesh-frame input``, the default:
a DTU scan's world frame, a COLMAP model's, an input mesh's) and moved into the run's frame by the scene's
``input_frame.to_run``, or to be in the run's frame already (``--mesh-frame run``: ``nls export RUN`` without
``--frame input``). Scenes that nls made itself or read in their own coordinates (Blender folders) have one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.evaluate import EvalContext
from pipeline.types import NLSError

#: the frames ``--mesh-frame`` names
MESH_FRAMES = ("input", "run")


def mesh_only(consumes) -> bool:
    """Whether an evaluator consuming ``consumes`` (alternative sets of quantities) scores a mesh by itself: each
    alternative reads the mesh and neither renders nor images."""
    return bool(consumes) and all("mesh" in alt and not {"render", "images"} & set(alt) for alt in consumes)


def to_run_frame(scene) -> Optional[np.ndarray]:
    """(4, 4): the scene's ``input_frame.to_run``, None when its input is in the run's frame."""
    frame = scene.meta.get("input_frame")
    return np.asarray(frame["to_run"], np.float64) if isinstance(frame, dict) and "to_run" in frame else None


@dataclass
class GivenMesh(EvalContext):
    """An :class:`EvalContext` whose mesh is read from ``mesh_from`` (in ``mesh_frame``) instead of extracted from
    the run's field; it has no renders and no depths, so evaluators that need them are skipped with the reason."""

    mesh_from: Optional[Path] = None
    mesh_frame: str = "input"

    @property
    def rendered(self) -> bool:
        """False: nothing was rendered."""
        return False

    def renders(self) -> list:
        """No renders: NLSError (the evaluator that asked is skipped)."""
        raise NLSError(f"--mesh {self.mesh_from}: only the mesh is scored, there are no renders")

    def depths(self) -> list:
        """No depths: NLSError (the evaluator that asked is skipped)."""
        raise NLSError(f"--mesh {self.mesh_from}: only the mesh is scored, there are no depths")

    def mesh(self):
        """The mesh of ``mesh_from`` in the run's frame (trimesh.Trimesh); DataError for a file that is not one."""
        if self._mesh is None:
            from pipeline.scenes.mesh_render import load_mesh

            mesh = load_mesh(self.mesh_from)
            T = to_run_frame(self.scene) if self.mesh_frame == "input" else None
            if T is not None:
                mesh.apply_transform(T)
            self._mesh = mesh
        return self._mesh
