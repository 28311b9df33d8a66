"""Focal-length refinement: one learned correction of the cameras' focal length, fitted with the field.

A focal length from EXIF tags, a phone's metadata or a rough calibration can be off by a few per cent, and a field
fitted through it comes out the wrong size: a longer focal length makes the object look bigger, and the field, which
cannot move the cameras, shrinks to match. NeRF-- (Wang et al., "NeRF--: Neural Radiance Fields Without Known Camera
Parameters", 2021) learns the focal length jointly with the poses and the field by the photometric loss: pixel
``(u, v)``'s ray direction in the camera frame is ``((u - cx) / fx, -(v - cy) / fy, -1)`` (in this project's camera
axes, :mod:`pipeline.rays`) with ``fx, fy`` parameters shared by the images (NeRF--'s focal lengths, learned with
its poses; the paper's equation numbers are not quoted, as its text was not at hand to check them). Here one
relative correction ``k = exp(a)`` (``a`` starts at 0) scales every camera's focal length, ``fx' = k fx``,
``fy' = k fy``, keeping the aspect ratio and the principal point as given (a small principal-point error moves the
image as a small turn of the camera does, which pose refinement learns).

**Departure: the correction is a dolly zoom.** Learned as NeRF-- learns it, a few per cent of focal error is not
recovered on a scene seen from around it: a change of focal length zooms every view, which the field can follow
almost exactly by growing or shrinking about the object; only perspective (how much nearer parts grow against
farther ones) tells the two apart. The field follows within the first hundred steps, then the focal length sits
in that valley. Measured on the csg scene without the change below: with the dense grid a 5 % error ended at
4.4-4.9 % after 600-2400 steps; with the hash grid the focal length first drifted down while the field was still
a blob, whatever the truth, and stayed there (-5 % ended at 8.7 %; +5 % at 0.2 %, where the drift happened to point
at the truth; README: Poses). So ``k`` also scales the world as the
field sees it about a centre ``c`` (below): the field is queried at ``c + k (x - c)`` for a world point ``x``, its
SDF divided by ``k`` and its density multiplied by ``k`` (lengths in the field's frame are ``k`` times the world's),
through :meth:`pipeline.system.FieldChain.set_frame`. Zooming in by ``k`` and shrinking the world by ``k`` about
``c`` leave the image of the plane through ``c`` facing a camera that looks at ``c`` exactly as it was
(``tests/test_focal_refinement.py``), so for the cameras round an object ``k`` moves almost nothing to first
order and its gradient is the perspective error alone, while the field keeps its size in its own frame. The world, the cameras, the mesh and every evaluation stay in the given frame: at the true
focal length the field's frame is the world's scaled by ``k``.

**The centre** is the point the training cameras look at (:func:`zoom_centre`: the point nearest their optical
axes in the least-squares sense), not the box's centre: about any other point the dolly zoom also shifts each
image by ``(k - 1)`` times that point's offset from the principal point, a shift the field has to follow as ``k``
moves, which brings part of the valley back. Where the axes do not pin a point (forward-facing captures, whose
axes are near parallel) or it falls outside the scene box, the box's centre is used. Measured on lego (dense grid,
2400 steps; README: Poses): about the box's centre, 0.3 units above the point its cameras look at, a 5 % error
ended at 4.88 %; about that point, at 0.02 %.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.types import Cameras

#: the least eigenvalue of the axes' mean normal projector below which they do not pin a point (near-parallel axes:
#: for axes spread over an angle ``t`` about their mean it is about ``t^2 / 4``, so 0.01 is a spread of ~11 degrees)
MIN_AXIS_SPREAD = 0.01


def zoom_centre(cameras: Cameras, aabb: Tensor) -> Tensor:
    """``(3,)`` the point the cameras look at, for the dolly zoom's centre (module docstring): ``p`` minimising
    ``sum_i |(I - d_i d_i^T)(p - o_i)|^2`` over the cameras' centres ``o_i`` and optical axes ``d_i``; the centre of
    ``aabb`` (6,) when the axes are near parallel (:data:`MIN_AXIS_SPREAD`) or the point lies outside the box."""
    box = aabb.detach().double().reshape(2, 3).cpu()
    fallback = box.mean(0)
    c2w = cameras.c2w.detach().double().cpu()
    if len(c2w) < 2:
        return fallback
    origins, axes = c2w[:, :3, 3], -c2w[:, :3, 2]  # (N, 3): OpenGL cameras look down -z
    axes = axes / axes.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3)
    a, b = proj.mean(0), (proj @ origins[:, :, None]).mean(0)[:, 0]
    if float(torch.linalg.eigvalsh(a)[0]) < MIN_AXIS_SPREAD:
        return fallback
    point = torch.linalg.solve(a, b)
    inside = bool(((point >= box[0]) & (point <= box[1])).all())
    return point if inside else fallback


class FocalRefinement(nn.Module):
    """The learned focal-length factor of the training cameras and the field frame that goes with it (module
    docstring).

    ``forward(dirs (R,3), image (R,) long) -> dirs (R,3)``: the training rays' unit directions through the refined
    focal length. :meth:`refocused` gives any camera set's refined intrinsics, :meth:`to_field` the field's frame.
    """

    def __init__(self, cameras: Cameras, centre: Tensor, lr: float = 3e-3):
        super().__init__()
        if len(cameras) < 1:
            raise ValueError("focal refinement needs at least one training camera")
        self.lr = float(lr)
        self.log_scale = nn.Parameter(torch.zeros(1))  # (1,) a = log k
        # rebuilt from the scene whenever the run is opened, so not saved
        self.register_buffer("rotations", cameras.c2w[:, :3, :3].detach().clone(), persistent=False)  # (N, 3, 3)
        # (3,) the dolly zoom's centre, saved with the factor: the field's frame is part of the model, so a run
        # opens in the frame it was trained in whatever zoom_centre picks for its scene later
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).detach().reshape(3).clone())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """As nn.Module's, except that a checkpoint without the centre (written before it was saved) keeps the
        one built from the scene."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "centre" in missing_keys:
            missing_keys.remove(prefix + "centre")

    def scale(self) -> Tensor:
        """``(1,)`` the focal-length factor ``k = exp(a)``."""
        return torch.exp(self.log_scale)

    def forward(self, dirs: Tensor, image: Tensor) -> Tensor:
        """Unit directions ``dirs (R, 3)`` of training images ``image (R,)``'s rays (world frame, through the given
        intrinsics) through the refined ones: ``x`` and ``y`` in the camera frame divided by ``k``."""
        image = image.to(device=dirs.device, dtype=torch.long)
        rot = self.rotations.to(dirs.dtype)[image]  # (R, 3, 3) camera to world, as given
        local = torch.einsum("rji,rj->ri", rot, dirs)  # (R, 3) in the camera frame
        local = torch.cat([local[:, :2] / self.scale().to(dirs.dtype), local[:, 2:]], -1)
        out = torch.einsum("rij,rj->ri", rot, local)
        return out / out.norm(dim=-1, keepdim=True)

    def to_field(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """World points ``x (N, 3)`` in the field's frame, ``c + k (x - c)``, and ``k`` (a 0-d tensor of ``x``'s
        dtype), by which the field's lengths are the world's."""
        k = self.scale().to(x.dtype)[0]
        c = self.centre.to(x)
        return c + k * (x - c), k

    def refocused(self, cameras: Cameras) -> Cameras:
        """``cameras`` (any split, any size: a calibration error is shared by every image of a camera) with the
        refined focal length ``k fx``, ``k fy``; their poses as they are."""
        with torch.no_grad():
            k = self.scale().to(device=cameras.fx.device, dtype=cameras.fx.dtype)
        return Cameras(cameras.c2w, cameras.fx * k, cameras.fy * k, cameras.cx, cameras.cy, cameras.width,
                       cameras.height)

    def summary(self) -> dict:
        """The correction for ``poses.json``: ``{"scale": k, "centre": c}``."""
        return {"scale": round(float(self.scale().detach()[0]), 7),
                "centre": [round(float(v), 6) for v in self.centre.detach().cpu()]}

    def param_groups(self, lr: float) -> list[dict]:
        """One optimiser group at this module's own rate (``train.focal_lr``)."""
        return [{"name": "focal", "params": [self.log_scale], "lr": self.lr}]
