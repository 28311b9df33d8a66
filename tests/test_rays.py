"""Camera rays and ray/box intersection against hand-computed values."""

import math

import pytest
import torch

from pipeline.rays import image_rays, pixel_rays, ray_aabb_intersect
from pipeline.types import Cameras


def make_cameras(c2w: torch.Tensor, W=5, H=3, fx=2.0, fy=2.0, cx=2.5, cy=1.5) -> Cameras:
    n = c2w.shape[0]
    full = lambda x: torch.full((n,), float(x))  # noqa: E731
    return Cameras(c2w=c2w.float(), fx=full(fx), fy=full(fy), cx=full(cx), cy=full(cy), width=W, height=H)


def rays_at(cams, idx, u, v):
    return pixel_rays(cams, torch.tensor([idx]), torch.tensor([float(u)]), torch.tensor([float(v)]))


def test_identity_centre_pixel_looks_down_minus_z():
    cams = make_cameras(torch.eye(4)[None])
    o, d = rays_at(cams, 0, 2.5, 1.5)  # principal point
    assert torch.allclose(o, torch.zeros(1, 3))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, -1.0]]), atol=1e-7)


def test_identity_edges_go_right_and_up():
    cams = make_cameras(torch.eye(4)[None])
    # right edge of the middle row: x = (5 - 2.5) / 2 = 1.25
    _, d = rays_at(cams, 0, 5.0, 1.5)
    assert torch.allclose(d, torch.tensor([[1.25, 0.0, -1.0]]) / math.sqrt(1.25**2 + 1), atol=1e-6)
    # top edge (v = 0) goes +y: y = -(0 - 1.5) / 2 = 0.75
    _, d = rays_at(cams, 0, 2.5, 0.0)
    assert torch.allclose(d, torch.tensor([[0.0, 0.75, -1.0]]) / 1.25, atol=1e-6)
    # unit length everywhere
    o, d = image_rays(cams, 0)
    assert torch.allclose(d.norm(dim=-1), torch.ones(15), atol=1e-6)


def test_rotated_translated_pose():
    # rotation of +90 degrees about world y: camera x -> world -z, camera z -> world +x
    R = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    c2w = torch.eye(4)
    c2w[:3, :3] = R
    c2w[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    cams = make_cameras(torch.stack([torch.eye(4), c2w]))
    # centre pixel of camera 1: camera -z -> world -x
    o, d = rays_at(cams, 1, 2.5, 1.5)
    assert torch.allclose(o, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(d, torch.tensor([[-1.0, 0.0, 0.0]]), atol=1e-6)
    # u = cx + fx -> camera dir (1, 0, -1) -> world (0,0,-1) + (-1,0,0)
    o, d = rays_at(cams, 1, 4.5, 1.5)
    assert torch.allclose(d, torch.tensor([[-1.0, 0.0, -1.0]]) / math.sqrt(2), atol=1e-6)
    # v = cy - fy (one focal length up) -> camera dir (0, 1, -1) -> world (-1, 1, 0)
    o, d = rays_at(cams, 1, 2.5, -0.5)
    assert torch.allclose(d, torch.tensor([[-1.0, 1.0, 0.0]]) / math.sqrt(2), atol=1e-6)
    # a batch mixing cameras
    o, d = pixel_rays(cams, torch.tensor([0, 1]), torch.tensor([2.5, 2.5]), torch.tensor([1.5, 1.5]))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(o, torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))


def test_image_rays_row_major_pixel_centres():
    cams = make_cameras(torch.eye(4)[None])
    o, d = image_rays(cams, 0)
    assert o.shape == (15, 3) and d.shape == (15, 3)
    W = 5
    for k in [0, 1, 4, 5, 7, 14]:
        u, v = k % W, k // W
        _, dk = rays_at(cams, 0, u + 0.5, v + 0.5)
        assert torch.allclose(d[k], dk[0], atol=1e-6), k
    # first pixel is top-left: left (-x) and up (+y)
    assert d[0, 0] < 0 and d[0, 1] > 0
    # last pixel is bottom-right
    assert d[14, 0] > 0 and d[14, 1] < 0


AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "origin, direction, t_near, t_far, hit",
    [
        ((-2.0, 0.0, 0.0), (1.0, 0.0, 0.0), 1.0, 3.0, True),  # straight through
        ((-2.0, -2.0, 0.0), (1 / math.sqrt(2), 1 / math.sqrt(2), 0.0), math.sqrt(2), 3 * math.sqrt(2), True),
        ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0, 1.0, True),  # origin inside
        ((0.5, 0.0, 0.0), (-1.0, 0.0, 0.0), 0.0, 1.5, True),  # inside, off-centre
        ((-2.0, 2.0, 0.0), (1.0, 0.0, 0.0), 0.0, 0.0, False),  # parallel miss
        ((2.0, 0.0, 0.0), (1.0, 0.0, 0.0), 0.0, 0.0, False),  # box behind the origin
        ((-3.0, 0.0, 0.0), (0.6, 0.8, 0.0), 0.0, 0.0, False),  # oblique miss
        ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0), 0.0, 1.0, True),  # origin on a face, moving along it
    ],
)
def test_ray_aabb_intersect(origin, direction, t_near, t_far, hit):
    o = torch.tensor([origin])
    d = torch.tensor([direction])
    tn, tf, h = ray_aabb_intersect(o, d, AABB)
    assert bool(h[0]) is hit
    assert tn[0].item() == pytest.approx(t_near, abs=1e-5)
    assert tf[0].item() == pytest.approx(t_far, abs=1e-5)


def test_ray_aabb_batched_and_finite():
    o = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    tn, tf, h = ray_aabb_intersect(o, d, AABB.tolist())
    assert h.tolist() == [True, False, True]
    assert torch.isfinite(tn).all() and torch.isfinite(tf).all()
    assert torch.allclose(tn, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(tf, torch.tensor([3.0, 0.0, 1.0]))
