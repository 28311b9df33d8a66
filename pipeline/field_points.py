"""A coloured point cloud with normals from a trained radiance field (``nls export --points N``), for tools that
take points (Poisson reconstruction, registration, comparison with multi-view stereo).

Every training view is rendered at ``1/f`` of its size (``f`` the smallest integer that keeps the pixels of all
views to at most :data:`PIXELS_PER_POINT` times ``N``; the cameras of :meth:`pipeline.types.Cameras.downscaled`).
Each pixel whose accumulated opacity reaches ``min_opacity`` gives the point where its ray reaches its depth (the
median depth, where half the ray's opacity is reached, when the renderer gives it: it stays on the surface where
the expected depth of a soft density lies behind it), with the pixel's rendered colour, the scene's background
taken out of it (divided by the opacity after the background's share is subtracted). ``N`` of them are kept at
random (seeded), each with the field's normal there: the normalised gradient of its SDF, or the negated
normalised gradient of its density or occupancy (torch autograd through the chain). On lego (dense grid, 1500
steps, views at 100 x 100) these agree with the normals of the density mesh where the same rays meet it to a mean
cosine of 0.68; two alternatives lost there: turning each normal to face the camera that saw its point (0.63:
the normals that face away are mostly near-grazing ones that were right) and normals from the views' depth maps
(0.63 against 0.80 to the nearest face's normal). A density field trained briefly has a noisy gradient at its
surface, and its normals are as good as that.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from pipeline.types import NLSError

#: the views are rendered small enough that their pixels number at most this many times the points asked for
PIXELS_PER_POINT = 8


def view_factor(n_views: int, width: int, height: int, points: int) -> int:
    """The smallest integer ``f >= 1`` with ``n_views * (width // f) * (height // f) <= PIXELS_PER_POINT * points``
    (1 when even full size is within it)."""
    f = 1
    while f < max(width, height) and n_views * (width // f) * (height // f) > PIXELS_PER_POINT * points:
        f += 1
    return f


def field_normals(chain, points: np.ndarray, device, chunk: int = 65536) -> tuple[np.ndarray, bool]:
    """(unit outward normals (P, 3) of ``chain``'s surface at ``points`` (P, 3), whether they come from an SDF):
    the SDF's gradient, else minus the density's (or occupancy's), by autograd; zero where the gradient vanishes."""
    import torch

    out, key = [], None
    for i in range(0, len(points), chunk):
        x = torch.tensor(points[i:i + chunk], dtype=torch.float32, device=device, requires_grad=True)
        with torch.enable_grad():
            values = chain(x, None)
            key = next((k for k in ("sdf", "density", "occupancy") if k in values), None)
            if key is None:
                raise NLSError(f"the field gives none of sdf, density or occupancy (it gives {', '.join(values)}), "
                               f"so its points have no normal")
            (grad,) = torch.autograd.grad(values[key].sum(), x)
        g = grad.detach().double().cpu().numpy() * (1.0 if key == "sdf" else -1.0)
        out.append(g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12))
    return (np.concatenate(out) if out else np.zeros((0, 3))), key == "sdf"


def view_surface(ld, cams, i: int, min_opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """The surface points of view ``i`` of ``cams`` (see the module's docstring): (positions (K, 3), colours
    (K, 3))."""
    from pipeline.rays import image_rays

    out = ld.system.renderer.render_image(cams, i, ld.system.chain, chunk=ld.cfg.eval.chunk)
    depth = out["depth_median"] if "depth_median" in out else out["depth"]
    alpha = out["opacity"].reshape(-1, 1).double().cpu().numpy()
    o, d = (t.double().cpu().numpy() for t in image_rays(cams, i))
    keep = alpha[:, 0] >= min_opacity
    x = o[keep] + d[keep] * depth.reshape(-1, 1).double().cpu().numpy()[keep]
    shown = out["rgb"].reshape(-1, 3).double().cpu().numpy()  # composited: a (colour) + (1 - a) background
    background = np.asarray(ld.scene.background, np.float64)
    colour = np.clip((shown[keep] - (1 - alpha[keep]) * background) / alpha[keep], 0, 1)
    return x, colour


def field_points(ld, points: int, *, split: str = "train", min_opacity: float = 0.5, seed: int = 0,
                 bbox: Optional[list[float]] = None, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``points`` surface points of a loaded run ``ld`` (see the module's docstring): (positions (P, 3), colours
    (P, 3) in [0, 1] as the images are encoded, unit normals (P, 3), facts), in the run's frame; ``bbox``
    [xmin, ymin, zmin, xmax, ymax, zmax] keeps only the points inside it. When the views at ``1/f`` size give
    fewer than ``points``, they are rendered again at half that factor, down to full size; P is less than
    ``points`` only when even full-size views hold fewer."""
    import torch

    from pipeline.progress import StepProgress, image_progress

    views = ld.scene.splits.get(split)
    if views is None or len(views) == 0:
        raise NLSError(f"--points renders the {split} views, and this run's scene has none")
    box = None if bbox is None else np.asarray(bbox, np.float64)
    f = view_factor(len(views), views.cameras.width, views.cameras.height, points)
    ld.system.eval()
    while True:
        cams = views.cameras.downscaled(f).to(ld.device)
        parts = []
        with StepProgress(len(views), 0, f"rendering the {split} views at 1/{f} size for points",
                          enabled=progress) as bar, torch.no_grad():
            for i in range(len(views)):
                with image_progress(bar, i, "view"):
                    parts.append(view_surface(ld, cams, i, min_opacity))
                bar.advance(i + 1)
        x, rgb = (np.concatenate(p) for p in zip(*parts))
        found = len(x)
        if box is not None:
            inside = ((x >= box[:3]) & (x <= box[3:])).all(1)
            x, rgb = x[inside], rgb[inside]
        if len(x) >= points or f == 1:
            break
        f = max(1, f // 2)
    if len(x) > points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(x), points, replace=False))
        x, rgb = x[chosen], rgb[chosen]
    normals, _ = field_normals(ld.system.chain, x, ld.device)
    facts = {"views": len(views), "factor": f, "size": (cams.width, cams.height), "surface_pixels": int(found)}
    return x, rgb, normals, facts
