"""Figures for `nls report`: loss curves, prediction/ground-truth/error panels, field slices,
normal maps and a turntable of a mesh. Each returns PNG/GIF bytes ready to embed.

Heavy imports (matplotlib, torch, trimesh) happen inside the functions.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.metrics import psnr

#: the name ending of a split's side-by-sides (prediction | ground truth | depth), ``NAME_pred_gt_depth.png``
SIDE_BY_SIDE = "_pred_gt_depth.png"
#: beside the side-by-side of a view with an ignore mask (``PosedImages.valid``): ``NAME_valid.png``, white where
#: the pixels count
VALID_BESIDE = "_valid.png"
#: the grey that the pixels an ignore mask leaves out are blended halfway to, on the panels that show them
IGNORED_GREY = 0.5


def valid_beside(side_by_side: Path) -> Optional[np.ndarray]:
    """The (H, W) bool pixels that count of the view whose side-by-side is ``side_by_side`` (its
    :data:`VALID_BESIDE` file), or None when it has none (every pixel counts)."""
    path = Path(side_by_side)
    mask = path.with_name(path.name[:-len(SIDE_BY_SIDE)] + VALID_BESIDE) if path.name.endswith(SIDE_BY_SIDE) \
        else None
    if mask is None or not mask.is_file():
        return None
    import imageio.v3 as iio

    img = np.asarray(iio.imread(mask))
    return (img if img.ndim == 2 else img[..., 0]) >= 128


def shown_with_ignored(img: np.ndarray, valid: Optional[np.ndarray]) -> np.ndarray:
    """``img`` (H, W, 3) as float in [0, 1], its pixels outside ``valid`` (H, W) blended halfway to
    :data:`IGNORED_GREY` (for display only: scores use the image as it is)."""
    out = _float(img)
    if valid is None:
        return out
    out = out.copy()
    out[~valid] = 0.5 * (out[~valid] + IGNORED_GREY)
    return out


def kept_psnr(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray]) -> float:
    """PSNR (dB) of ``pred`` against ``gt`` (H, W, 3; uint8 or float) over the pixels ``valid`` keeps (all
    with None); NaN when it keeps none."""
    if valid is not None and not valid.any():
        return float("nan")
    return psnr(_float(pred).astype(np.float64), _float(gt).astype(np.float64), valid)


def psnr_title(value: float, valid: Optional[np.ndarray]) -> str:
    """``value`` as a panel's title: ``"31.20 dB"``, ``"31.20 dB (kept pixels)"`` with an ignore mask, or
    ``"no pixel kept"``."""
    if math.isnan(value):
        return "no pixel kept"
    return f"{value:.2f} dB" + (" (kept pixels)" if valid is not None else "")


#: colour maps of field slices per quantity (diverging for SDFs)
COLORMAPS = {"sdf": "RdBu_r", "occupancy": "viridis", "density": "magma"}


def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def png_bytes(img: np.ndarray) -> bytes:
    """(H,W,3|4) uint8 or float in [0,1] -> PNG bytes."""
    import imageio.v3 as iio

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return iio.imwrite("<bytes>", a, extension=".png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# -- training curves ----------------------------------------------------------------------

def curve_keys(log: list[dict]) -> list[str]:
    """Numeric keys of metrics.jsonl lines (except step/time), in first-seen order."""
    keys: list[str] = []
    for row in log:
        for k, v in row.items():
            if k in ("step", "time") or k in keys:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def curves_png(log: list[dict]) -> Optional[bytes]:
    """Loss terms on one log-scale panel, the learning rates of all optimiser groups on
    another, every other logged number on its own panel, all against the step. None when
    nothing numeric was logged."""
    keys = curve_keys(log)
    if not keys:
        return None
    plt = _pyplot()
    shared = {"loss terms": [k for k in keys if k == "loss" or k.startswith("loss/")],
              "learning rates": [k for k in keys if k == "lr" or k.startswith("lr/")],
              "PSNR (dB)": [k for k in keys if k.startswith("psnr_")]}  # the batch's and validation's
    others = [k for k in keys if not any(k in g for g in shared.values())]
    panels: list[tuple[str, list[str]]] = ([(t, g) for t, g in shared.items() if g] +
                                          [(k, [k]) for k in others])
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (title, group) in zip(axes.ravel(), panels):
        for k in group:
            pts = [(r["step"], r[k]) for r in log if _number(r.get(k)) and _number(r.get("step"))]
            if not pts:
                continue
            s, v = np.array(pts, dtype=np.float64).T
            ax.plot(s, v, lw=1.2, label=k)
        if title in shared and ax.lines:
            vals = [r[k] for r in log for k in group if _number(r.get(k))]
            if vals and min(vals) > 0 and not title.startswith("PSNR"):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _fig_png(fig)


def record_gains(rows: Sequence[dict]) -> np.ndarray:
    """The gains ``(N, 3)`` of ``exposure.json``'s rows: each row's ``gain``, or its affine ``matrix``'s diagonal."""
    return np.array([r["gain"] if "gain" in r else np.diag(np.asarray(r["matrix"])) for r in rows], np.float64)


def exposure_png(rows: Sequence[dict], truth: Optional[Sequence[Sequence[float]]] = None) -> bytes:
    """Each training image's learned gains (``exposure.json``'s rows: ``gain``, or an affine ``matrix``'s
    diagonal) against its index, one colour a channel, on a log scale; ``truth`` (N, 3), a simulated capture's
    gains, as open circles beside them."""
    plt = _pyplot()
    gains = record_gains(rows)
    fig, ax = plt.subplots(figsize=(min(12.0, 3.0 + 0.12 * len(gains)), 3.2))
    index = np.arange(len(gains))
    for c, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
        ax.plot(index, gains[:, c], "o-", ms=3, lw=0.8, color=colour, label="RGB"[c])
        if truth is not None and len(truth) == len(gains):
            ax.plot(index, np.asarray(truth, np.float64)[:, c], "o", ms=6, mfc="none", color=colour,
                    label=f"{'RGB'[c]} (simulated)")
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("training image")
    ax.set_ylabel("gain" if "gain" in rows[0] else "matrix diagonal")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _fig_png(fig)


def overlaid_curves_png(series: Sequence[tuple[str, list[dict]]], keys: Sequence[str]) -> Optional[bytes]:
    """One panel per key of ``keys``, each series' logged values against the step as a line named by its label
    (``series``: [(label, metrics.jsonl rows)]; the loss on a log scale); None without keys."""
    if not keys:
        return None
    plt = _pyplot()
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.1 * nrow), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        for label, log in series:
            pts = [(r["step"], r[key]) for r in log if _number(r.get(key)) and _number(r.get("step"))]
            if pts:
                s, v = np.array(pts, dtype=np.float64).T
                ax.plot(s, v, lw=1.2, label=label)
        if key == "loss" and ax.lines and all(y > 0 for line in ax.lines for y in line.get_ydata()):
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _fig_png(fig)


# -- renders next to ground truth --------------------------------------------------------

def split_side_by_side(img: np.ndarray, n_panels: int = 3) -> list[np.ndarray]:
    """Cut a ``<name>_pred_gt_depth.png`` (H, n*W, 3) into its n panels (H, W, 3)."""
    w = img.shape[1] // n_panels
    return [img[:, i * w:(i + 1) * w, :3] for i in range(n_panels)]


def comparison_png(pred: np.ndarray, gt: np.ndarray, depth: Optional[np.ndarray] = None,
                   normals: Optional[np.ndarray] = None, title: str = "",
                   valid: Optional[np.ndarray] = None) -> bytes:
    """One row: prediction | ground truth | per-pixel error |pred - gt| (mean over RGB, with a
    colour bar) | depth | normals. Images (H,W,3) uint8 or float in [0,1]. With ``valid`` (H, W) bool, the
    view's ignore mask: the ground truth shows the pixels left out greyed, the error and PSNR are over the
    kept pixels only."""
    p = _float(pred)
    g = _float(gt)
    error = np.abs(p - g).mean(-1)
    if valid is not None:
        error = np.where(valid, error, 0.0)
    panels = [("prediction", p, None), ("ground truth" + (", ignored greyed" if valid is not None else ""),
                                        shown_with_ignored(g, valid), None),
              (f"|error| (PSNR {psnr_title(kept_psnr(p, g, valid), valid)})", error, "inferno")]
    if depth is not None:
        panels.append(("depth", depth, None))
    if normals is not None:
        panels.append(("normals", normals, None))
    return panels_png(panels, title)


def panels_png(panels: Sequence[tuple[str, np.ndarray, Optional[str]]], title: str = "") -> bytes:
    """Images side by side with titles: [(title, (H,W,3) RGB or (H,W) scalar, colour map or None)];
    scalar panels get a colour bar from 0 to their maximum."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels), 3.1), squeeze=False)
    for ax, (name, im, cmap) in zip(axes[0], panels):
        im = _float(im)
        h = ax.imshow(im, cmap=cmap, vmin=0, vmax=(max(float(im.max()), 1e-3) if cmap else None),
                      interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if cmap:
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _fig_png(fig)


def _float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def progress_png(frames: Sequence[tuple[int, np.ndarray, Optional[str]]], target: np.ndarray,
                 what: str = "", target_title: str = "ground truth",
                 extra: Sequence[tuple[str, np.ndarray]] = ()) -> bytes:
    """One row: the prediction at each of ``frames`` ([(step, (h,w,3) image, the logged figure as text or
    None)], in step order), then ``target`` (h,w,3), then the ``extra`` [(title, image)], each titled."""
    panels = [(f"step {step}" + (f"\n{figure}" if figure else ""), img, None) for step, img, figure in frames]
    return panels_png([*panels, (target_title, target, None), *((t, img, None) for t, img in extra)], what)


# -- field slices ---------------------------------------------------------------------------

def plane_points(aabb: Sequence[float], axis: int, res: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Points (res*res, 3) of the plane through the box centre normal to ``axis``; the two
    in-plane axes (a, b) index the rows (b, bottom to top after flipping) and columns (a)."""
    b = np.asarray(aabb, np.float64).reshape(2, 3)
    centre = b.mean(0)
    a_ax, b_ax = [i for i in range(3) if i != axis]
    u = np.linspace(b[0, a_ax], b[1, a_ax], res)
    v = np.linspace(b[0, b_ax], b[1, b_ax], res)
    U, V = np.meshgrid(u, v, indexing="xy")  # rows: v, columns: u
    pts = np.tile(centre, (res * res, 1))
    pts[:, a_ax] = U.ravel()
    pts[:, b_ax] = V.ravel()
    return pts.astype(np.float32), (a_ax, b_ax)


def field_slices(fn: Callable[[np.ndarray], np.ndarray], aabb: Sequence[float], res: int = 128
                 ) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Evaluate ``fn`` ((M,3) float32 -> (M,)) on the three axis planes through the box centre.
    Returns [(values (res, res) rows = second in-plane axis, (a_ax, b_ax))] for x, y, z."""
    out = []
    for axis in range(3):
        pts, axes = plane_points(aabb, axis, res)
        out.append((np.asarray(fn(pts), np.float32).reshape(res, res), axes))
    return out


def crosses(values: np.ndarray, level: float) -> bool:
    """Whether ``values`` (a slice, (H,W)) lie on both sides of ``level`` (NaN ignored)."""
    return bool(np.nanmin(values) < level < np.nanmax(values))


def mesh_sections(mesh, aabb: Sequence[float], axes: Sequence[int] = (0, 1, 2)) -> dict[int, np.ndarray]:
    """{axis: segments (K,2,2)} where ``mesh`` (trimesh) cuts the plane through the box centre normal to
    each of ``axes``, in that plane's in-plane coordinates (a, b) of :func:`plane_points` (the slices'
    extent); K = 0 where the mesh misses the plane."""
    import trimesh

    centre = np.asarray(aabb, np.float64).reshape(2, 3).mean(0)
    out = {}
    for axis in axes:
        ab = [i for i in range(3) if i != axis]
        seg = trimesh.intersections.mesh_plane(mesh, np.eye(3)[axis], centre) if len(mesh.faces) else []
        out[axis] = np.asarray(seg, np.float64).reshape(-1, 2, 3)[:, :, ab]
    return out


def slices_png(slices: list[tuple[np.ndarray, tuple[int, int]]], aabb: Sequence[float], quantity: str,
               level: Optional[float], sections: Optional[dict[int, np.ndarray]] = None) -> bytes:
    """Colour-mapped slices with the extraction level drawn as a contour, or, on the planes ``sections``
    has ({axis: segments (K,2,2)}, :func:`mesh_sections`), those segments instead (a mesh's cross-section).
    SDFs use a diverging map centred on 0 (red outside, blue inside); density uses a log scale."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    plt = _pyplot()
    names = "xyz"
    b = np.asarray(aabb, np.float64).reshape(2, 3)
    centre = b.mean(0)
    allv = np.concatenate([s[0].ravel() for s in slices])
    allv = allv[np.isfinite(allv)]
    if quantity == "sdf":
        m = float(np.percentile(np.abs(allv), 99)) if allv.size else 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-max(m, 1e-6), vmax=max(m, 1e-6))
    elif quantity == "density" and allv.size and allv.max() > 0:
        pos = allv[allv > 0]
        norm = LogNorm(vmin=max(float(np.percentile(pos, 1)), 1e-3), vmax=max(float(pos.max()), 1e-2))
    elif quantity == "occupancy":
        norm = Normalize(0.0, 1.0)
    else:
        norm = Normalize(float(allv.min()) if allv.size else 0, float(allv.max()) if allv.size else 1)
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2), layout="constrained")
    for ax, (axis, (vals, (a_ax, b_ax))) in zip(axes, enumerate(slices)):
        ext = [b[0, a_ax], b[1, a_ax], b[0, b_ax], b[1, b_ax]]
        shown = np.clip(vals, norm.vmin, None) if isinstance(norm, LogNorm) else vals
        h = ax.imshow(shown, origin="lower", extent=ext, cmap=COLORMAPS.get(quantity, "viridis"), norm=norm)
        if sections is not None and axis in sections:
            ax.add_collection(LineCollection(sections[axis], colors="k", linewidths=1.2))
        elif level is not None and crosses(vals, level):
            ax.contour(vals, levels=[level], colors="k", linewidths=1.2, origin="lower", extent=ext)
        ax.set_title(f"{quantity}, {names[axis]} = {centre[axis]:.3g}", fontsize=10)
        ax.set_xlabel(names[a_ax])
        ax.set_ylabel(names[b_ax])
    contoured = level is not None and len(sections or ()) < len(slices)  # a plane without a cross-section
    black = ([f"level {level:g}"] if contoured else []) + (["mesh cross-section"] if sections else [])
    fig.colorbar(h, ax=list(axes), fraction=0.02, pad=0.02,
                 label=quantity + (f" (black: {', '.join(black)})" if black else ""))
    return _fig_png(fig)


# -- mesh turntable --------------------------------------------------------------------------

def mesh_turntable_gif(mesh, n_frames: int = 24, size: int = 160, elevation_deg: float = 25.0,
                       fps: int = 12) -> bytes:
    """GIF of ``mesh`` turning about world +z: ray-cast (embree through trimesh), shaded by
    |n . view| with a light from the camera, in the mesh's own frame (camera distance from its
    bounding sphere, 40 degree field of view)."""
    import imageio.v3 as iio

    from pipeline.mesh_views import shaded_hits
    from pipeline.scenes.mesh_render import _intersector, look_at, pixel_rays

    centre = mesh.bounds.mean(0)
    radius = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])) / 2 or 1.0
    fov = math.radians(40.0)
    dist = radius / math.sin(fov / 2) * 1.05
    focal = 0.5 * size / math.tan(fov / 2)
    isect, _ = _intersector(mesh)
    el = math.radians(elevation_deg)
    frames = []
    for k in range(n_frames):
        az = 2 * math.pi * k / n_frames
        eye = centre + dist * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        o, d = pixel_rays(look_at(eye, centre), size, size, focal)
        img, _, _ = shaded_hits(mesh, o, d, (0.85, 0.55, 0.3), 0.15, isect=isect)
        frames.append((img.reshape(size, size, 3) * 255 + 0.5).astype(np.uint8))
    return iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)


def normals_to_rgb(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World-space unit normals (H,W,3) -> RGB (n+1)/2, white where ``mask`` (H,W) is False."""
    rgb = np.clip(0.5 * (normals + 1.0), 0, 1)
    rgb[~mask] = 1.0
    return rgb


def depth_panel(depth: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Depth (H,W,1) tensor or array -> turbo-coloured RGB uint8 (the renders' colouring)."""
    from pipeline.evaluate import depth_to_uint8

    import torch

    return depth_to_uint8(torch.as_tensor(depth), torch.as_tensor(opacity))

