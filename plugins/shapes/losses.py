"""Loss terms of the shape decoders. Each is ``loss(batch, out, system) -> scalar`` on a collated
mini-batch of shape-dataset items (``image (B,3,H,W)``, ``points (B,P,3)``, ``occ (B,P)``,
``voxels (B,32,32,32)``); the batch embedding is computed once per step (see
:func:`plugins.shapes.conditional.batch_outputs`)."""

from __future__ import annotations

from torch import Tensor, nn

from plugins.shapes.conditional import batch_outputs, conditional_field


class PointOccupancyCE(nn.Module):
    """Littwin & Wolf 2019, Eq. 3: cross-entropy between g(p) and the occupancy label of each sampled
    point, averaged over points and items (g's logit + sigmoid, i.e. BCE with logits)."""

    def __init__(self, cfg):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        field = conditional_field(system)
        e = batch_outputs(field, batch, out)
        logits = field.logits(batch["points"], e)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, batch["occ"])


class VoxelCE(nn.Module):
    """Binary cross-entropy of a grid decoder's occupancy logits against the item's voxels."""

    def __init__(self, cfg):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        field = conditional_field(system)
        if not hasattr(field, "grid_logits"):
            from pipeline.types import NLSError

            raise NLSError(f"loss voxel_ce needs a grid decoder (voxel_decoder), not {type(field).__name__}")
        e = batch_outputs(field, batch, out)
        return self.weight * nn.functional.binary_cross_entropy_with_logits(field.grid_logits(e), batch["voxels"])


def build_point_ce(cfg, ctx):
    return PointOccupancyCE(cfg)


def build_voxel_ce(cfg, ctx):
    return VoxelCE(cfg)
