"""Direct geometric queries on a distance field ``f`` (``sdf_fn(x (N,3)) -> (N,)``).

For a 1-Lipschitz ``f`` whose zero level set is the surface S:

* :func:`empty_ball_radius` ``r(x) = |f(x)|`` — the open ball B(x, r(x)) contains no point of
  ``{f = 0}`` (if ``f(y) = 0`` then ``|f(x)| = |f(x) - f(y)| <= ||x - y||``). Against the *true*
  surface the guarantee holds up to how far ``{f = 0}`` is from S; with hKR training that is
  within the margin m where the level set is on the surface (tested in tests/test_lipschitz.py).
* :func:`project` ``x - f(x) grad f(x)`` — one closest-point step; exact for an exact distance
  field (||grad f|| = 1), a contraction towards the level set otherwise; iterate to converge.
* :func:`sample_level_set` — points on ``{f = level}``: uniform samples projected a few times,
  kept when ``|f - level| < tol``; :func:`export_level_set` writes them as a .ply point cloud.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["value_and_grad", "empty_ball_radius", "project", "sample_level_set", "export_level_set",
           "LevelSetPointsEvaluator", "build_level_set_points"]

SdfFn = Callable[[Tensor], Tensor]


def value_and_grad(sdf_fn: SdfFn, x: Tensor, chunk: int = 1 << 15) -> tuple[Tensor, Tensor]:
    """``f (N,)``, ``grad f (N,3)`` at ``x (N,3)`` (fp32 autograd, detached)."""
    if x.shape[0] == 0:
        return x.new_zeros((0,)), x.new_zeros((0, 3))
    fs, gs = [], []
    for s in range(0, x.shape[0], chunk):
        with torch.enable_grad():
            xi = x[s:s + chunk].detach().float().requires_grad_(True)
            f = sdf_fn(xi).reshape(-1)
            (g,) = torch.autograd.grad(f.sum(), xi)
        fs.append(f.detach())
        gs.append(g.detach())
    return torch.cat(fs), torch.cat(gs)


@torch.no_grad()
def empty_ball_radius(sdf_fn: SdfFn, x: Tensor, chunk: int = 1 << 16) -> Tensor:
    """``|f(x)|`` (N,): radius of a ball around each point free of the field's zero level set
    (a guarantee for a 1-Lipschitz field)."""
    return torch.cat([sdf_fn(x[s:s + chunk]).reshape(-1).abs() for s in range(0, x.shape[0], chunk)])


def project(sdf_fn: SdfFn, x: Tensor, iterations: int = 1, level: float = 0.0,
            normalize_grad: bool = False) -> Tensor:
    """Closest-point projection ``x - (f(x) - level) grad f(x)`` repeated ``iterations`` times.

    ``normalize_grad=True`` divides by ``||grad f||^2`` (a Newton step on the level), which converges
    faster when ``||grad f|| < 1``; the default is the formula of the paper.
    """
    for _ in range(iterations):
        f, g = value_and_grad(sdf_fn, x)
        if normalize_grad:
            g = g / (g * g).sum(-1, keepdim=True).clamp_min(1e-8)
        x = x.detach() - (f - level)[:, None] * g
    return x


def sample_level_set(sdf_fn: SdfFn, bbox: Sequence[float], n: int, *, level: float = 0.0,
                     iterations: int = 4, tol: float = 2e-3, seed: int = 0, device="cpu",
                     max_rounds: int = 20) -> tuple[Tensor, Tensor]:
    """``(points (n,3), normals (n,3))`` on ``{f = level}`` inside ``bbox`` (fewer if too few converge)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b = torch.as_tensor(list(bbox), dtype=torch.float32)
    lo, hi = b[:3], b[3:]
    kept: list[Tensor] = []
    total = 0
    for _ in range(max_rounds):
        x = (lo + (hi - lo) * torch.rand(max(4 * n, 1024), 3, generator=g)).to(device)
        # Newton steps x - (f - c) grad f / ||grad f||^2 (the paper's x - f grad f divided by ||grad f||^2,
        # which converges faster where ||grad f|| < 1); points within tol of the level are kept
        x = project(sdf_fn, x, iterations=iterations, level=level, normalize_grad=True)
        f = torch.cat([sdf_fn(x[s:s + 65536]).detach().reshape(-1) for s in range(0, x.shape[0], 65536)])
        inside_box = ((x >= lo.to(device)) & (x <= hi.to(device))).all(-1)
        ok = ((f - level).abs() < tol) & inside_box
        kept.append(x[ok])
        total += int(ok.sum())
        if total >= n:
            break
    pts = torch.cat(kept)[:n]
    _, grad = value_and_grad(sdf_fn, pts)
    return pts, torch.nn.functional.normalize(grad, dim=-1)


def export_level_set(sdf_fn: SdfFn, bbox: Sequence[float], path, n: int = 30000, **kw) -> Path:
    """Write ``n`` level-set points with normals to ``path`` (.ply) and return the path."""
    from pipeline.mesh import export_point_cloud

    pts, nrm = sample_level_set(sdf_fn, bbox, n, **kw)
    return export_point_cloud(pts.cpu().numpy(), path, normals=nrm.cpu().numpy())


class LevelSetPointsEvaluator:
    """The ``level_set_points`` evaluator: writes ``meshes/level_set_points.ply`` and reports how many
    points converged and their mean |f - level|; with a GT mesh, the points' Chamfer-L1 and its floor at their count."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        c = self.cfg
        chain = ctx.system.chain
        ctx.system.eval()
        fn = lambda x: chain(x, None)["sdf"]  # noqa: E731
        pts, nrm = sample_level_set(fn, ctx.scene.aabb.tolist(), c.n_points, level=c.level,
                                    iterations=c.iterations, tol=c.tolerance, seed=c.seed, device=ctx.device,
                                    max_rounds=c.max_rounds)
        out = {"level_set_n_points": int(len(pts))}
        if len(pts):
            with torch.no_grad():
                out["level_set_mean_abs_residual"] = float((fn(pts) - c.level).abs().mean())
            if ctx.files_dir is not None:
                from pipeline.mesh import export_point_cloud

                p = export_point_cloud(pts.cpu().numpy(), ctx.files_dir / "meshes" / "level_set_points.ply",
                                       normals=nrm.cpu().numpy())
                out["level_set_path"] = str(p.relative_to(ctx.files_dir))  # beside summary.json / in <stem>_renders/
            if ctx.scene.gt_mesh:
                from pipeline.metrics import chamfer, chamfer_floor
                from pipeline.scenes.mesh_render import load_mesh

                # the GT is sampled at the protocol's count whatever the number of converged points (as
                # many GT samples as points made the figure of a run with few converged points noisy)
                gt, n = load_mesh(ctx.scene.gt_mesh), ctx.cfg.eval.chamfer_samples
                out["level_set_chamfer_l1"] = chamfer(pts.cpu().numpy(), gt, n_samples=n)["chamfer_l1"]
                # its own floor: len(pts) points, not n, against the GT's n samples (the chamfer
                # evaluator's chamfer_l1_floor, n against n, is lower)
                out["level_set_chamfer_l1_floor"] = chamfer_floor(gt, n, rec_points=len(pts))["chamfer_l1"]
        return out


def build_level_set_points(cfg, ctx) -> LevelSetPointsEvaluator:
    """Build the ``level_set_points`` evaluator from its ``evaluators:`` entry (``LevelSetPointsConfig``)."""
    return LevelSetPointsEvaluator(cfg)
