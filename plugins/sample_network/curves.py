"""Curve reconstruction (Atzmon et al. 2019, §4): F: R³ → R², T = {0}; the curve is the
intersection of the two zero level sets {F₁ = 0} ∩ {F₂ = 0}.

Training uses the Eq. 13 loss with l = 2: level-set samples come from generalized Newton with
the Moore–Penrose inverse through a 2×2 solve per point (Eq. 4), enter the loss as sample networks
(Eq. 9), and d(p, X) is the KD-tree distance to the input points; the data term is λ·mean‖F(x_j)‖.

Export: :func:`extract_polyline` samples the curve (projections of points around the input),
thins the samples to a spacing h, chains nearest neighbours into polylines (a new polyline starts
where the gap exceeds ``max_gap``·h, closed loops are closed), and :func:`export_polyline`
writes OBJ (``v`` + ``l`` lines) or PLY (vertex + edge elements).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from plugins.sample_network.config import CurveConfig, MLPSDFConfig
from plugins.sample_network.fields import MLPSDF
from plugins.sample_network.losses import KNN
from plugins.sample_network.projection import initial_points, newton_project
from plugins.sample_network.sample_net import sample_network


def curve_loss(model: MLPSDF, points: torch.Tensor, knn: KNN, cfg: CurveConfig) -> torch.Tensor:
    """One evaluation of the l = 2 Eq. 13 loss (T = {0})."""
    fn = model.values
    x0 = initial_points("gaussian", cfg.n_samples, points=points, sigma=cfg.sigma)
    proj = newton_project(fn, x0, 0.0, iters=cfg.newton_iters, tol=cfg.newton_tol, max_step=0.25)
    p = proj.valid_points
    loss = torch.zeros(())
    if len(p):
        pt = sample_network(fn, p, 0.0)
        _, idx = knn.query(p.numpy())
        d = (pt - points[torch.from_numpy(idx)]).norm(dim=1)
        loss = loss + d.pow(cfg.p).mean().pow(1.0 / cfg.p)
    j = torch.randint(0, len(points), (min(cfg.batch_points, len(points)),))
    return cfg.weight * (loss + cfg.lam * fn(points[j]).norm(dim=1).mean())


def reconstruct_curve(points: np.ndarray, *, steps: int = 300, lr: float = 1e-3,
                      field: Optional[MLPSDFConfig] = None, cfg: Optional[CurveConfig] = None,
                      seed: int = 0) -> MLPSDF:
    """Fit F: R³ → R² to a 3D point sample of a curve; returns the trained field."""
    torch.manual_seed(seed)
    field = field or MLPSDFConfig(hidden=64, layers=3, out_dim=2, init_radius=0.3)
    if field.out_dim != 2:
        field = field.model_copy(update={"out_dim": 2})
    cfg = cfg or CurveConfig()
    model = MLPSDF(field)
    pts = torch.from_numpy(np.asarray(points, np.float32))
    knn = KNN(points)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = curve_loss(model, pts, knn, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def order_polylines(samples: np.ndarray, spacing: float, max_gap: float = 3.0) -> list[np.ndarray]:
    """Thin ``samples`` (m, 3) to ~``spacing`` and chain nearest neighbours into polylines.
    A closed loop is returned with its first point repeated at the end."""
    if len(samples) == 0:
        return []
    keys = np.floor(samples / spacing).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    pts = samples[np.sort(first)]
    from scipy.spatial import cKDTree

    tree = cKDTree(pts)
    unused = np.ones(len(pts), bool)
    lines = []
    while unused.any():
        start = int(np.flatnonzero(unused)[0])
        chain = [start]
        unused[start] = False
        for direction in (0, 1):  # grow forward, then backward from the start
            cur = chain[-1] if direction == 0 else chain[0]
            while True:
                k = min(len(pts), 16)
                d, idx = tree.query(pts[cur], k=k)
                cand = [(dd, ii) for dd, ii in zip(np.atleast_1d(d), np.atleast_1d(idx)) if unused[ii]]
                if not cand or cand[0][0] > max_gap * spacing:
                    break
                cur = int(cand[0][1])
                unused[cur] = False
                if direction == 0:
                    chain.append(cur)
                else:
                    chain.insert(0, cur)
        line = pts[chain]
        if len(line) > 2 and np.linalg.norm(line[0] - line[-1]) <= max_gap * spacing:
            line = np.concatenate([line, line[:1]])
        lines.append(line)
    return lines


def extract_polyline(model: MLPSDF, points: np.ndarray, *, n: int = 20000, sigma: float = 0.03,
                     spacing: float = 0.01, max_gap: float = 3.0) -> list[np.ndarray]:
    """Sample the curve {F = 0} by projecting ``n`` points around the input, then order them."""
    pts = torch.from_numpy(np.asarray(points, np.float32))
    x0 = initial_points("gaussian", n, points=pts, sigma=sigma)
    proj = newton_project(model.values, x0, 0.0, iters=20, tol=1e-4, max_step=0.25)
    return order_polylines(proj.valid_points.numpy(), spacing, max_gap)


def export_polyline(lines: list[np.ndarray], path) -> Path:
    """Write polylines as OBJ (``v``/``l`` records) or PLY (vertex + edge elements)."""
    from pipeline.types import NLSError

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".obj", ".ply"):
        raise NLSError(f"cannot export a polyline to {path}: use .obj or .ply")
    path.parent.mkdir(parents=True, exist_ok=True)
    verts, segs, lrecs, off = [], [], [], 0
    for line in lines:
        verts.append(line)
        ids = np.arange(off, off + len(line))
        if len(line) > 2 and np.allclose(line[0], line[-1]):  # closed: reuse the first vertex
            ids[-1] = ids[0]
            verts[-1] = line[:-1]
            off += len(line) - 1
        else:
            off += len(line)
        lrecs.append(ids)
        segs.extend(zip(ids[:-1], ids[1:]))
    V = np.concatenate(verts) if verts else np.zeros((0, 3))
    if ext == ".obj":
        rows = [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in V]
        rows += ["l " + " ".join(str(i + 1) for i in ids) for ids in lrecs]
        path.write_text("\n".join(rows) + "\n")
    else:
        head = ["ply", "format ascii 1.0", f"element vertex {len(V)}", "property float x", "property float y",
                "property float z", f"element edge {len(segs)}", "property int vertex1", "property int vertex2",
                "end_header"]
        rows = head + [f"{a:.6f} {b:.6f} {c:.6f}" for a, b, c in V] + [f"{i} {j}" for i, j in segs]
        path.write_text("\n".join(rows) + "\n")
    return path
