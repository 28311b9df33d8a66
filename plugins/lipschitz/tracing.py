"""Sphere tracing of SDF fields, with step counts and overshoot detection against ground truth.

:func:`sphere_trace` marches each ray by ``f(x) / L``. For a field that is L-Lipschitz the step
never crosses the field's own zero level (``f(x + f(x) d / L) >= 0``), which is why the 1-Lipschitz
field of this plugin is safe to trace with ``L = 1``. Overshoot is reported two ways:

* ``passed_field``: an iterate where the field itself is below ``-tol`` (crossed its own surface);
* ``overshoot``: a step longer than the true distance from where it was taken, by more than ``tol``:
  ``f(x_k)/L > |SDF_gt(x_k)| + tol`` — the step may have gone past the *true* surface. ``gt_sdf`` is
  the exact signed distance (analytic, e.g. :func:`sphere_sdf`, or :func:`mesh_sdf_fn`, libigl).
  A ray with no such step penetrates the true solid by at most ``tol``; ``penetration`` reports
  the deepest iterate inside the true solid. (Counting iterates beyond the first true hit instead
  would also flag grazing rays that pass within the margin of a silhouette, which is not a
  stepping error.)

The component layer: :class:`SphereTracer` is the ``sphere_tracing`` renderer (``render_rays``,
``render_image``, ``update``), and :class:`SphereTraceEvaluator` the ``sphere_trace`` evaluator
(geometry scenes have no posed images, so the core never calls a renderer for them; the
evaluator renders orbit views itself and reports steps per ray and overshoot rates).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["sphere_trace", "sphere_sdf", "mesh_sdf_fn", "sphere_first_hit", "mesh_first_hit", "shade", "orbit_rays", "SphereTracer",
           "SphereTraceEvaluator", "build_renderer", "build_evaluator", "trace_views"]

LIGHT = (0.4, 0.5, 0.77)


def sphere_trace(sdf_fn: Callable[[Tensor], Tensor], origins: Tensor, dirs: Tensor, *, near: float = 0.0,
                 far: float = 4.0, max_steps: int = 128, eps: float = 1e-3, lipschitz: float = 1.0,
                 gt_sdf: Optional[Callable[[Tensor], Tensor]] = None, tol: float = 1e-3,
                 chunk: int = 1 << 16, on_chunk: Optional[Callable[[int, int], None]] = None) -> dict:
    """March rays ``origins (R,3) + t dirs (R,3)`` (unit dirs) by ``f(x)/lipschitz`` from ``t=near``,
    ``chunk`` rays at a time; ``on_chunk(done, R)`` is called after each chunk.

    Returns (all on the input device):
        ``t (R,)`` final ray parameter, ``hit (R,)`` bool (f < eps before ``far``/``max_steps``),
        ``x (R,3)`` final points, ``steps (R,)`` int field evaluations per ray,
        ``passed_field (R,)`` bool (an iterate had f < -tol), and when ``gt_sdf`` is given
        ``overshoot (R,)`` bool (a step exceeded the true distance by more than tol),
        ``max_excess (R,)`` (max over steps of step - |SDF_gt|, clamped at 0) and
        ``penetration (R,)`` (max over iterates of -SDF_gt, clamped at 0).
    """
    R = origins.shape[0]
    outs = []
    for s in range(0, R, chunk):
        e = min(R, s + chunk)
        outs.append(_trace_chunk(sdf_fn, origins[s:e], dirs[s:e], near, far, max_steps, eps, lipschitz,
                                 gt_sdf, tol))
        if on_chunk is not None:
            on_chunk(e, R)
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


@torch.no_grad()
def _trace_chunk(sdf_fn, o, d, near, far, max_steps, eps, L, gt_sdf, tol) -> dict:
    R = o.shape[0]
    dev = o.device
    t = torch.full((R,), float(near), device=dev)
    steps = torch.zeros(R, dtype=torch.int64, device=dev)
    hit = torch.zeros(R, dtype=torch.bool, device=dev)
    passed_field = torch.zeros(R, dtype=torch.bool, device=dev)
    active = torch.ones(R, dtype=torch.bool, device=dev)
    excess = torch.zeros(R, device=dev)
    pen = torch.zeros(R, device=dev)
    for _ in range(max_steps):
        idx = active.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            break
        x = o[idx] + t[idx, None] * d[idx]
        f = sdf_fn(x).reshape(-1).float()
        steps[idx] += 1
        passed_field[idx] |= f < -tol
        h = f < eps
        hit[idx[h]] = True
        step = torch.where(h, torch.zeros_like(f), f / L)
        if gt_sdf is not None:
            g = gt_sdf(x).reshape(-1).to(f)
            excess[idx] = torch.maximum(excess[idx], step - g.abs())
            pen[idx] = torch.maximum(pen[idx], -g)
        t[idx] = t[idx] + step
        done = h | (t[idx] > far)
        active[idx[done]] = False
    out = {"t": t, "hit": hit, "x": o + t[:, None] * d, "steps": steps, "passed_field": passed_field}
    if gt_sdf is not None:
        last = o + t[:, None] * d  # the final iterate too
        pen = torch.maximum(pen, -gt_sdf(last).reshape(-1).to(pen))
        out["overshoot"] = excess > tol
        out["max_excess"] = excess.clamp_min(0.0)
        out["penetration"] = pen.clamp_min(0.0)
    return out


def sphere_sdf(center=(0.0, 0.0, 0.0), radius: float = 0.5) -> Callable[[Tensor], Tensor]:
    """Exact signed distance of an analytic sphere, as a function of ``x (N,3)``."""
    def fn(x: Tensor) -> Tensor:
        return (x - torch.as_tensor(center, dtype=x.dtype, device=x.device)).norm(dim=-1) - radius
    return fn


def mesh_sdf_fn(mesh) -> Callable[[Tensor], Tensor]:
    """Exact signed distance to a trimesh mesh (libigl, sign by fast winding number) as a torch function."""
    from plugins.lipschitz.evaluate import gt_signed_distance

    def fn(x: Tensor) -> Tensor:
        s = gt_signed_distance(mesh, x.detach().cpu().double().numpy())
        return torch.as_tensor(s, dtype=x.dtype, device=x.device)
    return fn


def sphere_first_hit(origins, dirs, center=(0.0, 0.0, 0.0), radius: float = 0.5) -> Tensor:
    """First ``t >= 0`` where the ray meets an analytic sphere (inf when it misses). Torch in, torch out."""
    c = torch.as_tensor(center, dtype=origins.dtype, device=origins.device)
    oc = origins - c
    b = (oc * dirs).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius * radius)
    sq = torch.sqrt(disc.clamp_min(0))
    t0, t1 = -b - sq, -b + sq
    t = torch.where(t0 >= 0, t0, t1)
    return torch.where((disc >= 0) & (t >= 0), t, torch.full_like(t, math.inf))


def mesh_first_hit(mesh, origins, dirs) -> Tensor:
    """First hit distance of each ray with a trimesh mesh by exact ray casting (inf on a miss)."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        isect = RayMeshIntersector(mesh)
    except Exception:  # embree unavailable: trimesh's (slower, needs rtree) intersector
        import trimesh

        isect = trimesh.ray.ray_triangle.RayMeshIntersector(mesh)
    o = origins.detach().cpu().double().numpy()
    d = dirs.detach().cpu().double().numpy()
    tri, ray, loc = isect.intersects_id(o, d, multiple_hits=False, return_locations=True)
    t = np.full(len(o), np.inf)
    if len(ray):
        t[np.asarray(ray)] = np.einsum("ij,ij->i", np.asarray(loc) - o[ray], d[ray])
    return torch.as_tensor(t, dtype=origins.dtype, device=origins.device)


def field_normals(sdf_fn, x: Tensor, chunk: int = 1 << 15) -> Tensor:
    """Unit gradients ``grad f / ||grad f||`` at ``x (N,3)`` (autograd, fp32)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        with torch.enable_grad():
            xi = x[s:s + chunk].detach().float().requires_grad_(True)
            (g,) = torch.autograd.grad(sdf_fn(xi).sum(), xi)
        out.append(torch.nn.functional.normalize(g, dim=-1))
    return torch.cat(out) if out else x.new_zeros((0, 3))


def shade(normals: Tensor, hit: Tensor, background: float = 1.0) -> Tensor:
    """Lambert + ambient grey shading of unit ``normals (R,3)``; background where not ``hit``."""
    light = torch.tensor(LIGHT, device=normals.device, dtype=normals.dtype)
    light = light / light.norm()
    c = 0.25 + 0.75 * (normals @ light).clamp_min(0)
    rgb = c[:, None].expand(-1, 3).clone()
    rgb[~hit] = background
    return rgb


def orbit_rays(n_views: int, size: int, radius: float, fov_deg: float, center=(0.0, 0.0, 0.0)):
    """``[(origins (S*S,3), dirs (S*S,3))]`` float32 tensors for ``n_views`` cameras on a ring at 20°
    elevation looking at ``center``."""
    from pipeline.scenes.mesh_render import look_at, pixel_rays

    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    c = np.asarray(center, np.float64)
    views = []
    for k in range(n_views):
        phi = 2 * math.pi * (k + 0.125) / n_views
        el = math.radians(20.0)
        eye = c + radius * np.array([math.cos(el) * math.cos(phi), math.cos(el) * math.sin(phi), math.sin(el)])
        o, d = pixel_rays(look_at(eye, c), size, size, focal)
        views.append((torch.as_tensor(o, dtype=torch.float32), torch.as_tensor(d, dtype=torch.float32)))
    return views


class SphereTracer(nn.Module):
    """The ``sphere_tracing`` renderer: ``render_rays(origins, dirs, query) -> dict`` with
    ``rgb (R,3)`` shaded grey, ``opacity (R,1)`` hit mask, ``depth (R,1)``, ``normals (R,3)``,
    ``steps (R,)``, ``passed_field (R,)``. Not differentiable: it renders, it does not train."""

    def __init__(self, cfg, background: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.background = background

    def render_rays(self, origins: Tensor, dirs: Tensor, query, **kw) -> dict:
        """Sphere-trace ``origins`` (R, 3), ``dirs`` (R, 3) through ``query(x, None)["sdf"]``, or through
        ``kw["sdf_fn"]`` when given; with ``kw["gt_sdf"]`` (and ``kw["tol"]``) the output also has
        ``overshoot``, ``max_excess`` and ``penetration`` (R,); ``kw["on_chunk"]`` goes to
        :func:`sphere_trace`."""
        c = self.cfg
        sdf_fn = (lambda x: query(x, None)["sdf"]) if not kw.get("sdf_fn") else kw["sdf_fn"]
        r = sphere_trace(sdf_fn, origins, dirs, near=c.near, far=c.far, max_steps=c.max_steps, eps=c.eps,
                         lipschitz=c.lipschitz, gt_sdf=kw.get("gt_sdf"), tol=kw.get("tol", c.eps), chunk=c.chunk,
                         on_chunk=kw.get("on_chunk"))
        nrm = torch.zeros_like(origins)
        if r["hit"].any():
            nrm[r["hit"]] = field_normals(sdf_fn, r["x"][r["hit"]])
        out = {"rgb": shade(nrm, r["hit"], self.background), "opacity": r["hit"].float()[:, None],
               "depth": torch.where(r["hit"], r["t"], torch.zeros_like(r["t"]))[:, None], "normals": nrm,
               "num_samples": int(r["steps"].sum()), **{k: r[k] for k in ("steps", "passed_field")}}
        for k in ("overshoot", "max_excess", "penetration"):
            if k in r:
                out[k] = r[k]
        return out

    def render_image(self, cameras, i: int, chain, *, chunk: int = 8192, supersample: int = 1) -> dict:
        """Full image of camera ``i``: rgb (H,W,3), opacity (H,W,1), depth (H,W,1), normals, steps (H,W).

        ``supersample`` s traces s x s sub-pixel rays per pixel: floating-point outputs are their
        means (``depth`` weighted by the hit mask, so sub-rays that miss do not pull it towards the
        camera), integer counts (``num_samples``) their sums, other per-ray outputs (``steps``,
        ``passed_field``) those of the first sub-pixel ray. The rays traced so far are reported after
        each of the tracer's chunks (:func:`pipeline.progress.report_pixels`)."""
        from pipeline.progress import report_pixels
        from pipeline.rays import image_pixel_coords, pixel_rays, subpixel_offsets

        H, W = int(cameras.height), int(cameras.width)
        offsets = subpixel_offsets(supersample)
        u, v = image_pixel_coords(W, H, 0, W * H, device=cameras.c2w.device, dtype=cameras.c2w.dtype)
        cam = torch.full((W * H,), int(i), dtype=torch.long, device=u.device)
        acc: dict = {}
        n_rays = W * H * len(offsets)
        for j, (du, dv) in enumerate(offsets):  # sub-pixel pass j: rays j*W*H ... (j+1)*W*H - 1
            out = self.render_rays(*pixel_rays(cameras, cam, u + du, v + dv), chain,
                                   on_chunk=lambda done, _, j=j: report_pixels(j * W * H + done, n_rays))
            out["depth"] = out["depth"] * out["opacity"] * len(offsets)  # summed here, divided below
            for k, val in out.items():
                if k not in acc:
                    acc[k] = val / len(offsets) if torch.is_tensor(val) and val.is_floating_point() else val
                elif torch.is_tensor(val) and val.is_floating_point():
                    acc[k] = acc[k] + val / len(offsets)
                elif isinstance(val, int):
                    acc[k] = acc[k] + val
        acc["depth"] = acc["depth"] / (acc["opacity"] * len(offsets)).clamp_min(1e-12)
        return {k: (v.reshape(H, W, -1) if torch.is_tensor(v) and v.dim() > 1 else
                    v.reshape(H, W) if torch.is_tensor(v) and v.dim() == 1 else v) for k, v in acc.items()}

    def update(self, step: int, chain, *, every: int = 16, warmup: int = 0) -> None:
        """Nothing to update (no occupancy grid)."""


def build_renderer(cfg, ctx) -> SphereTracer:
    """Build the ``sphere_tracing`` renderer from its ``renderer:`` block (``SphereTracingConfig``); the
    background is the mean of the scene's background colour (1.0 without a scene)."""
    bg = ctx.scene.background if ctx is not None and ctx.scene is not None else (1.0, 1.0, 1.0)
    return SphereTracer(cfg, float(np.mean(bg)))


def trace_views(sdf_fn, *, n_views=4, size=64, radius=1.5, fov_deg=40.0, gt_mesh=None, gt_sphere=None,
                max_steps=128, eps=1e-3, lipschitz=1.0, tol=1e-3, far=4.0, center=(0.0, 0.0, 0.0),
                device="cpu", chunk: int = 1 << 16, progress: bool = False) -> tuple[dict, list]:
    """Trace orbit views, ``chunk`` rays at a time; returns (metrics, [per-view dict of (S,S) arrays]).
    ``gt_mesh``: a trimesh mesh, ``gt_sphere``: (center, radius) for analytic ground truth; overshoot is
    reported when one is given. With ``progress`` a bar over the views moves with the rays traced in each
    (:func:`pipeline.progress.image_progress`; sparse lines off a terminal), as ``nls eval``'s rendering does."""
    from pipeline.progress import StepProgress, image_progress, report_pixels

    tracer = SphereTracer(type("C", (), dict(near=0.0, far=far, max_steps=max_steps, eps=eps, lipschitz=lipschitz,
                                             chunk=chunk))())
    views = orbit_rays(n_views, size, radius, fov_deg, center)
    gt_sdf = None
    if gt_mesh is not None:
        gt_sdf = mesh_sdf_fn(gt_mesh)
    elif gt_sphere is not None:
        gt_sdf = sphere_sdf(*gt_sphere)
    all_steps, all_hit, all_pf, all_pg, all_over, all_pen, imgs = [], [], [], [], [], [], []
    with StepProgress(len(views), 0, "sphere tracing", enabled=progress) as bar:
        for k, (o, d) in enumerate(views):
            o, d = o.to(device), d.to(device)
            with image_progress(bar, k, "view"):
                out = tracer.render_rays(o, d, None, sdf_fn=sdf_fn, gt_sdf=gt_sdf, tol=tol, on_chunk=report_pixels)
            bar.advance(k + 1)
            all_steps.append(out["steps"].cpu())
            all_hit.append(out["opacity"][:, 0].cpu() > 0.5)
            all_pf.append(out["passed_field"].cpu())
            if gt_sdf is not None:
                all_pg.append(out["overshoot"].cpu())
                all_over.append(out["max_excess"].cpu())
                all_pen.append(out["penetration"].cpu())
            imgs.append({"rgb": out["rgb"].reshape(size, size, 3).cpu().numpy(),
                         "normals": out["normals"].reshape(size, size, 3).cpu().numpy(),
                         "depth": out["depth"].reshape(size, size).cpu().numpy(),
                         "steps": out["steps"].reshape(size, size).cpu().numpy()})
    steps = torch.cat(all_steps).double()
    hit = torch.cat([h.cpu() for h in all_hit])
    m = {"steps_per_ray": float(steps.mean()), "steps_per_ray_max": int(steps.max()),
         "steps_per_hit_ray": float(steps[hit].mean()) if hit.any() else 0.0, "hit_rate": float(hit.double().mean()),
         "passed_field_rate": float(torch.cat(all_pf).double().mean()), "n_rays": int(steps.numel())}
    if all_pg:
        pg = torch.cat(all_pg)
        m["overshoot_rate"] = float(pg.double().mean())
        m["overshoot_rays"] = int(pg.sum())
        m["max_step_excess"] = float(torch.cat(all_over).max())
        m["max_penetration"] = float(torch.cat(all_pen).max())
    return m, imgs


class SphereTraceEvaluator:
    """The ``sphere_trace`` evaluator (see :class:`plugins.lipschitz.config.SphereTraceEvalConfig`)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        c = ctx.system.chain
        tr = ctx.system.renderer if isinstance(ctx.system.renderer, SphereTracer) else None
        kw = {}
        if tr is not None:
            kw = dict(max_steps=tr.cfg.max_steps, eps=tr.cfg.eps, lipschitz=tr.cfg.lipschitz, far=tr.cfg.far,
                      chunk=tr.cfg.chunk)
        gt = None
        if ctx.scene.gt_mesh:
            from pipeline.scenes.mesh_render import load_mesh

            gt = load_mesh(ctx.scene.gt_mesh)
        aabb = ctx.scene.aabb.float()
        center = ((aabb[:3] + aabb[3:]) / 2).tolist()
        ctx.system.eval()
        m, imgs = trace_views(lambda x: c(x, None)["sdf"], n_views=self.cfg.n_views, size=self.cfg.image_size,
                              radius=self.cfg.radius, fov_deg=self.cfg.fov_deg, gt_mesh=gt, tol=self.cfg.tolerance,
                              center=center, device=ctx.device, progress=ctx.progress, **kw)
        if self.cfg.save_images and ctx.renders_root is not None:
            save_views(imgs, ctx.renders_root / "sphere_trace")
        return {f"trace_{k}": v for k, v in m.items()}


def save_views(imgs: list, out_dir) -> None:
    """Write ``view_XX.png`` = shaded | normals | depth | steps (turbo colour maps)."""
    import imageio.v3 as iio
    import matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    turbo = matplotlib.colormaps["turbo"]
    for k, im in enumerate(imgs):
        hit = im["depth"] > 0
        nrm = np.where(hit[..., None], 0.5 * (im["normals"] + 1), 1.0)
        d = im["depth"]
        if hit.any():
            lo, hi = d[hit].min(), d[hit].max()
            dn = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
        else:
            dn = np.zeros_like(d)
        dep = np.where(hit[..., None], turbo(1 - dn)[..., :3], 1.0)
        st = turbo(np.clip(im["steps"] / max(1, im["steps"].max()), 0, 1))[..., :3]
        row = np.concatenate([im["rgb"], nrm, dep, st], 1)
        iio.imwrite(out_dir / f"view_{k:02d}.png", (np.clip(row, 0, 1) * 255 + 0.5).astype(np.uint8))


def build_evaluator(cfg, ctx) -> SphereTraceEvaluator:
    """Build the ``sphere_trace`` evaluator from its ``evaluators:`` entry (``SphereTraceEvalConfig``)."""
    return SphereTraceEvaluator(cfg)
