"""Silhouette agreement between a mesh and posed images, and the iso-level that maximises it.

A field's level set is a family of surfaces; which member is "the" surface depends on how the
field was rendered during training. For a hard-surface density (RS-SDF's sigmoid of a weak SDF,
VolSDF's Laplace CDF) the rendered silhouette of a curved surface lies a little *outside* the
zero level (grazing rays gather optical depth from the density's tail) while a frontal ray
stops a little *inside* it, so with images whose depth is weakly textured the silhouettes fix
the geometry and the mesh at level 0 is shrunk by that offset. Rather than guessing the level,
``calibrate_level`` extracts the mesh at each candidate level of one cached grid and keeps the
one whose silhouettes agree best with the training images' alpha channel::

    error(level) = mean over silhouette-band pixels p of | coverage_p(mesh(level)) - alpha_p |

``coverage_p`` is the fraction of ``s x s`` sub-pixel rays of pixel ``p`` that hit the mesh
(embree ray casting), the box filter that anti-aliased images and their alpha hold. Only the
band around each view's silhouette is cast (pixels with partial alpha or on the alpha > 1/2
boundary, grown by ``band`` pixels); elsewhere small level changes change nothing. The test
images are never used. This is a calibration of this project, not part of any one paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.types import NLSError, PosedImages

__all__ = ["SilhouetteRays", "silhouette_rays", "silhouette_error", "calibrate_level"]


@dataclass
class SilhouetteRays:
    """``P`` band pixels of training views with ``S*S`` sub-pixel rays each.

    origins, dirs: ``(P*S*S, 3)`` float64 (pixel-major); alpha: ``(P,)`` coverage targets.
    """

    origins: np.ndarray
    dirs: np.ndarray
    alpha: np.ndarray
    subsamples: int

    def __len__(self) -> int:
        return int(len(self.alpha))


def silhouette_rays(split: PosedImages, *, subsamples: int = 4, band: int = 1,
                    max_pixels: int = 100_000, seed: int = 0) -> SilhouetteRays:
    """The rays of every view's silhouette band (at most ``max_pixels`` pixels, a seeded subset).

    Raises NLSError when the split has no alpha channel or no silhouette at all.
    """
    import torch
    from scipy.ndimage import binary_dilation, binary_erosion

    from pipeline.rays import pixel_rays, subpixel_offsets

    if split.alphas is None:
        raise NLSError("silhouette calibration needs training images with an alpha channel; "
                       "this scene's training images have none")
    if subsamples < 1 or band < 0 or max_pixels < 1:
        raise NLSError(f"silhouette_rays: need subsamples >= 1, band >= 0, max_pixels >= 1; got "
                       f"{subsamples}, {band}, {max_pixels}")
    alphas = split.alphas[..., 0].detach().cpu().numpy()
    masks = []
    for a in alphas:
        solid = a > 0.5
        edge = (binary_dilation(solid) & ~binary_erosion(solid)) | ((a > 0.01) & (a < 0.99))
        masks.append(binary_dilation(edge, iterations=band) if band else edge)
    view, v, u = np.nonzero(np.stack(masks))
    if len(view) == 0:
        raise NLSError("silhouette calibration: no training view shows a silhouette (alpha is constant)")
    if len(view) > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(len(view), max_pixels, replace=False))
        view, v, u = view[keep], v[keep], u[keep]
    s = int(subsamples)
    du, dv = (np.array(c) + 0.5 for c in zip(*subpixel_offsets(s)))  # from the pixel's corner (u, v)
    cam = torch.from_numpy(np.repeat(view, s * s))
    uu = torch.from_numpy((u[:, None] + du[None]).ravel())
    vv = torch.from_numpy((v[:, None] + dv[None]).ravel())
    cams = split.cameras.to("cpu")
    o, d = pixel_rays(cams, cam, uu.to(cams.c2w.dtype), vv.to(cams.c2w.dtype))
    return SilhouetteRays(o.double().numpy(), d.double().numpy(), alphas[view, v, u].astype(np.float64), s)


def silhouette_error(mesh, rays: SilhouetteRays) -> tuple[float, float]:
    """``(mean |coverage - alpha|, mean (coverage - alpha))`` over the band pixels; the second
    is positive when the mesh's silhouettes are too large."""
    from pipeline.scenes.mesh_render import rays_hit

    cover = rays_hit(mesh, rays.origins, rays.dirs).reshape(len(rays), -1).mean(1)
    diff = cover - rays.alpha
    return float(np.abs(diff).mean()), float(diff.mean())


def calibrate_level(mesh_at: Callable[[float], object], levels: Sequence[float],
                    rays: SilhouetteRays) -> tuple[float, list[dict]]:
    """The level among ``levels`` (refined by a parabola through the best and its neighbours)
    whose mesh ``mesh_at(level)`` has the smallest :func:`silhouette_error`.

    Levels whose level set is empty (``mesh_at`` raises NLSError) are skipped. Returns
    ``(best level, [{"level", "error", "bias"} for every level tried])``.
    """
    levels = sorted({float(lv) for lv in levels})  # a repeated level adds nothing (and breaks the parabola)
    if len(levels) < 2:
        raise NLSError(f"calibrate_level: need at least 2 different candidate levels, got {levels}")
    table: list[dict] = []

    def score(lv: float) -> Optional[float]:
        try:
            err, bias = silhouette_error(mesh_at(lv), rays)
        except NLSError:
            return None
        table.append({"level": lv, "error": err, "bias": bias})
        return err

    errs = [score(lv) for lv in levels]
    ok = [i for i, e in enumerate(errs) if e is not None]
    if not ok:
        raise NLSError(f"calibrate_level: every candidate level ({len(levels)} from {levels[0]:.6g} to "
                       f"{levels[-1]:.6g}) gives an empty level set")
    i = min(ok, key=lambda k: errs[k])
    if 0 < i < len(levels) - 1 and errs[i - 1] is not None and errs[i + 1] is not None:
        (x0, x1, x2), (y0, y1, y2) = levels[i - 1:i + 2], errs[i - 1:i + 2]
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
        if a > 0:
            score(min(max(-b / (2 * a), x0), x2))
    best = min(table, key=lambda r: r["error"])
    return best["level"], sorted(table, key=lambda r: r["level"])
