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
        """batch ``points (B,P,3)``, ``occ (B,P)`` -> weighted scalar BCE of ``field.logits``."""
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
        """batch ``voxels (B,32,32,32)`` -> weighted scalar BCE of ``field.grid_logits``; NLSError when
        the field has no ``grid_logits`` or its grid does not match the scene's voxels."""
        from pipeline.types import NLSError

        field = conditional_field(system)
        if not hasattr(field, "grid_logits"):
            raise NLSError(f"loss voxel_ce needs a grid decoder (voxel_decoder), not {type(field).__name__}")
        e = batch_outputs(field, batch, out)
        logits, voxels = field.grid_logits(e), batch["voxels"]
        if logits.shape != voxels.shape:
            raise NLSError(f"loss voxel_ce: the decoder's {tuple(logits.shape[1:])} grid does not match the scene's "
                           f"{tuple(voxels.shape[1:])} voxels; set field.resolution to {voxels.shape[-1]}")
        return self.weight * nn.functional.binary_cross_entropy_with_logits(logits, voxels)


def build_point_ce(cfg, ctx):
    """Build the point occupancy loss from its ``losses:`` entry (``PointCEConfig``)."""
    return PointOccupancyCE(cfg)


def build_voxel_ce(cfg, ctx):
    """Build the voxel loss from its ``losses:`` entry (``VoxelCEConfig``)."""
    return VoxelCE(cfg)
