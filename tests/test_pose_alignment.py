"""Test-time pose alignment (``eval.align_poses``, :mod:`pipeline.pose_alignment`): a view rendered from a known
pose by an analytic textured field, then scored from a pose off by a degree, is fitted back to the true pose."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pipeline.metrics import psnr
from pipeline.pose_alignment import align_camera
from pipeline.pose_refinement import perturb_poses, pose_errors, view_errors
from pipeline.system import FieldChain
from pipeline.types import Cameras


class TexturedCube(nn.Module):
    """An opaque cube of half side 0.35 whose colour varies smoothly with position (so that a shifted view is a
    different image): {"density": (N,), "rgb": (N, 3)}."""

    def forward(self, x, d=None):
        inside = torch.sigmoid((0.35 - x.abs().amax(-1)) * 200.0)
        out = {"density": 60.0 * inside}
        if d is not None:
            out["rgb"] = 0.5 + 0.4 * torch.sin(6.0 * x + torch.tensor([0.0, 1.0, 2.0]))
        return out


def _system():
    from plugins.ngp.config import VolumeRendererConfig
    from plugins.ngp.renderer import VolumeRenderer

    aabb = torch.tensor([-0.6, -0.6, -0.6, 0.6, 0.6, 0.6])
    renderer = VolumeRenderer(VolumeRendererConfig(samples_per_ray=96), aabb, (1.0, 1.0, 1.0), 0.0, 1e10)
    chain = FieldChain(TexturedCube())
    return SimpleNamespace(renderer=renderer, chain=chain, parameters=lambda: chain.parameters())


def _camera(size=48) -> Cameras:
    eye = torch.tensor([1.2, -1.4, 1.0])
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.stack([right, up, -forward], 1)  # OpenGL camera: x right, y up, looking down -z
    c2w[:3, 3] = eye
    f = 0.5 * size / math.tan(0.35)
    return Cameras(c2w[None], torch.tensor([f]), torch.tensor([f]), torch.tensor([size / 2]),
                   torch.tensor([size / 2]), size, size)


def test_a_view_off_by_a_degree_is_fitted_back_to_its_pose():
    system = _system()
    true = _camera()
    with torch.no_grad():
        image = system.renderer.render_image(true, 0, system.chain)["rgb"]
    off, _, _ = perturb_poses(Cameras(true.c2w.repeat(2, 1, 1), *(t.repeat(2) for t in (true.fx, true.fy, true.cx, true.cy)),
                                      true.width, true.height), 1.5, 0.02, seed=3)
    off = off.select([0])
    rot0, pos0 = pose_errors(off.c2w.double(), true.c2w.double())
    assert float(rot0) > 0.3
    aligned, record = align_camera(system, off, image, steps=80, rays=512)
    rot1, pos1 = pose_errors(aligned.c2w.double(), true.c2w.double())
    with torch.no_grad():
        before = psnr(system.renderer.render_image(off, 0, system.chain)["rgb"].numpy(), image.numpy())
        after = psnr(system.renderer.render_image(aligned, 0, system.chain)["rgb"].numpy(), image.numpy())
    corners = torch.cartesian_prod(*[torch.tensor([-0.35, 0.35], dtype=torch.float64)] * 3)  # (8, 3)
    view0, view1 = (float(view_errors(c.c2w.double(), true.c2w.double(), corners)) for c in (off, aligned))
    # a turn and a shift that move the image alike are one error: the view error (degrees at which the cube's
    # corners are seen off) is what the image pins down: it falls about tenfold (0.30 -> 0.03 degrees)
    assert view1 < 0.2 * view0, (view0, view1)
    assert float(rot1) < 0.5 * float(rot0), (rot0, rot1)
    assert after > before + 10.0, (before, after)
    assert record["mse_after"] < 0.3 * record["mse_before"] and record["rotation_deg"] > 0
    assert all(p.requires_grad for p in system.chain.parameters())  # (none here; a real field's are restored)


def test_alignment_leaves_a_trained_field_as_it_was():
    """The field's parameters get no gradient and keep requires_grad; only one camera is accepted."""
    system = _system()
    system.chain.field.scale = nn.Parameter(torch.ones(()))
    cam = _camera(16)
    image = torch.ones(16, 16, 3)
    align_camera(system, cam, image, steps=2, rays=32)
    assert system.chain.field.scale.requires_grad and system.chain.field.scale.grad is None
    with pytest.raises(ValueError, match="one camera"):
        two = Cameras(cam.c2w.repeat(2, 1, 1), *(t.repeat(2) for t in (cam.fx, cam.fy, cam.cx, cam.cy)), 16, 16)
        align_camera(system, two, image, steps=1)
