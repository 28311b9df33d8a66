"""Surface reconstruction from raw point clouds (Atzmon et al. 2019, §4, Eq. 13) and the naive
|F|-regression baseline, as pipeline loss terms ``loss(batch, out, system) -> scalar``.

Eq. 13::

    loss(θ) = Σ_{t∈T} ( ∫_{S_t(θ)} | d(x, X) − |t| |^p dv(x) )^{1/p}  +  λ/N Σ_j |F(x_j; θ)|

The integral over S_t is a mean over level-set samples: starting points from the configured
measure are projected on S_t with generalized Newton (Eq. 4/5), and each valid sample enters
the loss through its sample network p(θ) (Eq. 9). d(p, X) is the distance to the nearest input
point, found with a KD-tree (pykdtree, scipy fallback) built once at build time; the nearest
neighbour is looked up for the detached p and the distance ‖p(θ) − x_nn‖ is differentiable.

Random draws use torch's global RNG (checkpointed by the trainer). The pool of current
samples (measure ``current``/``mixed``) is a buffer, so a resumed run continues identically.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from plugins.sample_network.config import ReconConfig, UDFRegressionConfig
from plugins.sample_network.projection import initial_points, newton_project
from plugins.sample_network.sample_net import sample_network_fused


class KNN:
    """Nearest input point: ``query(q (m,3) np) -> (dist (m,), idx (m,))``; O(m log N)."""

    def __init__(self, points: np.ndarray):
        self.points = np.ascontiguousarray(points, dtype=np.float32)
        try:
            from pykdtree.kdtree import KDTree

            self.tree = KDTree(self.points)
            self.kind = "pykdtree"
        except ImportError:  # pragma: no cover
            from scipy.spatial import cKDTree

            self.tree = cKDTree(self.points)
            self.kind = "scipy"

    def query(self, q: np.ndarray):
        q = np.ascontiguousarray(q, dtype=np.float32)
        d, i = self.tree.query(q, k=1)
        return np.asarray(d).reshape(-1), np.asarray(i, dtype=np.int64).reshape(-1)


def _scene_points(ctx) -> np.ndarray:
    from pipeline.types import NLSError

    pts = getattr(ctx.scene, "points", None) if ctx is not None and ctx.scene is not None else None
    if pts is None or len(pts) == 0:
        raise NLSError("this loss needs a point cloud: use a scene source that produces points "
                       "(e.g. `scene: {type: scan, path: ...}` or `{type: geometry, ...}`)")
    return np.asarray(pts, np.float32)


def _sdf_fn(system):
    return lambda x: system.chain(x, None)["sdf"]


class _PointCloudLoss(nn.Module):
    """Shared state of the point-cloud losses: config, KD-tree of the input points (P,3), the
    points as a (non-persistent) buffer, and the sampling box."""

    def __init__(self, cfg, points: np.ndarray, bbox):
        super().__init__()
        self.cfg = cfg
        self.knn = KNN(points)
        self.register_buffer("points", torch.from_numpy(np.asarray(points, np.float32)), persistent=False)
        self.bbox = [float(v) for v in bbox]


class LevelSetRecon(_PointCloudLoss):
    """Eq. 13 as a loss term (see the module docstring). ``info`` holds the last step's sample
    counts and Newton statistics (for logging/benchmarks)."""

    def __init__(self, cfg: ReconConfig, points: np.ndarray, bbox):
        super().__init__(cfg, points, bbox)
        k = len(cfg.levels)
        self.register_buffer("pool", torch.zeros(k, cfg.n_samples, 3))
        self.register_buffer("pool_ready", torch.zeros((), dtype=torch.bool))
        self.info: dict = {}

    def _fresh(self, n: int, device) -> Tensor:
        if self.cfg.init == "uniform":
            return initial_points("uniform", n, bbox=self.bbox, device=device)
        return initial_points("gaussian", n, bbox=self.bbox, points=self.points, sigma=self.cfg.sigma,
                              uniform_fraction=self.cfg.uniform_fraction, device=device)

    def _starts(self, k: int, device) -> tuple[Tensor, bool]:
        cfg, n = self.cfg, self.cfg.n_samples
        if cfg.init in ("uniform", "gaussian") or not bool(self.pool_ready):
            return self._fresh(n, device), False
        pool = self.pool[k]
        if cfg.init == "current":
            return pool.clone(), True
        m = int(round(cfg.refresh * n))  # mixed: redraw a share of the pool
        x = pool.clone()
        if m:
            i = torch.randperm(n, device=device)[:m]
            x[i] = self._fresh(m, device)
        return x, True

    def level_set_samples(self, fn, k: int, t: float) -> tuple[Tensor, dict]:
        """Project starting points on S_t; returns the valid samples (detached) and stats."""
        cfg = self.cfg
        x0, warm = self._starts(k, self.points.device)
        proj = newton_project(fn, x0, t, iters=cfg.newton_iters, tol=cfg.newton_tol, max_step=cfg.max_step,
                              bbox=self.bbox)
        valid = proj.valid
        with torch.no_grad():  # keep valid samples; invalid ones restart from the fresh measure next step
            keep = torch.where(valid[:, None], proj.points, self._fresh(len(x0), x0.device))
            self.pool[k].copy_(keep)
        stats = {"valid": int(valid.sum()), "n": len(x0), "mean_iters": float(proj.iterations.float().mean())}
        return proj.points[valid], stats

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        cfg = self.cfg
        fn = _sdf_fn(system)
        total = torch.zeros((), device=self.points.device)
        info = {}
        for k, t in enumerate(cfg.levels):
            p, stats = self.level_set_samples(fn, k, t)
            info[f"S_{t:g}"] = stats
            if len(p) == 0:
                continue
            p_theta = sample_network_fused(fn, p, t)  # Eq. 9
            _, idx = self.knn.query(p.detach().cpu().numpy())
            nn_pts = self.points[torch.from_numpy(idx).to(self.points.device)]
            d = (p_theta - nn_pts).norm(dim=1)
            total = total + ((d - abs(t)).abs().pow(cfg.p).mean()).pow(1.0 / cfg.p)
        self.pool_ready.fill_(True)
        if cfg.lam > 0:
            j = torch.randint(0, len(self.points), (min(cfg.batch_points, len(self.points)),),
                              device=self.points.device)
            total = total + cfg.lam * fn(self.points[j]).abs().mean()
        self.info = info
        return cfg.weight * total


class UDFRegression(_PointCloudLoss):
    """Naive baseline: mean | |F(x)| − d(x, X) | at random points (uniform + near the input)."""

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        cfg = self.cfg
        x = initial_points("gaussian", cfg.n_points, bbox=self.bbox, points=self.points, sigma=cfg.sigma,
                           uniform_fraction=cfg.uniform_fraction, device=self.points.device)
        d, _ = self.knn.query(x.cpu().numpy())
        d = torch.from_numpy(d).to(x)
        f = _sdf_fn(system)(x)
        return cfg.weight * (f.abs() - d).abs().mean()


def build_recon(cfg: ReconConfig, ctx) -> LevelSetRecon:
    return LevelSetRecon(cfg, _scene_points(ctx), ctx.aabb.tolist())


def build_udf(cfg: UDFRegressionConfig, ctx) -> UDFRegression:
    return UDFRegression(cfg, _scene_points(ctx), ctx.aabb.tolist())
