"""Evaluators of the backend: image metrics on test renders, geometry metrics on the mesh."""

from __future__ import annotations

from plugins.ngp.config import ChamferConfig, PointFitConfig, PSNRConfig


class ImageMetrics:
    """Mean PSNR / SSIM of the eval split's renders against the ground-truth images."""

    def __init__(self, cfg: PSNRConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from pipeline.metrics import psnr, ssim

        pairs = ctx.renders()
        out = {"psnr": sum(psnr(p, g) for p, g in pairs) / len(pairs), "n_images": len(pairs)}
        if self.cfg.ssim:
            out["ssim"] = sum(ssim(p, g) for p, g in pairs) / len(pairs)
        return out


class GeometryMetrics:
    """Chamfer-L1/L2 (x10^3), normal consistency and F-score in the GT-normalised frame
    (:func:`pipeline.metrics.chamfer`);
    optionally the sampling floor and the floor-free point-to-surface Chamfer (``*_surface``)."""

    def __init__(self, cfg: ChamferConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from pipeline.metrics import chamfer, chamfer_floor, chamfer_to_surface
        from pipeline.scenes.mesh_render import load_mesh

        gt = load_mesh(ctx.scene.gt_mesh)
        e = ctx.cfg.eval
        mesh = ctx.mesh()
        res = chamfer(mesh, gt, n_samples=e.chamfer_samples, fscore_taus=(e.fscore_tau,))
        if isinstance(mesh.metadata.get("level"), (int, float)):
            res["mesh_level"] = float(mesh.metadata["level"])  # the iso-level meshed (calibrated or fixed)
        if self.cfg.floor:
            fl = chamfer_floor(gt, n_samples=e.chamfer_samples)
            res["chamfer_l1_floor"] = fl["chamfer_l1"]
        if self.cfg.surface:
            exact = chamfer_to_surface(mesh, gt, n_samples=e.chamfer_samples)
            res.update({f"{k}_surface": exact[k] for k in ("chamfer_l1", "chamfer_l2")})
        return res


class PointFitMetrics:
    """The mesh against the scene's input points (``ctx.scene.points``, (P, 3), in the run's frame): a point
    cloud's, which has no ground-truth mesh, or a COLMAP capture's sparse points. Skipped without points.

    ``fit_*``: :func:`pipeline.metrics.chamfer` with the points as the reference, in the frame where their
    bounding box is centred with largest side 1. ``fit_accuracy_l1`` (mesh samples to the nearest input point)
    grows with surface the points do not support, such as sheets closing holes in a scan;
    ``fit_completeness_l1`` (input points to the nearest mesh sample) with points the mesh misses. Its
    floor is the mean spacing of the samples, not 0. ``fit_residual_l1`` / ``fit_residual_p95``: the mean and
    95th percentile of each input point's exact distance to the mesh surface (×10³, same frame), which has no
    sampling floor."""

    def __init__(self, cfg: PointFitConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        import numpy as np

        from pipeline.metrics import chamfer, point_to_surface_distances
        from pipeline.types import NLSError

        if ctx.scene.points is None or len(ctx.scene.points) == 0:
            raise NLSError("the scene has no input points (a COLMAP model without sparse points inside the box)")
        points = np.asarray(ctx.scene.points, np.float64)
        e = ctx.cfg.eval
        mesh = ctx.mesh()
        fit = chamfer(mesh, points, n_samples=e.chamfer_samples, fscore_taus=(e.fscore_tau,))
        res = {f"fit_{k}": v for k, v in fit.items() if k not in ("n_samples", "n_rec", "n_gt", "scale", "frame")}
        res.update(n_points=int(len(points)), frame=f"{fit['frame']} (of the input points)")
        if self.cfg.residual:
            if len(points) > self.cfg.max_points:
                points = points[np.random.default_rng(0).choice(len(points), self.cfg.max_points, replace=False)]
            d = point_to_surface_distances(points, mesh) * fit["scale"]
            res.update(fit_residual_l1=float(d.mean() * 1e3), fit_residual_p95=float(np.percentile(d, 95) * 1e3))
        return res


def build_image_metrics(cfg, ctx):
    """Build the PSNR / SSIM evaluator from its ``evaluators:`` entry (``PSNRConfig``)."""
    return ImageMetrics(cfg)


def build_geometry_metrics(cfg, ctx):
    """Build the mesh-vs-GT evaluator from its ``evaluators:`` entry (``ChamferConfig``)."""
    return GeometryMetrics(cfg)


def build_point_fit(cfg, ctx):
    """Build the mesh-vs-input-points evaluator from its ``evaluators:`` entry (``PointFitConfig``)."""
    return PointFitMetrics(cfg)
