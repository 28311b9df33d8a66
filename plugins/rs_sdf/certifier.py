"""The ``randomized_smoothing`` certifier: occupancy -> weak SDF for any occupancy field.

For each query point the certifier returns (Pérez et al. §3; Cohen et al. 2019, Thm. 1)::

    p(x)   = (G_sigma * occ)(x)                    smoothed occupancy = P(occ(x + eps)), eps ~ N(0, sigma^2 I)
    sdf(x) = -sigma * Phi^-1(clamp(p, eps, 1-eps))   negative inside

``G_sigma * occ`` is never sampled: it is a Gaussian blur of a vertex grid of the occupancy,
computed **once per optimisation step** and trilinearly interpolated at the queries:

* fields with their own grid (``field.occupancy_grid() -> (V, box)``, e.g. ``voxel_occupancy``)
  are blurred directly;
* any other occupancy field is first rasterised onto a ``resolution^3`` vertex grid over the
  scene box (gradients flow through the rasterisation to the field's parameters, so the cost is
  one field evaluation per vertex per step; lower ``resolution`` for neural fields).

sigma is given in world units and converted to voxels per axis (``sigma / voxel size``), so the
SDF does not depend on the grid resolution up to discretisation error. The blurred grid is
cached and recomputed when the field's parameters or buffers change (their version counters,
storage, dtype or device), when a new training step starts (``on_train_step``), or when gradients
are needed and the cached grid was made without them. While the field is in training mode the grid
is built with its graph even under ``no_grad`` (the renderer's occupancy update and culling query
the field before the step's forward pass), so one blur serves the whole step. The FieldChain hands the query points and the field to certifiers
that set ``wants_query``.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Optional

import torch
from torch import Tensor, nn

from pipeline.types import NLSError
from plugins.rs_sdf.blur import gaussian_blur3d
from plugins.rs_sdf.certify import occupancy_to_sdf
from plugins.rs_sdf.config import RandomizedSmoothingConfig
from plugins.rs_sdf.grid import grid_points, sample_grid, voxel_size


class RandomizedSmoothing(nn.Module):
    """Pérez et al. §3 (Cohen et al. Thm. 1): sdf = -sigma Phi^-1((G_sigma * V)(x)), one blur per step.

    ``forward(out, x=(N,3), field=module) -> {sdf (N,), smoothed_occupancy (N,)}``; ``{}`` when the
    field gave no ``occupancy`` or says ``smoothing_active = False`` (``voxel_occupancy`` in its
    NeRF phase)."""

    wants_query = True

    def __init__(self, cfg: RandomizedSmoothingConfig, aabb: Tensor):
        super().__init__()
        self.cfg = cfg
        box = torch.tensor(cfg.aabb, dtype=torch.float32) if cfg.aabb is not None else aabb.float().cpu()
        self.register_buffer("box", box.clone())
        self._cache: Optional[dict] = None

    @property
    def sigma(self) -> float:
        """The smoothing scale ``sigma`` of the config (world units)."""
        return self.cfg.sigma

    def on_train_step(self, step: int) -> None:
        """Called by the Trainer before every step: drop the cached blurred grid."""
        self._cache = None

    def prepare_kernels(self, device: torch.device) -> None:
        """Before training: on CPU, build or load the C++ blur kernel (``method`` auto or kernel); with
        ``method: triton``, refuse a device the Triton kernels cannot run on."""
        from plugins.rs_sdf.blur import KERNEL, triton_kernels

        if torch.device(device).type == "cpu" and self.cfg.method in ("auto", "kernel"):
            KERNEL.load()
        if self.cfg.method == "triton":
            ok, why = triton_kernels().available(torch.device(device))
            if not ok:
                raise NLSError(f"certifier.method: 'triton' cannot run here: {why}; use auto, fft or matmul")

    def occupancy_grid(self, field: nn.Module) -> tuple[Tensor, Tensor]:
        """The grid to blur: the field's own, or its occupancy rasterised at the vertices (R,R,R)."""
        if callable(getattr(field, "occupancy_grid", None)):
            return field.occupancy_grid()
        r = self.cfg.resolution
        pts = grid_points(self.box, (r, r, r))
        occ = torch.cat([field(c, None)["occupancy"] for c in pts.split(2 ** 16)])
        return occ.view(r, r, r), self.box

    def smoothed_grid(self, field: nn.Module) -> tuple[Tensor, Tensor]:
        """``G_sigma * V`` ``(R0,R1,R2)`` and its box, from the cache when still valid."""
        trainable = any(p.requires_grad for p in field.parameters())
        need_grad = torch.is_grad_enabled() and trainable
        key = (id(field), tuple((t._version, t.data_ptr(), t.dtype, t.device)
                                for t in itertools.chain(field.parameters(), field.buffers())))
        c = self._cache
        if c is not None and c["key"] == key and (c["grad"] or not need_grad):
            return (c["grid"] if need_grad else c["grid"].detach()), c["box"]
        with torch.enable_grad() if trainable and field.training else contextlib.nullcontext():
            grid, box = self.occupancy_grid(field)
            sigma_vox = (self.cfg.sigma / voxel_size(box, grid.shape)).tolist()
            smoothed = gaussian_blur3d(grid, sigma_vox, truncate=self.cfg.truncate, method=self.cfg.method)
        self._cache = {"key": key, "grad": smoothed.requires_grad, "grid": smoothed, "box": box}
        return (smoothed if need_grad else smoothed.detach()), box

    def forward(self, out: dict[str, Tensor], x: Optional[Tensor] = None,
                field: Optional[nn.Module] = None) -> dict[str, Tensor]:
        """``out["occupancy"]`` (N,), query points ``x`` (N, 3) and the ``field`` ->
        ``{"sdf": (N,), "smoothed_occupancy": (N,)}``, or ``{}`` (see the class docstring)."""
        if "occupancy" not in out or not getattr(field, "smoothing_active", True):
            return {}
        if x is None or field is None:
            raise NLSError("the randomized_smoothing certifier needs the query points and the field "
                           "(it blurs a grid of the occupancy); call it through pipeline.system.FieldChain")
        grid, box = self.smoothed_grid(field)
        p = sample_grid(grid, box, x)
        return {"sdf": occupancy_to_sdf(p, self.cfg.sigma, self.cfg.eps), "smoothed_occupancy": p}


def build_randomized_smoothing(cfg: RandomizedSmoothingConfig, ctx) -> RandomizedSmoothing:
    """Build the certifier from its ``certifier:`` block (``RandomizedSmoothingConfig``); the box is
    ``aabb`` from the config, else ``ctx.aabb``."""
    from pipeline.types import ConfigError

    if cfg.aabb is not None and not all(cfg.aabb[i] < cfg.aabb[i + 3] for i in range(3)):
        raise ConfigError(f"certifier.aabb = {cfg.aabb}: need xmin < xmax, ymin < ymax, zmin < zmax")
    return RandomizedSmoothing(cfg, ctx.aabb)
