"""Config classes of the ``deep_level_sets`` plugin (no torch import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.components import ComponentConfig
from plugins.shapes.config import EncoderOptions


class LevelSetFieldConfig(EncoderOptions):
    """Implicit level-set layer (Michalkiewicz et al. 2019): image -> discretised embedding function phi on a
    grid whose zero level set is the oriented surface (negative inside)."""

    channels: int = Field(64, ge=4, description="channels of the 4^3 seed volume of the grid decoder")
    resolution: int = Field(32, description="phi grid side (4 * 2^k; paper setting 32)")
    epsilon: float = Field(0.047, gt=0, description="width of the smoothed Heaviside/Dirac in world units "
                           "(default 1.5 voxels of the 32^3 grid over the unit box)")
    epsilon_start: float = Field(0.25, gt=0, description="band width at step 0, annealed geometrically to epsilon "
                                 "over epsilon_anneal_steps (the compact Heaviside/Dirac give no gradient outside "
                                 "|phi| < eps, so a narrow band at initialisation freezes most nodes)")
    epsilon_anneal_steps: int = Field(300, ge=0, description="steps of the band-width annealing (0: fixed epsilon)")
    smoothing: Literal["compact", "arctan"] = Field(
        "compact", description="smoothed Heaviside/Dirac pair: compact (cosine, support |phi| < eps, as in the "
        "paper) or arctan (Chan & Vese 2001, non-compact: nodes outside the band still get gradients)")
    phi_init: float = Field(0.0, description="initial bias of phi (0: every node starts inside the band)")


class HeavisideLossConfig(ComponentConfig):
    """Occupancy term: || H_eps(-phi) - V ||_p^p over the grid nodes (V: GT voxel occupancy), taken as the
    mean over nodes (the sum divided by their number, so the weight does not depend on the grid size)."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")
    p: float = Field(2.0, ge=1, description="p-norm exponent")
    balance: float = Field(0.0, ge=0, le=1, description="class weighting exponent beta (not in the paper): node "
                           "weights (1/fraction of its class)^beta, normalised; 0 = plain mean, 1 = the "
                           "inside and outside means count equally. Counters the ~95% empty voxels that otherwise "
                           "pull phi to 'all outside'")


class DiracLossConfig(ComponentConfig):
    """Surface term: integral of delta_eps(phi) |grad phi| d_S(x)^p, i.e. the distance of the zero level set to
    the GT surface points, integrated over the predicted surface."""

    weight: float = Field(1.0, ge=0, description="weight of this term in the training loss")
    p: float = Field(1.0, ge=1, description="exponent of the distance to the GT surface")


class EikonalGridConfig(ComponentConfig):
    """Eikonal term: mean over grid nodes of (||grad phi|| - 1)^2, central finite differences."""

    weight: float = Field(0.1, ge=0, description="weight of this term in the training loss")
