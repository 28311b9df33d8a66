"""deep_level_sets: smoothed Heaviside/Dirac, grid derivatives and the loss terms against analytic shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from plugins.deep_level_sets.levelset import KINDS, dirac, grid_gradient, heaviside

EPS = 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_heaviside_is_monotone_in_unit_interval(kind):
    phi = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    h = heaviside(phi, EPS, kind)
    assert (h >= 0).all() and (h <= 1).all()
    assert (h[1:] - h[:-1] >= 0).all()
    assert float(heaviside(torch.tensor(0.0), EPS, kind)) == pytest.approx(0.5)
    if kind == "compact":
        assert float(h[0]) == 0.0 and float(h[-1]) == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_dirac_integrates_to_one_and_is_the_derivative(kind):
    f = lambda t: float(dirac(torch.tensor(t, dtype=torch.float64), EPS, kind))  # noqa: E731
    lim = EPS if kind == "compact" else np.inf
    total, _ = integrate.quad(f, -lim, lim, limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)
    phi = torch.linspace(-2 * EPS, 2 * EPS, 401, dtype=torch.float64)
    h = 1e-6
    fd = (heaviside(phi + h, EPS, kind) - heaviside(phi - h, EPS, kind)) / (2 * h)
    torch.testing.assert_close(dirac(phi, EPS, kind), fd, atol=1e-4, rtol=1e-5)


def test_compact_dirac_matches_the_issue_formula():
    phi = torch.tensor([-0.06, -0.02, 0.0, 0.03, 0.05])
    ref = torch.where(phi.abs() < EPS, (1 + torch.cos(math.pi * phi / EPS)) / (2 * EPS), torch.zeros(()))
    torch.testing.assert_close(dirac(phi, EPS), ref)


def sphere_grid(R=64, r=0.3):
    c = -0.5 + (torch.arange(R, dtype=torch.float64) + 0.5) / R
    g = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1)
    return (g.norm(dim=-1) - r)[None], 1.0 / R


def test_eikonal_and_surface_measure_of_an_exact_sdf():
    """For phi = |x| - r: ||grad phi|| = 1 (finite differences) and the Dirac-weighted integral
    sum delta_eps(phi) |grad phi| h^3 is the sphere's area 4 pi r^2."""
    phi, h = sphere_grid()
    grad = grid_gradient(phi, h).norm(dim=-1)[0]
    interior = grad[2:-2, 2:-2, 2:-2]
    centre = (phi[0, 2:-2, 2:-2, 2:-2] + 0.3).abs() > 6 * h  # |grad| of |x| is undefined at the centre
    assert (interior[centre] - 1).abs().max() < 2e-2
    area = (dirac(phi, 3 * h) * grid_gradient(phi, h).norm(dim=-1)).sum() * h ** 3
    assert float(area) == pytest.approx(4 * math.pi * 0.3 ** 2, rel=0.02)


class _System:
    def __init__(self, field):
        from types import SimpleNamespace

        self.chain = SimpleNamespace(field=field)


def test_loss_terms_on_a_fixed_phi():
    """The losses read the step's shared phi: an exact SDF with its own voxels and distance grid scores
    ~0 on every term; a shifted one scores more."""
    from plugins.deep_level_sets.config import (DiracLossConfig, EikonalGridConfig, HeavisideLossConfig,
                                                LevelSetFieldConfig)
    from plugins.deep_level_sets.field import LevelSetField
    from plugins.deep_level_sets.losses import DiracLoss, EikonalGridLoss, HeavisideLoss

    field = LevelSetField(LevelSetFieldConfig(width=4, blocks=1, norm="none", channels=8, epsilon=1.5 / 32,
                                               epsilon_anneal_steps=0))
    phi, _ = sphere_grid(32)
    phi = phi.float()
    batch = {"voxels": (phi < 0).float(), "dist": phi.abs()}
    sysm = _System(field)
    terms = {}
    for shift in (0.0, -0.1):
        out = {"phi": phi + shift, "embedding": torch.zeros(1, field.embedding_dim)}
        terms[shift] = [float(L(batch, out, sysm)) for L in (
            HeavisideLoss(HeavisideLossConfig(p=2)), DiracLoss(DiracLossConfig(p=1)),
            EikonalGridLoss(EikonalGridConfig(weight=1.0)))]
    occ0, surf0, eik0 = terms[0.0]
    # surface term of the exact SDF: band-width bias eps * (1/2 - 2/pi^2) * area ~ 0.016
    assert occ0 < 0.01 and surf0 < 0.02 and eik0 < 0.05
    assert terms[-0.1][0] > 5 * occ0 + 1e-3  # wrong volume
    assert terms[-0.1][1] > 5 * surf0  # zero level set away from the GT surface


def test_field_outputs_sdf_and_occupancy():
    from plugins.deep_level_sets.config import LevelSetFieldConfig
    from plugins.deep_level_sets.field import LevelSetField

    f = LevelSetField(LevelSetFieldConfig(width=4, blocks=1, norm="none", channels=8))
    e = torch.randn(2, f.embedding_dim)
    x = torch.rand(2, 50, 3) - 0.5
    out = f.point_outputs(x, e)
    torch.testing.assert_close(out["occupancy"], heaviside(-out["sdf"], f.epsilon))
    # voxel centres sample the grid exactly
    grid = f.phi_grid(e)
    torch.testing.assert_close(f.grid_values(e, 32), grid)
    c = -0.5 + (torch.tensor([3, 17, 30]) + 0.5) / 32
    torch.testing.assert_close(f.point_outputs(c.reshape(1, 1, 3).expand(2, 1, 3), e)["sdf"][:, 0],
                               grid[:, 3, 17, 30], atol=1e-6, rtol=1e-5)


def test_balanced_occupancy_term_weights_inside_and_outside_equally():
    """An empty prediction (phi far outside everywhere) of a small shape: the plain term is the inside
    fraction (small, so emptiness is cheap); the balanced term is 1/2 whatever the shape's size."""
    from plugins.deep_level_sets.config import HeavisideLossConfig, LevelSetFieldConfig
    from plugins.deep_level_sets.field import LevelSetField
    from plugins.deep_level_sets.losses import HeavisideLoss

    field = LevelSetField(LevelSetFieldConfig(width=4, blocks=1, norm="none", channels=8, epsilon=1.5 / 32,
                                               epsilon_anneal_steps=0))
    phi, _ = sphere_grid(32)
    V = (phi < 0).float()
    out = {"phi": torch.full_like(phi, 1.0).float(), "embedding": torch.zeros(1, field.embedding_dim)}
    batch = {"voxels": V}
    plain = float(HeavisideLoss(HeavisideLossConfig(p=2))(batch, out, _System(field)))
    balanced = float(HeavisideLoss(HeavisideLossConfig(p=2, balance=1.0))(batch, out, _System(field)))
    assert plain == pytest.approx(float(V.mean()), rel=1e-5)
    assert balanced == pytest.approx(0.5, rel=1e-5)
    exact = {"phi": phi.float(), "embedding": out["embedding"]}
    assert float(HeavisideLoss(HeavisideLossConfig(p=2, balance=1.0))(batch, exact, _System(field))) < 0.02
    # beta in (0,1): all-outside costs w_in f / (w_in f + w_out (1-f)) with w = fraction^-beta
    f = float(V.mean())
    for beta in (0.0, 0.5):
        half = float(HeavisideLoss(HeavisideLossConfig(p=2, balance=beta))(batch, out, _System(field)))
        want = f ** (1 - beta) / (f ** (1 - beta) + (1 - f) ** (1 - beta))
        assert half == pytest.approx(want, rel=1e-4)
