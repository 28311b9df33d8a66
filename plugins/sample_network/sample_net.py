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


def sample_network_fused(fn: Callable, p: Tensor, level: Level = 0.0) -> Tensor:
    """Eq. 9 for scalar F with a single forward pass: F(p; θ) is evaluated once with the live θ,
    its input gradient (= D_xF(p; θ₀), since θ = θ₀ at this moment) gives the detached
    pseudo-inverse (Eq. 5), and the same output feeds the sample network. Cheaper than
    :func:`sample_network` by one forward."""
    x = p.detach().requires_grad_(True)
    y = fn(x).reshape(p.shape[0], -1)
    if y.shape[1] != 1:
        return sample_network(fn, p, level)
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    pinv = (g / (g.pow(2).sum(-1, keepdim=True) + 1e-12)).unsqueeze(-1)
    c = _levels(level, p.shape[0], 1, p.device, p.dtype)
    return p.detach() - (pinv.detach() @ (y - c).unsqueeze(-1)).squeeze(-1)
