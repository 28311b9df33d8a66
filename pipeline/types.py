"""Data contracts passed between stages.

Conventions (used everywhere in the project):

* World space is right-handed; cameras follow the Blender/OpenGL convention of the
  NeRF-synthetic data: a camera looks down its local ``-z`` axis, ``+y`` is up and
  ``+x`` is right. ``c2w`` maps camera coordinates to world coordinates.
* Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``u`` grows to the right,
  ``v`` grows downwards (image rows).
* Images are float32 in ``[0, 1]``, shape ``(H, W, 3)`` after alpha compositing.
* SDFs are negative inside, positive outside.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:  # torch stays out of cheap imports
    import numpy as np
    import torch


@dataclass
class Cameras:
    """A set of pinhole cameras.

    c2w: (N, 4, 4) float32 camera-to-world, Blender/OpenGL axes.
    fx, fy, cx, cy: (N,) float32 intrinsics in pixels.
    width, height: image size in pixels (same for every camera of a split).
    """

    c2w: "torch.Tensor"
    fx: "torch.Tensor"
    fy: "torch.Tensor"
    cx: "torch.Tensor"
    cy: "torch.Tensor"
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def to(self, device) -> "Cameras":
        """A copy with every tensor on ``device``."""
        return Cameras(self.c2w.to(device), self.fx.to(device), self.fy.to(device),
                       self.cx.to(device), self.cy.to(device), self.width, self.height)

    def downscaled(self, f: int) -> "Cameras":
        """The cameras of images ``f`` times smaller, as :func:`pipeline.scenes.blender.area_downscale` makes
        them (sizes floored, the rest cropped): the intrinsics divided by ``f``, so pixel ``(u, v)``'s centre ray
        is the centre ray of the full-size block ``[f u, f u + f) x [f v, f v + f)``."""
        return Cameras(self.c2w, self.fx / f, self.fy / f, self.cx / f, self.cy / f, self.width // f,
                       self.height // f)

    def select(self, indices) -> "Cameras":
        """The cameras at ``indices`` (a list or index tensor), in that order."""
        return Cameras(self.c2w[indices], self.fx[indices], self.fy[indices], self.cx[indices], self.cy[indices],
                       self.width, self.height)


@dataclass
class PosedImages:
    """One split of a posed-image scene.

    images: (N, H, W, 3) float32 in [0, 1], already composited on the scene background.
    cameras: N cameras.
    alphas: optional (N, H, W, 1) float32 coverage (1 = object), when the source has alpha.
    names: optional per-image identifiers (file stems), length N.
    valid: optional (N, H, W) bool, the pixels that count (None: all). The others, under an ignore mask
        (something that moved, the photographer's shadow), are neither trained on nor scored.
    depths: optional (N, H, W) float32 measured depth (a depth sensor's, nerfstudio's ``depth_file_path``) in
        world units along each camera's optical axis (z-depth, not the distance along the ray); 0 where none.
    depth_errors: optional (N, H, W) float32 beside keypoint ``depths`` (structure from motion's): the mean
        reprojection error, in pixels, of the 3D point each depth comes from (DS-NeRF's uncertainty); 0 where none.
    """

    images: "torch.Tensor"
    cameras: Cameras
    alphas: Optional["torch.Tensor"] = None
    names: list[str] = field(default_factory=list)
    valid: Optional["torch.Tensor"] = None
    depths: Optional["torch.Tensor"] = None
    depth_errors: Optional["torch.Tensor"] = None

    def valid_of(self, i: int, downscale: int = 1) -> Optional["np.ndarray"]:
        """View ``i``'s (H, W) bool pixels that count, as numpy, or None when every pixel counts; with
        ``downscale`` d, the (H // d, W // d) blocks of which at least half count (as the loader downscales)."""
        if self.valid is None:
            return None
        keep = self.valid[i].cpu().numpy()
        if downscale == 1:
            return keep
        from pipeline.scenes.blender import VALID_SHARE, area_downscale

        return area_downscale(keep[..., None].astype("float32"), downscale)[..., 0] >= VALID_SHARE

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class SceneData:
    """What a scene source hands to the pipeline.

    splits: e.g. {"train": PosedImages, "val": ..., "test": ...}; may be empty for
        non-image scenes (point clouds, shape datasets).
    aabb: (6,) float32 [xmin, ymin, zmin, xmax, ymax, zmax] scene bounding box.
    background: RGB in [0, 1] the images were composited on.
    near, far: ray interval limits (world units) used by the renderer.
    gt_mesh: optional path of a ground-truth mesh, in the same world frame.
    points: optional (P, 3) float32 input point cloud (point-cloud scenes).
    normals: optional (P, 3) float32 normals of ``points``.
    point_colors: optional (P, 3) uint8 colours of ``points`` (structure from motion's sparse points).
    meta: free-form, JSON-serialisable facts about the scene (written to the run folder).
    datasets: optional map-style ``torch.utils.data.Dataset`` per split (shape collections,
        classifier data). Items are dicts of tensors; the trainer draws ``train.batch_items``
        of them per step from ``datasets["train"]`` when the scene has no training images.
    """

    splits: dict[str, PosedImages]
    aabb: "torch.Tensor"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    near: float = 0.0
    far: float = 1.0e10
    gt_mesh: Optional[Path] = None
    points: Optional["np.ndarray"] = None
    normals: Optional["np.ndarray"] = None
    point_colors: Optional["np.ndarray"] = None
    meta: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)


class NLSError(Exception):
    """An error the user can fix: printed as one paragraph by the CLI, no traceback.

    The message names the file, key or value at fault and what would be valid.
    """

    exit_code = 2


class ConfigError(NLSError):
    """A scene file or ``--set`` override is invalid."""


class DataError(NLSError):
    """Input data (images, transforms, meshes, point clouds) is missing or malformed."""


class CheckpointError(NLSError):
    """A checkpoint is missing, truncated or does not match the run."""


class EmptyLevelSet(NLSError):
    """The field has no surface at ``level``, anywhere in the box (e.g. early in training): it ranges over
    ``low``..``high`` there."""

    def __init__(self, message: str, *, low: float, high: float, level: float):
        super().__init__(message)
        self.low, self.high, self.level = low, high, level


class PluginError(NLSError):
    """A plugin's component failed with an exception of its own: the message names the plugin, the
    component and the exception (``NLS_TRACE_PLUGINS=1`` lets the traceback through)."""

    exit_code = 1


def tracing_plugins() -> bool:
    """Whether ``NLS_TRACE_PLUGINS`` is set: plugin calls are traced and their tracebacks kept."""
    import os

    return os.environ.get("NLS_TRACE_PLUGINS", "") not in ("", "0")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host or a device running out of memory (``MemoryError``, torch's
    ``OutOfMemoryError``): not a plugin's fault, so :func:`plugin_errors` lets it through."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


@contextmanager
def plugin_errors(what: str) -> Iterator[None]:
    """Around a call into a component: an exception of its own (not an :class:`NLSError`, not out of
    memory) becomes a :class:`PluginError` "``what``: Type: message", unless :func:`tracing_plugins`.
    Nested, the innermost wins: it names the component that failed, and outer ones pass it on."""
    try:
        yield
    except NLSError:
        raise
    except Exception as exc:
        if tracing_plugins() or is_out_of_memory(exc):
            raise
        raise PluginError(f"{what}: {type(exc).__name__}: {exc} (NLS_TRACE_PLUGINS=1 shows the traceback)") from exc


def label_component(obj: object, where: str) -> None:
    """Remember on a built component which it is (``"field 'mlp_sdf' of plugin sample_network"``), for
    the errors of its later calls; objects that take no attributes keep their class name."""
    try:
        setattr(obj, "nls_component", where)
    except (AttributeError, TypeError):
        pass


def component_label(obj: object) -> str:
    """What :func:`label_component` gave ``obj``, else its class name."""
    return getattr(obj, "nls_component", None) or type(obj).__name__
