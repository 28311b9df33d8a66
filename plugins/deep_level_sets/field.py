"""Image -> discretised embedding function phi (Michalkiewicz et al. 2019).

The decoder emits phi on the voxel-centre grid of the unit box (32^3 by default) with the same
transposed-convolution backbone as the voxel baseline, so the comparison isolates the
representation and losses: the voxel baseline's grid holds occupancy logits trained by
cross-entropy, this one holds an embedding function phi (negative inside) trained through the
level-set losses of :mod:`plugins.deep_level_sets.losses`. Off-grid values are trilinear;
``occupancy = H_eps(-phi)``; the surface is the zero level set of phi.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plugins.deep_level_sets.levelset import heaviside
from plugins.shapes.conditional import ConditionalField
from plugins.shapes.decoders import GridDecoder, sample_grid
from plugins.shapes.encoder import build_encoder


class LevelSetField(ConditionalField):
    """Image-conditioned level-set field: encoder and :class:`GridDecoder` emitting phi (B,R,R,R);
    the surface is phi = 0 (negative inside)."""

    contour = ("sdf", 0.0, "below")

    def __init__(self, cfg, ctx=None):
        super().__init__(build_encoder(cfg), ctx)
        self.decoder = GridDecoder(self.encoder.dim, cfg.channels, cfg.resolution)
        last = self.decoder.net[-1]
        nn.init.constant_(last.bias, cfg.phi_init)
        self.eps_final, self.eps_start, self.anneal = cfg.epsilon, cfg.epsilon_start, cfg.epsilon_anneal_steps
        self.register_buffer("eps_now", torch.tensor(cfg.epsilon if not cfg.epsilon_anneal_steps
                                                     else cfg.epsilon_start))
        self.smoothing = cfg.smoothing
        self.resolution = cfg.resolution
        self.spacing = 1.0 / cfg.resolution

    @property
    def epsilon(self) -> float:
        """The current band width of the smoothed Heaviside/Dirac (annealed during training)."""
        return float(self.eps_now)

    def on_train_step(self, step: int) -> None:
        """Band-width annealing: eps = eps_start^(1-t) * eps^t, t = step / epsilon_anneal_steps (clamped).
        A deviation from the paper's fixed eps, stated in the config: it keeps every node trainable early."""
        t = min(1.0, step / self.anneal) if self.anneal else 1.0
        self.eps_now.fill_(self.eps_start ** (1 - t) * self.eps_final ** t)

    def phi_grid(self, e: Tensor) -> Tensor:
        """(B,E) -> phi (B,R,R,R) at the voxel centres (world units, negative inside)."""
        return self.decoder(e)

    def point_outputs(self, x: Tensor, e: Tensor) -> dict[str, Tensor]:
        """x (B,N,3), e (B,E) -> ``sdf``: trilinear phi (B,N), ``occupancy``: H_eps(-phi) (B,N)."""
        phi = sample_grid(self.phi_grid(e), x)
        return {"sdf": phi, "occupancy": heaviside(-phi, self.epsilon, self.smoothing)}

    def occupancy(self, x: Tensor, e: Tensor) -> Tensor:
        """H_eps(-phi) at the points. x (B,N,3), e (B,E) -> (B,N) in [0, 1]."""
        return self.point_outputs(x, e)["occupancy"]

    def logits(self, x: Tensor, e: Tensor) -> Tensor:
        """-phi / eps: a logit-like score whose sign is the inside test (for generic callers)."""
        return -sample_grid(self.phi_grid(e), x) / self.epsilon

    def grid_values(self, e: Tensor, res: int = 32, chunk: int = 65536) -> Tensor:
        """phi (B,res,res,res): the decoder's grid when ``res`` is its resolution, else
        sampled per point by ``ConditionalField.grid_values``."""
        if res == self.resolution:
            return self.phi_grid(e)
        return super().grid_values(e, res, chunk)


def build_level_set_field(cfg, ctx):
    """Build the level-set field from its ``field:`` block (``LevelSetFieldConfig``)."""
    return LevelSetField(cfg, ctx)


def phi_of_batch(field: LevelSetField, batch: dict, out: dict) -> Tensor:
    """phi grids of the batch, computed once per step and shared by the loss terms. -> (B,R,R,R)."""
    from plugins.shapes.conditional import batch_outputs

    if "phi" not in out:
        out["phi"] = field.phi_grid(batch_outputs(field, batch, out))
    return out["phi"]

