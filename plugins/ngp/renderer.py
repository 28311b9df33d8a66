"""The backend's volume renderer component: occupancy grid + nerfacc rendering (CPU or CUDA path)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pipeline.rendering import OccupancyGrid, load_nerfacc_cuda, render_image, render_rays
from plugins.ngp.config import VolumeRendererConfig


class VolumeRenderer(nn.Module):
    """Wraps :func:`pipeline.rendering.render_rays` with an occupancy grid it keeps up to date.

    The step size is the scene-box diagonal divided by ``samples_per_ray``. The grid is a
    submodule, so it is checkpointed with the model.
    """

    #: on CPU, the most samples one chunk of :meth:`render_image` may hold: its rays times ``samples_per_ray``,
    #: what a ray takes before the occupancy grid culls (an early checkpoint's rays all do). Measured on lego_hash
    #: (1024 samples per ray): eval.chunk 32768 peaked at 19.8 GB for one 800x800 view, 4096 (this cap) at 4.0 GB
    #: and renders faster; scenes of 256 samples per ray keep chunks of 16384.
    CPU_CHUNK_SAMPLES = 1 << 22

    def __init__(self, cfg: VolumeRendererConfig, aabb: Tensor, background: tuple, near: float, far: float):
        super().__init__()
        self.cfg = cfg
        self.grid = OccupancyGrid(aabb.cpu(), cfg.grid_resolution)
        self.register_buffer("aabb", aabb.float().clone())
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32))
        self.step_size = float((aabb[3:] - aabb[:3]).norm()) / cfg.samples_per_ray
        self.near, self.far = float(near), float(far)
        # the grid starts culling only after `cull_after` steps; before that an untrained, uniform,
        # nearly empty field would have every cell culled and no sample would get a gradient
        self.register_buffer("grid_ready", torch.tensor(False))

    def prepare_kernels(self, device: torch.device) -> None:
        """Before training: on CUDA, build or load nerfacc's extension (the sampler's kernels)."""
        if torch.device(device).type == "cuda":
            load_nerfacc_cuda()

    def _kwargs(self, chain, training: bool, background: Optional[Tensor]) -> dict:
        return dict(aabb=self.aabb, grid=self.grid if bool(self.grid_ready) else None, density_fn=chain.density_fn, step_size=self.step_size,
                    near=self.near, far=self.far,
                    background=self.background if background is None else background,
                    alpha_thre=self.cfg.alpha_threshold, stratified=training and self.cfg.stratified)

    def render_rays(self, origins: Tensor, dirs: Tensor, chain, *, training: bool = False,
                    background: Optional[Tensor] = None) -> dict:
        """(R,3),(R,3) -> {rgb (R,3), opacity (R,1), depth (R,1), num_samples}."""
        return render_rays(origins, dirs, chain.radiance_fn, **self._kwargs(chain, training, background))

    def render_image(self, cameras, i: int, chain, *, chunk: int = 8192, supersample: int = 1) -> dict:
        """Full image of camera ``i``: rgb (H,W,3), opacity (H,W,1), depth (H,W,1); ``supersample`` s
        averages s x s sub-pixel rays per pixel. ``chunk`` rays at a time, on CPU at most
        :attr:`CPU_CHUNK_SAMPLES` / ``samples_per_ray`` (memory; chunking does not change the image)."""
        if cameras.c2w.device.type == "cpu":
            chunk = min(int(chunk), max(1, self.CPU_CHUNK_SAMPLES // self.cfg.samples_per_ray))
        return render_image(cameras, i, chain.radiance_fn, chunk=chunk, supersample=supersample,
                            **self._kwargs(chain, False, None))

    def update(self, step: int, chain, *, every: int, warmup: int) -> None:
        """Refresh the occupancy grid from ``chain.density_fn`` (every ``every`` steps, all cells during
        ``warmup``); from step ``cull_after`` on, the grid is used to skip samples."""
        self.grid.update(step, chain.density_fn, self.step_size, occ_thre=self.cfg.occ_threshold,
                         n=every, warmup_steps=warmup)
        if step >= self.cfg.cull_after and not bool(self.grid_ready):
            self.grid_ready.fill_(True)


def build_volume(cfg: VolumeRendererConfig, ctx) -> VolumeRenderer:
    """Build the volume renderer from its ``renderer:`` block (``VolumeRendererConfig``), with the
    scene's box, background, near and far."""
    s = ctx.scene
    return VolumeRenderer(cfg, ctx.aabb, s.background, s.near, s.far)
