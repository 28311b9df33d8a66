"""Views of a run that need its model, rebuilt from the newest checkpoint: field slices,
rendered views with depth and normal maps. Used by `nls report` and `nls view`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

GEOMETRY_QUANTITIES = ("sdf", "occupancy", "density")


def load_run(run_dir: Path, host=None, device: str = "cpu"):
    """The run's system and scene from its newest checkpoint (:func:`pipeline.commands.run_loading.open_run`)."""
    from pipeline.commands.run_loading import open_run

    return open_run(argparse.Namespace(run_dir=str(run_dir), host=host, plugins_dir=None, device=device))


@dataclass
class Geometry:
    """The geometry quantity a chain produces and the level its surface sits at."""

    quantity: str  # sdf | occupancy | density
    level: float
    inside: str  # below | above
    #: the extractor meshes an unsigned field (it has an ``offset`` option, as ``udf_marching_cubes``):
    #: the sheet of the field's minimum, a level the field may cross nowhere
    unsigned: bool = False


def geometry_of(ld) -> Optional[Geometry]:
    """Pick sdf, else occupancy, else density from what the chain outputs at the box centre;
    the level is the extractor's ``level`` option, else its numeric ``offset`` (an unsigned field's
    extractor meshes where the field equals it), else the built-in marching-cubes default. An extractor
    with an ``offset`` option meshes an unsigned field (:attr:`Geometry.unsigned`)."""
    import torch

    aabb = ld.scene.aabb.detach().cpu().float().reshape(2, 3)
    with torch.no_grad():
        out = ld.system.chain(aabb.mean(0, keepdim=True).to(ld.device), None)
    q = next((k for k in GEOMETRY_QUANTITIES if k in out), None)
    if q is None:
        return None
    # the built-in marching-cubes extractor's per-quantity default levels and inside sides
    from pipeline.mesh import DEFAULT_LEVEL, INSIDE

    ext = ld.cfg.stages.get("extractor")
    level = getattr(ext.options, "level", None) if ext else None
    offset = getattr(ext.options, "offset", None) if ext else None
    if level is None and isinstance(offset, (int, float)):
        level = offset
    return Geometry(q, float(DEFAULT_LEVEL[q] if level is None else level), INSIDE[q],
                    unsigned=ext is not None and hasattr(ext.options, "offset"))


def field_fn(ld, quantity: str, chunk: int = 65536):
    """numpy (M,3) -> numpy (M,) values of ``quantity`` under no_grad, in chunks."""
    import torch

    def fn(pts: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(pts), chunk):
                x = torch.as_tensor(pts[s:s + chunk], dtype=torch.float32, device=ld.device)
                out.append(ld.system.chain(x, None)[quantity].reshape(-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
    return fn


def scaled_camera(cameras, i: int, scale: float):
    """Camera ``i`` of ``cameras`` with its image scaled by ``scale`` (intrinsics scaled alike)."""
    from pipeline.types import Cameras

    w, h = max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale))
    sl = slice(i, i + 1)
    return Cameras(cameras.c2w[sl], cameras.fx[sl] * w / cameras.width, cameras.fy[sl] * h / cameras.height,
                   cameras.cx[sl] * w / cameras.width, cameras.cy[sl] * h / cameras.height, w, h)


def render_view(ld, split: str, i: int, max_side: int = 160) -> Optional[dict]:
    """Render view ``i`` of ``split`` with the run's renderer, at most ``max_side`` pixels a side.

    Returns {rgb (H,W,3), depth (H,W,1), opacity (H,W,1), normals (H,W,3) world-space unit
    (zero where nothing was hit), normals_mask (H,W), normals_from (text), gt (H,W,3) only when
    rendered at full size} as numpy arrays, or None when the run has no renderer or the split
    is absent. Normals are the renderer's own when it returns ``normals``; for SDF fields the
    normalised SDF gradient at the expected surface point ``o + depth * d``; otherwise (density
    or occupancy fields, whose gradients inside an undertrained solid are noise) the normals
    of the rendered depth map (:func:`depth_normals`).
    """
    import torch

    from pipeline.rays import image_rays

    sp = ld.scene.splits.get(split)
    if ld.system.renderer is None or sp is None or i >= len(sp):
        return None
    cams = sp.cameras
    scale = min(1.0, max_side / max(cams.width, cams.height))
    cam = scaled_camera(cams, i, scale).to(ld.device)
    ld.system.eval()
    with torch.no_grad():
        out = ld.system.renderer.render_image(cam, 0, ld.system.chain, chunk=ld.cfg.eval.chunk)
    res = {k: out[k].detach().float().cpu().numpy() for k in ("rgb", "depth", "opacity") if k in out}
    res["rgb"] = np.clip(res["rgb"], 0, 1)
    H, W = cam.height, cam.width
    mask = res["opacity"][..., 0] > 0.5
    normals = out.get("normals", out.get("normal"))
    o, d = image_rays(cam, 0)
    geo = geometry_of(ld)
    if normals is not None:
        n = normals.detach().float().cpu().numpy().reshape(H, W, 3)
        res["normals_from"] = "the renderer"
    elif geo is not None and geo.quantity == "sdf":
        n = np.zeros((H, W, 3), np.float32)
        if mask.any():
            t = torch.as_tensor(res["depth"].reshape(-1, 1), device=o.device)
            sel = torch.as_tensor(mask.reshape(-1), device=o.device)
            x = (o + t * d)[sel].detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(ld.system.chain(x, None)["sdf"].sum(), x)
            n.reshape(-1, 3)[mask.reshape(-1)] = torch.nn.functional.normalize(g, dim=-1).cpu().numpy()
        res["normals_from"] = "the SDF gradient at the expected surface point"
    else:
        pts = (o + torch.as_tensor(res["depth"].reshape(-1, 1), device=o.device) * d).cpu().numpy()
        n = depth_normals(pts.reshape(H, W, 3), d.cpu().numpy().reshape(H, W, 3))
        res["normals_from"] = "the rendered depth map"
    res["normals"] = n
    res["normals_mask"] = mask
    if scale == 1.0:
        res["gt"] = sp.images[i].cpu().numpy()
    return res


def render_views(ld, split: str, indices: Sequence[int], max_side: int = 160, *,
                 progress: bool = True) -> Iterator[Optional[dict]]:
    """Yield :func:`render_view` of each view ``indices`` of ``split`` in turn, under a progress bar over
    them that moves with the pixels the renderer reports (:func:`pipeline.progress.image_progress`), as
    ``nls eval``'s rendering does: a bar on a terminal, sparse lines otherwise, nothing without ``progress``."""
    from pipeline.progress import StepProgress, image_progress

    with StepProgress(len(indices), 0, f"rendering {split}", enabled=progress) as bar:
        for k, i in enumerate(indices):
            with image_progress(bar, k):
                view = render_view(ld, split, i, max_side)
            bar.advance(k + 1)
            yield view


def depth_normals(points: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Unit normals (H,W,3) of a back-projected depth map ``points`` (H,W,3): the cross product of
    its central differences along image columns and rows (one-sided at the border), turned to
    face the camera (against the ray directions ``dirs`` (H,W,3))."""
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return n * -np.sign(np.sum(n * dirs, -1, keepdims=True) + 1e-12)
