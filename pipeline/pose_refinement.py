"""Camera pose refinement: a correction of each training camera's pose, learned with the field.

Poses from structure-from-motion (COLMAP, the photos and video sources) are off by a fraction of a degree
to a degree or two, and a radiance field fitted to slightly misplaced cameras blurs fine detail and grows
floaters where the views disagree. BARF (Lin et al., ICCV 2021) showed that a NeRF's photometric loss can
refine poses by gradient descent through the rendering: each camera's pose is a parameter and the rays of its
pixels move with it (BARF Eq. 3-5, the photometric loss minimised over the field and the poses jointly).
nerfstudio's camera optimiser does the same with a rotation and a translation per image. This module takes
that shape, with each correction in the *world* frame and the rotation about the camera's own centre:

    c2w_i' :  R_i' = exp([w_i]x) R_i,   t_i' = t_i + s_i,

so a ray ``(o, d)`` of image ``i`` becomes ``(o + s_i, exp([w_i]x) d)`` (a pinhole camera's rays all start at
its centre ``t_i``). ``w_i`` (a rotation vector, radians) and ``s_i`` (world units) start at zero. The
exponential map is ``torch.linalg.matrix_exp`` of the skew matrix (differentiable, exact at zero).

Departures from BARF: no coarse-to-fine annealing of the positional encoding (BARF Eq. 14). BARF starts from
poses off by up to ~15 degrees (its synthetic experiments) and needs the annealing to get there; the poses this
is for are already close, and the shared hash-grid backend has no frequency encoding to anneal. A grid's
counterpart, a stochastic blur of the field's training queries annealed to zero, was measured at stop 54 and not
kept: it helped at 6-8 degrees only at the default rate, and a faster rate (``train.pose_lr`` 1e-3) did more, with
or without it (README: pose refinement figures). Like
nerfstudio's, the correction is one free 6-vector per image and no pose prior.

The corrections are identified only up to one common motion of all cameras, which the field would follow: a
rotation, a translation and a scaling of the world (the similarity gauge of structure-from-motion). That motion is
held at zero. Each correction moves the world as ``x -> exp([w_i]x)(x - t_i) + t_i + s_i``, to first order the
twist ``(w_i, v_i = s_i - w_i x t_i)`` (rotation, translation about the origin); the corrections are used with the
similarity motion that best fits their twists removed (:func:`remove_common_motion`), so the scene stays in the
frame and at the scale the poses came in, and held-out views, whose poses are not refined, see it where they
expect it. Removing only the mean of ``w_i`` and ``s_i`` (stop 50's gauge) leaves directions open: every camera
pitched a little about its own centre has mean ``w`` near zero on a ring of cameras, yet the scene appears to move
in all of them alike (mean ``v`` is the ring's radius times the pitch); every camera moved towards the centre has
mean ``s`` near zero and zooms the scene. The frame drifted along them, by 1-3 px on lego (README: Poses). Held-out
views can still be scored after test-time alignment (:mod:`pipeline.pose_alignment`, ``eval.align_poses``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from pipeline.focal_refinement import FocalRefinement, simulated_focal_factors
from pipeline.types import Cameras, PosedImages, SceneData


def rotation_matrices(rotvec: Tensor) -> Tensor:
    """Rotation matrices ``(N, 3, 3)`` of rotation vectors ``(N, 3)`` (axis times angle in radians), through the
    matrix exponential of their skew-symmetric matrices."""
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    return torch.linalg.matrix_exp(skew)


def scale_basis(centres: Tensor) -> Tensor:
    """``(t_i - mean(t)) / sum |t_j - mean(t)|^2`` ``(N, 3)`` for camera centres ``centres`` ``(N, 3)``: the
    least-squares weights of a common scaling about their mean; zeros when the centres (nearly) coincide, which
    leaves the scale free. Depends on the centres alone, so :class:`PoseRefinement` keeps it (no host sync a step)."""
    spread = centres - centres.mean(0, keepdim=True)
    denom = float((spread * spread).sum())
    if denom <= 1e-12 * max(1.0, float((centres * centres).sum())):
        return torch.zeros_like(spread)
    return spread / denom


def remove_common_motion(rotation: Tensor, shift: Tensor, centres: Tensor,
                         basis: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Pose corrections ``rotation``, ``shift`` ``(N, 3)`` of cameras at ``centres`` ``(N, 3)`` with their common
    similarity motion removed (module docstring). With each correction's twist translation ``v_i = s_i - w_i x t_i``,
    the motion that fits them best, ``x -> x + W x x + T + L x`` (``W = mean(w)``; ``T``, ``L``: the least-squares fit
    ``v_i ~ T + L t_i``), is taken off every camera: ``w_i - W`` and ``s_i - W x t_i - T - L t_i``. Afterwards
    ``mean(w) = 0``, ``mean(v) = 0`` and ``sum(v_i . (t_i - mean(t))) = 0``. Linear (first order in the angles, as
    the twist is) and idempotent: a small rotation, translation and scaling of all cameras maps to zero.
    Differentiable. ``basis``: :func:`scale_basis` of ``centres`` when already at hand. Centres all alike (or all at
    the origin, as when none were given) leave the scale free."""
    centres = centres.to(shift)
    basis = scale_basis(centres) if basis is None else basis.to(shift)
    mean_w = rotation.mean(0, keepdim=True)
    twist = shift - torch.linalg.cross(rotation, centres)  # (N, 3)
    mean_v = twist.mean(0, keepdim=True)
    scale = ((twist - mean_v) * basis).sum()
    spread = centres - centres.mean(0, keepdim=True)
    return (rotation - mean_w,
            shift - torch.linalg.cross(mean_w.expand_as(centres), centres) - mean_v - scale * spread)


class PoseRefinement(nn.Module):
    """The learned pose correction of each of ``n_images`` training cameras (module docstring).

    ``forward(origins (R,3), dirs (R,3), image (R,) long) -> (origins (R,3), dirs (R,3))``: the rays of
    training images ``image`` from their refined cameras. :meth:`refined` gives a whole camera set's. With
    ``focal`` (:class:`pipeline.focal_refinement.FocalRefinement`) the focal lengths are refined too, first (the
    rays through the refined intrinsics, then turned and moved with the pose); ``pose=False`` keeps the poses as
    given (their corrections stay zero and are not trained).
    """

    def __init__(self, n_images: int, lr: float = 3e-4, centred: bool = True, centres: Optional[Tensor] = None, *,
                 focal: Optional[FocalRefinement] = None, pose: bool = True):
        super().__init__()
        if n_images < 1:
            raise ValueError(f"pose refinement needs at least one training image, got {n_images}")
        if centres is not None and tuple(centres.shape) != (n_images, 3):
            raise ValueError(f"camera centres of shape {tuple(centres.shape)} for {n_images} pose corrections; "
                             f"expected ({n_images}, 3)")
        self.lr = float(lr)
        self.centred = bool(centred)  # False: each correction as learned (one camera aligned on its own)
        self.rotation = nn.Parameter(torch.zeros(n_images, 3))  # (N, 3) rotation vectors before centring
        self.shift = nn.Parameter(torch.zeros(n_images, 3))  # (N, 3) world-frame shifts before centring
        # (N, 3) the given cameras' centres, which the common motion is taken about; not saved (the scene has them)
        self.register_buffer("centres", torch.zeros(n_images, 3) if centres is None
                             else centres.detach().clone(), persistent=False)
        self.register_buffer("basis", scale_basis(self.centres), persistent=False)  # (N, 3)
        if not pose:  # focal lengths alone (train.refine_focal without train.refine_poses): the poses stay as given
            self.rotation.requires_grad_(False)
            self.shift.requires_grad_(False)
        if focal is not None and len(focal.rotations) != n_images:
            raise ValueError(f"focal refinement of {len(focal.rotations)} cameras for {n_images} pose corrections")
        self.focal = focal  # the focal-length correction (train.refine_focal), or None

    @property
    def refines_poses(self) -> bool:
        """False for the focal length alone (built with ``pose=False``): the poses stay as given."""
        return bool(self.rotation.requires_grad)

    @property
    def n_images(self) -> int:
        """How many cameras have a correction."""
        return int(self.shift.shape[0])

    def corrections(self) -> tuple[Tensor, Tensor]:
        """Every camera's correction with the cameras' common motion removed (:func:`remove_common_motion`; as
        learned when built with ``centred=False``): rotation vectors ``(N, 3)`` (radians) and shifts ``(N, 3)``
        (world units). Built without ``centres``, the cameras are taken to sit at the origin, and this is the
        plain mean of each."""
        if not self.centred:
            return self.rotation, self.shift
        return remove_common_motion(self.rotation, self.shift, self.centres, self.basis)

    def forward(self, origins: Tensor, dirs: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """Rays ``origins, dirs (R, 3)`` of training images ``image (R,)`` as their refined cameras cast them:
        the origin shifted, the direction rotated about the camera's centre (still unit length)."""
        image = image.to(device=origins.device, dtype=torch.long)
        if self.focal is not None:
            dirs = self.focal(dirs, image)
        if not self.refines_poses:  # the focal length alone: the poses as given (no exponential a step)
            return origins, dirs
        w, s = self.corrections()
        rot = rotation_matrices(w.to(dirs.dtype))  # (N, 3, 3), one matrix exponential per camera, not per ray
        return origins + s.to(origins.dtype)[image], torch.einsum("rij,rj->ri", rot[image], dirs)

    def ray_distances(self, distance: Tensor, dirs: Tensor, image: Tensor) -> Tensor:
        """``(R, 1)`` the measured depths ``distance (R, 1)`` along the given rays ``dirs (R, 3)`` of training images
        ``image (R,)`` (``pipeline.train.ray_distance``: z-depths turned into distances) as distances along the
        refined rays (:meth:`forward`): a pose correction turns a camera's rays and its optical axis together, which
        keeps each ray's angle to the axis, so only a refined focal length changes them
        (:meth:`pipeline.focal_refinement.FocalRefinement.ray_distances`)."""
        return distance if self.focal is None else self.focal.ray_distances(distance, dirs, image)

    def refined(self, cameras: Cameras, images: Optional[Sequence[int]] = None) -> Cameras:
        """``cameras`` (the training split's, one per correction; or, with ``images``, those of these training
        images, at any size) with every pose corrected: ``c2w`` rotation ``exp([w]x) R`` and centre ``t + s``; the
        intrinsics as given, or with their refined focal lengths when the focal lengths are refined."""
        wanted = self.n_images if images is None else len(images)
        if len(cameras) != wanted:
            raise ValueError(f"{len(cameras)} cameras for {wanted} pose corrections")
        with torch.no_grad():
            w, s = self.corrections()
            if images is not None:
                pick = torch.as_tensor(list(images), dtype=torch.long, device=w.device)
                w, s = w[pick], s[pick]
            c2w = cameras.c2w.clone()
            rot = rotation_matrices(w.to(device=c2w.device, dtype=c2w.dtype))
            c2w[:, :3, :3] = rot @ c2w[:, :3, :3]
            c2w[:, :3, 3] = c2w[:, :3, 3] + s.to(device=c2w.device, dtype=c2w.dtype)
        moved = Cameras(c2w, cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width, cameras.height)
        if self.focal is None:
            return moved
        return self.focal.refocused(moved, torch.arange(self.n_images) if images is None else torch.as_tensor(
            list(images), dtype=torch.long))

    def refocused(self, cameras: Cameras) -> Cameras:
        """Held-out ``cameras`` (any split, any size) at the refined focal length
        (:meth:`pipeline.focal_refinement.FocalRefinement.refocused`: a calibration error is shared by every image
        of a camera); their poses, which are not refined, as given. ``cameras`` itself when the focal length is not
        refined."""
        return cameras if self.focal is None else self.focal.refocused(cameras)

    def param_groups(self, lr: float) -> list[dict]:
        """One optimiser group at this module's own rate (``train.pose_lr``), whatever the field's, and the focal
        lengths' at theirs (``train.focal_lr``)."""
        poses = [{"params": [self.rotation, self.shift], "lr": self.lr}]
        return poses + (self.focal.param_groups(lr) if self.focal is not None else [])

    def summary(self, names: list[str]) -> dict:
        """Each camera's correction for ``poses.json``: ``{"cameras": [{"name", "rotation_deg", "rotation_vector",
        "shift"}], "rotation_deg": {"mean", "max"}, "shift": {"mean", "max"}, "poses": refined or not}``, with
        ``"focal"`` (:meth:`pipeline.focal_refinement.FocalRefinement.summary`) when the focal length is refined;
        ``names`` one per camera (the index where a name is missing)."""
        w, s = (t.detach().cpu().double() for t in self.corrections())
        deg = torch.rad2deg(w.norm(dim=-1))
        dist = s.norm(dim=-1)
        rows = [{"name": names[i] if i < len(names) else str(i), "rotation_deg": round(float(deg[i]), 5),
                 "rotation_vector": [round(float(v), 7) for v in w[i]], "shift": [round(float(v), 7) for v in s[i]]}
                for i in range(self.n_images)]
        return {"cameras": rows,
                "rotation_deg": {"mean": round(float(deg.mean()), 5), "max": round(float(deg.max()), 5)},
                "shift": {"mean": round(float(dist.mean()), 7), "max": round(float(dist.max()), 7)},
                "poses": self.refines_poses,
                **({"focal": self.focal.summary()} if self.focal is not None else {})}


def pose_record(poses: PoseRefinement, train: PosedImages, step: int) -> dict:
    """``poses.json``: the ``step``, :meth:`PoseRefinement.summary` of the ``train`` split's cameras, and each
    camera's refined ``c2w`` (4x4, the scene's frame), and ``fx``, ``fy`` (pixels) when the focal lengths are
    refined."""
    record = {"step": int(step), **poses.summary(train.names)}
    refined = poses.refined(train.cameras)
    c2w = refined.c2w.detach().cpu().double()
    for i, (row, m) in enumerate(zip(record["cameras"], c2w)):
        row["c2w"] = [[round(float(v), 7) for v in r] for r in m]
        if poses.focal is not None:
            row.update(fx=round(float(refined.fx[i]), 4), fy=round(float(refined.fy[i]), 4))
    return record


def refined_scene(scene: SceneData, system: nn.Module) -> SceneData:
    """``scene`` as a trained ``system`` (:class:`pipeline.system.System`) sees it: when the system refined
    the training cameras' poses, a copy whose training split has the refined cameras (for rendering and
    evaluating the training views after training), and, when it refined their focal lengths, whose other splits
    have them too (:meth:`PoseRefinement.refocused`); otherwise ``scene`` itself. The scene is not changed."""
    from dataclasses import replace

    poses = getattr(system, "poses", None)
    train = scene.splits.get("train")
    if poses is None or train is None:
        return scene
    splits = {name: replace(split, cameras=poses.refocused(split.cameras)) for name, split in scene.splits.items()}
    refined = poses.refined(train.cameras.to(poses.shift.device)).to(train.cameras.c2w.device)
    return replace(scene, splits={**splits, "train": replace(train, cameras=refined)})


def perturb_poses(cameras: Cameras, degrees: float, shift: float, seed: int) -> tuple[Cameras, Tensor, Tensor]:
    """Simulated pose error, for testing :class:`PoseRefinement` on rendered scenes: every camera rotated about
    its centre by a random rotation vector and moved by a random shift, with their common motion removed
    (:func:`remove_common_motion` about the true centres: the error has no common part, which refinement could not
    tell from the scene's frame and :class:`PoseRefinement` holds at zero).

    Rotation vectors: a uniform random axis times an angle uniform in ``[0, degrees]``; shifts: uniform in
    ``[-shift, shift]`` per axis. Returns the perturbed cameras and the applied rotation vectors ``(N, 3)``
    (radians) and shifts ``(N, 3)``; seeded by ``seed`` alone. The correction that undoes it exactly is
    ``w = -rotation`` and ``s = -shift`` applied as they are (``centred=False``).
    """
    gen = torch.Generator().manual_seed(int(seed))
    n = len(cameras)
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    w = axis * torch.rand(n, 1, generator=gen, dtype=torch.float64) * math.radians(float(degrees))
    s = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * float(shift)
    w, s = remove_common_motion(w, s, cameras.c2w[:, :3, 3].double())
    c2w = cameras.c2w.double().clone()
    c2w[:, :3, :3] = rotation_matrices(w) @ c2w[:, :3, :3]
    c2w[:, :3, 3] = c2w[:, :3, 3] + s
    moved = Cameras(c2w.to(cameras.c2w.dtype), cameras.fx, cameras.fy, cameras.cx, cameras.cy, cameras.width,
                    cameras.height)
    return moved, w, s


def pose_errors(refined: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation error (degrees) and centre distance (world units), each ``(N,)``, between camera-to-world
    matrices ``refined`` and ``truth`` ``(N, 4, 4)``."""
    from scipy.spatial.transform import Rotation

    r = refined[:, :3, :3].double().transpose(1, 2) @ truth[:, :3, :3].double()
    angle = torch.from_numpy(Rotation.from_matrix(r.cpu().numpy()).magnitude())
    return torch.rad2deg(angle), (refined[:, :3, 3].double() - truth[:, :3, 3].double()).norm(dim=-1).cpu()


def view_errors(refined: Tensor, truth: Tensor, points: Tensor) -> Tensor:
    """How far off each camera sees the scene: the mean angle (degrees) between the directions in which
    camera-to-world ``refined`` and ``truth`` ``(N, 4, 4)`` see ``points (P, 3)`` (e.g. the object's surface), each
    in its own camera frame, ``(N,)``; times the focal length in pixels, the mean reprojection error. Unlike
    :func:`pose_errors` it does not count a rotation and a shift that move the image alike as two errors."""
    def seen(c2w: Tensor) -> Tensor:  # (N, P, 3) unit directions in the camera frame
        rel = points.double()[None] - c2w[:, None, :3, 3].double()
        d = torch.einsum("nji,npj->npi", c2w[:, :3, :3].double(), rel)
        return d / d.norm(dim=-1, keepdim=True)

    a, b = seen(refined), seen(truth)
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))).mean(-1)


def pose_accuracy(scene: dict, refined, refined_fx=None) -> dict:
    """How far the poses a run trained with (``scene["noisy_poses"]``) and its ``refined`` camera-to-world
    matrices ``(N, 4, 4)`` (None: not refined) lie from the true ones, for a rendered scene with simulated pose
    error (``scene``: its scene.json, with ``true_poses``): ``{"rotation_deg", "centre", "view_deg": (given,
    refined)}``, each the mean over the cameras of :func:`pose_errors` and of :func:`view_errors` at 2000
    points of the ground-truth surface (``view_deg`` only when ``scene["gt_mesh"]`` is a file). With simulated
    focal-length error (``scene["true_fx"]``, ``["focal_noise"]``) also ``"focal_pct"``: the mean of
    ``100 |fx / true fx - 1|`` over the training cameras, given and refined (``refined_fx (N,)``; None: not
    refined). {} for a scene without either, or cameras of another count."""
    out = _focal_accuracy(scene, refined_fx)
    try:
        truth, given = (torch.tensor(scene[k], dtype=torch.float64) for k in ("true_poses", "noisy_poses"))
    except (KeyError, TypeError, ValueError, RuntimeError):
        return out
    refined = given if refined is None else torch.as_tensor(refined, dtype=torch.float64)
    if given.shape != truth.shape or refined.shape != truth.shape or truth.ndim != 3:
        return out
    (r0, t0), (r1, t1) = pose_errors(given, truth), pose_errors(refined, truth)
    out = {"rotation_deg": (float(r0.mean()), float(r1.mean())), "centre": (float(t0.mean()), float(t1.mean())),
           **out}
    gt = scene.get("gt_mesh")
    if isinstance(gt, str) and Path(gt).is_file():
        import trimesh

        points = torch.from_numpy(trimesh.sample.sample_surface(trimesh.load(gt, force="mesh"), 2000, seed=0)[0])
        out["view_deg"] = (float(view_errors(given, truth, points).mean()),
                           float(view_errors(refined, truth, points).mean()))
    return out


def _focal_accuracy(scene: dict, refined_fx) -> dict:
    """``{"focal_pct": (given, refined)}`` of :func:`pose_accuracy`; {} without ``scene["true_fx"]``."""
    try:
        truth = torch.tensor(scene["true_fx"], dtype=torch.float64)
        given = truth * simulated_focal_factors(scene["focal_noise"], len(truth))
        refined = given if refined_fx is None else torch.as_tensor(refined_fx, dtype=torch.float64)
    except (KeyError, TypeError, ValueError, RuntimeError):
        return {}
    if truth.ndim != 1 or refined.shape != truth.shape:
        return {}
    return {"focal_pct": tuple(float(100 * (f / truth - 1).abs().mean()) for f in (given, refined))}

