"""Volume rendering of radiance fields, with occupancy-grid empty-space skipping.

One interface, two paths with one result:

* **CUDA path** (``origins.is_cuda`` and a grid is given): nerfacc's
  ``OccGridEstimator.sampling`` (ray marching through the binary occupancy grid, as
  in Instant-NGP, Müller et al. 2022) followed by packed ``nerfacc.rendering``
  (Li et al. 2023, "NerfAcc: Efficient Sampling Accelerates NeRFs").
* **Torch path** (every other case, in particular CPU tensors): a pure-PyTorch
  sampler that places the same samples (a uniform lattice of intervals of length
  ``step_size`` that starts at the ray's entry into the box, the same stratified
  jitter, the same occupancy and visibility culling): candidates are laid out as a
  padded ``(R, n_lattice)`` grid, culled, the field is evaluated only at the kept
  samples (gathered), and those are scattered into a compact padded ``(R, S)``
  layout (S = most kept samples on any ray) that nerfacc's *batched* (2-D, no
  ``packed_info``) functions composite on CPU.

Both evaluate the emission-absorption quadrature of Max (1995), in the form of
Mildenhall et al. (2020, NeRF, Eq. 3)::

    C(r) = sum_i T_i (1 - exp(-sigma_i delta_i)) c_i,   T_i = exp(-sum_{j<i} sigma_j delta_j)

with opacity ``sum_i w_i``, background ``C + (1 - opacity) * bg``, and depth
``sum_i w_i t_i / max(opacity, eps)`` (``t_i`` the interval midpoint; the expected
termination distance *given* termination, as ``nerfacc.rendering`` defines it). Asked with
``with_median`` (as :func:`render_image` does), both also return ``depth_median``, the distance at which the accumulated weight reaches half the ray's
opacity (:func:`median_depth`): for a soft density it stays on the surface where the expected
depth drifts behind it.

nerfacc's CUDA-only functions (anything packed, ``traverse_grids``,
``OccGridEstimator.sampling``) are never called on CPU tensors: on a CPU build their
JIT compile fails and poisons the process. The path is chosen from the tensors'
device, never by trying and catching.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import nerfacc
import torch
from torch import Tensor, nn

from .progress import report_pixels
from .rays import image_pixel_coords, pixel_rays, ray_aabb_intersect, subpixel_offsets
from .types import Cameras

__all__ = [
    "load_nerfacc_cuda",
    "RadianceFn",
    "DensityFn",
    "OccupancyGrid",
    "render_rays",
    "render_image",
]

#: (positions (S,3), unit dirs (S,3)) -> (rgb (S,3) in [0,1], sigma (S,) >= 0)
RadianceFn = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]
#: positions (S,3) -> sigma (S,) >= 0
DensityFn = Callable[[Tensor], Tensor]


def load_nerfacc_cuda() -> None:
    """Load nerfacc's CUDA extension now, building it on first use (``nvcc``; about a minute with 16
    cores, several with few). Call it before a timed loop on a CUDA device: otherwise the build happens
    inside the first CUDA-only nerfacc call, is counted as training time, and under ``train.max_seconds``
    eats the budget (seen on an H200: a rebuild at step 32 pushed a 75 s run's phase schedule to 85%).
    A failed build becomes one :class:`~pipeline.types.NLSError` before training, not a traceback from
    the middle of it. Never call it for CPU tensors (see the module docstring).
    """
    import importlib

    from pipeline.types import NLSError

    hint = ("nerfacc JIT-builds it with nvcc: put a CUDA toolkit matching torch's CUDA version "
            f"({torch.version.cuda}) on PATH and set CUDA_HOME, or run on CPU (--device cpu)")
    try:
        backend = importlib.import_module("nerfacc.cuda._backend")
    except Exception as exc:  # the JIT build raises OSError, RuntimeError, ImportError, ...
        last = (str(exc).strip().splitlines() or [""])[-1]  # a failed build's message ends with its cause
        raise NLSError(f"nerfacc's CUDA extension could not be built or loaded ({type(exc).__name__}: {last}); "
                       f"{hint}") from None
    if getattr(backend, "_C", None) is None:
        raise NLSError(f"nerfacc's CUDA extension is not available (no nvcc was found); {hint}")


class DeterministicOccGridEstimator(nerfacc.OccGridEstimator):
    """``nerfacc.OccGridEstimator`` whose EMA update gives the same grid whatever the thread count.

    nerfacc 0.5.3 updates by index assignment, ``occs[ids] = max(occs[ids] * decay, occ)``.
    After the warmup, ``ids`` repeat: uniform cells and occupied cells are drawn with
    replacement. Which of a repeated cell's writes lands is unspecified, and on a CPU with
    more than one thread it changes from run to run (measured: two 2-thread runs of the same
    seed differ by up to 0.19 in ``occs`` at resolution 64; one thread, or a 16³ grid whose
    writes stay serial, agree). The runs then drift apart, and a resumed run is no longer
    bit-identical to an uninterrupted one.

    Here each sampled cell becomes the maximum of its decayed value and all of its samples.
    That is the scatter-max that nerfacc's own comment names as the intent, computed with
    ``scatter_reduce(amax)``, which is order-independent. The random draws and their order
    are nerfacc's, so the cells and points sampled are unchanged. During the warmup every cell
    is drawn once, and the result equals nerfacc's.
    """

    @torch.no_grad()
    def _update(self, step: int, occ_eval_fn: Callable, occ_thre: float = 0.01, ema_decay: float = 0.95,
                warmup_steps: int = 256) -> None:
        lvl_indices = (self._get_all_cells() if step < warmup_steps
                       else self._sample_uniform_and_occupied_cells(self.cells_per_lvl // 4))
        for lvl, indices in enumerate(lvl_indices):
            coords = self.grid_coords[indices]
            x = (coords + torch.rand_like(coords, dtype=torch.float32)) / self.resolution
            x = self.aabbs[lvl, :3] + x * (self.aabbs[lvl, 3:] - self.aabbs[lvl, :3])
            occ = occ_eval_fn(x).squeeze(-1).to(self.occs.dtype)
            ids = lvl * self.cells_per_lvl + indices
            self.occs[ids] = self.occs[ids] * ema_decay  # repeated ids write equal values
            self.occs.scatter_reduce_(0, ids, occ, reduce="amax", include_self=True)
        thre = torch.clamp(self.occs[self.occs >= 0].mean(), max=occ_thre)
        self.binaries = (self.occs > thre).view(self.binaries.shape)


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over an AABB for empty-space skipping.

    Wraps ``nerfacc.OccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=1)``
    (:class:`DeterministicOccGridEstimator`, so the update does not depend on the thread count)
    (construction and :meth:`update` run on CPU; the estimator's ``sampling`` is
    used by the renderer's CUDA path only). A cell is occupied when its EMA of
    ``density * step_size`` (≈ the opacity of one marching step) exceeds
    ``min(occ_thre, mean)``, as in Instant-NGP.

    Args:
        aabb: (6,) ``[xmin, ymin, zmin, xmax, ymax, zmax]``.
        resolution: cells per axis (int or 3 ints).

    Example:
        >>> grid = OccupancyGrid(aabb, resolution=64)
        >>> for step in range(steps):
        ...     grid.update(step, density_fn, step_size=render_step)
        >>> grid.occupied(points)  # (S,) bool
        >>> torch.save(grid.state_dict(), path)  # round-trips with load_state_dict
    """

    def __init__(self, aabb, resolution: Union[int, Sequence[int]] = 128) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(6).cpu()
        if not bool((aabb[3:] > aabb[:3]).all()):
            raise ValueError(f"OccupancyGrid: aabb must have min < max per axis, got {aabb.tolist()}")
        self.estimator = DeterministicOccGridEstimator(roi_aabb=aabb, resolution=resolution, levels=1)

    # --- properties -------------------------------------------------------------
    @property
    def aabb(self) -> Tensor:
        """(6,) the grid's box (level 0 of the estimator)."""
        return self.estimator.aabbs[0]

    @property
    def resolution(self) -> Tensor:
        """(3,) int cells per axis."""
        return self.estimator.resolution

    @property
    def binaries(self) -> Tensor:
        """(rx, ry, rz) bool occupancy."""
        return self.estimator.binaries[0]

    def occupied_fraction(self) -> float:
        """Fraction of the grid's cells that are occupied."""
        return float(self.estimator.binaries.float().mean().item())

    # --- update / query ------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int, density_fn: DensityFn, step_size: float, occ_thre: float = 0.01,
               n: int = 16, ema_decay: float = 0.95, warmup_steps: int = 256) -> None:
        """Refresh the grid every ``n`` steps (nerfacc ``update_every_n_steps``).

        ``occ_eval_fn = density_fn(x) * step_size``. During the first ``warmup_steps``
        every cell is evaluated, afterwards a quarter of the cells uniformly plus
        up to as many occupied ones (nerfacc's schedule). Works whatever the module's
        train/eval mode is.
        """

        def occ_eval_fn(x: Tensor) -> Tensor:
            return density_fn(x).reshape(-1) * step_size

        was_training = self.estimator.training
        self.estimator.train(True)
        try:
            self.estimator.update_every_n_steps(step=step, occ_eval_fn=occ_eval_fn, occ_thre=occ_thre,
                                                ema_decay=ema_decay, warmup_steps=warmup_steps, n=n)
        finally:
            self.estimator.train(was_training)

    @torch.no_grad()
    def occupied(self, positions: Tensor) -> Tensor:
        """Pure-torch lookup: (S,3) world points -> (S,) bool; points outside the box
        (boundary included in the box) are unoccupied. Cell ``i`` along an axis covers
        ``[lo + i*h, lo + (i+1)*h)``, matching how the estimator samples its cells."""
        binaries = self.estimator.binaries[0]
        aabb = self.estimator.aabbs[0].to(positions.device, positions.dtype)
        res = self.estimator.resolution.to(positions.device)
        lo, hi = aabb[:3], aabb[3:]
        x = (positions - lo) / (hi - lo)
        inside = ((x >= 0) & (x <= 1)).all(dim=-1)
        idx = (x * res.to(x.dtype)).floor().long()
        idx = torch.minimum(idx.clamp_min(0), (res - 1).long())
        occ = binaries.to(positions.device)[idx[:, 0], idx[:, 1], idx[:, 2]]
        return occ & inside

    @torch.no_grad()
    def occupied_along_rays(self, origins: Tensor, dirs: Tensor, t: Tensor, rows: int = 4096) -> Tensor:
        """Occupancy at ``origins[:, None] + dirs[:, None] * t[..., None]``: (R,3), (R,3),
        (R,S) -> (R,S) bool. Same answer as :meth:`occupied` on those points, computed in
        grid coordinates without gathering per sample (the torch sampler's hot loop), one axis at a
        time with the cell index summed in floating point (exact while the grid has fewer than 2^24
        cells: float32's integers) and cast once; ``rows`` rays at a time to bound temporary memory.
        About 1.9x faster than gathering (r, S, 3) integer indices, with the same result."""
        device, dtype = origins.device, origins.dtype
        flat = self.estimator.binaries[0].to(device).reshape(-1)
        aabb = self.estimator.aabbs[0].to(device, dtype)
        res_i = self.estimator.resolution.to(device).long()
        res = res_i.to(dtype)
        scale = res / (aabb[3:] - aabb[:3])
        g0 = (origins - aabb[:3]) * scale  # (R,3) ray origin in cell units
        gd = dirs * scale
        sizes = [int(v) for v in res_i.tolist()]
        strides = (float(sizes[1] * sizes[2]), float(sizes[2]), 1.0)
        # integers in the accumulation stay exact below 2^24 (float32) / 2^53 (float64); else float64
        acc = dtype if flat.numel() < (2 ** 24 if dtype == torch.float32 else 2 ** 53) else torch.float64
        out = torch.empty(t.shape, dtype=torch.bool, device=device)
        for r0 in range(0, t.shape[0], rows):
            r1 = min(t.shape[0], r0 + rows)
            tt = t[r0:r1]
            inside, cell = None, None
            for a in range(3):
                ga = gd[r0:r1, a, None] * tt
                ga += g0[r0:r1, a, None]  # g0 + gd * t, the same two roundings as the point itself
                ok = (ga >= 0) & (ga <= res[a])
                inside = ok if inside is None else inside.logical_and_(ok)
                ga = ga.floor_().clamp_(0, sizes[a] - 1).to(acc).mul_(strides[a])
                cell = ga if cell is None else cell.add_(ga)
            # outside the grid (NaN or inf coordinates of rays that miss it) the index is meaningless: 0
            out[r0:r1] = flat[cell.masked_fill_(~inside, 0).long()] & inside
        return out


def _as_background(background, n_rays: int, device, dtype) -> Optional[Tensor]:
    """None, one value, a colour (3,) or one colour per ray (R,3) -> None, (3,) or (R,3)."""
    if background is None:
        return None
    bg = torch.as_tensor(background, device=device, dtype=dtype)
    if bg.ndim == 2 and bg.shape == (n_rays, 3):  # per ray, e.g. training on random backgrounds
        return bg
    bg = bg.reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3:
        raise ValueError(f"render_rays: background must be one colour (3,) or one per ray ({n_rays}, 3), "
                         f"got shape {tuple(torch.as_tensor(background).shape)}")
    return bg


def _rank_within_ray(ray_indices: Tensor, n_rays: int) -> Tensor:
    """Position of each sample among its ray's samples; ``ray_indices`` sorted."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(ray_indices.shape[0], device=ray_indices.device) - starts[ray_indices]


def median_depth(weights: Tensor, t_starts: Tensor, t_ends: Tensor) -> Tensor:
    """Median termination distance given termination, per ray: (R, S) padded samples -> (R, 1).

    The distance at which the accumulated weight ``sum_{j<=i} w_j`` reaches half the ray's total,
    the weight spread linearly over each sample's interval (a piecewise-linear CDF), so the
    result moves continuously inside one step. Rays with no weight get 0, as the expected depth
    does. Samples along a ray must be in order of ``t``; padding (zero weight) may follow.
    """
    if weights.shape[-1] == 0:
        return torch.zeros(weights.shape[:-1] + (1,), device=weights.device, dtype=weights.dtype)
    csum = weights.cumsum(-1)
    half = 0.5 * csum[..., -1:]
    i = (csum < half).sum(-1, keepdim=True).clamp_max(weights.shape[-1] - 1)  # first reaching half
    w = weights.gather(-1, i)
    before = csum.gather(-1, i) - w
    frac = ((half - before) / w.clamp_min(torch.finfo(w.dtype).tiny)).clamp(0.0, 1.0)
    t0 = t_starts.gather(-1, i)
    depth = t0 + frac * (t_ends.gather(-1, i) - t0)
    return torch.where(half > 0, depth, torch.zeros_like(depth))


def _compact_layout(ray_indices: Tensor, t_mid: Tensor, dt: float, n_rays: int):
    """Packed samples (sorted by ray, then t) -> padded (R, S) intervals, S = the most
    samples any ray has. Returns (column of each sample, t_starts, t_ends); padding
    entries are the empty interval [0, 0]."""
    col = _rank_within_ray(ray_indices, n_rays)
    n_cols = int(col.max().item()) + 1 if col.numel() > 0 else 0
    t_starts = torch.zeros((n_rays, n_cols), device=t_mid.device, dtype=t_mid.dtype)
    t_ends = torch.zeros_like(t_starts)
    t_starts[ray_indices, col] = t_mid - 0.5 * dt
    t_ends[ray_indices, col] = t_mid + 0.5 * dt
    return col, t_starts, t_ends


def render_rays(
    origins: Tensor,
    dirs: Tensor,
    radiance_fn: RadianceFn,
    *,
    aabb,
    grid: Optional[OccupancyGrid] = None,
    density_fn: Optional[DensityFn] = None,
    step_size: float,
    near: float = 0.0,
    far: float = 1e10,
    background=None,
    alpha_thre: float = 0.0,
    early_stop_eps: float = 1e-4,
    max_samples_per_ray: Optional[int] = None,
    stratified: bool = False,
    backend: str = "auto",
    with_median: bool = False,
) -> dict:
    """Volume-render rays through a radiance field (Max 1995; NeRF Eq. 3).

    Args:
        origins, dirs: (R, 3) rays; ``dirs`` unit length.
        radiance_fn: (positions (S,3), dirs (S,3)) -> (rgb (S,3), sigma (S,)).
            Called once, only at the kept samples; differentiable.
        aabb: (6,) box; samples lie in ``[max(t_near, near), min(t_far, far)]``.
        grid: optional occupancy grid; samples in unoccupied cells are skipped.
        density_fn: optional (S,3) -> (S,) density used (under ``no_grad``) to drop
            samples that cannot contribute before ``radiance_fn`` runs: samples
            behind transmittance ``< early_stop_eps`` and, when ``alpha_thre > 0``,
            samples with alpha ``< alpha_thre`` (clamped to the grid's mean occupancy
            when a grid is given, as nerfacc does). Without ``density_fn`` no
            visibility culling happens.
        step_size: marching step (world units); the samples are the intervals
            ``[s + k*step, s + (k+1)*step]`` whose midpoint lies before the far end,
            ``s`` the start of the ray's interval (plus ``U(0, step)`` when
            ``stratified``).
        near, far: global ray limits.
        background: (3,) colour, or (R, 3) one per ray, composited with weight ``1 - opacity``;
            None = black.
        max_samples_per_ray: keep at most this many (the nearest) of each ray's samples
            after culling; the rest of the ray counts as empty. None = no limit.
        stratified: jitter each ray's lattice start (training).
        backend: "auto" (nerfacc when ``origins.is_cuda`` and a grid is given, torch
            otherwise), "torch" (pure torch, any device) or "nerfacc" (CUDA tensors only).
        with_median: also return ``depth_median`` (:func:`median_depth`; the CUDA path lays
            its packed samples out as padded rows for it, so training leaves it off).

    Returns:
        dict with ``rgb`` (R,3), ``opacity`` (R,1), ``depth`` (R,1) (expected depth
        given termination), ``depth_median`` (R,1) (with ``with_median``; not
        differentiable), ``num_samples`` (python int, number of samples at which
        ``radiance_fn`` was evaluated) and ``backend`` ("nerfacc" or "torch"), and the
        samples' ``weights``, ``t_starts`` and ``t_ends``: on the torch path all (R,S)
        with S the most samples kept on any ray (column j holds a ray's j-th kept
        sample; padding is the empty interval [0, 0] with weight 0), on the nerfacc path
        packed (K,) with their ``ray_indices`` (K,). :func:`packed_samples` reads either.
    """
    if origins.ndim != 2 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
        raise ValueError(f"render_rays: origins and dirs must both be (R,3), got "
                         f"{tuple(origins.shape)} and {tuple(dirs.shape)}")
    if not step_size > 0:
        raise ValueError(f"render_rays: step_size must be > 0, got {step_size}")
    if backend not in ("auto", "torch", "nerfacc"):
        raise ValueError(f"render_rays: backend must be 'auto', 'torch' or 'nerfacc', got {backend!r}")
    if backend == "auto":
        backend = "nerfacc" if (origins.is_cuda and grid is not None) else "torch"
    if backend == "nerfacc":
        if not origins.is_cuda:
            raise ValueError("render_rays: backend='nerfacc' needs CUDA tensors (nerfacc's sampler "
                             "has no CPU kernel); use backend='torch' or 'auto' for CPU tensors")
        if grid is None:
            raise ValueError("render_rays: backend='nerfacc' needs an OccupancyGrid")
        return _render_rays_nerfacc(origins, dirs, radiance_fn, aabb=aabb, grid=grid,
                                    density_fn=density_fn, step_size=step_size, near=near, far=far,
                                    background=background, alpha_thre=alpha_thre,
                                    early_stop_eps=early_stop_eps,
                                    max_samples_per_ray=max_samples_per_ray, stratified=stratified,
                                    with_median=with_median)
    return _render_rays_torch(origins, dirs, radiance_fn, aabb=aabb, grid=grid, density_fn=density_fn,
                              step_size=step_size, near=near, far=far, background=background,
                              alpha_thre=alpha_thre, early_stop_eps=early_stop_eps,
                              max_samples_per_ray=max_samples_per_ray, stratified=stratified,
                              with_median=with_median)


def _render_rays_nerfacc(origins, dirs, radiance_fn, *, aabb, grid, density_fn, step_size, near, far,
                         background, alpha_thre, early_stop_eps, max_samples_per_ray, stratified,
                         with_median) -> dict:
    """CUDA path: ``OccGridEstimator.sampling`` + packed ``nerfacc.rendering``."""
    n_rays = origins.shape[0]
    t_near, t_far, hit = ray_aabb_intersect(origins, dirs, aabb)
    # rays that miss the box get an empty [0, 0] interval (clamped by near/far below)
    t_min = torch.where(hit, t_near, torch.zeros_like(t_near))
    t_max = torch.where(hit, t_far, torch.zeros_like(t_far))

    sigma_fn = None
    if density_fn is not None:
        def sigma_fn(t_starts, t_ends, ray_indices):
            t_mid = (t_starts + t_ends)[:, None] / 2.0
            return density_fn(origins[ray_indices] + dirs[ray_indices] * t_mid).reshape(-1)

    ray_indices, t_starts, t_ends = grid.estimator.sampling(
        origins, dirs, sigma_fn=sigma_fn, near_plane=near, far_plane=far, t_min=t_min, t_max=t_max,
        render_step_size=step_size, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre,
        stratified=stratified)
    ray_indices = ray_indices.long()
    if max_samples_per_ray is not None:
        keep = _rank_within_ray(ray_indices, n_rays) < int(max_samples_per_ray)
        ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]

    def rgb_sigma_fn(t_starts, t_ends, ray_indices):
        t_mid = (t_starts + t_ends)[:, None] / 2.0
        d = dirs[ray_indices]
        rgb, sigma = radiance_fn(origins[ray_indices] + d * t_mid, d)
        return rgb, sigma.reshape(-1)

    bg = _as_background(background, n_rays, origins.device, origins.dtype)
    rgb, opacity, depth, extras = nerfacc.rendering(
        t_starts, t_ends, ray_indices, n_rays=n_rays, rgb_sigma_fn=rgb_sigma_fn, render_bkgd=bg)
    out = {"rgb": rgb, "opacity": opacity, "depth": depth, "num_samples": int(t_starts.shape[0]),
           "backend": "nerfacc", "weights": extras["weights"], "t_starts": t_starts, "t_ends": t_ends,
           "ray_indices": ray_indices}
    if with_median:
        out["depth_median"] = packed_median_depth(extras["weights"], t_starts, t_ends, ray_indices, n_rays)
    return out


def packed_samples(out: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The samples of a :func:`render_rays` output as packed lists: ``(weights, t_starts, t_ends, ray_indices)``,
    each (K,), sorted by ray then by t, whichever path rendered it (nerfacc's packed samples as they are; the
    torch path's padded (R, S) rows without their padding, whose t_start == t_end). The weights keep their
    graph."""
    if "ray_indices" in out:
        return out["weights"], out["t_starts"], out["t_ends"], out["ray_indices"]
    keep = out["t_ends"] > out["t_starts"]
    ray_indices = keep.nonzero(as_tuple=True)[0]
    return out["weights"][keep], out["t_starts"][keep], out["t_ends"][keep], ray_indices


def packed_median_depth(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                        n_rays: int) -> Tensor:
    """:func:`median_depth` of packed samples (N,) sorted by ray, then by t (as nerfacc's sampler
    emits them) -> (n_rays, 1): they are laid out as padded rows first. Pure torch."""
    with torch.no_grad():
        col = _rank_within_ray(ray_indices, n_rays)
        n_cols = int(col.max().item()) + 1 if col.numel() > 0 else 0
        padded = [torch.zeros((n_rays, n_cols), device=v.device, dtype=v.dtype).index_put((ray_indices, col), v)
                  for v in (weights.detach(), t_starts, t_ends)]
        return median_depth(*padded)


def _render_rays_torch(origins, dirs, radiance_fn, *, aabb, grid, density_fn, step_size, near, far,
                       background, alpha_thre, early_stop_eps, max_samples_per_ray, stratified,
                       with_median) -> dict:
    """Torch path: padded lattice, cull, gather kept samples, batched nerfacc compositing."""
    device, dtype = origins.device, origins.dtype
    n_rays = origins.shape[0]
    dt = float(step_size)

    # 1. per-ray interval and lattice (same placement as nerfacc's traverse_grids)
    t_near, t_far, hit = ray_aabb_intersect(origins, dirs, aabb)
    # sample placement is not differentiable (as in nerfacc); gradients reach origins and
    # dirs through the sample positions only
    start = t_near.detach().clamp_min(near)
    end = t_far.detach().clamp_max(far)
    if stratified:
        start = start + torch.rand_like(start) * dt
    n_per_ray = torch.ceil((end - start) / dt - 0.5).clamp_min(0)
    n_per_ray = torch.where(hit, n_per_ray, torch.zeros_like(n_per_ray)).long()
    n_max = int(n_per_ray.max().item()) if n_rays > 0 else 0

    # 2. candidate samples (row-major, so sorted by ray then by t) and occupancy culling
    lattice = torch.arange(n_max, device=device, dtype=dtype)
    cand = lattice[None, :] < n_per_ray[:, None]  # (R, n_max)
    if grid is not None and n_max > 0:
        t_mid = start[:, None] + (lattice[None, :] + 0.5) * dt
        cand &= grid.occupied_along_rays(origins, dirs, t_mid)
        del t_mid
    ri, si = cand.nonzero(as_tuple=True)
    t_mid_k = start[ri] + (si.to(dtype) + 0.5) * dt
    del cand

    # 3. visibility culling with a cheap density pass (as nerfacc's sampling does)
    if density_fn is not None and ri.numel() > 0 and (alpha_thre > 0.0 or early_stop_eps > 0.0):
        if grid is not None:
            alpha_thre = min(alpha_thre, float(grid.estimator.occs.mean().item()))
        with torch.no_grad():
            col, t_starts, t_ends = _compact_layout(ri, t_mid_k, dt, n_rays)
            sig = torch.zeros(t_starts.shape, device=device, dtype=dtype)
            sig[ri, col] = density_fn(origins[ri] + dirs[ri] * t_mid_k[:, None]).reshape(-1).to(dtype)
            trans, alphas = nerfacc.render_transmittance_from_density(t_starts, t_ends, sig)
            vis = trans[ri, col] >= early_stop_eps
            if alpha_thre > 0.0:
                vis = vis & (alphas[ri, col] >= alpha_thre)
            ri, t_mid_k = ri[vis], t_mid_k[vis]
            del sig, trans, alphas, col, vis

    # 4. per-ray cap: the nearest max_samples_per_ray kept samples
    if max_samples_per_ray is not None and ri.numel() > 0:
        keep = _rank_within_ray(ri, n_rays) < int(max_samples_per_ray)
        ri, t_mid_k = ri[keep], t_mid_k[keep]

    # 5. evaluate the field only at kept samples, scatter into the compact padded layout
    #    (column = rank of the sample within its ray; padding has t_start == t_end == 0,
    #    hence zero alpha, so skipped space contributes nothing, as in the packed layout)
    col, t_starts, t_ends = _compact_layout(ri, t_mid_k, dt, n_rays)
    num = int(ri.numel())
    if num > 0:
        d_k = dirs[ri]
        rgb_k, sigma_k = radiance_fn(origins[ri] + d_k * t_mid_k[:, None], d_k)
        sigma_k = sigma_k.reshape(-1)
        sigmas = torch.zeros(t_starts.shape, device=device, dtype=sigma_k.dtype).index_put(
            (ri, col), sigma_k)
        rgbs = torch.zeros(t_starts.shape + (3,), device=device, dtype=rgb_k.dtype).index_put(
            (ri, col), rgb_k)
    else:
        sigmas = torch.zeros(t_starts.shape, device=device, dtype=dtype)
        rgbs = torch.zeros(t_starts.shape + (3,), device=device, dtype=dtype)

    # 6. quadrature (Max 1995; NeRF Eq. 3) with nerfacc's batched, CPU-capable functions
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    rgb = nerfacc.accumulate_along_rays(weights, values=rgbs)
    opacity = nerfacc.accumulate_along_rays(weights, values=None)
    depth = nerfacc.accumulate_along_rays(weights, values=((t_starts + t_ends) / 2.0)[..., None])
    depth = depth / opacity.clamp_min(torch.finfo(opacity.dtype).eps)
    bg = _as_background(background, n_rays, device, rgb.dtype)
    if bg is not None:
        rgb = rgb + bg * (1.0 - opacity)
    out = {"rgb": rgb, "opacity": opacity, "depth": depth, "num_samples": num, "backend": "torch",
           "weights": weights, "t_starts": t_starts, "t_ends": t_ends}
    if with_median:
        with torch.no_grad():
            out["depth_median"] = median_depth(weights.detach(), t_starts, t_ends)
    return out


def render_image(cameras: Cameras, i: int, radiance_fn: RadianceFn, *, chunk: int = 4096,
                 supersample: int = 1, **render_kwargs) -> dict:
    """Render camera ``i``'s full image in chunks of ``chunk`` pixels under ``no_grad``.

    Rays are generated per chunk (row-major over ``(v, u)``) on the cameras' device, so peak
    memory is set by ``chunk`` and the samples per ray, not by the resolution (beyond the output
    images). With ``supersample = s > 1`` each pixel is the mean of ``s x s`` rays through the
    centres of its sub-pixels (the box filter an anti-aliased image holds); ``s = 1`` casts one
    ray through each pixel centre. ``render_kwargs`` go to :func:`render_rays` (``aabb``,
    ``step_size``, ``grid``, ``background``, ...).

    Returns rgb (H,W,3), opacity (H,W,1) (means over the sub-pixel rays), depth and
    depth_median (H,W,1) (their means weighted by each sub-ray's opacity, so rays that miss do
    not count) and ``num_samples`` (int, over all rays). After each chunk it reports the pixels done
    (:func:`pipeline.progress.report_pixels`, for an evaluation's progress bar).
    """
    W, H = int(cameras.width), int(cameras.height)
    device, dtype = cameras.c2w.device, cameras.c2w.dtype
    offsets = subpixel_offsets(supersample)
    n = W * H
    rgb = torch.zeros((n, 3), device=device, dtype=dtype)
    opacity = torch.zeros((n, 1), device=device, dtype=dtype)
    depth = torch.zeros((n, 1), device=device, dtype=dtype)
    depth_median = torch.zeros((n, 1), device=device, dtype=dtype)
    num_samples = 0
    chunk = max(1, int(chunk))
    with torch.no_grad():
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            u, v = image_pixel_coords(W, H, s, e, device=device, dtype=dtype)
            cam_idx = torch.full((e - s,), int(i), dtype=torch.long, device=device)
            for du, dv in offsets:
                o, d = pixel_rays(cameras, cam_idx, u + du, v + dv)
                out = render_rays(o, d, radiance_fn, with_median=True, **render_kwargs)
                rgb[s:e] += out["rgb"] / len(offsets)
                opacity[s:e] += out["opacity"] / len(offsets)
                # depths weighted by opacity: a sub-ray that misses (depth 0) must not pull the
                # pixel towards the camera, so the pixel holds E[t | termination] over its sub-rays
                depth[s:e] += out["depth"] * out["opacity"]
                depth_median[s:e] += out["depth_median"] * out["opacity"]
                num_samples += int(out["num_samples"])
            report_pixels(e, n)
    total = (opacity * len(offsets)).clamp_min(torch.finfo(dtype).eps)  # sum of the sub-rays' opacities
    depth, depth_median = depth / total, depth_median / total
    return {"rgb": rgb.reshape(H, W, 3), "opacity": opacity.reshape(H, W, 1),
            "depth": depth.reshape(H, W, 1), "depth_median": depth_median.reshape(H, W, 1),
            "num_samples": num_samples}
