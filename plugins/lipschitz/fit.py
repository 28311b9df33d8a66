"""Stand-alone training loops on labelled points (tests, benchmarks, notebooks).

The pipeline trains through :class:`plugins.lipschitz.losses.HKRLoss` and the core trainer; these
functions do the same optimisation without a run folder: :func:`fit_hkr` for the 1-Lipschitz field
and :func:`fit_eikonal_baseline` for the baseline of the issue — a plain MLP of similar size fit to
the same labels with a hinge on the labels plus an eikonal regulariser (Gropp et al. 2020)
instead of the Lipschitz constraint.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.lipschitz.losses import hkr_objective

__all__ = ["PlainMLP", "fit_hkr", "fit_eikonal_baseline", "LabelSampler"]


class PlainMLP(nn.Module):
    """Unconstrained SDF MLP: ``depth`` hidden layers of ``width`` with softplus (beta 100), geometric-style
    init towards a sphere of radius 0.3 (Atzmon & Lipman 2020). ``forward(x, d=None) -> {"sdf"}``."""

    def __init__(self, depth: int = 4, width: int = 128, radius: float = 0.3):
        super().__init__()
        dims = [3] + [width] * depth + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for i, lin in enumerate(self.layers):
            if i == len(self.layers) - 1:
                nn.init.normal_(lin.weight, mean=(3.14159 / width) ** 0.5, std=1e-4)
                nn.init.constant_(lin.bias, -radius)
            else:
                nn.init.normal_(lin.weight, 0.0, (2 / lin.out_features) ** 0.5)
                nn.init.zeros_(lin.bias)

    def sdf(self, x: Tensor) -> Tensor:
        """Points ``x`` (N, 3) -> sdf (N,)."""
        h = x
        for lin in self.layers[:-1]:
            h = F.softplus(lin(h), beta=100)
        return self.layers[-1](h)[..., 0]

    def forward(self, x: Tensor, d: Optional[Tensor] = None) -> dict:
        """Points ``x`` (N, 3) -> ``{"sdf": (N,)}``; ``d`` is ignored."""
        return {"sdf": self.sdf(x)}


class LabelSampler:
    """Draws ``2n`` labelled points from the union of ``inside`` (y=-1) and ``outside`` (y=+1), and
    ``n`` of the optional ``surface (M,3)`` samples (:meth:`surface_batch`, None without them)."""

    def __init__(self, inside, outside, device="cpu", surface=None):
        self.x = torch.cat([torch.as_tensor(inside), torch.as_tensor(outside)]).float().to(device)
        self.y = torch.cat([-torch.ones(len(inside)), torch.ones(len(outside))]).to(device)
        self.surface = None if surface is None else torch.as_tensor(surface).float().to(device)

    def __call__(self, n: int, generator=None) -> tuple[Tensor, Tensor]:
        k = torch.randint(0, len(self.x), (2 * n,), generator=generator).to(self.x.device)
        return self.x[k], self.y[k]

    def surface_batch(self, n: int, weight: float = 1.0) -> Optional[Tensor]:
        """``n`` surface samples, or None when there are none or ``weight`` is 0 (no draw: the RNG is untouched)."""
        if self.surface is None or weight <= 0:
            return None
        return self.surface[torch.randint(0, len(self.surface), (n,)).to(self.surface.device)]


def _loop(model, step_fn, steps, lr, lr_final_factor, max_seconds, log_every, log, time_schedule=False):
    """Adam with exponential decay to ``lr * lr_final_factor`` over ``steps``, or over ``max_seconds`` of
    wall time when ``time_schedule`` (fixed time budgets on a loaded machine)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, lr_final_factor ** (1.0 / max(1, steps)))
    t0 = time.perf_counter()
    done = 0
    loss = torch.zeros(())
    for k in range(steps):
        elapsed = time.perf_counter() - t0
        if max_seconds is not None and elapsed > max_seconds:
            break
        if time_schedule and max_seconds:
            for g in opt.param_groups:
                g["lr"] = lr * lr_final_factor ** (elapsed / max_seconds)
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not time_schedule:
            sched.step()
        done = k + 1
        if log and log_every and done % log_every == 0:
            log(f"step {done}/{steps} loss {float(loss):.5f} ({time.perf_counter() - t0:.1f}s)")
    return {"steps": done, "seconds": time.perf_counter() - t0, "final_loss": float(loss.detach())}


def fit_hkr(field: nn.Module, sampler: LabelSampler, *, steps: int = 1000, batch_size: int = 2048,
            lr: float = 5e-3, lr_final_factor: float = 0.05, margin: float = 0.01, lam: float = 100.0,
            surface_weight: float = 0.0, max_seconds: Optional[float] = None, time_schedule: bool = False,
            log_every: int = 0, log=None) -> dict:
    """Minimise the hKR loss of ``field`` (``field.sdf``) on ``sampler``'s points (plus the optional
    surface term of :func:`~plugins.lipschitz.losses.hkr_objective` on its surface samples)."""
    def step():
        x, y = sampler(batch_size)
        return hkr_objective(field.sdf, x, y, margin, lam, sampler.surface_batch(batch_size, surface_weight), surface_weight)
    return _loop(field, step, steps, lr, lr_final_factor, max_seconds, log_every, log, time_schedule)


def fit_eikonal_baseline(model: nn.Module, sampler: LabelSampler, box, *, steps: int = 1000,
                         batch_size: int = 2048, lr: float = 1e-3, lr_final_factor: float = 0.05,
                         margin: float = 0.01, lam: float = 100.0, eikonal_weight: float = 1.0,
                         surface_weight: float = 0.0, max_seconds: Optional[float] = None,
                         time_schedule: bool = False, log_every: int = 0, log=None) -> dict:
    """The baseline: the same objective on the same labels (:func:`fit_hkr`'s), but with an eikonal penalty
    ``w * lam * E[(||grad f|| - 1)^2]`` on uniform box points in place of the 1-Lipschitz architecture (scaled
    by the hinge's ``lam`` so that ``w = eikonal_weight`` weighs it against the hinge term)."""
    b = torch.as_tensor(list(box), dtype=torch.float32, device=sampler.x.device)

    def step():
        x, y = sampler(batch_size)
        loss = hkr_objective(model.sdf, x, y, margin, lam, sampler.surface_batch(batch_size, surface_weight), surface_weight)
        xr = (b[:3] + (b[3:] - b[:3]) * torch.rand(batch_size, 3, device=b.device)).requires_grad_(True)
        (g,) = torch.autograd.grad(model.sdf(xr).sum(), xr, create_graph=True)
        return loss + eikonal_weight * lam * ((g.norm(dim=-1) - 1) ** 2).mean()
    return _loop(model, step, steps, lr, lr_final_factor, max_seconds, log_every, log, time_schedule)
