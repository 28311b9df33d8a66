"""Metrics against known values: PSNR/SSIM, and Chamfer against the analytic figures for
concentric spheres and the Poisson sampling floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pipeline.metrics import CHAMFER_FRAME, chamfer, chamfer_floor, chamfer_to_surface, psnr, ssim
from pipeline.scenes import data_path
from pipeline.types import NLSError

N = 30000


def test_psnr_known_values():
    gt = np.full((8, 8, 3), 0.5)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)
    assert psnr(torch.zeros(4, 4), torch.full((4, 4), 0.01)) == pytest.approx(40.0)
    assert psnr(gt, gt) == math.inf
    assert isinstance(psnr(gt + 0.1, gt), float)
    with pytest.raises(NLSError, match="shapes"):
        psnr(gt, gt[:4])


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_image_metrics_refuse_values_outside_the_unit_range(metric):
    rng = np.random.default_rng(1)
    x = rng.random((16, 16, 3))
    with pytest.raises(NLSError, match=r"gt has values in \[0, 255\]; images must be in \[0, 1\] \(8-bit"):
        metric(x, np.where(x > 0.5, 255.0, 0.0))
    low = x.copy()
    low[0, 0, 0] = -0.5
    with pytest.raises(NLSError, match=r"pred has values in \[-0.5, "):
        metric(low, x)
    metric(np.clip(x + 5e-4, 0, 1) + 5e-4, x)  # round-off above 1 is accepted


def test_ssim():
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, x, gaussian=False) == pytest.approx(1.0)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    assert 0 < ssim(y, x) < 0.9
    assert isinstance(ssim(y, x), float)
    with pytest.raises(NLSError, match="window"):
        ssim(x[:8, :8], x[:8, :8])


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=1.0)


def test_floor_of_fewer_reconstruction_points_matches_poisson_theory(sphere):
    """M points against N GT samples: completeness is the GT's distance to M points, ½ sqrt(A/M), and
    accuracy the points' distance to N samples, ½ sqrt(A/N); a set of M GT points scores that floor."""
    m = N // 3
    f = chamfer_floor(sphere, rec_points=m)
    half = lambda k: 0.5 * math.sqrt(math.pi / k) * 1e3  # noqa: E731
    assert f["n_rec"] == m and f["n_gt"] == N
    assert f["completeness_l1"] == pytest.approx(half(m), rel=0.03)
    assert f["accuracy_l1"] == pytest.approx(half(N), rel=0.03)
    assert f["chamfer_l1"] > chamfer_floor(sphere)["chamfer_l1"] * 1.2
    pts = trimesh.sample.sample_surface(sphere, m, seed=7)[0]
    assert chamfer(pts, sphere)["chamfer_l1"] == pytest.approx(f["chamfer_l1"], rel=0.03)


def test_floor_matches_poisson_theory(sphere):
    """Two independent N-samplings of a surface of area A: nearest-neighbour distances of a
    2-D Poisson process, E d = ½ sqrt(A/N), E d² = A/(πN), P(d < τ) = 1 - exp(-πτ²N/A).
    The sphere is normalised to radius ½, so A = π."""
    f = chamfer_floor(sphere)
    assert f["frame"] == CHAMFER_FRAME and f["n_samples"] == N
    assert f["chamfer_l1"] == pytest.approx(0.5 * math.sqrt(math.pi / N) * 1e3, rel=0.02)
    assert f["chamfer_l2"] == pytest.approx(1 / N * 1e3, rel=0.05)
    assert f["fscore@0.01"] == pytest.approx(1 - math.exp(-math.pi * 1e-4 * N / math.pi),
                                             abs=0.01)
    assert f["normal_consistency"] > 0.999
    same = chamfer(sphere, sphere)  # a mesh against itself = the floor
    assert same["chamfer_l1"] == pytest.approx(f["chamfer_l1"])
    assert all(isinstance(v, float) for k, v in same.items()
               if k not in ("n_samples", "n_rec", "n_gt", "frame"))


def test_concentric_spheres_analytic(sphere):
    """GT radius 1, reconstruction radius 1.1: after normalising by the GT (scale ½) the
    surfaces are δ = 0.05 apart; with sampling, E sqrt(δ² + ρ²) ≈ δ + E ρ²/(2δ)."""
    big = trimesh.creation.icosphere(subdivisions=4, radius=1.1)
    r = chamfer(big, sphere)
    assert r["scale"] == pytest.approx(0.5)
    d = 0.05
    area_gt, area_rec = 4 * math.pi * 0.5 ** 2, 4 * math.pi * 0.55 ** 2
    e_rho2 = 0.5 * (area_gt + area_rec) / (math.pi * N)
    assert r["chamfer_l1"] == pytest.approx((d + e_rho2 / (2 * d)) * 1e3, rel=0.01)
    assert r["chamfer_l2"] == pytest.approx((d * d + e_rho2) * 1e3, rel=0.01)
    assert r["accuracy_l1"] == pytest.approx(r["completeness_l1"], rel=0.01)
    assert r["fscore@0.01"] == 0.0 and r["normal_consistency"] > 0.999
    # a small shift lowers the F-score below the floor's
    shifted = sphere.copy()
    shifted.apply_translation((0.02, 0, 0))  # 0.01 in the normalised frame
    s = chamfer(shifted, sphere, fscore_taus=(0.01, 0.05))
    assert s["fscore@0.01"] < chamfer_floor(sphere)["fscore@0.01"] - 0.1
    assert s["fscore@0.05"] == pytest.approx(1.0)


def test_point_to_surface_chamfer_has_no_floor_and_measures_the_gap(sphere):
    """Exact distances to the other surface: 0 for the GT against itself (where the sampled
    metric has its floor), δ = 0.05 for the concentric spheres of the test above (up to the
    icospheres' chord error, < 1%), and sample by sample never above the sampled metric."""
    same = chamfer_to_surface(sphere, sphere)
    assert same["chamfer_l1"] < 1e-9 and chamfer_floor(sphere)["chamfer_l1"] > 3
    big = trimesh.creation.icosphere(subdivisions=4, radius=1.1)
    r = chamfer_to_surface(big, sphere)
    assert r["scale"] == pytest.approx(0.5) and "point-to-surface" in r["frame"]
    assert r["chamfer_l1"] == pytest.approx(0.05 * 1e3, rel=0.01)
    assert r["chamfer_l2"] == pytest.approx(0.05 ** 2 * 1e3, rel=0.02)
    shifted = sphere.copy()
    shifted.apply_translation((0.02, 0, 0))
    exact, sampled = chamfer_to_surface(shifted, sphere, seed=3), chamfer(shifted, sphere, seed=3)
    assert exact["accuracy_l1"] < sampled["accuracy_l1"] and exact["completeness_l1"] < sampled["completeness_l1"]
    with pytest.raises(NLSError, match="rec must be a mesh"):
        chamfer_to_surface(sphere.vertices, sphere)


def test_the_frame_ignores_vertices_no_face_uses(sphere):
    """The GT's box (which sets the normalised frame) is that of the surface: a stray unreferenced vertex
    at (5, 5, 5) changes nothing."""
    stray = trimesh.Trimesh(np.vstack([sphere.vertices, [[5.0, 5.0, 5.0]]]), sphere.faces, process=False)
    assert chamfer(sphere, stray)["scale"] == pytest.approx(chamfer(sphere, sphere)["scale"])


def test_points_inputs(sphere):
    pts = sphere.vertices  # 2562 points < n_samples: used as they are
    r = chamfer(pts, pts)
    assert r["chamfer_l1"] == 0.0 and r["fscore@0.01"] == 1.0
    assert "normal_consistency" not in r
    r2 = chamfer(torch.from_numpy(sphere.sample(40000, seed=1)), sphere, n_samples=5000)
    assert r2["n_rec"] == 5000  # subsampled; the floor at 5000 samples is ½ sqrt(π/5000)
    assert r2["chamfer_l1"] == pytest.approx(0.5 * math.sqrt(math.pi / 5000) * 1e3, rel=0.05)
    raw = chamfer(sphere, sphere, normalize_by_gt=False, n_samples=5000)
    assert raw["scale"] == 1.0 and "not normalised" in raw["frame"]


def test_chamfer_errors(sphere):
    with pytest.raises(NLSError, match="empty"):
        chamfer(np.zeros((0, 3)), sphere)
    with pytest.raises(NLSError, match=r"\(P, 3\)"):
        chamfer(np.zeros((5, 2)), sphere)
    with pytest.raises(NLSError, match="no faces"):
        chamfer(trimesh.Trimesh(), sphere)


@pytest.mark.parametrize("name", ["spot.obj", "kitten.obj"])
def test_real_mesh_floor(name):
    path, why = data_path("meshes", name)
    if path is None:
        pytest.skip(f"{name} unavailable: {why}")
    from pipeline.scenes.mesh_render import load_mesh

    f = chamfer_floor(load_mesh(path))
    # the protocol's floor: about 4.0 (x10^3) on spot, kitten, 3holes
    assert 3.5 < f["chamfer_l1"] < 4.5, f
    assert f["normal_consistency"] > 0.98


def test_two_fscore_thresholds_with_one_key_are_refused():
    """0.01 and 0.010000001 both print as 0.01: the second result replaced the first under one key."""
    box = trimesh.creation.box()
    with pytest.raises(NLSError, match="F-score thresholds .* name the same key twice"):
        chamfer(box, box, n_samples=500, fscore_taus=(0.01, 0.010000001))


def test_an_unused_non_finite_vertex_is_ignored_as_by_the_bounds():
    box = trimesh.creation.box()
    odd = trimesh.Trimesh(np.vstack([box.vertices, [np.nan] * 3]), box.faces, process=False)
    assert chamfer(box, odd, n_samples=2000)["chamfer_l1"] == chamfer(box, box, n_samples=2000)["chamfer_l1"]
