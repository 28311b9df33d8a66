"""Small encodings shared by the backend's fields."""

from __future__ import annotations

import torch
from torch import Tensor

# Real spherical-harmonics constants (Sloan, "Stupid Spherical Harmonics Tricks", 2008),
# the same basis Instant-NGP uses for view directions.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_encode(d: Tensor, degree: int = 4) -> Tensor:
    """Real SH basis of unit directions. d: (N,3) -> (N, degree**2), degree in 1..4."""
    if not 1 <= degree <= 4:
        raise ValueError(f"SH degree must be 1..4, got {degree}")
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, _C0)]
    if degree > 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
    if degree > 3:
        out += [_C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
                _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, -1)


class _TruncExp(torch.autograd.Function):
    """exp with the gradient clamped (Instant-NGP's density activation, from torch-ngp)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D401
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` elementwise, any shape; the backward pass uses ``exp(x.clamp(max=15))``."""
    return _TruncExp.apply(x)


def mlp(d_in: int, d_hidden: int, d_out: int, n_hidden: int) -> torch.nn.Sequential:
    """ReLU MLP with ``n_hidden`` hidden layers of width ``d_hidden``."""
    layers: list[torch.nn.Module] = []
    d = d_in
    for _ in range(n_hidden):
        layers += [torch.nn.Linear(d, d_hidden), torch.nn.ReLU(inplace=True)]
        d = d_hidden
    layers.append(torch.nn.Linear(d, d_out))
    return torch.nn.Sequential(*layers)


def normalize_points(x: Tensor, aabb: Tensor) -> Tensor:
    """Map world points (N,3) into [0,1]^3 of the box ``aabb`` (6,)."""
    return (x - aabb[:3]) / (aabb[3:] - aabb[:3])
