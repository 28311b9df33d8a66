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

**One factor per camera** (``train.focal_per_camera``): a capture from several cameras, or one zoom lens at several
settings, has a calibration error per camera. The training images are grouped into cameras by their given
intrinsics (:func:`camera_groups`: images whose ``fx, fy, cx, cy`` agree share a camera, as they do when a source's
images share one calibration), and camera ``g`` learns its own ``k_g = exp(a + d_g)``, the offsets ``d_g`` taken
less their mean over the images. The field's frame follows ``k = exp(a)``, the factors' mean in log scale: their
common part is the dolly zoom above, while the offsets are a zoom of one camera against the others, which the one
field cannot follow, so the views themselves pin them down. The two are learned as separate parameters: learned as
one ``a_g`` per camera, Adam's step per parameter is sized by the offsets' large gradients, and the common part,
moved only by what is left when those cancel, crept (csg, 600 steps, errors +5 % and -3 %: both ended 2.4 % long,
their ratio right to 0.1 %). NeRF-- learns the focal lengths of one camera; this grouping, and
the frame following their mean, are this project's. Held-out views take the factor of the training camera whose
intrinsics, in units of the image's size, lie nearest theirs (a view rendered at another size is the same camera),
or, where none lies within 2 % (:data:`SAME_CAMERA`: a camera no training image was taken with), the frame's ``k``.
"""

from __future__ import annotations

from typing import Optional

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


#: a held-out camera is a training camera when their intrinsics in units of the image's size lie within this
#: fraction of each other (a view rendered at another size moves them by under a pixel's worth, ~0.3 %)
SAME_CAMERA = 0.02


def simulated_focal_factors(noise, n: int) -> Tensor:
    """``(n,)`` float64: the factor ``1 + e`` by which image ``i`` of a split of ``n`` has its focal length
    simulated off (``scene.focal_noise``): ``e = noise`` for one number, ``noise[i % len(noise)]`` for a list (one
    error per simulated camera, the images taken by them in turn)."""
    errors = torch.as_tensor(noise if isinstance(noise, (list, tuple)) else [noise], dtype=torch.float64)
    return 1.0 + errors[torch.arange(n) % len(errors)]


def _intrinsics(cameras: Cameras) -> Tensor:
    """``(N, 4)`` float64 ``fx / W, fy / H, cx / W, cy / H``: a camera's intrinsics in units of its image's size,
    which a camera rendered at another size keeps (to the pixel rounding of that size)."""
    w, h = float(cameras.width), float(cameras.height)
    k = torch.stack([cameras.fx / w, cameras.fy / h, cameras.cx / w, cameras.cy / h], -1)
    return k.detach().double().cpu()


def camera_groups(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Which camera each image was taken with, as far as its given intrinsics tell: images whose ``fx, fy, cx, cy``
    agree to a millionth of the image size are one camera. Returns ``groups (N,)`` long, numbered in order of each
    camera's first image, and ``keys (G, 4)`` float64, each camera's intrinsics as :func:`_intrinsics` gives them."""
    k = _intrinsics(cameras)
    first: dict[tuple, int] = {}  # each camera's rounded intrinsics -> its first image
    rows = [tuple(r) for r in torch.round(k * 1e6).long().tolist()]
    for i, row in enumerate(rows):
        first.setdefault(row, i)
    number = {row: g for g, row in enumerate(first)}
    return torch.tensor([number[row] for row in rows], dtype=torch.long), k[list(first.values())]


class FocalRefinement(nn.Module):
    """The learned focal-length factor of the training cameras and the field frame that goes with it (module
    docstring).

    ``forward(dirs (R,3), image (R,) long) -> dirs (R,3)``: the training rays' unit directions through the refined
    focal length. :meth:`refocused` gives any camera set's refined intrinsics, :meth:`to_field` the field's frame.
    """

    def __init__(self, cameras: Cameras, centre: Tensor, lr: float = 3e-3, per_camera: bool = False):
        super().__init__()
        if len(cameras) < 1:
            raise ValueError("focal refinement needs at least one training camera")
        self.lr = float(lr)
        groups, keys = camera_groups(cameras) if per_camera else (torch.zeros(len(cameras), dtype=torch.long),
                                                                  _intrinsics(cameras)[:1])
        self.log_scale = nn.Parameter(torch.zeros(1))  # (1,) a = log k, the factor the field's frame follows
        # (G,) each camera's log factor against it, their mean over the images held at zero; None when shared
        self.offsets = nn.Parameter(torch.zeros(len(keys))) if per_camera else None
        # rebuilt from the scene whenever the run is opened, so not saved (a checkpoint's offsets have G entries,
        # so a scene that groups its images otherwise is refused when the run is opened)
        self.register_buffer("groups", groups, persistent=False)  # (N,) each training image's camera
        self.register_buffer("keys", keys, persistent=False)  # (G, 4) float64 each camera's intrinsics / size
        self.register_buffer("weights", torch.bincount(groups, minlength=len(keys)).double() / len(groups),
                             persistent=False)  # (G,) each camera's share of the training images
        # rebuilt from the scene whenever the run is opened, so not saved
        self.register_buffer("rotations", cameras.c2w[:, :3, :3].detach().clone(), persistent=False)  # (N, 3, 3)
        # (3,) the dolly zoom's centre, saved with the factor: the field's frame is part of the model, so a run
        # opens in the frame it was trained in whatever zoom_centre picks for its scene later
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32).detach().reshape(3).clone())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """As nn.Module's, except that a checkpoint without the centre (written before it was saved) keeps the
        one built from the scene, and one with another number of cameras' factors says so."""
        saved = state_dict.get(prefix + "offsets")
        if saved is not None and self.offsets is not None and saved.shape != self.offsets.shape:
            error_msgs.append(f"{prefix}offsets: the checkpoint holds focal-length factors of {saved.numel()} "
                              f"cameras and this scene's training images make {self.n_cameras} "
                              f"(train.focal_per_camera groups them by their given intrinsics): the scene's images "
                              f"differ from the run's")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "centre" in missing_keys:
            missing_keys.remove(prefix + "centre")

    @property
    def n_cameras(self) -> int:
        """How many factors are learned: 1 when shared, else the cameras :func:`camera_groups` found."""
        return 1 if self.offsets is None else int(self.offsets.shape[0])

    def scale(self) -> Tensor:
        """``(G,)`` each camera's focal-length factor ``k_g = exp(a + d_g)`` with the offsets ``d_g`` less their
        mean over the images (``(1,)``, ``exp(a)``, when shared)."""
        if self.offsets is None:
            return torch.exp(self.log_scale)
        d = self.offsets - (self.offsets * self.weights.to(self.offsets)).sum()
        return torch.exp(self.log_scale + d)

    def frame_scale(self) -> Tensor:
        """``()`` the factor the field's frame follows, ``exp(a)``: the shared factor, or the cameras' mean in log
        scale over the images."""
        return torch.exp(self.log_scale[0])

    def forward(self, dirs: Tensor, image: Tensor) -> Tensor:
        """Unit directions ``dirs (R, 3)`` of training images ``image (R,)``'s rays (world frame, through the given
        intrinsics) through the refined ones: ``x`` and ``y`` in the camera frame divided by the image's camera's
        ``k_g``."""
        image = image.to(device=dirs.device, dtype=torch.long)
        rot = self.rotations.to(dirs.dtype)[image]  # (R, 3, 3) camera to world, as given
        local = torch.einsum("rji,rj->ri", rot, dirs)  # (R, 3) in the camera frame
        if self.offsets is None:  # one factor, broadcast: its gradient sums as it did before per-camera factors
            k = self.scale().to(dirs.dtype)  # (1,)
        else:
            k = self.scale().to(dirs.dtype)[self.groups.to(image.device)[image]][:, None]  # (R, 1)
        local = torch.cat([local[:, :2] / k, local[:, 2:]], -1)
        out = torch.einsum("rij,rj->ri", rot, local)
        return out / out.norm(dim=-1, keepdim=True)

    def ray_distances(self, distance: Tensor, dirs: Tensor, image: Tensor) -> Tensor:
        """``(R, 1)`` the distances along the refined rays (:meth:`forward`) of the points at the z-depths that
        ``distance (R, 1)`` measures along the given unit rays ``dirs (R, 3)`` of training images ``image (R,)``: a
        pixel at z-depth ``z`` lies ``z / cos`` along its ray, and the refined focal length changes the ray's angle to
        the optical axis (``distance cos_given / cos_refined``; 0 stays 0). No gradient reaches the focal length
        through it: the depth is a target, and the focal length is learned by the images."""
        with torch.no_grad():
            axis = -self.rotations.to(dirs.dtype)[image.to(device=dirs.device, dtype=torch.long)][:, :, 2]  # (R, 3)
            given = (dirs * axis).sum(-1, keepdim=True)
            refined = (self(dirs, image) * axis).sum(-1, keepdim=True)
            return distance * given / refined.clamp_min(1e-6)

    def to_field(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """World points ``x (N, 3)`` in the field's frame, ``c + k (x - c)`` with ``k`` :meth:`frame_scale`, and
        ``k`` (a 0-d tensor of ``x``'s dtype), by which the field's lengths are the world's."""
        k = self.frame_scale().to(x.dtype)
        c = self.centre.to(x)
        return c + k * (x - c), k

    def camera_of(self, cameras: Cameras) -> Tensor:
        """``(N,)`` long: the learned camera each of ``cameras`` (any split, any size) was taken with, the one whose
        intrinsics in units of the image's size lie nearest its own, or -1 where none lies within
        :data:`SAME_CAMERA` of it (a camera no training image was taken with); every one 0 when the factor is
        shared."""
        if self.n_cameras == 1:
            return torch.zeros(len(cameras), dtype=torch.long)
        keys = self.keys.detach().cpu().double()
        dist, nearest = torch.cdist(_intrinsics(cameras), keys).min(-1)
        return torch.where(dist <= SAME_CAMERA * keys[nearest].norm(dim=-1), nearest, -1)

    def refocused(self, cameras: Cameras, images: Optional[Tensor] = None) -> Cameras:
        """``cameras`` (any split, any size: a calibration error is shared by every image of a camera) with the
        refined focal length ``k_g fx``, ``k_g fy`` of their camera (:meth:`camera_of`; with ``images``, the
        training images they are, whose cameras are known), or the frame's factor ``k`` for a camera no training
        image was taken with; their poses as they are."""
        groups = (self.camera_of(cameras) if images is None
                  else self.groups.cpu()[torch.as_tensor(images, dtype=torch.long).cpu()])
        with torch.no_grad():  # (index -1, an unknown camera: the frame's factor, last)
            factors = torch.cat([self.scale().cpu(), self.frame_scale().cpu()[None]])
            k = factors[groups].to(device=cameras.fx.device, dtype=cameras.fx.dtype)
        return Cameras(cameras.c2w, cameras.fx * k, cameras.fy * k, cameras.cx, cameras.cy, cameras.width,
                       cameras.height)

    def summary(self) -> dict:
        """The correction for ``poses.json``: ``{"scale": k, "centre": c}`` with ``k`` the factor the field's frame
        follows (:meth:`frame_scale`), and with one factor per camera also ``"per_camera": [{"scale", "images",
        "fx", "fy", "cx", "cy"}]`` (the given intrinsics in units of the image's width and height)."""
        out = {"scale": round(float(self.frame_scale().detach()), 7),
               "centre": [round(float(v), 6) for v in self.centre.detach().cpu()]}
        if self.n_cameras > 1:
            counts = torch.bincount(self.groups.cpu(), minlength=self.n_cameras)
            out["per_camera"] = [{"scale": round(float(k), 7), "images": int(n),
                                  **{name: round(float(v), 7) for name, v in zip(("fx", "fy", "cx", "cy"), key)}}
                                 for k, n, key in zip(self.scale().detach().cpu(), counts, self.keys.cpu())]
        return out

    def param_groups(self, lr: float) -> list[dict]:
        """One optimiser group at this module's own rate (``train.focal_lr``)."""
        return [{"name": "focal", "params": [self.log_scale] + ([self.offsets] if self.offsets is not None else []),
                 "lr": self.lr}]
