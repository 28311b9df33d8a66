"""Density maps: monotone maps from sdf / occupancy to volume density."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from plugins.ngp.config import LaplaceDensityConfig, OccupancyDensityConfig


class LaplaceDensity(nn.Module):
    """VolSDF (Yariv et al. 2021, Eq. 2-3): sigma(x) = alpha * Psi_beta(-d(x)), alpha = 1/beta,
    Psi_beta the CDF of a zero-mean Laplace distribution with scale beta."""

    def __init__(self, cfg: LaplaceDensityConfig):
        super().__init__()
        log_beta = torch.tensor(math.log(cfg.beta))
        self.log_beta = nn.Parameter(log_beta) if cfg.learnable else None
        if not cfg.learnable:
            self.register_buffer("fixed_log_beta", log_beta)

    @property
    def beta(self) -> Tensor:
        """Laplace scale beta, a scalar tensor: ``exp`` of the learned or fixed ``log_beta``."""
        return (self.log_beta if self.log_beta is not None else self.fixed_log_beta).exp()

    def forward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """``out["sdf"]`` (N,) -> ``{"density": (N,)}``."""
        beta = self.beta
        s = -out["sdf"]
        psi = torch.where(s <= 0, 0.5 * torch.exp(s.clamp(max=0) / beta), 1 - 0.5 * torch.exp(-s.clamp(min=0) / beta))
        return {"density": psi / beta}


class OccupancyDensity(nn.Module):
    """sigma = scale * occupancy."""

    def __init__(self, cfg: OccupancyDensityConfig):
        super().__init__()
        self.scale = cfg.scale

    def forward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """``out["occupancy"]`` (N,) -> ``{"density": (N,)}``."""
        return {"density": self.scale * out["occupancy"]}


def build_laplace(cfg: LaplaceDensityConfig, ctx) -> LaplaceDensity:
    """Build the VolSDF density map from its ``density:`` block (``LaplaceDensityConfig``)."""
    return LaplaceDensity(cfg)


def build_occupancy(cfg: OccupancyDensityConfig, ctx) -> OccupancyDensity:
    """Build the occupancy-scaling density map from its ``density:`` block (``OccupancyDensityConfig``)."""
    return OccupancyDensity(cfg)
