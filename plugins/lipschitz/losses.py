"""The hinge-Kantorovich-Rubinstein (hKR) loss on winding-number labels (Coiffier & Béthune 2024).

``L(f) = E[-y f(x)] + lambda E[max(0, m - y f(x))]`` with ``y = -1`` inside and ``+1`` outside
(signed mode) or ``y = -1`` on the surface and ``+1`` elsewhere (unsigned mode). With class-balanced
batches (``sampling: balanced``, the authors' loaders) the first term is ``E_in f - E_out f``, the
Kantorovich-Rubinstein dual of the Wasserstein-1 distance between the two classes over 1-Lipschitz
functions, whose optimum is a signed distance to the boundary between them; the hinge keeps every
point on its side by the margin ``m``. With the default ``sampling: union`` the batch holds each class
in proportion to its share ``pi`` of the labelled points, so the first term is
``pi_in E_in f - pi_out E_out f``: no longer the W1 dual (a constant shift of ``f`` changes it by
``(pi_in - pi_out) c``, and only the hinge bounds it). This project's deviation: the sampling density is
then the same on both sides of the surface, and the hinge puts the zero level on it (config ``sampling``).

The labelled points are made once at build time from the scene (:mod:`plugins.lipschitz.labels`);
each step draws ``2 * batch_size`` points with torch's global RNG, which the trainer
checkpoints, so a resumed run draws the same batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.types import DataError

__all__ = ["hkr_loss", "hkr_objective", "HKRLoss", "build_hkr", "labels_from_scene"]


def hkr_loss(f: Tensor, y: Tensor, margin: float, lam: float) -> Tensor:
    """``mean(-y f) + lam * mean(relu(m - y f))`` for predictions ``f (N,)`` and labels ``y (N,)`` in {-1, +1}."""
    yf = y * f
    return (-yf).mean() + lam * F.relu(margin - yf).mean()


def hkr_objective(sdf_fn, x: Tensor, y: Tensor, margin: float, lam: float, surface: Tensor | None = None,
                  surface_weight: float = 0.0) -> Tensor:
    """hKR of ``sdf_fn`` on ``x (N,3)``, ``y (N,)``, plus ``surface_weight * mean(f(s)^2)`` on surface samples
    ``s (M,3)`` when the weight is positive.

    The surface term is not in the paper. hKR fixes the zero level only to within the margin (inside the band
    |SDF| < m both classes violate the hinge), and where more labelled points fall on one side of the band,
    as outside a convex tip, the level set moves off the surface (measured on spot: f = +0.028 world
    units on the true surface at the convex tips). For a
    1-Lipschitz f, ``|f(x)| <= |SDF(x)| + max_surface |f|``, so pinning f to 0 on the surface bounds the
    overestimate of the distance everywhere."""
    loss = hkr_loss(sdf_fn(x), y, margin, lam)
    if surface_weight > 0 and surface is not None:
        loss = loss + surface_weight * sdf_fn(surface).pow(2).mean()
    return loss


def labels_from_scene(cfg, scene, box) -> "LabelledPoints":  # noqa: F821
    """Label points for ``cfg`` (an :class:`~plugins.lipschitz.config.HKRConfig`) from a SceneData."""
    from plugins.lipschitz.labels import make_signed_labels, make_unsigned_labels

    source = cfg.source
    if source == "auto":
        source = "mesh" if scene.gt_mesh else "points"
    mesh = points = normals = None
    if source == "mesh":
        if not scene.gt_mesh:
            raise DataError("hkr.source = 'mesh', but the scene has no mesh (a point-cloud scene?); use source: points")
        from pipeline.scenes.mesh_render import load_mesh

        m = load_mesh(Path(scene.gt_mesh))
        mesh = (np.asarray(m.vertices), np.asarray(m.faces))
    else:
        if scene.points is None or len(scene.points) == 0:
            raise DataError("hkr.source = 'points', but the scene has no point cloud; use a `geometry` scene "
                            "with a mesh or point file")
        points, normals = scene.points, scene.normals
    common = dict(n_uniform=cfg.n_uniform, n_near=cfg.n_near, near_sigma=cfg.near_sigma,
                  box_padding=cfg.box_padding, seed=cfg.seed)
    if cfg.mode == "signed":
        return make_signed_labels(box, mesh=mesh, points=points, normals=normals, normals_mode=cfg.normals,
                                  threshold=cfg.threshold, max_ambiguous=cfg.max_ambiguous, **common)
    return make_unsigned_labels(box, mesh=mesh, points=points, margin=cfg.margin, **common)


class HKRLoss(nn.Module):
    """``loss(batch, out, system) -> weight * hKR`` on a fresh minibatch each step, drawn as ``sampling``
    says (``union`` by default; ``balanced``: batch_size points per class).

    ``inside (Ni,3)`` (y=-1) and ``outside (No,3)`` (y=+1) are non-persistent buffers: they are
    rebuilt deterministically from the scene, so checkpoints stay small.
    """

    def __init__(self, cfg, inside: np.ndarray, outside: np.ndarray, surface: np.ndarray, info: dict):
        super().__init__()
        self.cfg = cfg
        self.info = info
        self.register_buffer("inside", torch.as_tensor(inside, dtype=torch.float32), persistent=False)
        self.register_buffer("outside", torch.as_tensor(outside, dtype=torch.float32), persistent=False)
        self.register_buffer("surface", torch.as_tensor(surface, dtype=torch.float32), persistent=False)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``x (2n,3)``, ``y (2n,)`` drawn with torch's global RNG: from the union of both classes
        (``sampling: union``) or n of each class (``sampling: balanced``, the authors' loaders)."""
        if self.cfg.sampling == "union":
            ni = self.inside.shape[0]
            k = torch.randint(0, ni + self.outside.shape[0], (2 * n,)).to(self.inside.device)
            is_in = k < ni
            x = torch.where(is_in[:, None], self.inside[k.clamp_max(ni - 1)],
                            self.outside[(k - ni).clamp_min(0)])
            return x, torch.where(is_in, -1.0, 1.0).to(x.dtype)
        i = torch.randint(0, self.inside.shape[0], (n,)).to(self.inside.device)
        o = torch.randint(0, self.outside.shape[0], (n,)).to(self.inside.device)
        x = torch.cat([self.inside[i], self.outside[o]])
        y = torch.cat([-torch.ones(n, device=x.device), torch.ones(n, device=x.device)])
        return x, y

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar hKR objective of ``system.chain``'s sdf on ``self.sample(batch_size)`` (plus
        ``batch_size`` surface samples when ``surface_weight > 0``); ``batch`` and ``out`` are unused."""
        c = self.cfg
        x, y = self.sample(c.batch_size)
        with torch.autocast(device_type=x.device.type, enabled=False):
            s = None
            if c.surface_weight > 0:
                s = self.surface[torch.randint(0, self.surface.shape[0], (c.batch_size,)).to(x.device)]
            loss = hkr_objective(lambda p: system.chain(p, None)["sdf"], x, y, c.margin, c.lam, s, c.surface_weight)
        return c.weight * loss


def build_hkr(cfg, ctx) -> HKRLoss:
    """Factory of the ``hkr`` loss: labels the scene's mesh or point cloud once."""
    box = ctx.aabb.tolist() if ctx.aabb is not None else ctx.scene.aabb.tolist()
    lab = labels_from_scene(cfg, ctx.scene, box)
    i = lab.info
    print(f"hkr: {i['mode']} labels from {i['source']}: {i['n_inside']} with y=-1, {i['n_outside']} with y=+1"
          + (f", normals {i['normals']}" if "normals" in i else ""), file=sys.stderr)
    return HKRLoss(cfg, lab.inside, lab.outside, lab.surface, lab.info)
