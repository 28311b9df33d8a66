"""Occupancy -> signed distance by randomized smoothing, and Monte-Carlo ``certify``.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): for a binary classifier ``f`` and
``eps ~ N(0, sigma^2 I)``, the smoothed classifier predicts class A at ``x`` with probability
``p_A = P(f(x + eps) = A)`` and is constant inside the ball of radius (their Theorem 1 with
``p_B = 1 - p_A``)::

    R = sigma * Phi^-1(p_A)                                   (Cohen et al., Eq. 3 / Thm. 1)

Pérez et al. ("Certified robustness as a tool for 3D vision", §3) observe that for an
occupancy classifier this maximal certified radius is a distance to the surface of the smoothed
occupancy, a *weak* SDF (exact for a half-space). It never exceeds the distance to the smoothed
classifier's boundary {G*occ = 1/2}; against the true surface it is a lower bound inside and near
smooth surfaces, but exceeds the true distance outside convex corners (see the package docstring).
With ``p = (G_sigma * occ)(x)`` the probability of "inside" and the sign convention *negative
inside*::

    sdf(x) = -sigma * Phi^-1(p)          (p > 1/2 inside: Phi^-1(p) > 0, sdf < 0)

``p`` is clamped to ``[eps, 1 - eps]`` first, so the result is finite (|sdf| <= sigma * Phi^-1(1-eps)).

:func:`certify` is Cohen et al.'s CERTIFY (their Algorithm "certify", §3.2): ``n0`` selection
samples pick the top class, ``n`` estimation samples give a one-sided Clopper–Pearson lower
bound ``p_A_lower`` at level ``1 - alpha``, and the prediction abstains if ``p_A_lower < 1/2``.
It takes any occupancy callable. With ``soft=True`` (default) a soft occupancy ``o in [0, 1]``
is read as a randomised classifier, ``f(x) = 1`` with probability ``o(x)``, so that ``p`` is
exactly ``E[o(x + eps)] = (G_sigma * o)(x)``, the quantity the grid computes; ``soft=False``
thresholds ``o > 1/2`` (a deterministic classifier).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["occupancy_to_sdf", "sdf_bound", "clopper_pearson", "certify", "grid_radius_agreement"]


def occupancy_to_sdf(p: Tensor, sigma: float, eps: float = 1e-4) -> Tensor:
    """Smoothed occupancy ``p (N,)`` in [0,1] -> weak SDF ``(N,)``, negative inside, always finite:
    ``-sigma Phi^-1(clamp(p, eps, 1 - eps))`` (Cohen et al. Eq. 3 / Thm. 1; Pérez et al. §3). The upper
    clamp is kept below 1 in ``p``'s dtype (in float32, ``1 - eps`` rounds to 1 for eps < 6e-8)."""
    hi = min(1.0 - eps, 1.0 - torch.finfo(p.dtype).eps) if p.is_floating_point() else 1.0 - eps
    return -float(sigma) * torch.special.ndtri(p.clamp(eps, hi))


def sdf_bound(sigma: float, eps: float) -> float:
    """The largest |sdf| the clamped certifier can return: ``sigma * Phi^-1(1 - eps)``."""
    from scipy.stats import norm

    return float(sigma) * float(norm.ppf(1.0 - eps))


def clopper_pearson(k: np.ndarray, n: int, alpha: float, *, two_sided: bool = True):
    """Clopper–Pearson interval for ``k`` successes in ``n`` trials.

    two_sided: ``(lower, upper)`` at confidence ``1 - alpha``; otherwise the one-sided lower
    bound at ``1 - alpha`` (Cohen et al.'s ``LowerConfBound``).
    """
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    a = alpha / 2 if two_sided else alpha
    lower = np.where(k > 0, beta.ppf(a, k, n - k + 1), 0.0)
    if not two_sided:
        return lower
    upper = np.where(k < n, beta.ppf(1 - a, k + 1, n - k), 1.0)
    return lower, upper


def _count_inside(occ_fn: Callable[[Tensor], Tensor], x: Tensor, sigma: float, n: int, soft: bool,
                  gen: torch.Generator, chunk: int) -> np.ndarray:
    """Number of noisy samples classified inside, per point: ``(M,)`` int."""
    M = x.shape[0]
    counts = torch.zeros(M, dtype=torch.int64)
    per = max(1, chunk // M)  # noise draws per batch
    done = 0
    with torch.no_grad():
        while done < n:
            k = min(per, n - done)
            noise = torch.randn(M, k, 3, generator=gen, dtype=x.dtype) * float(sigma)
            pts = (x.cpu()[:, None, :] + noise).reshape(-1, 3).to(x.device)
            o = occ_fn(pts).reshape(M, k).float().cpu()
            if soft:
                hit = torch.rand(M, k, generator=gen) < o.clamp(0, 1)
            else:
                hit = o > 0.5
            counts += hit.sum(1)
            done += k
    return counts.numpy()


def certify(occ_fn: Callable[[Tensor], Tensor], x: Tensor, sigma: float, *, n0: int = 100, n: int = 10000,
            alpha: float = 0.001, soft: bool = True, seed: int = 0, chunk: int = 2 ** 18) -> dict:
    """Cohen et al.'s CERTIFY at points ``x (M,3)`` for an occupancy function ``occ_fn((P,3)) -> (P,)``.

    Returns numpy arrays of shape ``(M,)``:

    * ``inside``: the selected class (True = inside), from the ``n0`` selection samples;
    * ``abstain``: ``p_A_lower <= 1/2`` (Cohen et al. certify only when ``p_A_lower > 1/2``);
    * ``radius``: ``sigma * Phi^-1(p_A_lower)`` (0 where abstaining), the certified radius;
    * ``signed_radius``: the radius signed like an SDF (negative inside), 0 where abstaining;
    * ``p_hat``: ``k/n``, the estimate of P(inside); ``p_low``/``p_high``: its two-sided
      Clopper–Pearson interval at ``1 - alpha`` (for cross-checks against the grid).
    """
    from scipy.stats import norm

    if n0 < 1 or n < 1:
        raise ValueError(f"certify needs n0 >= 1 and n >= 1, got n0={n0}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    gen = torch.Generator().manual_seed(seed)
    x = x.detach().float()
    k0 = _count_inside(occ_fn, x, sigma, n0, soft, gen, chunk)
    inside = k0 * 2 > n0
    k = _count_inside(occ_fn, x, sigma, n, soft, gen, chunk)
    k_a = np.where(inside, k, n - k)
    p_a_lower = clopper_pearson(k_a, n, alpha, two_sided=False)
    abstain = p_a_lower <= 0.5
    radius = np.where(abstain, 0.0, float(sigma) * norm.ppf(np.clip(p_a_lower, 0.5, 1.0)))
    lo, hi = clopper_pearson(k, n, alpha)
    return {"inside": inside, "abstain": abstain, "radius": radius,
            "signed_radius": np.where(inside, -radius, radius), "p_hat": k / n, "p_low": lo, "p_high": hi,
            "sigma": float(sigma), "n0": n0, "n": n, "alpha": alpha}


def grid_radius_agreement(p_grid: np.ndarray, mc: dict) -> dict:
    """Compare the grid's smoothed occupancy ``p_grid (M,)`` with a :func:`certify` result.

    ``within_ci``: fraction of points whose grid ``p`` lies in the Monte-Carlo two-sided
    interval; ``radius_abs_diff``: mean |grid radius - MC radius| over points where MC does not
    abstain (the MC radius is a lower bound, so it is at most the grid's up to the CI width).
    """
    from scipy.stats import norm

    p_grid = np.asarray(p_grid, dtype=np.float64)
    within = (p_grid >= mc["p_low"] - 1e-9) & (p_grid <= mc["p_high"] + 1e-9)
    keep = ~mc["abstain"]
    out = {"within_ci": float(within.mean()), "abstain_rate": float(mc["abstain"].mean()),
           "n_points": int(len(p_grid))}
    if keep.any():
        pa = np.where(mc["inside"], p_grid, 1 - p_grid)
        r_grid = mc["sigma"] * norm.ppf(np.clip(pa, 1e-12, 1 - 1e-12))
        out["radius_abs_diff"] = float(np.abs(r_grid - mc["radius"])[keep].mean())
    return out
