"""Evaluators of RS-SDF: weak-SDF slice images, and the grid vs Monte-Carlo certify cross-check."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.types import NLSError
from plugins.rs_sdf.config import CertifyCheckConfig, SDFSlicesConfig

AXES = {"x": 0, "y": 1, "z": 2}


def _eval_chain(chain, pts: torch.Tensor, key: str, chunk: int = 2 ** 17) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([chain(c, None)[key].detach().float().cpu() for c in pts.split(chunk)])


def slice_points(box: torch.Tensor, axis: int, t: float, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """World points of a slice normal to ``axis`` at fraction ``t`` of the box: ``(H*W, 3)``, (H, W).

    Image columns run along the first remaining axis, rows along the second (top = max)."""
    u, v = [a for a in range(3) if a != axis]
    ext = (box[3:] - box[:3]).tolist()
    scale = size / max(ext[u], ext[v])
    W, H = max(2, round(ext[u] * scale)), max(2, round(ext[v] * scale))
    cu = torch.linspace(float(box[u]), float(box[u + 3]), W)
    cv = torch.linspace(float(box[v + 3]), float(box[v]), H)
    gv, gu = torch.meshgrid(cv, cu, indexing="ij")
    pts = torch.empty(H, W, 3)
    pts[..., axis] = float(box[axis]) + t * ext[axis]
    pts[..., u], pts[..., v] = gu, gv
    return pts.view(-1, 3), (H, W)


def colorize_sdf(sdf: np.ndarray, cmap: str, vmax: float) -> np.ndarray:
    """``(H,W)`` SDF -> ``(H,W,3)`` uint8: diverging colour map centred at 0, zero level in black."""
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise NLSError(f"sdf_slices.colormap = {cmap!r} is not a matplotlib colormap "
                       f"(e.g. RdBu, coolwarm, seismic)") from None
    rgb = cm(np.clip(0.5 + 0.5 * sdf / max(vmax, 1e-12), 0, 1))[..., :3]
    neg = sdf < 0
    edge = np.zeros_like(neg)
    edge[:, 1:] |= neg[:, 1:] != neg[:, :-1]
    edge[1:, :] |= neg[1:, :] != neg[:-1, :]
    rgb[edge] = 0.0
    return (rgb * 255 + 0.5).astype(np.uint8)


class SDFSlices:
    """Writes ``<run>/<folder>/sdf_<axis>_<pos>.png`` for every axis and position (paper Fig. 3 d-f)."""

    def __init__(self, cfg: SDFSlicesConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        import imageio.v3 as iio

        c = self.cfg
        bad = [t for t in c.positions if not 0 <= t <= 1]
        if bad:
            raise NLSError(f"sdf_slices.positions = {c.positions}: fractions must lie in [0, 1]")
        chain = ctx.system.chain
        ctx.system.eval()
        box = ctx.scene.aabb.float().cpu()
        out_dir = ctx.files_dir / c.folder
        out_dir.mkdir(parents=True, exist_ok=True)
        lo, hi, n = float("inf"), float("-inf"), 0
        for a in c.axes:
            for t in c.positions:
                pts, (H, W) = slice_points(box, AXES[a], t, c.size)
                sdf = _eval_chain(chain, pts.to(ctx.device), "sdf").view(H, W).numpy()
                vmax = float(np.abs(sdf).max())
                iio.imwrite(out_dir / f"sdf_{a}_{t:.2f}.png", colorize_sdf(sdf, c.colormap, vmax))
                lo, hi, n = min(lo, float(sdf.min())), max(hi, float(sdf.max())), n + 1
        return {"sdf_slices": n, "sdf_min": lo, "sdf_max": hi}


class CertifyCheck:
    """Grid smoothed occupancy vs Monte-Carlo CERTIFY of the field's occupancy at the same points."""

    def __init__(self, cfg: CertifyCheckConfig):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        from plugins.rs_sdf.certify import certify, grid_radius_agreement

        c = self.cfg
        chain = ctx.system.chain
        sigma = getattr(chain.certifier, "sigma", None)
        if sigma is None:
            raise NLSError("certify_check needs a randomized_smoothing certifier in the chain (it has a sigma)")
        ctx.system.eval()
        gen = torch.Generator().manual_seed(c.seed)
        box = ctx.scene.aabb.float().cpu()
        cand = box[:3] + (box[3:] - box[:3]) * torch.rand(16 * c.n_points, 3, generator=gen)
        sdf = _eval_chain(chain, cand.to(ctx.device), "sdf")
        near = cand[sdf.abs().argsort()[: c.n_points // 2]]
        x = torch.cat([near, cand[-(c.n_points - len(near)):]])
        p_grid = _eval_chain(chain, x.to(ctx.device), "smoothed_occupancy").double().numpy()
        field = chain.field
        mc = certify(lambda p: field(p, None)["occupancy"], x.to(ctx.device), sigma, n0=c.n0, n=c.n,
                     alpha=c.alpha, soft=c.soft, seed=c.seed)
        return {f"certify_{k}": v for k, v in grid_radius_agreement(p_grid, mc).items()}


def build_sdf_slices(cfg: SDFSlicesConfig, ctx) -> SDFSlices:
    """Build the ``sdf_slices`` evaluator from its ``evaluators:`` entry (``SDFSlicesConfig``)."""
    return SDFSlices(cfg)


def build_certify_check(cfg: CertifyCheckConfig, ctx) -> CertifyCheck:
    """Build the ``certify_check`` evaluator from its ``evaluators:`` entry (``CertifyCheckConfig``)."""
    return CertifyCheck(cfg)
