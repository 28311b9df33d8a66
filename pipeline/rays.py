"""Camera rays and ray/box intersection (pure PyTorch, any device).

Conventions follow :mod:`pipeline.types`: Blender/OpenGL camera axes (the camera
looks down its local ``-z``, ``+y`` is up, ``+x`` is right), pixel ``(u, v)`` has
its centre at ``(u + 0.5, v + 0.5)``, ``u`` grows to the right and ``v`` downwards.
A pixel coordinate ``(u, v)`` therefore maps to the camera-space direction

    d_cam = ((u - cx) / fx, -(v - cy) / fy, -1)

which ``c2w[:3, :3]`` rotates to world space (the NeRF-synthetic convention of
Mildenhall et al. 2020, and nerfstudio's ``OPENGL_CAMERA``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .types import Cameras

__all__ = ["pixel_rays", "image_rays", "image_pixel_coords", "subpixel_offsets", "ray_aabb_intersect"]


def pixel_rays(cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through given pixel coordinates.

    Args:
        cameras: the camera set.
        cam_idx: (R,) long, which camera each ray belongs to.
        u, v: (R,) float pixel coordinates; pass the integer pixel index + 0.5 for
            pixel centres (``u`` to the right, ``v`` down).

    Returns:
        origins (R, 3) and unit directions (R, 3) in world space, on the cameras' device
        and dtype.

    Example:
        >>> o, d = pixel_rays(cams, torch.tensor([0]), torch.tensor([cx]), torch.tensor([cy]))
        >>> # identity c2w: o == (0, 0, 0), d == (0, 0, -1)
    """
    c2w = cameras.c2w
    device, dtype = c2w.device, c2w.dtype
    cam_idx = cam_idx.to(device=device, dtype=torch.long)
    u = u.to(device=device, dtype=dtype)
    v = v.to(device=device, dtype=dtype)
    fx = cameras.fx.to(device=device, dtype=dtype)[cam_idx]
    fy = cameras.fy.to(device=device, dtype=dtype)[cam_idx]
    cx = cameras.cx.to(device=device, dtype=dtype)[cam_idx]
    cy = cameras.cy.to(device=device, dtype=dtype)[cam_idx]
    d_cam = torch.stack([(u - cx) / fx, -(v - cy) / fy, -torch.ones_like(u)], dim=-1)  # (R,3)
    rot = c2w[cam_idx, :3, :3]  # (R,3,3)
    dirs = (rot @ d_cam.unsqueeze(-1)).squeeze(-1)
    dirs = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)
    origins = c2w[cam_idx, :3, 3]
    return origins, dirs


def image_pixel_coords(width: int, height: int, start: int, end: int, device=None,
                       dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(u, v)`` of flat pixel indices ``start..end-1``.

    Flat index ``k`` is row-major over ``(v, u)``: ``v = k // width``, ``u = k % width``.
    """
    k = torch.arange(start, end, device=device)
    u = (k % width).to(dtype) + 0.5
    v = torch.div(k, width, rounding_mode="floor").to(dtype) + 0.5
    return u, v


def subpixel_offsets(s: int) -> list[tuple[float, float]]:
    """``s*s`` offsets ``(du, dv)`` from a pixel's centre to the centres of its ``s x s`` sub-pixels,
    row-major over ``(dv, du)``; ``s = 1`` gives ``[(0, 0)]``. Raises ValueError when ``s < 1``."""
    s = int(s)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {s}")
    return [((a + 0.5) / s - 0.5, (b + 0.5) / s - 0.5) for b in range(s) for a in range(s)]


def image_rays(cameras: Cameras, i: int, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[Tensor, Tensor]:
    """All pixel-centre rays of camera ``i`` (moved by ``offset`` ``(du, dv)`` pixels, e.g. to a sub-pixel's
    centre: :func:`subpixel_offsets`).

    Returns origins (H*W, 3) and unit directions (H*W, 3), row-major over ``(v, u)``:
    ray ``k`` goes through pixel ``(u, v) = (k % W, k // W)`` (centre at +0.5), so
    ``rgb.reshape(H, W, 3)`` gives the image.
    """
    W, H = int(cameras.width), int(cameras.height)
    device, dtype = cameras.c2w.device, cameras.c2w.dtype
    u, v = image_pixel_coords(W, H, 0, W * H, device=device, dtype=dtype)
    cam_idx = torch.full((W * H,), int(i), dtype=torch.long, device=device)
    return pixel_rays(cameras, cam_idx, u + offset[0], v + offset[1])


def ray_aabb_intersect(origins: Tensor, dirs: Tensor, aabb) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays against one axis-aligned box (pure torch, any device).

    Args:
        origins: (R, 3) ray origins.
        dirs: (R, 3) ray directions (need not be unit; ``t`` is in units of ``|dirs|``).
        aabb: (6,) ``[xmin, ymin, zmin, xmax, ymax, zmax]`` (tensor or sequence).

    Returns:
        t_near (R,), t_far (R,), hit (R,) bool. ``t_near`` is clamped to ``>= 0`` (an
        origin inside the box gets ``t_near == 0``); ``hit`` is true when the ray meets
        the box in front of its origin (``t_far >= t_near`` and ``t_far > 0``). For
        rays that miss, ``t_near == t_far == 0`` so that ``[t_near, t_far]`` is empty.
    """
    aabb = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device).reshape(6)
    lo, hi = aabb[:3], aabb[3:]
    tiny = 1e-12
    # keep the sign of zero components, avoid inf*0 = nan when origin lies on a slab plane
    safe = torch.where(dirs.abs() < tiny, torch.where(dirs < 0, -tiny, tiny).to(dirs.dtype), dirs)
    inv = 1.0 / safe
    t1 = (lo - origins) * inv
    t2 = (hi - origins) * inv
    t_near = torch.minimum(t1, t2).amax(dim=-1)
    t_far = torch.maximum(t1, t2).amin(dim=-1)
    hit = (t_far >= t_near) & (t_far > 0)
    t_near = t_near.clamp_min(0.0)
    zero = torch.zeros_like(t_near)
    t_near = torch.where(hit, t_near, zero)
    t_far = torch.where(hit, t_far, zero)
    return t_near, t_far, hit
