"""Loss terms of the backend. Each is called ``loss(batch, out, system) -> scalar`` (weighted)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.ngp.config import DepthLossConfig, EikonalConfig, PhotometricConfig, PointNormalsConfig, TVConfig
from plugins.ngp.hashgrid import differentiable_input_gradients


class Photometric(nn.Module):
    """Pixel colour loss: mean over rays of mse / huber / l1 between rendered and true rgb."""

    def __init__(self, cfg: PhotometricConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """``out["rgb"]`` (R, 3) vs ``batch["rgb"]`` (R, 3) -> weighted scalar loss."""
        pred, gt = out["rgb"], batch["rgb"]
        if self.cfg.kind == "mse":
            loss = F.mse_loss(pred, gt)
        elif self.cfg.kind == "huber":
            loss = F.huber_loss(pred, gt, delta=0.1)
        else:
            loss = (pred - gt).abs().mean()
        return self.cfg.weight * loss


class DepthLoss(nn.Module):
    """Depth supervision on the training rays that have a measured depth ``D`` (``batch["depth"]`` (R, 1), the
    distance along the ray; 0: none). Kinds:

    * ``l1`` / ``relative``: the rendered expected depth ``out["depth"]`` (R, 1), sum_i w_i t_i over the ray's
      opacity, is pulled to ``D``: ``|depth - D|`` in scene units, or that over ``D``; divided by the ray's
      relative uncertainty ``u`` where the batch has one (below; a Laplace likelihood's scale). This is the
      expected-depth penalty (nerfstudio's L1 option).
    * ``ds_nerf``: DS-NeRF's ray distribution loss (Deng et al., "Depth-supervised NeRF: Fewer Views and Faster
      Training for Free", CVPR 2022, L_Depth in its discrete form; the equation's number could not be checked
      here, the formula is the paper's): ``-sum_k log(w_k) exp(-(t_k - D)^2 / (2 sigma^2)) dt_k`` over the
      ray's samples k (weights w_k, midpoints t_k, lengths dt_k: :func:`pipeline.rendering.packed_samples`),
      the discrete KL divergence from N(D, sigma^2) to the ray's termination distribution h(t) = T(t) sigma(t)
      up to a constant. Deviations: sigma is ``cfg.sigma`` times ``D``, times the ray's relative uncertainty
      ``u`` where the batch has one (``batch["depth_uncertainty"]``: a keypoint's reprojection error over the
      mean, held to [0.25, 4], :func:`pipeline.train.uncertainty`; the paper takes a keypoint's uncertainty from
      its reprojection error, by a rule not checked here, so this ratio is this project's); each ray's sum is
      divided by sigma sqrt(2 pi), the
      Gaussian's integral, so that the loss is the Gaussian's mean of -log w and its weight means the same
      whatever the scene's scale and sigma. The log is of w + 1e-5 (finite, with a gradient, where w is 0).
      Only the rendered samples count: space the occupancy grid skips has weight 0 and no gradient.
    """

    #: added to the weights under the log of the ds_nerf kind
    EPS = 1e-5

    def __init__(self, cfg: DepthLossConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """``out`` (the rendered ``depth`` (R, 1), or the samples for ``ds_nerf``) vs ``batch["depth"]`` (R, 1)
        over the rays with a depth -> weighted scalar."""
        from pipeline.types import PluginError

        measured = batch.get("depth")
        if measured is None:
            raise PluginError("the depth loss found no measured depth in the training batch: this scene's training "
                              "images have no depth maps")
        need = ("weights", "t_starts", "t_ends") if self.cfg.kind == "ds_nerf" else ("depth",)
        if any(key not in out for key in need):
            raise PluginError(f"the depth loss (kind {self.cfg.kind}) needs the renderer's {', '.join(need)}, and "
                              f"this renderer gives {', '.join(k for k in need if k in out) or 'none of them'}")
        given = measured[:, 0] > 0
        if not bool(given.any()):
            return out["depth" if "depth" in out else "weights"].sum() * 0.0  # (no ray of this batch has a depth)
        spread = batch.get("depth_uncertainty") if self.cfg.uncertainty else None
        spread = torch.ones_like(measured) if spread is None else spread
        if self.cfg.kind == "ds_nerf":
            return self.cfg.weight * self.distribution_loss(out, measured[:, 0], given, spread[:, 0])
        error = (out["depth"] - measured)[given].abs() / spread[given]
        if self.cfg.kind == "relative":
            error = error / measured[given]
        return self.cfg.weight * error.mean()

    def distribution_loss(self, out: dict, measured: Tensor, given: Tensor, spread: Tensor) -> Tensor:
        """DS-NeRF's L_Depth (class docstring) per ray, averaged over the rays ``given`` (R,) bool; ``measured``
        (R,) ray distances, ``spread`` (R,) each ray's relative uncertainty (1: the typical) -> scalar."""
        from pipeline.rendering import packed_samples

        w, t0, t1, ray = (a.float() if a.is_floating_point() else a for a in packed_samples(out))  # (fp32 under AMP)
        d = measured[ray]
        sigma = self.cfg.sigma * d * spread[ray]
        dt = t1 - t0
        gauss = torch.exp(-0.5 * (((t0 + t1) / 2 - d) / sigma.clamp_min(1e-12)) ** 2)
        term = -torch.log(w + self.EPS) * gauss * dt / (sigma * math.sqrt(2 * math.pi)).clamp_min(1e-12)
        per_ray = torch.zeros(measured.shape[0], device=w.device, dtype=term.dtype).index_add(0, ray, term)
        return per_ray[given].mean()


class Eikonal(nn.Module):
    """E_x[(||grad_x sdf(x)|| - 1)^2] on uniform points of the scene box (IGR, Gropp et al. 2020, Eq. 2).

    Uses ``create_graph=True``: the field must support double backward in fp32 (the chain is called within
    :func:`plugins.ngp.hashgrid.differentiable_input_gradients`, so grid fields take their torch path). Zero while the chain
    produces no ``sdf`` (rs_sdf's NeRF phase, before its certifier is active).
    """

    def __init__(self, cfg: EikonalConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar loss on ``n_points`` uniform random points of ``system.aabb``
        (``batch`` and ``out`` are unused)."""
        aabb = system.aabb
        with torch.autocast(device_type=aabb.device.type, enabled=False):
            x = aabb[:3] + (aabb[3:] - aabb[:3]) * torch.rand(self.cfg.n_points, 3, device=aabb.device)
            x.requires_grad_(True)
            with differentiable_input_gradients():
                out_x = system.chain(x, None)
            if "sdf" not in out_x:
                return aabb.new_zeros(())
            (g,) = torch.autograd.grad(out_x["sdf"].sum(), x, create_graph=True)
        return self.cfg.weight * ((g.norm(dim=-1) - 1) ** 2).mean()


class PointNormals(nn.Module):
    """The normal term of IGR's data loss (Gropp et al. 2020, Eq. 3): τ · mean_i ‖∇_x sdf(x_i) − n_i‖ over
    ``batch_points`` input points x_i drawn each step (torch's global RNG, checkpointed), with their unit normals
    n_i. With ``oriented: false`` each point takes min(‖∇sdf − n‖, ‖∇sdf + n‖), for normals without an
    orientation (a departure from the paper, which assumes oriented normals). IGR's other two terms, |f(x_i)|
    and the eikonal term (Eq. 2), are other loss entries (``level_set_recon``'s data term, ``eikonal``).

    points (P, 3) and normals (P, 3) are non-persistent buffers; points whose normal has zero length are left
    out. Zero while the chain produces no ``sdf``. With no normals at all (``if_missing: skip``) it is zero.
    """

    def __init__(self, cfg: PointNormalsConfig, points: Optional[np.ndarray], normals: Optional[np.ndarray]):
        super().__init__()
        self.cfg = cfg
        pts = np.zeros((0, 3), np.float32) if points is None else np.asarray(points, np.float32)
        nrm = np.zeros((0, 3), np.float32) if normals is None else np.asarray(normals, np.float32)
        length = np.linalg.norm(nrm, axis=1)
        keep = length > 1e-8
        self.register_buffer("points", torch.from_numpy(np.ascontiguousarray(pts[keep])), persistent=False)
        self.register_buffer("normals", torch.from_numpy(np.ascontiguousarray(nrm[keep] / length[keep, None])),
                             persistent=False)

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar loss at a random batch of the input points (``batch`` and ``out`` are unused)."""
        if len(self.points) == 0:
            return system.aabb.new_zeros(())
        j = torch.randint(0, len(self.points), (min(self.cfg.batch_points, len(self.points)),),
                          device=self.points.device)
        with torch.autocast(device_type=self.points.device.type, enabled=False):
            x = self.points[j].clone().requires_grad_(True)
            with differentiable_input_gradients():
                out_x = system.chain(x, None)
            if "sdf" not in out_x:
                return system.aabb.new_zeros(())
            (g,) = torch.autograd.grad(out_x["sdf"].sum(), x, create_graph=True)
        n = self.normals[j]
        d = (g - n).norm(dim=-1)
        if not self.cfg.oriented:
            d = torch.minimum(d, (g + n).norm(dim=-1))
        return self.cfg.weight * d.mean()


class TotalVariation(nn.Module):
    """Mean squared difference of neighbouring voxels of a dense-grid field's grids (DVGO Eq. 8 style).

    Deviation from a full-grid TV, for speed on CPU: each step penalises one random
    ``block``^3 sub-volume whose start is uniform over the grid. Voxels within ``block - 1`` of a face
    fall in fewer blocks, so the estimate weighs the grid's border less than the full mean does.

    Gradient: through autograd, a slice of the grid gets a gradient the size of the whole grid (a
    zero-filled copy plus a full-size add, about a third of a csg_dense step on CPU). For a field with
    ``voxel_table()`` (the dense grid) in a single process, the term is taken on a detached copy of the
    block, and at the end of the backward pass that copy's gradient is added into the block of the
    parameter's ``.grad`` in place. The gradient is the same, bit for bit. Under DDP the autograd path
    is kept, because a gradient added after the backward pass would miss DDP's averaging over ranks.
    """

    def __init__(self, cfg: TVConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar loss on ``system.chain.field.voxel_grids()`` (``batch`` and ``out`` are unused)."""
        field = system.chain.field
        if callable(getattr(field, "voxel_table", None)) and self._block_gradient_ok(field):
            return self.cfg.weight * self._tv_block_gradient(field)
        grids = field.voxel_grids()[:1] if self.cfg.density_only else field.voxel_grids()
        total = 0.0
        for g in grids:
            i, j, k, b = self._block(g.shape[-1])
            blk = g[..., i:i + b, j:j + b, k:k + b]
            total = total + sum((blk.diff(dim=d) ** 2).mean() for d in (2, 3, 4))
        return self.cfg.weight * total

    def _block(self, r: int) -> tuple[int, int, int, int]:
        """Start ``(i, j, k)`` and side ``b`` of a random block of an ``r``^3 grid (3 draws from torch's RNG)."""
        b = min(self.cfg.block, r)
        i, j, k = (int(v) for v in torch.randint(0, r - b + 1, (3,)))
        return i, j, k, b

    @staticmethod
    def _block_gradient_ok(field) -> bool:
        """True when the block's gradient may be added after the backward pass: autograd is recording,
        the grid trains, no other process averages gradients (DDP), and torch's autograd engine takes
        end-of-backward callbacks (an internal API that DDP itself uses; without it, the autograd path)."""
        from torch.autograd import Variable

        from pipeline import distributed

        param, _ = field.voxel_table()
        return (torch.is_grad_enabled() and param.requires_grad and distributed.current().world_size == 1
                and callable(getattr(Variable._execution_engine, "queue_callback", None)))  # torch's (DDP uses it)

    def _tv_block_gradient(self, field) -> Tensor:
        """Unweighted TV of random blocks of ``field.voxel_table()`` ((n, n, n, C), density channel 0),
        the same draws and value as the autograd path; gradients reach the parameter at the end of the
        backward pass (:meth:`_add_block_grad`)."""
        param, table = field.voxel_table()
        channels = [slice(0, 1)] if self.cfg.density_only else [slice(0, 1), slice(1, None)]
        total = 0.0
        for c in channels:
            i, j, k, b = self._block(table.shape[0])
            index = (slice(i, i + b), slice(j, j + b), slice(k, k + b), c)
            blk = table.detach()[index].requires_grad_(True)
            blk.register_hook(lambda g, index=index: self._add_block_grad(param, table.shape, index, g))
            total = total + sum((blk.diff(dim=d) ** 2).mean() for d in (0, 1, 2))
        return total

    @staticmethod
    def _add_block_grad(param: nn.Parameter, shape: torch.Size, index: tuple, grad: Tensor) -> None:
        """Called with the block's gradient during backward: at the end of that pass, add it into
        ``param.grad`` viewed as ``shape`` at ``index`` (a zero gradient is made if none was)."""
        from torch.autograd import Variable

        def add() -> None:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.view(shape)[index] += grad

        Variable._execution_engine.queue_callback(add)


def build_photometric(cfg, ctx):
    """Build the photometric loss from its ``losses:`` entry (``PhotometricConfig``)."""
    return Photometric(cfg)


def build_depth(cfg: DepthLossConfig, ctx) -> DepthLoss:
    """Build the depth loss from its ``losses:`` entry (``DepthLossConfig``); ConfigError when the scene's
    training images have no depth maps."""
    from pipeline.types import ConfigError

    train = getattr(ctx.scene, "splits", {}).get("train") if ctx.scene is not None else None
    if train is None or train.depths is None:
        raise ConfigError("losses: depth needs depth maps of the training images, and this scene has none: give "
                          "each frame of a transforms.json a depth_file_path (nerfstudio's key; scene.depths: true), "
                          "or drop the term")
    return DepthLoss(cfg)


def build_eikonal(cfg, ctx):
    """Build the eikonal loss from its ``losses:`` entry (``EikonalConfig``)."""
    return Eikonal(cfg)


def build_tv(cfg, ctx):
    """Build the total-variation loss from its ``losses:`` entry (``TVConfig``)."""
    return TotalVariation(cfg)


#: neighbouring normals agree in sign this often at least when they are oriented (random signs: about half)
ORIENTED_AGREEMENT = 0.8


def normal_sign_agreement(points: np.ndarray, normals: np.ndarray, k: int = 8, most: int = 50_000) -> float:
    """The share of neighbouring pairs whose normals point the same way (n_i · n_j > 0), over the pairs of near
    parallel normals (|n_i · n_j| > 0.5) among each point's ``k`` nearest neighbours; ``points``, ``normals`` (P, 3),
    at most ``most`` of them (a seeded subset). Consistently oriented normals give nearly 1 (less only where two
    sheets of the surface lie within k neighbours), normals of random sign about 0.5."""
    from pykdtree.kdtree import KDTree

    pts = np.ascontiguousarray(points, np.float32)
    nrm = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    mine = np.random.default_rng(0).choice(len(pts), most, replace=False) if len(pts) > most else np.arange(len(pts))
    _, idx = KDTree(pts).query(pts[mine], k=min(k + 1, len(pts)))
    dots = np.einsum("pd,pkd->pk", nrm[mine], nrm[np.asarray(idx)[:, 1:]])
    parallel = np.abs(dots) > 0.5
    return float((dots[parallel] > 0).mean()) if parallel.any() else 1.0


#: below this share of normals pointing away from the cloud's centre, oriented normals are warned about as
#: pointing into the object (outward normals of spot, cow, bunny, kitten, camelhead, 3holes and the knight give
#: 0.75 to 0.94, so inward ones 0.06 to 0.25)
INWARD_SHARE = 0.35


def outward_share(points: np.ndarray, normals: np.ndarray) -> float:
    """The share of ``normals`` (P, 3) that point away from the centroid of ``points`` (P, 3): ``(p - c) · n > 0``.
    Outward normals of a closed object give most (0.75 to 0.94 on the sample meshes), inward ones few."""
    return float((np.einsum("pd,pd->p", points - points.mean(0), normals) > 0).mean())


def build_point_normals(cfg: PointNormalsConfig, ctx) -> PointNormals:
    """Build the ``point_normals`` loss from its ``losses:`` entry (``PointNormalsConfig``) on the scene's points
    and normals; ConfigError when they have no normals and ``if_missing`` is ``error``. Normals whose signs
    disagree between neighbours (:func:`normal_sign_agreement` below :data:`ORIENTED_AGREEMENT`) are not oriented,
    whatever ``oriented`` says: the term then compares them without their sign, with a warning, since fitting the
    gradient to random signs would tear the surface apart. Oriented normals that mostly point towards the cloud's
    centre (:func:`outward_share` below :data:`INWARD_SHARE`) are warned about and kept: a room's inside has them.
    """
    from pipeline.types import ConfigError

    scene = ctx.scene
    points = getattr(scene, "points", None)
    normals = getattr(scene, "normals", None)
    given = None if normals is None else np.linalg.norm(normals, axis=1) > 1e-8  # (P,) normals of nonzero length
    if points is None or given is None or not given.any():
        what = "no points" if points is None else "no normals" if normals is None else "only zero-length normals"
        if cfg.if_missing == "error":
            raise ConfigError(f"losses: point_normals needs the scene's points with normals, and this scene has "
                              f"{what}: give a .ply with nx/ny/nz, or a .xyz/.pts/.npy with 6 numbers a point, or "
                              f"drop the term (if_missing: skip trains without it)")
        import sys

        from pipeline.mesh import progress_setting

        if progress_setting() is not False:  # (-q hides it)
            print(f"point_normals: the scene has {what}; training without the normal term", file=sys.stderr)
        return PointNormals(cfg, None, None)
    if cfg.oriented:
        agree = normal_sign_agreement(points[given], normals[given])
        if agree < ORIENTED_AGREEMENT:
            from pipeline.notices import warn

            warn(f"point_normals: the normals look unoriented: only {agree:.0%} of neighbouring ones point the same "
                 f"way (oriented normals: nearly all); they are compared without their sign (oriented: false)")
            cfg = cfg.model_copy(update={"oriented": False})
        else:
            outward = outward_share(points[given], normals[given])
            if outward < INWARD_SHARE:
                from pipeline.notices import warn

                warn(f"point_normals: {1 - outward:.0%} of the normals point towards the cloud's centre. If the points "
                     f"are an object's surface, its normals point into it, and this term would turn the SDF inside "
                     f"out (it takes normals as pointing out of the solid): flip them (n -> -n), or set oriented: "
                     f"false. A room scanned from inside has them this way rightly")
    return PointNormals(cfg, points, normals)
