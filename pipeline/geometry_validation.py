"""Geometry validation during training (``train.val_geometry``, on by default for runs without images): every
``train.val_every`` steps the field is meshed by the run's own extractor at ``train.val_resolution`` and the
mesh is scored against the scene's reference, its ground-truth mesh or else its input points, with
:func:`pipeline.metrics.chamfer` (the protocol of the ``chamfer`` and ``point_fit`` evaluators, at
``train.val_samples`` points a side). The score goes to metrics.jsonl as ``val_chamfer_l1`` (against the
ground-truth mesh) or ``val_fit_chamfer_l1`` (against the input points), and
``renders/progress/val_mesh_<step>.png`` shows the mesh | the reference | the mesh coloured by its distance to
the reference, all from one fixed camera.

The figure follows the evaluators' but is not theirs: a coarser grid and fewer samples give a higher floor
(the protocol's floor is the reference against a second sampling of itself), so ``nls eval`` gives the figure
to report. A field without a surface yet (early in training: no zero level in the box, or an empty mesh) logs
no score at that step, and says so once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from pipeline.config import SceneConfig
from pipeline.types import EmptyLevelSet, NLSError, SceneData

if TYPE_CHECKING:
    import trimesh

#: the file name of the geometry previews in renders/progress/ (``<name>_<8-digit step>.png``)
PREVIEW_NAME = "val_mesh"
#: the distance panel's colour map spans 0 (dark) to this fraction of the reference's largest side (yellow)
DISTANCE_SPAN = 0.02
#: the preview camera: looks at the reference's box centre from this direction, with this field of view
VIEW_DIRECTION = (1.0, -1.3, 0.8)
FOV_DEGREES = 40.0
#: the mesh panel's colour, shaded by the cosine to the viewing ray
CLAY = np.array([0.78, 0.74, 0.68])

#: what a mesh is measured against: the ground-truth mesh, or the input points (P, 3)
Reference = Union["trimesh.Trimesh", np.ndarray]


def reference_of(scene: SceneData) -> tuple[str, str]:
    """(metrics.jsonl key, what it is measured against) of a scene's geometry validation: its ground-truth mesh
    when it has one, else its input points; NLSError when it has neither."""
    if scene.gt_mesh:
        return "val_chamfer_l1", "the ground-truth mesh"
    if scene.points is not None and len(scene.points):
        return "val_fit_chamfer_l1", f"the {len(scene.points)} input points"
    raise NLSError("the scene has neither a ground-truth mesh nor input points to measure the mesh against")


def check_geometry_validation(cfg: SceneConfig, scene: SceneData) -> None:
    """Before training: geometry validation needs an extractor stage, a reference and a single shape."""
    why = None
    if cfg.stages.get("extractor") is None:
        why = "the scene file has no extractor stage to mesh the field with (add `extractor: {type: marching_cubes}`)"
    elif scene.datasets:
        why = ("this run learns a collection of shapes, one field per input, so there is no one mesh to validate; "
               "its evaluators score the collection")
    else:
        try:
            reference_of(scene)
        except NLSError as e:
            why = str(e)
    if why:
        option = "train.val_geometry = true" if cfg.train.val_geometry else \
            f"train.val_every = {cfg.train.val_every} on a run without images"
        raise NLSError(f"{cfg.source}: {option}: {why}; leave train.val_every unset"
                       + ("" if not cfg.train.val_geometry else " or train.val_geometry unset"))


@dataclass
class PreviewCamera:
    """A pinhole camera framing a box: camera-to-world ``c2w`` (4, 4, OpenGL axes), ``focal`` and ``side``
    (pixels, square image)."""

    c2w: np.ndarray
    focal: float
    side: int

    @classmethod
    def framing(cls, points: np.ndarray, side: int) -> "PreviewCamera":
        """The camera looking at the box of ``points`` (P, 3) from :data:`VIEW_DIRECTION`, at the distance where
        the box's bounding sphere fills :data:`FOV_DEGREES`, with the focal length that brings the farthest
        of the points from the image centre to 90 % of its half-side."""
        from pipeline.scenes.mesh_render import look_at

        lo, hi = points.min(0), points.max(0)
        centre, radius = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-6)
        d = np.asarray(VIEW_DIRECTION) / np.linalg.norm(VIEW_DIRECTION)
        c2w = look_at(centre + d * radius / np.sin(np.radians(FOV_DEGREES) / 2), centre)
        cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # x right, y up, looking down -z: every point has z < 0
        reach = float(np.abs(cam[:, :2] / -cam[:, 2:]).max())
        return cls(c2w, 0.45 * side / max(reach, 1e-6), side)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions (side*side, 3) of the pixel centres, row-major."""
        from pipeline.scenes.mesh_render import pixel_rays

        return pixel_rays(self.c2w, self.side, self.side, self.focal)

    def splat(self, points: np.ndarray) -> np.ndarray:
        """(side, side, 3) image of ``points`` (P, 3): the nearest point in each pixel, grey from near (dark)
        to far (light), on white."""
        p = (points - self.c2w[:3, 3]) @ self.c2w[:3, :3]  # camera axes: x right, y up, looking down -z
        z = -p[:, 2]
        front = z > 1e-9
        u = np.floor(self.focal * p[front, 0] / z[front] + self.side / 2).astype(np.int64)
        v = np.floor(-self.focal * p[front, 1] / z[front] + self.side / 2).astype(np.int64)
        z = z[front]
        inside = (u >= 0) & (u < self.side) & (v >= 0) & (v < self.side)
        pix, z = v[inside] * self.side + u[inside], z[inside]
        img = np.ones((self.side * self.side, 3))
        if len(pix):
            order = np.lexsort((z, pix))  # by pixel, nearest first
            first = order[np.unique(pix[order], return_index=True)[1]]
            grey = 0.25 + 0.55 * (z[first] - z.min()) / max(float(np.ptp(z)), 1e-12)
            img[pix[first]] = grey[:, None]
        return img.reshape(self.side, self.side, 3)


def shade(mesh, origins: np.ndarray, dirs: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(side, side, 3) clay render of ``mesh`` on white (:func:`pipeline.mesh_views.shaded_hits`), the indices of
    the rays that hit it (H,) and the hit points (H, 3)."""
    from pipeline.mesh_views import shaded_hits

    img, ray, loc = shaded_hits(mesh, origins, dirs, CLAY, 0.25)
    return img.reshape(side, side, 3), ray, loc


def distances_to(reference: Reference, points: np.ndarray) -> np.ndarray:
    """(P,) distance of each of ``points`` (P, 3) to the reference: exact to a mesh's surface, to the nearest
    point of a point cloud."""
    from pipeline.metrics import nearest_distances, point_to_surface_distances

    if isinstance(reference, np.ndarray):
        return nearest_distances(points, reference)[0]
    return point_to_surface_distances(points, reference)


class GeometryValidator:
    """Meshes a run's field every ``train.val_every`` steps and scores it against the scene's reference (see the
    module's docstring); the same interface as :class:`pipeline.validation.Validator`."""

    def __init__(self, cfg: SceneConfig, scene: SceneData, system, renders_dir: Path, device) -> None:
        from pipeline.build import BuildContext
        from pipeline.scenes.mesh_render import load_mesh
        from pipeline.validation import PROGRESS_DIR

        t = cfg.train  # checked by check_geometry_validation first
        self.system, self.device, self.cfg, self.scene = system, device, cfg, scene
        self.resolution, self.samples = t.val_resolution, t.val_samples
        self.extractor = cfg.stages["extractor"].build(BuildContext(cfg, device, scene, scene.aabb))
        self.key, self.against = reference_of(scene)
        self.reference: Reference = (load_mesh(scene.gt_mesh) if scene.gt_mesh else
                                     np.asarray(scene.points, np.float64))
        self.tag = f"geometry/{PREVIEW_NAME}"
        self.out_dir = renders_dir / PROGRESS_DIR
        ref_points = self.reference if isinstance(self.reference, np.ndarray) else np.asarray(self.reference.vertices)
        self.span = DISTANCE_SPAN * float(np.ptp(ref_points, axis=0).max())
        self.camera = PreviewCamera.framing(ref_points, t.val_max_side or 400)
        self.rays = self.camera.rays()
        self.reference_image = (self.camera.splat(self.reference) if isinstance(self.reference, np.ndarray)
                                else shade(self.reference, *self.rays, self.camera.side)[0])
        #: (name, (side, 3 side, 3) uint8 mesh | reference | distance) of the latest call
        self.preview = None
        self._said_empty = False

    def current_extractor(self):
        """The run's extractor as this step sees the scene: the one built at the start, or, when the run refines
        its training cameras' poses, one built from the cameras as they now stand (:func:`refined_scene`), as
        ``nls eval`` builds it after training: an extractor that calibrates its level on the training views'
        silhouettes must see them from where the field does."""
        if getattr(self.system, "poses", None) is None:
            return self.extractor
        from pipeline.build import BuildContext
        from pipeline.pose_refinement import refined_scene

        scene = refined_scene(self.scene, self.system)
        return self.cfg.stages["extractor"].build(BuildContext(self.cfg, self.device, scene, scene.aabb))

    def describe(self) -> str:
        """What is validated, for the run's log line."""
        return (f"the field's mesh at {self.resolution}^3 against {self.against} (Chamfer-L1 x10^3, "
                f"{self.samples} samples a side)")

    def __call__(self, step: int) -> dict[str, float]:
        """Mesh the field, write ``renders/progress/val_mesh_<step>.png``, return ``{key: Chamfer-L1 x10^3}``
        ({} while the field has no surface). Leaves the system in eval mode."""
        import trimesh
        from matplotlib import colormaps

        from pipeline import notices
        from pipeline.evaluate import mesh_field, to_uint8
        from pipeline.metrics import chamfer
        from pipeline.runs import atomic_write_image

        self.system.eval()
        try:
            mesh = mesh_field(self.current_extractor(), self.system.chain, self.device, resolution=self.resolution,
                              doing=f"meshing the field for validation at step {step}")
        except EmptyLevelSet as e:
            mesh, why = trimesh.Trimesh(), f"it ranges over [{e.low:.4g}, {e.high:.4g}] in the box, level {e.level:g}"
        else:
            why = "the extractor returned an empty mesh"
        if len(mesh.faces) == 0 and not self._said_empty:
            notices.warn(f"validation at step {step}: the field has no surface yet ({why}); {self.key} is logged "
                         f"from the first validation that meshes one")
            self._said_empty = True
        img, ray, hits = shade(mesh, *self.rays, self.camera.side)
        dist = np.ones((self.camera.side ** 2, 3))
        if len(ray):
            dist[ray] = colormaps["viridis"](np.clip(distances_to(self.reference, hits) / self.span, 0, 1))[:, :3]
        side = np.concatenate([img, self.reference_image, dist.reshape(img.shape)], 1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.preview = (PREVIEW_NAME, to_uint8(side))
        atomic_write_image(self.out_dir / f"{PREVIEW_NAME}_{step:08d}.png", self.preview[1])
        if len(mesh.faces) == 0:
            return {}
        return {self.key: chamfer(mesh, self.reference, n_samples=self.samples)["chamfer_l1"]}
