"""The ``hard_occupancy`` density map: weak SDF -> hard occupancy -> volume density.

Pérez et al. (§4) turn the weak SDF into a hard occupancy with a high-eccentricity sigmoid
(eccentricity 19 in the paper) and render it as a NeRF density::

    o_hard(x) = sigmoid(-k * sdf(x) / w)        k = eccentricity, w = width (default: sigma)
    density   = scale * o_hard(x)               monotone (non-increasing in sdf)

With ``w = sigma`` the sigmoid acts on ``Phi^-1`` of the smoothed occupancy (``-sdf / sigma``),
which is the unit the paper's sigmoid is written in as we read it; ``width`` makes the unit
explicit and configurable. ``scale`` (density of fully occupied space) is this project's
choice: the paper does not give the occupancy->density factor.

When the chain gave no ``sdf`` but the field gave a ``density`` (``voxel_occupancy`` in its NeRF
phase), the field's density is passed through unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.types import NLSError
from plugins.rs_sdf.config import HardOccupancyConfig


class HardOccupancyDensity(nn.Module):
    """Pérez et al. §4: ``forward(out) -> {density (N,), hard_occupancy (N,)}`` with
    ``hard = sigmoid(-k sdf / width)`` and ``density = scale * hard`` (module docstring)."""

    def __init__(self, cfg: HardOccupancyConfig, width: float):
        super().__init__()
        self.k, self.width, self.scale = cfg.eccentricity, float(width), cfg.scale

    def forward(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """``out["sdf"]`` (N,) -> ``{"density": (N,), "hard_occupancy": (N,)}``; ``{}`` when ``out`` has
        a ``density`` but no ``sdf``; NLSError when it has neither."""
        if "sdf" not in out:
            if "density" in out:
                return {}
            raise NLSError("the hard_occupancy density map needs an sdf (add a certifier such as "
                           "randomized_smoothing after an occupancy field)")
        hard = torch.sigmoid(-self.k * out["sdf"] / self.width)
        return {"density": self.scale * hard, "hard_occupancy": hard}


def build_hard_occupancy(cfg: HardOccupancyConfig, ctx) -> HardOccupancyDensity:
    """Build the density map from its ``density:`` block (``HardOccupancyConfig``); without ``width``
    it takes the certifier's ``sigma`` option."""
    from pipeline.types import ConfigError

    width = cfg.width
    if width is None:
        cert = ctx.cfg.stages.get("certifier") if ctx is not None else None
        width = getattr(cert.options, "sigma", None) if cert is not None else None
        if width is None:
            raise ConfigError("density.width is not set and the chain has no certifier with a `sigma` option "
                              "to take it from; set density.width (world units), e.g. 0.02")
    return HardOccupancyDensity(cfg, width)
