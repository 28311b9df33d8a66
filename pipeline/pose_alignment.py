"""Test-time pose alignment (``eval.align_poses``): each held-out view's camera pose fitted to its image with
the trained field frozen, before the view is scored.

A run that refines its training cameras (``train.refine_poses``) holds their common similarity motion at zero
(:func:`pipeline.pose_refinement.remove_common_motion`), yet its field can still settle a fraction of a pixel off
the given poses' frame, and held-out views carry pose errors of their own when their poses come from the same
structure-from-motion as the training ones. Their PSNR then measures the misregistration as well as the field.
BARF (Lin et al. 2021, Sec. 4) evaluates such runs after optimising each test view's pose photometrically with
the field fixed; this module does that: the view's pose gets a rotation about its centre and a shift (one uncentred
:class:`pipeline.pose_refinement.PoseRefinement`), fitted by Adam on the mean squared error of ``rays``
random pixels per step for ``steps`` steps, its rate falling from :data:`ALIGN_LR` on a cosine to 5 % of it.

Departure from BARF: BARF first maps the optimised training poses onto the ground truth by a Procrustes fit
and starts each test view from its ground-truth pose carried through that map. A capture has no ground truth,
so each view starts from its given pose and the fit alone takes up the drift (a fraction of a pixel to a few).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.types import Cameras

#: Adam's starting rate for the alignment (radians and world units per step)
ALIGN_LR = 1e-3


def align_camera(system, camera: Cameras, image: Tensor, *, steps: int, rays: int = 1024,
                 seed: int = 0) -> tuple[Cameras, dict]:
    """``camera`` (one camera) with its pose fitted to ``image`` ``(H, W, 3)`` (its photo on the renderer's
    background) through ``system``'s renderer and field, which are left unchanged; returns ``(the aligned
    camera, {"rotation_deg", "shift", "mse_before", "mse_after"})``: the correction's angle (degrees) and length,
    and the mean squared error of the first step's rays (before any move) and of the last step's."""
    from pipeline.pose_refinement import PoseRefinement
    from pipeline.rays import pixel_rays

    if len(camera) != 1:
        raise ValueError(f"align_camera aligns one camera, got {len(camera)}")
    device = camera.c2w.device
    correction = PoseRefinement(1, ALIGN_LR, centred=False).to(device)
    opt = torch.optim.Adam(correction.parameters(), lr=ALIGN_LR)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / max(steps, 1))))
    height, width = int(camera.height), int(camera.width)
    target = image.to(device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for p in system.parameters() if p.requires_grad]
    losses = []
    first = torch.zeros(rays, dtype=torch.long, device=device)  # every ray is of the one camera
    try:
        for p in frozen:  # the field gets no gradient: only the pose moves
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in range(steps):
                pick = torch.randint(0, height * width, (rays,), generator=gen).to(device)
                v, u = pick // width, pick % width
                o, d = pixel_rays(camera, first, (u + 0.5).to(camera.c2w.dtype), (v + 0.5).to(camera.c2w.dtype))
                o, d = correction(o.float(), d.float(), first)
                out = system.renderer.render_rays(o, d, system.chain)
                loss = torch.mean((out["rgb"] - target[v, u]) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    w, s = (t.detach()[0] for t in correction.corrections())
    record = {"rotation_deg": round(float(torch.rad2deg(w.norm())), 5), "shift": round(float(s.norm()), 6),
              "mse_before": losses[0] if losses else None, "mse_after": losses[-1] if losses else None}
    return correction.refined(camera), record
