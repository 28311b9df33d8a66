"""Analytic signed distance functions (negative inside) for procedural scenes and tests.

Each function maps points ``(N,3)`` (torch) to distances ``(N,)``. Primitives follow the
standard closed forms (Inigo Quilez's catalogue); CSG uses min/max, which is an exact SDF
outside and a bound inside for unions/differences, good enough for ground-truth meshes
(which are extracted at level 0, where min/max is exact).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

SDF = Callable[[Tensor], Tensor]


def sphere(x: Tensor, center=(0.0, 0.0, 0.0), radius: float = 0.4) -> Tensor:
    """Sphere of ``radius`` around ``center``: points (..., 3) -> sdf (...)."""
    return (x - x.new_tensor(center)).norm(dim=-1) - radius


def box(x: Tensor, half=(0.3, 0.3, 0.3), center=(0.0, 0.0, 0.0), rounding: float = 0.0) -> Tensor:
    """Axis-aligned box of half-extents ``half`` around ``center``, edges rounded by ``rounding``:
    points (..., 3) -> sdf (...)."""
    q = (x - x.new_tensor(center)).abs() - (x.new_tensor(half) - rounding)
    outside = q.clamp(min=0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0)
    return outside + inside - rounding


def torus(x: Tensor, major: float = 0.3, minor: float = 0.12) -> Tensor:
    """Torus around the z axis through the origin (radii ``major``, ``minor``): points (..., 3) -> sdf (...)."""
    q = torch.stack([x[..., :2].norm(dim=-1) - major, x[..., 2]], -1)
    return q.norm(dim=-1) - minor


def cylinder_x(x: Tensor, radius: float = 0.1, center=(0.0, 0.0, 0.0)) -> Tensor:
    """Infinite cylinder of ``radius`` along the x axis through ``center``: points (..., 3) -> sdf (...)."""
    return (x - x.new_tensor(center))[..., 1:].norm(dim=-1) - radius


#: the parts of :func:`csg`, in the order of :func:`csg_parts`
CSG_PARTS = ("box", "sphere", "tunnel")


def csg_parts(x: Tensor) -> Tensor:
    """The signed distances of :func:`csg`'s parts: the rounded box, the sphere and the drilled
    tunnel (the cylinder's complement, negative outside the cylinder): points (..., 3) -> (..., 3)."""
    return torch.stack([box(x, (0.32, 0.24, 0.16), (0.0, 0.0, -0.08), rounding=0.04),
                        sphere(x, (0.1, 0.05, 0.14), 0.24),
                        -cylinder_x(x, 0.09, (0.0, -0.05, -0.08))], -1)


def csg(x: Tensor) -> Tensor:
    """A rounded box fused with a sphere, drilled through along x by a cylinder: points (..., 3) -> sdf (...)."""
    b, s, tunnel = csg_parts(x).unbind(-1)
    return torch.maximum(torch.minimum(b, s), tunnel)


SHAPES: dict[str, SDF] = {"sphere": sphere, "torus": torus, "csg": csg,
                          "box": lambda x: box(x, rounding=0.03)}
