"""The ngp backend and the metrics against closed forms and independent references: VolSDF's Laplace
density, the eikonal and photometric losses, SSIM, precision / recall / normal consistency, and the
mesh extractor's fill_interior, min_component and narrow band, plus rs_sdf's voxel initialisation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from pipeline.metrics import chamfer, ssim

UNIT = [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]


# -- VolSDF density ------------------------------------------------------------------------------------

def _laplace_cdf(s: float, beta: float) -> float:
    """CDF of a zero-mean Laplace distribution with scale beta."""
    return 0.5 * math.exp(s / beta) if s <= 0 else 1 - 0.5 * math.exp(-s / beta)


@pytest.mark.parametrize("learnable", [True, False])
def test_laplace_density_is_volsdf_closed_form(learnable):
    """VolSDF Eq. 2-3: sigma = (1/beta) Psi_beta(-sdf); high inside (sdf < 0), 1/(2 beta) on the surface,
    decreasing in sdf, and sigma(d) + sigma(-d) = 1/beta."""
    from plugins.ngp.config import LaplaceDensityConfig
    from plugins.ngp.density import LaplaceDensity

    beta = 0.1
    dens = LaplaceDensity(LaplaceDensityConfig(beta=beta, learnable=learnable)).double()
    sdf = [-0.5, -0.3, -0.05, -0.01, 0.0, 0.01, 0.05, 0.3, 0.5]
    got = dens({"sdf": torch.tensor(sdf, dtype=torch.float64)})["density"].detach()
    want = [_laplace_cdf(-d, beta) / beta for d in sdf]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert float(got[4]) == pytest.approx(1 / (2 * beta), rel=1e-6)
    assert float(got[0]) > 9.0 and float(got[-1]) < 0.1  # deep inside ~ 1/beta, far outside ~ 0
    assert (got + got.flip(0)).tolist() == pytest.approx([1 / beta] * len(sdf), rel=1e-6)
    ramp = dens({"sdf": torch.linspace(-1, 1, 401, dtype=torch.float64)})["density"].detach()
    assert (ramp.diff() < 0).all()


# -- losses --------------------------------------------------------------------------------------------

def _eikonal(scale: float, weight: float = 0.3) -> float:
    from plugins.ngp.config import EikonalConfig
    from plugins.ngp.losses import Eikonal

    torch.manual_seed(0)
    system = SimpleNamespace(aabb=torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]),
                             chain=lambda x, d: {"sdf": scale * (x.norm(dim=-1) - 0.5)})
    return float(Eikonal(EikonalConfig(weight=weight, n_points=2048))({}, {}, system).detach())


def test_eikonal_loss_of_scaled_sphere_sdfs():
    """E[(|grad f| - 1)^2] with |grad f| = k everywhere for f = k * (|x| - 0.5): weight * (k - 1)^2, so
    0 for the exact SDF, weight for 2*sdf and 0*sdf, 4 weight for 3*sdf, weight/4 for sdf/2."""
    assert _eikonal(1.0) == pytest.approx(0.0, abs=1e-10)
    for k, want in [(2.0, 1.0), (3.0, 4.0), (0.5, 0.25), (0.0, 1.0)]:
        assert _eikonal(k) == pytest.approx(0.3 * want, rel=1e-5), k


@pytest.mark.parametrize("kind, want", [
    # d = pred - gt = [0.05, -0.2, 0, 0.3, -0.02, 0.15]
    ("mse", (0.0025 + 0.04 + 0 + 0.09 + 0.0004 + 0.0225) / 6),
    # Huber, delta 0.1: d^2/2 where |d| < delta, else delta (|d| - delta/2)
    ("huber", (0.00125 + 0.015 + 0 + 0.025 + 0.0002 + 0.01) / 6),
    ("l1", (0.05 + 0.2 + 0 + 0.3 + 0.02 + 0.15) / 6),
], ids=["mse", "huber", "l1"])
def test_photometric_loss_kinds_hand_computed(kind, want):
    """Each per-pixel penalty against values worked out by hand, times the weight (2)."""
    from plugins.ngp.config import PhotometricConfig
    from plugins.ngp.losses import Photometric

    gt = torch.tensor([[0.5, 0.5, 0.2], [0.4, 0.6, 0.7]], dtype=torch.float64)
    d = torch.tensor([[0.05, -0.2, 0.0], [0.3, -0.02, 0.15]], dtype=torch.float64)
    loss = Photometric(PhotometricConfig(kind=kind, weight=2.0))({"rgb": gt}, {"rgb": gt + d}, None)
    assert float(loss) == pytest.approx(2.0 * want, rel=1e-9)


# -- SSIM ----------------------------------------------------------------------------------------------

def _reference_ssim(a: np.ndarray, b: np.ndarray, gaussian: bool) -> float:
    """SSIM written out (Wang et al. 2004 as in mip-NeRF's compute_ssim): 'valid' separable window
    (Gaussian sigma 1.5 with 11 taps and population covariance, or uniform 7x7 with sample covariance),
    K1 = 0.01, K2 = 0.03, data range 1, mean over pixels and channels."""
    if gaussian:
        k = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
        k, cov_norm = k / k.sum(), 1.0
    else:
        k, cov_norm = np.full(7, 1 / 7), 49 / 48
    a, b = (x[..., None] if x.ndim == 2 else x for x in (a, b))
    w = len(k)

    def filt(x):
        win = np.lib.stride_tricks.sliding_window_view(x, (w, w), axis=(0, 1))  # (H', W', C, w, w)
        return np.einsum("ijcuv,u,v->ijc", win, k, k)

    mu_a, mu_b = filt(a), filt(b)
    var_a = (filt(a * a) - mu_a ** 2) * cov_norm
    var_b = (filt(b * b) - mu_b ** 2) * cov_norm
    cov = (filt(a * b) - mu_a * mu_b) * cov_norm
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


@pytest.mark.parametrize("gaussian", [True, False])
def test_ssim_matches_a_written_out_reference(gaussian):
    """Random 32x32x3 and 32x40 images (several noise levels): ssim equals the written-out formula to 1e-6."""
    rng = np.random.default_rng(5)
    for shape, noise in [((32, 32, 3), 0.05), ((32, 32, 3), 0.3), ((32, 40), 0.1)]:
        x = rng.random(shape)
        y = np.clip(x + rng.normal(0, noise, shape), 0, 1)
        assert ssim(y, x, gaussian=gaussian) == pytest.approx(_reference_ssim(y, x, gaussian), abs=1e-6)


def test_ssim_uniform_variant_is_skimage_default():
    """gaussian=False is skimage's structural_similarity with its defaults (7x7, sample covariance)."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(6)
    x = rng.random((32, 32, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    want = structural_similarity(y, x, data_range=1.0, channel_axis=-1)
    assert ssim(y, x, gaussian=False) == pytest.approx(want, abs=1e-12)


# -- precision / recall / normal consistency -------------------------------------------------------------

def _square(x0: float = 0.0, x1: float = 1.0) -> trimesh.Trimesh:
    """The rectangle [x0, x1] x [0, 1] in the plane z = 0, normal +z."""
    v = [[x0, 0, 0], [x1, 0, 0], [x1, 1, 0], [x0, 1, 0]]
    return trimesh.Trimesh(v, [[0, 1, 2], [0, 2, 3]], process=False)


def test_precision_and_recall_of_half_the_surface():
    """GT the unit square (normalised frame = its own), reconstruction its half x < 0.5: every rec sample
    lies on the GT (precision 1), GT samples within tau of the half are the strip x < 0.5 + tau (recall
    0.5 + tau); completeness is the mean distance of the uncovered half, 1/2 * 1/4 (x10^3: 125)."""
    tau = 0.05
    r = chamfer(_square(0.0, 0.5), _square(), n_samples=20000, fscore_taus=(tau,))
    assert r["scale"] == pytest.approx(1.0)
    assert r["precision@0.05"] == pytest.approx(1.0, abs=1e-3)
    assert r["recall@0.05"] == pytest.approx(0.5 + tau, abs=0.012)
    p, q = 1.0, 0.5 + tau
    assert r["fscore@0.05"] == pytest.approx(2 * p * q / (p + q), abs=0.01)
    assert r["completeness_l1"] == pytest.approx(125.0, rel=0.03)
    assert r["accuracy_l1"] < 5.0  # the sampling floor, 1/2 sqrt(1/N) = 3.5 x10^-3
    # the roles swap with the arguments
    s = chamfer(_square(), _square(0.0, 0.5), n_samples=20000, fscore_taus=(tau,))
    assert s["recall@0.05"] == pytest.approx(1.0, abs=1e-3)
    assert s["precision@0.05"] == pytest.approx(0.5 + tau, abs=0.012)  # the GT's box still has side 1 (y)


def _rotated_square(theta: float) -> trimesh.Trimesh:
    m = _square(-0.5, 0.5)
    m.apply_translation((0, -0.5, 0))
    m.apply_transform(trimesh.transformations.rotation_matrix(theta, [1, 0, 0]))
    return m


@pytest.mark.parametrize("deg", [30.0, 120.0])
def test_normal_consistency_of_tilted_planes_is_abs_cos(deg):
    """Two planar squares through one line, tilted by theta: every sample pair's normals meet at theta,
    so the mean |cos| is |cos theta| (0.866 at 30 deg, 0.5 at 120 deg, where cos itself is -0.5)."""
    th = math.radians(deg)
    r = chamfer(_rotated_square(th), _rotated_square(0.0), n_samples=5000)
    assert r["normal_consistency"] == pytest.approx(abs(math.cos(th)), abs=1e-9)


def test_normal_consistency_ignores_orientation():
    """The docstring's mean |cos|: a sphere with inverted faces against itself scores ~1, not ~-1."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    inverted = sphere.copy()
    inverted.invert()
    assert np.allclose(inverted.face_normals, -sphere.face_normals)
    assert chamfer(inverted, sphere, n_samples=10000)["normal_consistency"] > 0.99


# -- mesh extractor: fill_interior, min_component, narrow band ---------------------------------------------

def _hollow_shell(x):
    """Density 50 + 1000 * (0.025 - |r - 0.325|), clamped at 0: above 50 exactly in the shell 0.3 < r < 0.35."""
    r = x.norm(dim=-1)
    return {"density": (50 + 1000 * (0.025 - (r - 0.325).abs())).clamp(min=0)}


def test_fill_interior_meshes_a_hollow_shell_as_the_solid_ball():
    """Filled: one closed surface bounding the outer ball, volume 4/3 pi 0.35^3; not filled: the outer sphere
    and the inverted inner one, two components whose signed volumes sum to the shell's."""
    from plugins.ngp.config import MarchingCubesConfig
    from plugins.ngp.extract import MarchingCubes

    outer, inner = 4 / 3 * math.pi * 0.35 ** 3, 4 / 3 * math.pi * 0.3 ** 3
    meshes = {}
    for fill in (True, False):
        cfg = MarchingCubesConfig(resolution=64, quantity="density", level=50.0, fill_interior=fill)
        meshes[fill] = MarchingCubes(cfg, {"density"}, UNIT).extract(lambda x, d: _hollow_shell(x))
    filled = meshes[True]
    assert filled.is_watertight and len(filled.split(only_watertight=False)) == 1
    assert filled.volume == pytest.approx(outer, rel=0.02)
    parts = meshes[False].split(only_watertight=False)
    assert len(parts) == 2 and all(p.is_watertight for p in parts)
    assert sorted(p.volume for p in parts) == pytest.approx([-inner, outer], rel=0.03)
    assert meshes[False].volume == pytest.approx(outer - inner, rel=0.05)


def test_fill_interior_fills_exactly_what_binary_fill_holes_fills():
    """The one-pass labelling against scipy's binary_fill_holes on random grids (many small cavities, cells
    touching the box's faces, NaN), on nested shells and on a lattice of single-cell cavities."""
    from scipy.ndimage import binary_fill_holes

    from plugins.ngp.extract import fill_interior

    rng = np.random.default_rng(0)
    grids = [rng.random((n, n + 1, n + 2)) for n in (5, 17, 32)]
    g = np.zeros((40, 40, 40))
    g[5:35, 5:35, 5:35] = 1
    g[10:30, 10:30, 10:30] = 0
    g[15:25, 15:25, 15:25] = 1
    g[18:22, 18:22, 18:22] = np.nan
    grids.append(g)
    many = np.ones((24, 24, 24))  # 11^3 single-cell cavities
    many[1:-1:2, 1:-1:2, 1:-1:2] = 0
    grids.append(many)
    for grid in grids:
        for level in (0.3, 0.5, 0.7):
            solid = grid > level
            want = binary_fill_holes(solid) & ~solid
            got = fill_interior(grid, level) > level
            assert np.array_equal(got, solid | want)
            assert np.array_equal(fill_interior(grid, level)[~want], grid[~want], equal_nan=True)
            copy = grid.copy()
            assert fill_interior(copy, level, inplace=True) is copy
            assert np.array_equal(copy, fill_interior(grid, level), equal_nan=True)


def test_drop_small_components_threshold_is_a_fraction_of_the_faces():
    """Icospheres of 1280 and 80 faces: the small one holds 80/1360 = 5.9% of the faces, kept at a
    threshold of 5%, dropped at 6%; the largest component survives any threshold."""
    from plugins.ngp.extract import drop_small_components

    big = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    small = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    small.apply_translation((0.4, 0, 0))
    both = trimesh.util.concatenate([big, small])
    assert len(both.faces) == 1360
    assert len(drop_small_components(both, 0.05).faces) == 1360
    assert len(drop_small_components(both, 0.06).faces) == 1280
    assert len(drop_small_components(both, 0.99).faces) == 1280


def test_min_component_of_the_extractor_drops_a_small_ball():
    """A ball of radius 0.3 and one of 0.06: faces go with area, so the small one holds about
    0.06^2 / (0.06^2 + 0.3^2) = 3.8% of them; min_component 0.02 keeps it, 0.08 drops it."""
    from plugins.ngp.config import MarchingCubesConfig
    from plugins.ngp.extract import MarchingCubes

    big_c, small_c = torch.tensor([0.1, 0.0, 0.0]), torch.tensor([-0.35, 0.3, 0.3])

    def chain(x, d):
        return {"sdf": torch.minimum((x - big_c).norm(dim=-1) - 0.3, (x - small_c).norm(dim=-1) - 0.06)}

    out = {}
    for frac in (0.0, 0.02, 0.08):
        cfg = MarchingCubesConfig(resolution=64, quantity="sdf", min_component=frac)
        out[frac] = MarchingCubes(cfg, {"sdf"}, UNIT).extract(chain)
    parts = sorted(out[0.0].split(only_watertight=False), key=lambda p: len(p.faces))
    assert len(parts) == 2
    assert len(parts[0].faces) / len(out[0.0].faces) == pytest.approx(0.0036 / 0.0936, rel=0.2)
    assert len(out[0.02].faces) == len(out[0.0].faces)
    kept = out[0.08]
    assert len(kept.faces) == len(parts[1].faces) and kept.metadata["min_component"] == 0.08
    assert kept.bounds[0, 0] == pytest.approx(-0.2, abs=0.02)  # the big ball alone: x from 0.1 - 0.3
    assert kept.volume == pytest.approx(4 / 3 * math.pi * 0.3 ** 3, rel=0.02)


@pytest.mark.parametrize("res, min_ratio", [(101, 2.5), (256, 6.0)])
def test_narrow_band_evaluates_only_a_band_around_the_level(res, min_ratio):
    """Sphere SDF (r = 0.3) in the unit box. A fine point is evaluated only inside a flagged coarse cell,
    which has a corner with |f| <= L * diag (diag the coarse cell's diagonal) and lies within diag of it;
    f being 1-Lipschitz, the evaluated points all satisfy |f| <= (L + 1) * diag, so at most that many
    grid points are evaluated. Measured savings: 3.2x at 101^3, 7.9x at 256^3 (L is raised to 1.25)."""
    from pipeline.mesh import field_to_grid_narrow

    f = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731
    _, st = field_to_grid_narrow(f, UNIT, res, 0.0, 1.0)
    diag = math.sqrt(3) * 4 / (res - 1)  # stride 4
    axis = np.linspace(-0.5, 0.5, res)
    r = np.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    bound = int((np.abs(r - 0.3) <= (st["lipschitz_used"] + 1) * diag + 1e-9).sum())
    assert st["dense_evals"] == res ** 3
    assert 0 < st["fine_evals"] <= bound
    assert st["dense_evals"] / (st["fine_evals"] + st["coarse_evals"]) >= min_ratio


# -- rs_sdf: V initialised from the NeRF --------------------------------------------------------------------

class _ShellNeRF(nn.Module):
    """A NeRF whose density is 100 in the spherical shell 0.3 <= r <= 0.35 and 0 elsewhere (inside too)."""

    def forward(self, x, d=None):
        r = x.norm(dim=-1)
        return {"density": ((r >= 0.3) & (r <= 0.35)).float() * 100.0,
                "rgb": torch.zeros(len(x), 3)}


@pytest.mark.parametrize("closing", [0, 2])
def test_voxels_initialised_from_a_hollow_nerf_are_solid(closing):
    """At the switch to phase 2, V is the NeRF's occupied set with enclosed cavities filled, clamped to
    [c, 1 - c]: 1 - c inside the ball r < 0.35 (the empty inside of the shell too), c outside."""
    from plugins.ngp.config import DenseGridConfig
    from plugins.rs_sdf.config import VoxelOccupancyConfig
    from plugins.rs_sdf.field import VoxelOccupancyField
    from plugins.rs_sdf.grid import grid_points

    cfg = VoxelOccupancyConfig(resolution=40, appearance="dense_grid", aabb=UNIT, ngp_steps=1, voxel_steps=1,
                               init_closing=closing, dense_grid=DenseGridConfig(resolution=8, features=4))
    field = VoxelOccupancyField(cfg, torch.tensor(UNIT))
    field.appearance = _ShellNeRF()
    field.on_train_step(0)
    assert int(field.phase) == 0
    field.on_train_step(1)
    assert int(field.phase) == 1
    c = cfg.init_clamp
    v = torch.sigmoid(field.logits.detach()).reshape(-1)
    r = grid_points(field.box, field.grid_shape).norm(dim=-1)
    assert torch.allclose(v[r < 0.34], torch.tensor(1 - c), rtol=1e-4)
    assert torch.allclose(v[r > 0.37], torch.tensor(c), rtol=1e-3)
    assert torch.allclose(v[r < 0.25], torch.tensor(1 - c), rtol=1e-4) and int((r < 0.25).sum()) > 500
