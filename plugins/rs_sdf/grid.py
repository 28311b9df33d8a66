"""Vertex grids over a box: trilinear sampling, vertex positions, voxel sizes.

A grid ``(R0, R1, R2)`` holds values at the corner-aligned vertices of ``box = [xmin, ymin,
zmin, xmax, ymax, zmax]`` (``linspace(min, max, R_i)`` per axis, the layout of
:func:`pipeline.mesh.field_to_grid`), indexed ``[ix, iy, iz]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sample_grid", "grid_points", "voxel_size"]


def voxel_size(box: Tensor, shape) -> Tensor:
    """World size of one voxel per axis ``(3,)``."""
    return (box[3:] - box[:3]) / (torch.as_tensor(shape[-3:], dtype=box.dtype, device=box.device) - 1)


def sample_grid(grid: Tensor, box: Tensor, x: Tensor) -> Tensor:
    """Trilinear interpolation of ``grid (R0,R1,R2)`` at world points ``x (N,3)`` -> ``(N,)``;
    0 outside the box. Differentiable in ``grid`` (and in ``x``)."""
    u = (x - box[:3]) / (box[3:] - box[:3]) * 2 - 1  # [-1, 1] across the box, align_corners
    g = u.flip(-1).view(1, 1, 1, -1, 3).to(grid.dtype)  # grid_sample wants (W=z, H=y, D=x) order
    out = F.grid_sample(grid[None, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(-1)


def grid_points(box: Tensor, shape) -> Tensor:
    """World positions of the vertices, ``(R0*R1*R2, 3)`` in ``[ix, iy, iz]`` order."""
    axes = [torch.linspace(float(box[i]), float(box[i + 3]), int(shape[i]), device=box.device)
            for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
