"""Losses of the implicit level-set layer, on the decoder's phi grid (Michalkiewicz et al. 2019, Sec. 3).

With phi on the R^3 voxel-centre grid (spacing h), V the GT voxel occupancy and d_S the distance of
a node to the GT surface points:

* occupancy term  (Heaviside):  L_occ  = mean_x |H_eps(-phi(x)) - V(x)|^p
* surface term    (Dirac):      L_surf = sum_x delta_eps(phi(x)) |grad phi(x)| d_S(x)^p h^3
  — the integral over the predicted zero level set of the distance to the GT surface
  (delta_eps(phi)|grad phi| dx is the surface measure of the level set), which pulls the zero
  level set onto the GT surface points;
* eikonal term:                 L_eik  = mean_x (||grad phi(x)|| - 1)^2, central differences.

These are the paper's energy terms written for a grid; the equation numbers of the paper could not
be checked offline, so each term is stated in full here instead. Deviation: the occupancy term
compares H_eps(-phi) with binary voxels (the paper also compares with H_eps of a GT embedding
function when one is available). Option ``balance`` = beta (0 by default, not in the paper) weights
each node by (1 / fraction of its class)^beta, normalised per shape, since ~95% of a shape's voxels
are empty: beta = 1 averages the inside and the outside nodes separately and takes the mean of the
two, beta = 0 is the plain mean.
"""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.types import NLSError
from plugins.deep_level_sets.levelset import dirac, grid_gradient, heaviside
from plugins.shapes.conditional import conditional_field


def _field(system):
    from plugins.deep_level_sets.field import LevelSetField

    f = conditional_field(system)
    if not isinstance(f, LevelSetField):
        raise NLSError(f"the level-set losses need the deep_level_sets field, not {type(f).__name__}")
    return f


def _phi(system, batch, out):
    from plugins.deep_level_sets.field import phi_of_batch

    f = _field(system)
    return f, phi_of_batch(f, batch, out)


def _grad_norm(f, phi: Tensor, out: dict) -> Tensor:
    """|grad phi| on the grid (B,R,R,R), computed once per step and shared by the loss terms."""
    if "phi_grad_norm" not in out:
        out["phi_grad_norm"] = grid_gradient(phi, f.spacing).norm(dim=-1)
    return out["phi_grad_norm"]


def _check_grid(name: str, target: Tensor, phi: Tensor) -> None:
    if target.shape != phi.shape:
        raise NLSError(f"loss {name}: the scene's {tuple(target.shape[1:])} grids do not match the field's "
                       f"phi grid {tuple(phi.shape[1:])}; set field.resolution to {target.shape[-1]}")


class HeavisideLoss(nn.Module):
    """L_occ (module docstring) on batch ``voxels (B,R,R,R)`` against ``H_eps(-phi)``, phi (B,R,R,R)."""

    def __init__(self, cfg):
        super().__init__()
        self.weight, self.p, self.balance = cfg.weight, cfg.p, cfg.balance

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """phi (B,R,R,R) of the batch and batch ``voxels (B,R,R,R)`` -> weighted scalar L_occ."""
        f, phi = _phi(system, batch, out)
        V = batch["voxels"]
        _check_grid("level_set_occupancy", V, phi)
        r = (heaviside(-phi, f.epsilon, f.smoothing) - V).abs().pow(self.p)
        if not self.balance:
            return self.weight * r.mean()
        V, r = V.flatten(1), r.flatten(1)
        frac_in = V.mean(1, keepdim=True).clamp(1e-6, 1 - 1e-6)  # (B,1) per shape
        w = V * frac_in.pow(-self.balance) + (1 - V) * (1 - frac_in).pow(-self.balance)
        return self.weight * ((w * r).sum(1) / w.sum(1)).mean()


class DiracLoss(nn.Module):
    """L_surf (module docstring): delta_eps(phi) |grad phi| d_S^p h^3 summed over nodes, mean over
    the batch; batch ``dist (B,R,R,R)``."""

    def __init__(self, cfg):
        super().__init__()
        self.weight, self.p = cfg.weight, cfg.p

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """phi (B,R,R,R) of the batch and batch ``dist (B,R,R,R)`` -> weighted scalar L_surf."""
        f, phi = _phi(system, batch, out)
        _check_grid("level_set_surface", batch["dist"], phi)
        grad = _grad_norm(f, phi, out)
        integrand = dirac(phi, f.epsilon, f.smoothing) * grad * batch["dist"].pow(self.p)
        return self.weight * integrand.sum(dim=(1, 2, 3)).mean() * f.spacing ** 3


class EikonalGridLoss(nn.Module):
    """L_eik (module docstring): mean of (||grad phi|| - 1)^2 over nodes and shapes, phi (B,R,R,R)."""

    def __init__(self, cfg):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """phi (B,R,R,R) of the batch -> weighted scalar L_eik."""
        f, phi = _phi(system, batch, out)
        grad = _grad_norm(f, phi, out)
        return self.weight * (grad - 1).pow(2).mean()


def build_heaviside(cfg, ctx):
    """Build the level-set occupancy loss from its ``losses:`` entry (``HeavisideLossConfig``)."""
    return HeavisideLoss(cfg)


def build_dirac(cfg, ctx):
    """Build the level-set surface loss from its ``losses:`` entry (``DiracLossConfig``)."""
    return DiracLoss(cfg)


def build_eikonal_grid(cfg, ctx):
    """Build the grid eikonal loss from its ``losses:`` entry (``EikonalGridConfig``)."""
    return EikonalGridLoss(cfg)
