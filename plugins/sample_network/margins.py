"""Classifier margin heads (Atzmon et al. 2019, §3.1 and §3.2) and their baselines, in one code path.

A classifier F: R^d → R^L gives logits; a binary classifier gives one score F (n,), turned into the
two logits [−F/2, F/2] so that the margin of class 1 is F. For a sample with label y the margin is
``m_y(x) = f_y(x) − max_{i≠y} f_i(x)`` and the decision boundary of class y is S = {m_y = 0}
(Eq. 1); S_t = {m_y = t}.

Heads (:func:`classifier_loss` ``kind``):

* ``ce`` — cross-entropy.
* ``hinge`` — mean max(0, 1 − m_y(x)) (multi-class hinge; the soft-SVM data term of Eq. 10).
* ``geometric_svm`` — Eq. 11: ``mean_i max(0, 1 − m_{y_i}(x_i)) + λ Σ_{t∈{−1,1}} D(S_0, S_t)^α``.
  D is estimated with samples: training points are projected onto S_0 (p₀), those onto S_t (p_t),
  and D = mean ‖p_t(θ) − p₀(θ)‖ with both ends sample networks (Eq. 9). ``norm="linf"`` (§5.1,
  α = −1) projects along the PGD (sign-gradient) direction with false position, so that for an
  affine F the distance is exactly the L∞ distance |t|/‖w‖₁; ``norm="l2"`` uses generalized Newton
  (|t|/‖w‖₂ for affine F). With α = −2 and L2, an affine binary F gives
  D^−2 = ‖w‖², i.e. Eq. 11 = mean hinge + 2λ‖w‖² — the soft-SVM loss (Eq. 10) with λ' = 2λ.
* ``robust_margin`` — Eq. 12: ``ce_weight·CE + mean_j λ_j max(0, ε_train − s_j ρ(x_j, p_j(θ)))``
  where p_j is the decision-boundary point found from x_j along the PGD direction with false
  position (§3.2), p_j(θ) its sample network, s_j = +1 if x_j is classified correctly and −1
  otherwise, λ_j = ``lam`` (correct) or ``lam_wrong`` (misclassified), and ρ is the distance
  along the axis of the largest gradient component k = argmax_i |∂_i m(p_j)|:
  ρ = |(x_j − p_j(θ))_k|. For an affine F the L∞ walk moves all coordinates by the same amount,
  so ρ is the exact L∞ distance |F(x)|/‖w‖₁.
* ``pgd_at`` — Madry et al.: CE at the L∞ PGD adversary (random start, ``steps`` steps of 2.5ε/steps).
* ``trades`` — Zhang et al. 2019: CE(x) + β·KL(p(x) ‖ p(x_adv)), x_adv maximising the KL (β = ``lam``).

Projections need a pointwise model (no batch-norm in training mode): call the model in eval mode
or use layers without batch statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.sample_network.config import MarginConfig
from plugins.sample_network.projection import (
    Projection, false_position_project, newton_project, value_and_jacobian)
from plugins.sample_network.sample_net import sample_network

KINDS = ("ce", "hinge", "geometric_svm", "robust_margin", "pgd_at", "trades")


def as_logits(out: Tensor) -> Tensor:
    """(n,) binary scores → (n, 2) logits [−F/2, F/2]; (n, L) logits unchanged."""
    if out.ndim == 1 or out.shape[-1] == 1:
        f = out.reshape(-1)
        return torch.stack([-0.5 * f, 0.5 * f], 1)
    return out


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """m_y = f_y − max_{i≠y} f_i, (n,)."""
    fy = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return fy - other


@dataclass
class HeadParams:
    """Options shared by all heads. The defaults are those of :class:`MarginConfig` except
    ``eps_train`` (0.1 here; the occupancy loss takes
    MarginConfig's 0.02 world units); ``newton_iters``, ``tol``, ``clamp`` and ``levels`` have no
    MarginConfig key and keep these defaults there."""

    lam: float = 0.1
    alpha: float = -1.0
    norm: str = "linf"
    eps_train: float = 0.1
    lam_wrong: float = 1.0
    ce_weight: float = 1.0
    pgd_steps: int = 10
    newton_iters: int = 10
    tol: float = 1e-4
    clamp: Optional[tuple[float, float]] = None  # input range for PGD adversaries (images: (0, 1))
    levels: tuple[float, ...] = (-1.0, 1.0)
    info: dict = field(default_factory=dict)


def _flat_model(model: Callable, shape) -> Callable:
    return lambda z: as_logits(model(z.reshape(z.shape[0], *shape)))


def _margin_fn(fm: Callable, y: Tensor) -> Callable:
    """Indexed margin function for the projections: fn(x, idx) = m_{y[idx]}(x)."""
    return lambda z, idx: margin(fm(z), y[idx])


def project_level(fm: Callable, x: Tensor, y: Tensor, t: float, norm: str, hp: HeadParams) -> Projection:
    """Samples of S_t = {m_y = t} from x: false position along the PGD direction (linf) or
    generalized Newton (l2)."""
    fn = _margin_fn(fm, y)
    if norm == "linf":
        return false_position_project(fn, x, t, norm="linf", max_steps=hp.pgd_steps, tol=hp.tol, indexed=True)
    return newton_project(fn, x, t, iters=hp.newton_iters, tol=hp.tol, indexed=True)


def _dist(v: Tensor, norm: str) -> Tensor:
    return v.abs().amax(1) if norm == "linf" else v.norm(dim=1)


def geometric_svm_distances(fm: Callable, x: Tensor, y: Tensor, hp: HeadParams) -> dict:
    """D(S_0, S_t) per level t via sample networks on p₀ ∈ S_0 and p_t ∈ S_t (Eq. 11's distances).
    Returns {t: (D_t scalar tensor with θ-gradient, p0 (k,d), pt (k,d))}; empty levels are skipped."""
    out = {}
    p0 = project_level(fm, x, y, 0.0, hp.norm, hp)
    for t in hp.levels:
        pt = project_level(fm, p0.points, y, t, hp.norm, hp)
        ok = p0.valid & pt.valid
        if not ok.any():
            continue
        ys = y[ok]
        fn = lambda z, ys=ys: margin(fm(z), ys)
        a = sample_network(fn, p0.points[ok], 0.0)
        b = sample_network(fn, pt.points[ok], t)
        out[t] = (_dist(b - a, hp.norm).mean(), p0.points[ok], pt.points[ok])
    return out


def robust_boundary(fm: Callable, x: Tensor, y: Tensor, hp: HeadParams):
    """Decision-boundary samples p_j (§3.2) and ρ(x_j, p_j(θ)) along the largest-gradient axis.
    Returns (rho (k,) with θ-gradient, valid mask (n,), p (k,d))."""
    proj = false_position_project(_margin_fn(fm, y), x, 0.0, norm="linf", max_steps=hp.pgd_steps,
                                  tol=hp.tol, indexed=True)
    ok = proj.valid
    p, ys = proj.points[ok], y[ok]
    fn = lambda z: margin(fm(z), ys)
    if len(p) == 0:
        return torch.zeros(0, device=x.device), ok, p
    _, J = value_and_jacobian(fn, p)
    k = J[:, 0].abs().argmax(1)
    p_theta = sample_network(fn, p, 0.0)
    rho = (x[ok] - p_theta).gather(1, k[:, None])[:, 0].abs()
    return rho, ok, p


def pgd_attack(fm: Callable, x: Tensor, y: Tensor, eps: float, steps: int, *, objective: str = "ce",
               clamp=None, ref_logits: Optional[Tensor] = None) -> Tensor:
    """L∞ PGD (Madry et al.) on ``x (n,D)`` with labels ``y (n,)``: random start in the ε-ball (for
    TRADES, ``objective="kl"``, a uniform start within 0.001 of ``x``), ``steps``
    signed-gradient steps of 2.5ε/steps maximising CE (or the KL to ``ref_logits`` for TRADES),
    projected to the ball. Returns the adversarial points, (n,D)."""
    step = 2.5 * eps / steps
    xa = x.detach() + (0.001 if objective == "kl" else eps) * (2 * torch.rand_like(x) - 1)
    if clamp is not None:
        xa = xa.clamp(*clamp)
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.enable_grad():
            lg = fm(xa)
            if objective == "kl":
                obj = F.kl_div(F.log_softmax(lg, 1), F.softmax(ref_logits.detach(), 1), reduction="sum")
            else:
                obj = F.cross_entropy(lg, y, reduction="sum")
            (g,) = torch.autograd.grad(obj, xa)
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps)
        if clamp is not None:
            xa = xa.clamp(*clamp)
    return xa.detach()


def classifier_loss(kind: str, model: Callable, x: Tensor, y: Tensor, hp: Optional[HeadParams] = None) -> Tensor:
    """Loss of head ``kind`` (see the module docstring) for ``model`` on a batch ``x`` (n, ...)
    with integer labels ``y`` (n,). ``model`` returns (n, L) logits or (n,) binary scores.
    Statistics of the last call are left in ``hp.info``."""
    if kind not in KINDS:
        raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(KINDS)}")
    hp = hp or HeadParams()
    shape = x.shape[1:]
    xf = x.reshape(x.shape[0], -1)
    fm = _flat_model(model, shape)
    logits = fm(xf)
    m = margin(logits, y)
    hp.info = {"accuracy": float((m > 0).float().mean())}
    if kind == "ce":
        return F.cross_entropy(logits, y)
    if kind == "hinge":
        return F.relu(1 - m).mean()
    if kind == "geometric_svm":
        loss = F.relu(1 - m).mean()
        for t, (D, _, _) in geometric_svm_distances(fm, xf, y, hp).items():
            loss = loss + hp.lam * D.clamp(min=1e-6).pow(hp.alpha)
            hp.info[f"D_{t:g}"] = float(D.detach())
        return loss
    if kind == "robust_margin":
        loss = hp.ce_weight * F.cross_entropy(logits, y) if hp.ce_weight > 0 else logits.sum() * 0
        rho, ok, _ = robust_boundary(fm, xf, y, hp)
        if len(rho):
            s = torch.where(m[ok] > 0, 1.0, -1.0)
            lam = torch.where(m[ok] > 0, hp.lam, hp.lam_wrong)
            loss = loss + (lam * F.relu(hp.eps_train - s * rho)).sum() / len(xf)
            hp.info.update(rho_mean=float(rho.detach().mean()), boundary_valid=float(ok.float().mean()))
        return loss
    if kind == "pgd_at":
        xa = pgd_attack(fm, xf, y, hp.eps_train, hp.pgd_steps, clamp=hp.clamp)
        return F.cross_entropy(fm(xa), y)
    # trades
    xa = pgd_attack(fm, xf, y, hp.eps_train, hp.pgd_steps, objective="kl", clamp=hp.clamp, ref_logits=logits)
    kl = F.kl_div(F.log_softmax(fm(xa), 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, y) + hp.lam * kl


# ---------------------------------------------------------------------------- 3D occupancy heads


class OccupancyMargin(nn.Module):
    """A classifier head on the occupancy classifier of a 3D field: F(x) = −sdf_scale·sdf(x)
    (inside positive), labels inside = 1 / outside = 0 from the ground-truth mesh's winding
    number; the decision boundary {F = 0} is the surface. A pool of labelled points (half uniform
    in the box, half near the surface) is built once; each step draws ``n_points`` of them."""

    def __init__(self, kind: str, cfg: MarginConfig, gt_mesh, bbox, pool: int = 100_000):
        super().__init__()
        import igl

        from pipeline.scenes.mesh_render import load_mesh

        self.kind, self.cfg = kind, cfg
        mesh = load_mesh(gt_mesh)
        V, Fc = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
        b = np.asarray(bbox, np.float64)
        rng = np.random.default_rng(0)
        uni = b[:3] + (b[3:] - b[:3]) * rng.random((pool // 2, 3))
        # the same generator, not a second default_rng(0): the uniform points were trimesh's face picks
        surf, _ = __import__("trimesh").sample.sample_surface(mesh, pool - pool // 2, seed=rng)
        near = surf + rng.normal(0, cfg.sigma, surf.shape)
        q = np.concatenate([uni, near])
        wn = igl.fast_winding_number(V, Fc, q)
        self.register_buffer("x", torch.from_numpy(q.astype(np.float32)), persistent=False)
        self.register_buffer("y", torch.from_numpy((wn > 0.5).astype(np.int64)), persistent=False)
        self.hp = HeadParams(lam=cfg.lam, alpha=cfg.alpha, norm=cfg.norm, eps_train=cfg.eps_train,
                             lam_wrong=cfg.lam_wrong, ce_weight=cfg.ce_weight, pgd_steps=cfg.pgd_steps)

    def forward(self, batch: dict, out: dict, system) -> Tensor:
        """Weighted scalar :func:`classifier_loss` of ``kind`` on ``n_points`` pool points drawn at random;
        ``batch`` and ``out`` are unused."""
        i = torch.randint(0, len(self.x), (self.cfg.n_points,), device=self.x.device)
        scale = self.cfg.sdf_scale
        model = lambda z: -scale * system.chain(z, None)["sdf"]
        return self.cfg.weight * classifier_loss(self.kind, model, self.x[i], self.y[i], self.hp)


def _build(kind: str):
    def build(cfg: MarginConfig, ctx):
        from pipeline.types import NLSError

        if ctx is None or ctx.scene is None or not ctx.scene.gt_mesh:
            raise NLSError(f"loss {kind!r} on a 3D field needs inside/outside labels from the scene's "
                           f"ground-truth mesh; this scene has none")
        return OccupancyMargin(kind, cfg, ctx.scene.gt_mesh, ctx.aabb.tolist())
    return build


build_margin_ce = _build("ce")
build_margin_hinge = _build("hinge")
build_geometric_svm = _build("geometric_svm")
build_robust_margin = _build("robust_margin")
build_pgd_at = _build("pgd_at")
build_trades = _build("trades")
