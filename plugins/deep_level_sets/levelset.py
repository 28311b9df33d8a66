"""Smoothed Heaviside and Dirac functions and grid gradients of the level-set layer.

Michalkiewicz et al. 2019 (Sec. 3) follow the level-set literature (Chan & Vese 2001; Zhao et al.
1996) with the compactly supported regularisations

    H_eps(phi) = 0                                        phi < -eps
               = 1/2 (1 + phi/eps + sin(pi phi/eps)/pi)    |phi| <= eps
               = 1                                        phi > eps
    delta_eps(phi) = dH_eps/dphi = 1/(2 eps) (1 + cos(pi phi/eps))  on |phi| < eps, else 0

H_eps is monotone from 0 to 1 and delta_eps integrates to 1 (both checked in the tests).

Because this pair has compact support, a grid node whose phi has left the band |phi| < eps on the
wrong side gets no gradient from the Heaviside or Dirac terms. ``kind="arctan"`` selects the
non-compact pair of Chan & Vese (2001), H = 1/2 (1 + 2/pi atan(phi/eps)),
delta = eps / (pi (eps^2 + phi^2)), which also integrates to 1 and keeps every node trainable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


KINDS = ("compact", "arctan")


def heaviside(phi: Tensor, eps: float, kind: str = "compact") -> Tensor:
    """H_eps(phi) elementwise (any shape -> same): the compact sine pair of the module docstring, or
    Chan & Vese's arctan form for ``kind="arctan"``."""
    if kind == "arctan":
        return 0.5 + torch.atan(phi / eps) / math.pi
    t = (phi / eps).clamp(-1.0, 1.0)
    return (0.5 * (1.0 + t + torch.sin(math.pi * t) / math.pi)).clamp(0.0, 1.0)  # sin(pi) is not exactly 0


def dirac(phi: Tensor, eps: float, kind: str = "compact") -> Tensor:
    """delta_eps(phi) = dH_eps/dphi elementwise (any shape -> same); zero outside |phi| < eps for
    ``kind="compact"``."""
    if kind == "arctan":
        return eps / (math.pi * (eps * eps + phi * phi))
    inside = phi.abs() < eps
    return torch.where(inside, (1.0 + torch.cos(math.pi * phi / eps)) / (2 * eps), torch.zeros_like(phi))


def grid_gradient(phi: Tensor, spacing: float) -> Tensor:
    """Central differences (one-sided at the border) of (B,R,R,R) -> (B,R,R,R,3)."""
    g = torch.gradient(phi, spacing=spacing, dim=(1, 2, 3))
    return torch.stack(g, -1)
