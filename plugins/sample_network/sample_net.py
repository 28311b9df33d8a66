"""Sample networks (Atzmon et al. 2019, §2.2).

A level-set sample p ∈ S(θ₀) = {F(·;θ₀) = c} is tied to the parameters by one fixed linear
layer on top of F (Eq. 9)::

    p(θ) = p − D_xF(p; θ₀)^† [F(p; θ) − c]

p and the pseudo-inverse D_xF(p;θ₀)^† (d×l numbers per sample, Eq. 5 for l = 1) are
detached inputs; F(p; θ) is one batched forward pass with the live θ. At θ = θ₀ the value
is p and the derivative is Eq. 8::

    D_θ p(θ₀) = −D_xF(p; θ₀)^† D_θF(p; θ₀)

i.e. the minimal-norm first-order motion of the implicit level-set point. The test
``tests/test_sample_network.py`` checks it against finite differences of the implicit point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from plugins.sample_network.projection import Level, _levels, pinv_jacobian, value_and_jacobian


def sample_network(fn: Callable, p: Tensor, level: Level = 0.0, *, pinv: Optional[Tensor] = None,
                   values: Optional[Tensor] = None) -> Tensor:
    """Eq. 9: differentiable positions ``p(θ)`` (n, d) of level-set samples ``p`` (n, d).

    Args:
        fn: the network F(·; θ) with live parameters, (n, d) → (n,) or (n, l).
        p: samples on (or near) {F = c}; detached.
        level: c (scalar, (l,), or per point).
        pinv: D_xF(p; θ₀)^† (n, d, l), detached. Computed here (one extra backward) when None.
        values: F(p; θ) already computed with the live θ (n, l) — reused instead of a new forward.

    Returns:
        p(θ) with value p − J^†(F(p;θ) − c) (= p when p lies exactly on the level set).
    """
    p = p.detach()
    if pinv is None:
        _, J = value_and_jacobian(fn, p)
        pinv = pinv_jacobian(J)
    if values is None:
        values = fn(p)
    values = values.reshape(p.shape[0], -1)
    c = _levels(level, p.shape[0], values.shape[1], p.device, p.dtype)
    return p - (pinv.detach() @ (values - c).unsqueeze(-1)).squeeze(-1)


@dataclass
class FusedSamples:
    """Sample-network output of :func:`sample_network_at`.

    points: (n, d) p(θ), differentiable in θ (value p).
    levels: (n,) c_i, the level each sample sits on (detached).
    grads: (n, d) D_xF(p; θ₀) (detached).
    """

    points: Tensor
    levels: Tensor
    grads: Tensor


def sample_network_at(fn: Callable, p: Tensor, level: Optional[Level] = 0.0, *,
                      own_level: Optional[Tensor] = None) -> FusedSamples:
    """Eq. 9 for scalar F with a single forward pass: F(p; θ) is evaluated once with the live θ,
    its input gradient (= D_xF(p; θ₀), since θ = θ₀ at this moment) gives the detached
    pseudo-inverse (Eq. 5), and the same output feeds the sample network.

    ``level=None`` puts every sample on its own level set c_i = F(p_i; θ₀) (detached), so
    p(θ₀) = p exactly for any p: a point anywhere in space is a sample of S_{c_i}. This is
    how samples of a continuum of levels enter Eq. 13. ``own_level`` (n,) bool does the same
    for some rows only. For a sample near (not on) S_t with a given level t, the value
    p(θ₀) = p − D_xF^†(F(p) − t) is one more Newton step (Eq. 4) onto S_t.
    """
    x = p.detach().requires_grad_(True)
    y = fn(x).reshape(p.shape[0], -1)
    if y.shape[1] != 1:
        raise ValueError("sample_network_at handles scalar F; use sample_network for l > 1")
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    y = y[:, 0]
    c = y.detach() if level is None else _levels(level, p.shape[0], 1, p.device, p.dtype)[:, 0]
    if own_level is not None:
        c = torch.where(own_level, y.detach(), c)
    pinv = g / (g.pow(2).sum(-1, keepdim=True) + 1e-12)
    return FusedSamples(p.detach() - pinv.detach() * (y - c).unsqueeze(-1), c, g.detach())
