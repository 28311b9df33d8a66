"""Evaluators of the backend: image metrics on test renders, geometry metrics on the mesh."""

from __future__ import annotations

from plugins.ngp.config import ChamferConfig, PSNRConfig


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


def build_image_metrics(cfg, ctx):
    """Build the PSNR / SSIM evaluator from its ``evaluators:`` entry (``PSNRConfig``)."""
    return ImageMetrics(cfg)


def build_geometry_metrics(cfg, ctx):
    """Build the mesh-vs-GT evaluator from its ``evaluators:`` entry (``ChamferConfig``)."""
    return GeometryMetrics(cfg)
