"""Distance-quality metrics of an SDF field against a ground-truth mesh (libigl exact signed distance)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["gt_signed_distance", "distance_quality", "DistanceEvaluator", "build_distance"]


def gt_signed_distance(mesh, x: np.ndarray, unsigned: bool = False) -> np.ndarray:
    """Exact distance from ``x (N,3)`` to a trimesh mesh, signed by the fast winding number
    (negative inside) unless ``unsigned``."""
    import igl

    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    kind = igl.SIGNED_DISTANCE_TYPE_UNSIGNED if unsigned else igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER
    s, _, _, _ = igl.signed_distance(np.ascontiguousarray(x, dtype=np.float64), V, F, sign_type=kind)
    return np.abs(s) if unsigned else s


def distance_quality(sdf_fn: Callable, gt_mesh, x: np.ndarray, *, near: float = 0.05, unsigned: bool = False,
                     device="cpu") -> dict:
    """Compare a field with the ground-truth distance at points ``x (N,3)``.

    Returns ``mean_abs_err`` mean |f - SDF| (|f - UDF| when unsigned), ``max_over`` max(|f| - |SDF|) over all
    points and ``max_over_near`` / ``max_over_far`` split at |SDF| < ``near``, ``over_rate`` fraction of
    points with |f| > |SDF| + 1e-4, and ``grad_mean`` / ``grad_min`` / ``grad_max`` of ||grad f||.
    """
    from plugins.lipschitz.queries import value_and_grad

    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    f, g = value_and_grad(sdf_fn, xt)
    f = f.cpu().double().numpy()
    gn = g.norm(dim=-1).cpu().double().numpy()
    s = gt_signed_distance(gt_mesh, x, unsigned=unsigned)
    err = np.abs(f - s)
    over = np.abs(f) - np.abs(s)
    nearm = np.abs(s) < near
    return {"mean_abs_err": float(err.mean()), "max_over": float(over.max()),
            "max_over_near": float(over[nearm].max()) if nearm.any() else float("nan"),
            "max_over_far": float(over[~nearm].max()) if (~nearm).any() else float("nan"),
            "over_rate": float((over > 1e-4).mean()),
            "grad_mean": float(gn.mean()), "grad_min": float(gn.min()), "grad_max": float(gn.max()),
            "n_points": int(len(x))}


class DistanceEvaluator:
    """The ``distance_quality`` evaluator (uniform points in the scene box)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from pipeline.scenes.mesh_render import load_mesh

        c = self.cfg
        rng = np.random.default_rng(c.seed)
        b = ctx.scene.aabb.double().cpu().numpy()
        x = b[:3] + (b[3:] - b[:3]) * rng.random((c.n_points, 3))
        chain = ctx.system.chain
        ctx.system.eval()
        m = distance_quality(lambda p: chain(p, None)["sdf"], load_mesh(ctx.scene.gt_mesh), x, near=c.near,
                             unsigned=c.unsigned, device=ctx.device)
        return {f"dist_{k}": v for k, v in m.items()}


def build_distance(cfg, ctx) -> DistanceEvaluator:
    """Build the ``distance_quality`` evaluator from its ``evaluators:`` entry (``DistanceEvalConfig``)."""
    return DistanceEvaluator(cfg)
