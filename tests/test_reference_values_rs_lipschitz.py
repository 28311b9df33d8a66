"""Reference values for rs_sdf, lipschitz, sample_network and the ngp view encoding: each test compares a
component against a truth computed independently of it (hand-derived values, analytic distances, exact
quadrature, scipy's spherical harmonics)."""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch

from pipeline.system import FieldChain
from plugins.rs_sdf.certifier import RandomizedSmoothing
from plugins.rs_sdf.config import RandomizedSmoothingConfig
from plugins.scenes.shapes import box as box_sdf
from plugins.scenes.shapes import sphere
from tests.test_rs_sdf import BOX, GridField, indicator_grid

# -- rs_sdf: the certify_check evaluator ------------------------------------------------------------

def _certify_check_on_a_ball(sigma: float, aabb: torch.Tensor, n_points: int = 64, n: int = 10000) -> dict:
    from plugins.rs_sdf.config import CertifyCheckConfig
    from plugins.rs_sdf.evaluate import CertifyCheck

    V = indicator_grid(lambda p: sphere(p, radius=0.35), BOX, 64)
    chain = FieldChain(GridField(V), RandomizedSmoothing(RandomizedSmoothingConfig(sigma=sigma), BOX))
    ctx = types.SimpleNamespace(system=types.SimpleNamespace(chain=chain, eval=chain.eval),
                                scene=types.SimpleNamespace(aabb=aabb), device=torch.device("cpu"))
    return CertifyCheck(CertifyCheckConfig(n_points=n_points, n=n, alpha=0.001, seed=3))(ctx)


def test_certify_check_agrees_with_monte_carlo_on_a_ball():
    """The evaluator's grid p against Cohen et al.'s Monte-Carlo CERTIFY of the same ball occupancy: the
    grid p lies in the two-sided Clopper-Pearson interval at >= 95% of points, and the grid radius exceeds
    CERTIFY's one-sided lower-bound radius by ~3.1 sd of p (<= 0.05 sigma at n = 1e4), well under 0.1 sigma.
    The scene box is a slab around the ball's top (distances <= ~1 sigma), where neither radius saturates."""
    sigma = 0.05
    slab = torch.tensor([-0.1, -0.1, 0.30, 0.1, 0.1, 0.40])
    out = _certify_check_on_a_ball(sigma, slab)
    assert out["certify_n_points"] == 64
    assert out["certify_within_ci"] >= 0.95, out
    # the near half sits on the p = 1/2 boundary and abstains; the uniform half is mostly certified
    assert out["certify_abstain_rate"] < 0.75, out
    assert 0 <= out["certify_radius_abs_diff"] < 0.1 * sigma, out


def test_certify_check_within_ci_in_the_whole_box():
    """In the whole scene box (half the points near the ball, half uniform, most with p ~ 0): the grid's
    smoothed occupancy still lies in CERTIFY's interval at >= 95% of points."""
    out = _certify_check_on_a_ball(0.05, BOX, n=2000)
    assert out["certify_within_ci"] >= 0.95, out


# -- rs_sdf: the hard_occupancy density map --------------------------------------------------------

def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


@pytest.mark.parametrize("k, width, scale", [(19.0, 0.02, 200.0), (2.5, 0.1, 7.0)])
def test_hard_occupancy_at_plus_minus_one_width(k, width, scale):
    """density = scale * sigmoid(-k sdf / width) (Pérez et al.): at sdf = -width, 0, +width, -width/2 it is
    scale * sigmoid(k), scale/2, scale * sigmoid(-k), scale * sigmoid(k/2), computed here with math.exp."""
    from plugins.rs_sdf.config import HardOccupancyConfig
    from plugins.rs_sdf.density import build_hard_occupancy

    dm = build_hard_occupancy(HardOccupancyConfig(eccentricity=k, width=width, scale=scale), None)
    sdf = torch.tensor([-width, 0.0, width, -width / 2], dtype=torch.float64)
    out = dm({"sdf": sdf})
    want = [_sigmoid(k), 0.5, _sigmoid(-k), _sigmoid(k / 2)]
    np.testing.assert_allclose(out["hard_occupancy"].numpy(), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["density"].numpy(), [scale * w for w in want], rtol=1e-12, atol=0)


def test_hard_occupancy_width_falls_back_to_the_certifiers_sigma():
    """With no density.width the sigmoid's unit is the certifier's sigma (0.04 here): at sdf = -+0.04 the
    density is scale * sigmoid(+-k) for the configured eccentricity k = 2.5 and scale = 7."""
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from plugins.rs_sdf.density import build_hard_occupancy

    data = copy.deepcopy(TINY_SCENE)
    data["field"] = {"type": "voxel_occupancy", "resolution": 24, "appearance": "dense_grid",
                     "dense_grid": {"resolution": 16, "features": 4}}
    data["certifier"] = {"type": "randomized_smoothing", "sigma": 0.04}
    data["density"] = {"type": "hard_occupancy", "eccentricity": 2.5, "scale": 7.0}
    data["extractor"] = {"type": "marching_cubes", "quantity": "sdf", "resolution": 24}
    cfg = validate(data, plugin_host(), source="test")
    assert cfg.stages["density"].options.width is None
    dm = build_hard_occupancy(cfg.stages["density"].options, types.SimpleNamespace(cfg=cfg))
    dens = dm({"sdf": torch.tensor([-0.04, 0.04], dtype=torch.float64)})["density"]
    np.testing.assert_allclose(dens.numpy(), [7.0 * _sigmoid(2.5), 7.0 * _sigmoid(-2.5)], rtol=1e-12)


# -- lipschitz: distance_quality ---------------------------------------------------------------------

HALF = (0.3, 0.2, 0.25)


@pytest.fixture(scope="module")
def cube():
    """A box mesh (12 triangles) whose exact signed distance is the analytic box SDF, and 4000 points."""
    import trimesh

    mesh = trimesh.creation.box(extents=[2 * h for h in HALF])
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (4000, 3))
    return mesh, x


def _box(p):
    return box_sdf(p, HALF)


def test_distance_quality_of_the_exact_sdf_is_zero(cube):
    """The analytic box SDF against its own mesh: no overestimate, error at float32 rounding, ||grad|| = 1."""
    from plugins.lipschitz.evaluate import distance_quality

    mesh, x = cube
    q = distance_quality(_box, mesh, x, near=0.05)
    assert q["n_points"] == 4000
    assert abs(q["max_over"]) < 1e-6 and q["over_rate"] == 0.0 and q["mean_abs_err"] < 1e-6, q
    assert abs(q["max_over_near"]) < 1e-6 and abs(q["max_over_far"]) < 1e-6, q
    assert abs(q["grad_min"] - 1) < 1e-5 and abs(q["grad_max"] - 1) < 1e-5, q


def test_distance_quality_of_scaled_sdfs(cube):
    """f = 1.1 SDF overestimates by 0.1 |SDF|: max_over = 0.1 max|SDF|, over_rate = share of |SDF| > 1e-3,
    mean_abs_err = 0.1 mean|SDF|, ||grad f|| = 1.1; f = 0.9 SDF never overestimates (max_over ~ 0, rate 0).
    The reference |SDF| is the analytic box distance."""
    from plugins.lipschitz.evaluate import distance_quality

    mesh, x = cube
    s = _box(torch.as_tensor(x)).numpy()
    q = distance_quality(lambda p: 1.1 * _box(p), mesh, x, near=0.05)
    assert q["max_over"] == pytest.approx(0.1 * np.abs(s).max(), rel=1e-4)
    assert q["max_over_far"] == pytest.approx(0.1 * np.abs(s)[np.abs(s) >= 0.05].max(), rel=1e-4)
    assert q["max_over_near"] == pytest.approx(0.1 * np.abs(s)[np.abs(s) < 0.05].max(), rel=1e-3)
    assert q["over_rate"] == pytest.approx(float((0.1 * np.abs(s) > 1e-4).mean()), abs=2 / len(x))
    assert q["over_rate"] > 0.97
    assert q["mean_abs_err"] == pytest.approx(0.1 * np.abs(s).mean(), rel=1e-4)
    assert q["grad_mean"] == pytest.approx(1.1, rel=1e-5)
    under = distance_quality(lambda p: 0.9 * _box(p), mesh, x, near=0.05)
    assert under["over_rate"] == 0.0 and -1e-3 < under["max_over"] < 1e-6, under
    assert under["mean_abs_err"] == pytest.approx(0.1 * np.abs(s).mean(), rel=1e-4)


# -- lipschitz: hkr_loss -----------------------------------------------------------------------------

def test_hkr_loss_hand_value_and_gradient():
    """hKR = mean(-y f) + lam mean(relu(m - y f)) by hand, f = [0.005, -0.02, 0.3, -0.004], y = [1, -1, 1, -1],
    m = 0.01, lam = 100: y f = [0.005, 0.02, 0.3, 0.004], mean(-y f) = -0.329/4; hinge terms
    [0.005, 0, 0, 0.006], lam mean = 100 * 0.011/4 = 1.1/4; L = 0.771/4 = 0.19275.
    dL/df_i = -y_i (1 + lam [y_i f_i < m]) / N = [-101, 1, -1, 101] / 4."""
    from plugins.lipschitz.losses import hkr_loss

    f = torch.tensor([0.005, -0.02, 0.3, -0.004], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    L = hkr_loss(f, y, 0.01, 100.0)
    assert float(L.detach()) == pytest.approx(0.771 / 4, rel=1e-12)
    (g,) = torch.autograd.grad(L, f)
    np.testing.assert_allclose(g.numpy(), np.array([-101.0, 1.0, -1.0, 101.0]) / 4, rtol=1e-12)
    # a three-point case: L = (-0.325 + 100 * 0.005) / 3 = 0.175 / 3
    f3 = torch.tensor([0.005, -0.02, 0.3], dtype=torch.float64)
    assert float(hkr_loss(f3, y[:3], 0.01, 100.0)) == pytest.approx(0.175 / 3, rel=1e-12)


# -- sample_network: udf_regression -------------------------------------------------------------------

def test_udf_regression_on_exact_and_doubled_distance_fields():
    """mean | |F(x)| - d(x, X) | at the loss's own query points, d from scipy's KD-tree in float64: 0 for
    F = +-d (a signed field whose magnitude is the UDF), mean(d) for F = +-2 d."""
    from scipy.spatial import cKDTree

    from plugins.sample_network.config import UDFRegressionConfig
    from plugins.sample_network.losses import UDFRegression

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(300, 3))
    pts = 0.4 * pts / np.linalg.norm(pts, axis=1, keepdims=True)
    P = torch.as_tensor(pts, dtype=torch.float32)
    loss = UDFRegression(UDFRegressionConfig(n_points=2048, sigma=0.05, uniform_fraction=0.3), pts,
                         [-0.6] * 3 + [0.6] * 3)
    seen = {}

    def system(scale):
        def chain(x, d=None):
            seen["x"] = x.detach().clone()
            dist = torch.cdist(x, P, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
            sign = torch.where(x[:, 0] > 0, 1.0, -1.0)  # half the points on the negative side
            return {"sdf": scale * sign * dist}
        return types.SimpleNamespace(chain=chain)

    torch.manual_seed(0)
    exact = float(loss({}, {}, system(1.0)))
    assert exact < 1e-6
    torch.manual_seed(0)
    doubled = float(loss({}, {}, system(2.0)))
    d, _ = cKDTree(pts).query(seen["x"].double().numpy())
    assert (seen["x"][:, 0] < 0).float().mean() > 0.3
    assert doubled == pytest.approx(float(d.mean()), rel=1e-5)


# -- ngp: spherical-harmonics view encoding -------------------------------------------------------------

def _sphere_quadrature(n_theta: int = 8, n_phi: int = 16):
    """Gauss-Legendre in cos(theta) x uniform phi: exact on the unit sphere for polynomials of degree
    < min(2 n_theta, n_phi) (here products of two SH of degree <= 3). Directions (M,3), weights (M,) summing to 4 pi."""
    u, wu = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    U, PHI = np.meshgrid(u, phi, indexing="ij")
    s = np.sqrt(1 - U ** 2)
    d = np.stack([s * np.cos(PHI), s * np.sin(PHI), U], -1).reshape(-1, 3)
    w = (wu[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1)
    return d, w


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_sh_encode_is_orthonormal_on_the_sphere(degree):
    """Gram matrix  int Y_i Y_j dOmega  by exact quadrature equals the identity (real orthonormal SH)."""
    from plugins.ngp.encodings import sh_encode

    d, w = _sphere_quadrature()
    assert abs(w.sum() - 4 * np.pi) < 1e-12
    Y = sh_encode(torch.as_tensor(d), degree).numpy()
    assert Y.shape == (len(d), degree ** 2)
    G = (Y * w[:, None]).T @ Y
    np.testing.assert_allclose(G, np.eye(degree ** 2), atol=1e-6)


def _scipy_real_sh(l: int, m: int, d: np.ndarray) -> np.ndarray:
    """Real SH from scipy's complex Y_l^m: sqrt(2) (-1)^m Re Y_l^|m| (m > 0), sqrt(2) (-1)^m Im Y_l^|m| (m < 0)."""
    from scipy import special

    polar = np.arccos(np.clip(d[:, 2], -1, 1))
    azim = np.arctan2(d[:, 1], d[:, 0])
    if hasattr(special, "sph_harm_y"):
        Y = special.sph_harm_y(l, abs(m), polar, azim)
    else:  # scipy < 1.15: sph_harm(m, n, azimuth, polar)
        Y = special.sph_harm(abs(m), l, azim, polar)
    if m == 0:
        return Y.real
    return math.sqrt(2) * (-1) ** m * (Y.real if m > 0 else Y.imag)


def test_sh_encode_matches_scipy_up_to_a_sign_per_basis():
    """Each of the 16 channels (index l^2 + l + m) equals scipy's real Y_l^m at random directions, up to
    a constant sign per channel (Sloan's constants absorb the Condon-Shortley phase differently)."""
    from plugins.ngp.encodings import sh_encode

    d = np.random.default_rng(2).normal(size=(500, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    Y = sh_encode(torch.as_tensor(d), 4).numpy()
    for l in range(4):
        for m in range(-l, l + 1):
            ref = _scipy_real_sh(l, m, d)
            ours = Y[:, l * l + l + m]
            sign = np.sign(ours @ ref)
            np.testing.assert_allclose(ours, sign * ref, atol=1e-10, err_msg=f"l={l} m={m}")
