"""The two baseline decoders of the hypernet benchmark, sharing the image encoder.

* ``voxel_decoder``: e -> linear -> (C,4,4,4) -> 3D transposed convolutions (x2 each) -> 32^3
  occupancy logits (the decoder family of 3D-R2N2 / Pix2Vox). Off-grid points are trilinear.
* ``cond_mlp``: occupancy MLP on the concatenation [e, p] (Occupancy-Networks-like conditioning,
  without ONet's conditional batch norm).

:class:`GridDecoder` is also the backbone of ``deep_level_sets``, whose output grid is phi.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.types import ConfigError
from plugins.shapes.conditional import ConditionalField
from plugins.shapes.encoder import build_encoder


def sample_grid(grid: Tensor, x: Tensor) -> Tensor:
    """Trilinear value of voxel-centred grids over the unit box. grid (B,R,R,R) [x,y,z], x (B,N,3) -> (B,N);
    border values outside the box."""
    B, N = x.shape[:2]
    coords = (2 * x)[..., [2, 1, 0]].reshape(B, N, 1, 1, 3)  # grid_sample wants (W, H, D) = (z, y, x)
    return nn.functional.grid_sample(grid[:, None], coords, mode="bilinear", padding_mode="border",
                                     align_corners=False).reshape(B, N)


class GridDecoder(nn.Module):
    """e (B,E) -> (B,R,R,R) values at the voxel centres of the unit box (R = 4 * 2^k)."""

    def __init__(self, dim: int, channels: int = 64, resolution: int = 32):
        super().__init__()
        ups = math.log2(resolution / 4)
        if resolution < 8 or ups != int(ups):
            raise ConfigError(f"field.resolution = {resolution}: must be 4 * 2^k (8, 16, 32, 64, ...)")
        self.channels, self.resolution = channels, resolution
        self.fc = nn.Linear(dim, channels * 64)
        layers: list[nn.Module] = []
        c = channels
        for _ in range(int(ups)):
            layers += [nn.ReLU(), nn.ConvTranspose3d(c, max(c // 2, 4), 4, 2, 1)]
            c = max(c // 2, 4)
        layers += [nn.ReLU(), nn.Conv3d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, e: Tensor) -> Tensor:
        """e (B,E) -> values (B,R,R,R) at the voxel centres."""
        h = self.fc(e).reshape(-1, self.channels, 4, 4, 4)
        return self.net(h)[:, 0]


class VoxelDecoderField(ConditionalField):
    """Baseline: 32^3 occupancy logits from transposed convolutions."""

    def __init__(self, cfg, ctx=None):
        super().__init__(build_encoder(cfg), ctx)
        self.decoder = GridDecoder(self.encoder.dim, cfg.channels, cfg.resolution)

    def grid_logits(self, e: Tensor) -> Tensor:
        """e (B,E) -> occupancy logits (B,R,R,R) at the voxel centres (R = ``resolution``)."""
        return self.decoder(e)

    def logits(self, x: Tensor, e: Tensor) -> Tensor:
        """Trilinear sample of the logit grid. x (B,N,3), e (B,E) -> (B,N)."""
        return sample_grid(self.grid_logits(e), x)

    def grid_values(self, e: Tensor, res: int = 32, chunk: int = 65536) -> Tensor:
        """Occupancy (B,res,res,res): the sigmoid of the logit grid when ``res`` is the
        decoder's resolution, else sampled per point by ``ConditionalField.grid_values``."""
        if res == self.decoder.resolution:
            return torch.sigmoid(self.grid_logits(e))
        return super().grid_values(e, res, chunk)


class CondMLPField(ConditionalField):
    """Baseline: MLP([e, p]) -> occupancy logit, ReLU hidden layers."""

    def __init__(self, cfg, ctx=None):
        super().__init__(build_encoder(cfg), ctx)
        dims = [self.encoder.dim + 3] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def logits(self, x: Tensor, e: Tensor) -> Tensor:
        """MLP on [e, x] per point. x (B,N,3), e (B,E) -> logits (B,N)."""
        h = torch.cat([e[:, None].expand(-1, x.shape[1], -1), x], -1)
        return self.mlp(h)[..., 0]


def decoder_parameters(field: nn.Module) -> int:
    """Parameters outside the image encoder (what the benchmark compares across decoders)."""
    return sum(p.numel() for n, p in field.named_parameters() if not n.startswith("encoder."))


def build_voxel_decoder(cfg, ctx):
    """Build the voxel-decoder field from its ``field:`` block (``VoxelDecoderConfig``)."""
    return VoxelDecoderField(cfg, ctx)


def build_cond_mlp(cfg, ctx):
    """Build the conditional-MLP field from its ``field:`` block (``CondMLPConfig``)."""
    return CondMLPField(cfg, ctx)
