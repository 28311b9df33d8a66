"""Loss terms of the backend. Each is called ``loss(batch, out, system) -> scalar`` (weighted)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.ngp.config import EikonalConfig, PhotometricConfig, TVConfig


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


class Eikonal(nn.Module):
    """E_x[(||grad_x sdf(x)|| - 1)^2] on uniform points of the scene box (IGR, Gropp et al. 2020, Eq. 2).

    Uses ``create_graph=True``: the field must support double backward in fp32. Zero while the chain
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
            out_x = system.chain(x, None)
            if "sdf" not in out_x:
                return aabb.new_zeros(())
            (g,) = torch.autograd.grad(out_x["sdf"].sum(), x, create_graph=True)
        return self.cfg.weight * ((g.norm(dim=-1) - 1) ** 2).mean()


class TotalVariation(nn.Module):
    """Mean squared difference of neighbouring voxels of a dense-grid field's grids (DVGO Eq. 8 style).

    Deviation from a full-grid TV, for speed on CPU: each step penalises one random
    ``block``^3 sub-volume whose start is uniform over the grid. Voxels within ``block - 1`` of a face
    fall in fewer blocks, so the estimate weighs the grid's border less than the full mean does.
    """

    def __init__(self, cfg: TVConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar loss on ``system.chain.field.voxel_grids()`` (``batch`` and ``out`` are unused)."""
        field = system.chain.field
        grids = field.voxel_grids()[:1] if self.cfg.density_only else field.voxel_grids()
        total = 0.0
        for g in grids:
            r = g.shape[-1]
            b = min(self.cfg.block, r)
            i, j, k = (int(v) for v in torch.randint(0, r - b + 1, (3,)))
            blk = g[..., i:i + b, j:j + b, k:k + b]
            total = total + sum((blk.diff(dim=d) ** 2).mean() for d in (2, 3, 4))
        return self.cfg.weight * total


def build_photometric(cfg, ctx):
    """Build the photometric loss from its ``losses:`` entry (``PhotometricConfig``)."""
    return Photometric(cfg)


def build_eikonal(cfg, ctx):
    """Build the eikonal loss from its ``losses:`` entry (``EikonalConfig``)."""
    return Eikonal(cfg)


def build_tv(cfg, ctx):
    """Build the total-variation loss from its ``losses:`` entry (``TVConfig``)."""
    return TotalVariation(cfg)
