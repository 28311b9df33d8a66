"""Level-set sampling (Atzmon et al. 2019, §2.1 and §3.2).

Generalized Newton (Eq. 4)::

    p ← p − D_xF(p; θ₀)^† (F(p; θ₀) − c)

with the Moore–Penrose pseudo-inverse ``D_xF^†``: for scalar F (l = 1) it is
``D_xFᵀ / ‖D_xF‖²`` (Eq. 5); for l > 1 it is ``D_xFᵀ (D_xF D_xFᵀ)⁻¹``, computed with one
l×l solve per point. Lemma 1: for affine F one step is the orthogonal projection onto
{F = c}. Points are processed in chunks (bounded memory for any n), only points that have
not converged are evaluated and moved, and the result carries a validity mask and the final
values ``F(p_i) − c_i`` (plus the iteration at which each point stopped).

For classifiers (§3.2) :func:`false_position_project` walks along the PGD direction
(sign of the gradient for L∞, the normalised gradient for L2) until the margin changes sign,
then runs false position (regula falsi, Illinois variant) on the last segment.

``fn`` maps ``(m, d)`` points to ``(m,)`` or ``(m, l)`` values and must be pointwise (row i of
the output depends on row i of the input only). With ``indexed=True`` it is called
``fn(x, idx)`` with the original indices of the rows (per-sample labels, targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

Level = Union[float, Sequence[float], Tensor]


@dataclass
class Projection:
    """Result of a projection.

    points: (n, d) final positions (detached).
    values: (n, l) final residuals F(p) − c.
    valid: (n,) bool — converged (‖F(p) − c‖ < tol), finite and inside ``bbox`` when given.
    iterations: (n,) int — Newton/false-position iterations spent on each point.
    """

    points: Tensor
    values: Tensor
    valid: Tensor
    iterations: Tensor

    @property
    def valid_points(self) -> Tensor:
        """``points[valid]`` (k, d)."""
        return self.points[self.valid]


def _call(fn: Callable, x: Tensor, idx: Tensor, indexed: bool) -> Tensor:
    y = fn(x, idx) if indexed else fn(x)
    return y.reshape(x.shape[0], -1)


def value_and_jacobian(fn: Callable, x: Tensor, idx: Optional[Tensor] = None, *, indexed: bool = False,
                       create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Values (m, l) and Jacobians D_xF (m, l, d) of a pointwise ``fn`` at ``x`` (one backward per output)."""
    if idx is None:
        idx = torch.arange(x.shape[0], device=x.device)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = _call(fn, x, idx, indexed)
        rows = []
        for k in range(y.shape[1]):
            (g,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=create_graph or k < y.shape[1] - 1,
                                       create_graph=create_graph)
            rows.append(g)
    J = torch.stack(rows, 1)
    return (y if create_graph else y.detach()), (J if create_graph else J.detach())


def pinv_jacobian(J: Tensor, eps: float = 1e-12) -> Tensor:
    """Moore–Penrose pseudo-inverse of full-row-rank Jacobians ``J`` (m, l, d) → (m, d, l).

    l = 1: ``Jᵀ / ‖J‖²`` (Eq. 5). l > 1: ``Jᵀ (J Jᵀ)⁻¹`` through an l×l solve per point
    (a tiny ``eps``·I keeps degenerate points finite; they end up invalid).
    """
    if J.shape[1] == 1:
        return J.transpose(1, 2) / (J.pow(2).sum(-1, keepdim=True).transpose(1, 2) + eps)
    G = J @ J.transpose(1, 2)
    G = G + eps * torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G, J).transpose(1, 2)  # (G⁻¹J)ᵀ = Jᵀ G⁻¹ (G symmetric)


def _levels(level: Level, n: int, l_dim: Optional[int], device, dtype) -> Tensor:
    """``level`` as ``(n, l)`` targets for ``n`` points of an ``l_dim``-output F: a scalar for all; a
    ``(l_dim,)`` vector, one level per output, when F has several outputs (even if ``n == l_dim``); an
    ``(n,)`` vector, one level per point, otherwise; an ``(n, l)`` array as it is."""
    c = torch.as_tensor(level, dtype=dtype, device=device)
    if c.ndim == 0:
        c = c.reshape(1, 1)
    elif c.ndim == 1:
        per_output = c.shape[0] == l_dim if l_dim is not None and l_dim > 1 else c.shape[0] != n
        c = c.reshape(1, -1) if per_output else c.reshape(-1, 1)
    return c.expand(n, c.shape[1]) if c.shape[0] == 1 else c


def _inside(p: Tensor, bbox: Optional[Sequence[float]]) -> Tensor:
    if bbox is None:
        return torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
    b = torch.as_tensor(bbox, dtype=p.dtype, device=p.device).reshape(-1)
    return ((p >= b[:3]) & (p <= b[3:])).all(-1) if p.shape[1] == 3 else torch.ones_like(p[:, 0], dtype=torch.bool)


def newton_project(fn: Callable, x0: Tensor, level: Level = 0.0, *, iters: int = 10, tol: float = 1e-4,
                   chunk: int = 65536, max_step: Optional[float] = None,
                   bbox: Optional[Sequence[float]] = None, indexed: bool = False) -> Projection:
    """Project ``x0`` (n, d) onto the level set {F = c} with generalized Newton steps (Eq. 4).

    Args:
        fn: pointwise map (m, d) → (m,) or (m, l), evaluated with the *current* parameters θ₀.
        level: c — a scalar, an (l,) vector, or per-point values (n,) / (n, l).
        iters: maximum Newton iterations (10–20 in the paper).
        tol: a point has converged when ‖F(p) − c‖ < tol; converged points are not moved again.
        chunk: points processed together (bounds memory).
        max_step: clip each step's length (None: pure Newton).
        bbox: points that leave this box are marked invalid (they keep moving, but are reported).

    Returns:
        :class:`Projection` with points, final residuals, validity mask and iterations.
    """
    x0 = x0.detach()
    n, dev, dt = x0.shape[0], x0.device, x0.dtype
    pts, vals, iters_out = x0.clone(), None, torch.zeros(n, dtype=torch.long, device=dev)
    c_all = None
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        p = pts[sl]
        m = p.shape[0]
        gidx = torch.arange(s, s + m, device=dev)
        active = torch.ones(m, dtype=torch.bool, device=dev)
        res = None
        c = None
        for it in range(iters + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            if it == iters:  # final residuals of the points moved by the last step
                with torch.no_grad():
                    y = _call(fn, p[idx], gidx[idx], indexed)
                res[idx] = y - c[idx]
                break
            y, J = value_and_jacobian(fn, p[idx], gidx[idx], indexed=indexed)
            if c is None:
                c = _levels(level, n, y.shape[1], dev, dt)[sl] if c_all is None else c_all[sl]
                res = torch.empty(m, y.shape[1], dtype=dt, device=dev)
            r = y - c[idx]
            res[idx] = r
            conv = r.norm(dim=1) < tol
            move = idx[~conv]
            active[idx[conv]] = False
            if move.numel() == 0:
                break
            step = (pinv_jacobian(J[~conv]) @ r[~conv].unsqueeze(-1)).squeeze(-1)  # Eq. 4 / Eq. 5
            if max_step is not None:
                ln = step.norm(dim=1, keepdim=True)
                step = step * torch.clamp(max_step / (ln + 1e-30), max=1.0)
            p[move] = p[move] - step
            iters_out[gidx[move]] += 1
        pts[sl] = p
        if vals is None:
            vals = torch.empty(n, res.shape[1], dtype=dt, device=dev)
        vals[sl] = res
    if vals is None:  # n == 0
        vals = torch.empty(0, 1, dtype=dt, device=dev)
    valid = torch.isfinite(pts).all(1) & torch.isfinite(vals).all(1) & (vals.norm(dim=1) < tol) & _inside(pts, bbox)
    return Projection(pts, vals, valid, iters_out)


def false_position_project(fn: Callable, x0: Tensor, level: Level = 0.0, *, norm: str = "linf",
                           max_steps: int = 10, overshoot: float = 1.5, max_step: Optional[float] = None,
                           fp_iters: int = 20, tol: float = 1e-4, indexed: bool = False,
                           chunk: int = 65536) -> Projection:
    """Project onto {F = c} for scalar F along the PGD direction, then false position (§3.2).

    From x, step ``x ← x − η s·dir(∇F)`` with s = sign(F(x) − c), ``dir = sign`` (L∞, the PGD
    direction) or ``∇F/‖∇F‖`` (L2) and the linearised length η = overshoot·|F − c| / ‖∇F‖_*
    (dual norm: ‖·‖₁ for L∞, ‖·‖₂ for L2), clipped to ``max_step``, until F − c changes sign
    (at most ``max_steps`` steps). The crossing is then located on the last segment by
    regula falsi (Illinois variant). For an affine F and L∞ the result is the L∞-closest point
    of the hyperplane, at L∞ distance |F(x) − c| / ‖w‖₁.

    Returns a :class:`Projection` (invalid: no sign change found, or not converged).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x0 = x0.detach()
    n, dev, dt = x0.shape[0], x0.device, x0.dtype
    c_all = _levels(level, n, 1, dev, dt)[:, 0]
    out_p = x0.clone()
    out_v = torch.full((n,), float("nan"), dtype=dt, device=dev)
    out_ok = torch.zeros(n, dtype=torch.bool, device=dev)
    out_it = torch.zeros(n, dtype=torch.long, device=dev)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        gidx = torch.arange(s, e, device=dev)
        c = c_all[s:e]
        a = x0[s:e].clone()
        y, J = value_and_jacobian(fn, a, gidx, indexed=indexed)
        fa = y[:, 0] - c
        sgn = torch.sign(fa)
        b = a.clone()
        fb = fa.clone()
        crossed = fa == 0
        g = J[:, 0]
        for k in range(max_steps):
            todo = (~crossed).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            gk = g[todo]
            if norm == "linf":
                direction, dual = torch.sign(gk), gk.abs().sum(1)
            else:
                dual = gk.norm(dim=1)
                direction = gk / (dual[:, None] + 1e-30)
            eta = overshoot * fb[todo].abs() / (dual + 1e-30)
            if max_step is not None:
                eta = eta.clamp(max=max_step)
            a[todo] = b[todo]
            fa[todo] = fb[todo]
            b[todo] = b[todo] - (sgn[todo] * eta)[:, None] * direction
            y, J = value_and_jacobian(fn, b[todo], gidx[todo], indexed=indexed)
            fb[todo] = y[:, 0] - c[todo]
            g[todo] = J[:, 0]
            out_it[gidx[todo]] += 1
            crossed[todo] = torch.sign(fb[todo]) != sgn[todo]
        # regula falsi (Illinois) on [a, b] where fa, fb have opposite signs
        lo, flo, hi, fhi = a, fa.clone(), b, fb.clone()
        p = torch.where((fb == 0)[:, None], b, a).clone()
        fp = torch.where(fb == 0, fb, fa).clone()
        done = (~crossed) | (fp.abs() < tol)
        side = torch.zeros(e - s, dtype=torch.long, device=dev)
        for _ in range(fp_iters):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t = flo[idx] / (flo[idx] - fhi[idx])
            r = lo[idx] + t[:, None] * (hi[idx] - lo[idx])
            with torch.no_grad():
                fr = _call(fn, r, gidx[idx], indexed)[:, 0] - c[idx]
            out_it[gidx[idx]] += 1
            p[idx], fp[idx] = r, fr
            same_lo = torch.sign(fr) == torch.sign(flo[idx])
            i_lo, i_hi = idx[same_lo], idx[~same_lo]
            lo[i_lo], flo[i_lo] = r[same_lo], fr[same_lo]
            fhi[i_lo] = torch.where(side[i_lo] == 1, fhi[i_lo] / 2, fhi[i_lo])  # Illinois
            hi[i_hi], fhi[i_hi] = r[~same_lo], fr[~same_lo]
            flo[i_hi] = torch.where(side[i_hi] == -1, flo[i_hi] / 2, flo[i_hi])
            side[i_lo], side[i_hi] = 1, -1
            done[idx] = fr.abs() < tol
        ok = crossed & (fp.abs() < tol) & torch.isfinite(p).all(1)
        out_p[s:e], out_v[s:e], out_ok[s:e] = p, fp, ok
    return Projection(out_p, out_v[:, None], out_ok, out_it)


def initial_points(kind: str, n: int, *, bbox: Optional[Sequence[float]] = None, points: Optional[Tensor] = None,
                   sigma: float = 0.03, current: Optional[Tensor] = None, uniform_fraction: float = 0.0,
                   generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """Draw n starting points from a measure (§2.1): ``uniform`` in ``bbox``, ``gaussian``
    N(x_j, σ²I) around random input points, or ``current`` (the given samples, resampled to n).
    ``uniform_fraction`` mixes uniform points into the gaussian measure."""
    if kind == "current":
        if current is None or len(current) == 0:
            raise ValueError("initial measure 'current' needs current samples")
        i = torch.randint(0, len(current), (n,), generator=generator, device=current.device)
        return current[i].detach().clone()
    if kind == "uniform" or (kind == "gaussian" and points is None):
        if bbox is None:
            raise ValueError("the uniform measure needs bbox")
        b = torch.as_tensor(bbox, dtype=torch.float32, device=device).reshape(-1)
        return b[:3] + (b[3:] - b[:3]) * torch.rand(n, 3, generator=generator, device=device)
    if kind != "gaussian":
        raise ValueError(f"unknown initial measure {kind!r}; use uniform, gaussian or current")
    n_u = int(round(uniform_fraction * n)) if bbox is not None else 0
    i = torch.randint(0, len(points), (n - n_u,), generator=generator, device=points.device)
    g = points[i] + sigma * torch.randn(n - n_u, points.shape[1], generator=generator, device=points.device)
    if n_u:
        g = torch.cat([g, initial_points("uniform", n_u, bbox=bbox, generator=generator, device=points.device)])
    return g
