"""Plugin sample_network (Atzmon et al. 2019): projections, sample networks, Eq. 13 reconstruction,
margin heads, curves, scans, loaders and the CLI path. Each test compares with a closed form, an
independent finite-difference computation or a stated bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from plugins.sample_network.config import MLPSDFConfig, ReconConfig, ScanConfig
from plugins.sample_network.fields import MLPSDF
from plugins.sample_network.margins import (
    HeadParams, KINDS, as_logits, classifier_loss, geometric_svm_distances, robust_boundary)
from plugins.sample_network.projection import (
    false_position_project, initial_points, newton_project, pinv_jacobian, value_and_jacobian)
from plugins.sample_network.sample_net import sample_network, sample_network_at

#: Chamfer-L1 (x10^3, GT-normalised frame, 10k samples) a 300-step reconstruction of a sphere point
#: cloud must reach; the 10k-sample floor of this sphere is 8.92 and the seeded run reaches 9.31 (1 and 2
#: threads). Broken losses measured 9.67 (no data term) to 10.78 (no general levels); measured results are printed.
SPHERE_CD_L1_BOUND = 9.6


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


# ------------------------------------------------------------------ projection (§2.1, Eq. 4/5)


@pytest.mark.parametrize("l", [1, 2, 3])
def test_lemma1_one_newton_step_is_orthogonal_projection_for_affine_F(l):
    d = 6
    A = torch.randn(l, d, dtype=torch.float64)
    b = torch.randn(l, dtype=torch.float64)
    c = torch.randn(l, dtype=torch.float64)
    x = torch.randn(200, d, dtype=torch.float64)
    fn = lambda z: z @ A.T + b
    p = newton_project(fn, x, c, iters=1, tol=1e-9).points
    # closed-form orthogonal projection onto {Ax + b = c}
    ref = x - (torch.linalg.solve(A @ A.T, (x @ A.T + b - c).T)).T @ A
    assert torch.allclose(p, ref, atol=1e-10)
    assert torch.allclose(fn(p), c.expand(200, l), atol=1e-10)
    # the displacement lies in the row space of A (orthogonal to the level set)
    null = torch.linalg.svd(A, full_matrices=True).Vh[l:]
    assert torch.allclose((p - x) @ null.T, torch.zeros(200, d - l, dtype=torch.float64), atol=1e-10)


def test_pinv_matches_torch_pinv():
    J = torch.randn(50, 2, 5, dtype=torch.float64)
    assert torch.allclose(pinv_jacobian(J), torch.linalg.pinv(J), atol=1e-10)
    J1 = torch.randn(50, 1, 5, dtype=torch.float64)
    assert torch.allclose(pinv_jacobian(J1), torch.linalg.pinv(J1), atol=1e-10)  # Eq. 5


def test_projection_onto_sphere_sdf_every_measure_and_chunking():
    r = 0.4
    calls = []

    def sphere(x):
        calls.append(len(x))
        return x.norm(dim=-1) - r

    box = [-1, -1, -1, 1, 1, 1]
    pts = torch.randn(500, 3) * 0.3
    for kind in ("uniform", "gaussian"):
        x0 = initial_points(kind, 3000, bbox=box, points=pts, sigma=0.1)
        x0 = x0[x0.norm(dim=1) > 1e-3]
        pr = newton_project(sphere, x0, 0.0, iters=10, tol=1e-5, chunk=700, bbox=box)
        assert pr.valid.all(), kind
        assert ((pr.points.norm(dim=1) - r).abs() < 1e-5).all()
        assert (pr.values.abs() < 1e-5).all()
        # chunking does not change the result
        pr2 = newton_project(sphere, x0, 0.0, iters=10, tol=1e-5, chunk=10 ** 6, bbox=box)
        assert torch.allclose(pr.points, pr2.points)
    # "current" measure: samples already on the sphere are not moved (0 iterations)
    cur = initial_points("current", 400, current=pr.points)
    calls.clear()
    pr3 = newton_project(sphere, cur, 0.0, iters=10, tol=1e-5)
    assert (pr3.iterations == 0).all() and torch.equal(pr3.points, cur) and calls == [400]
    # a non-zero level: S_0.1 is the sphere of radius r + 0.1
    pr4 = newton_project(sphere, x0[:200], 0.1, iters=10, tol=1e-5)
    assert ((pr4.points.norm(dim=1) - r - 0.1).abs() < 1e-5).all()


def test_only_unconverged_points_are_evaluated():
    """A cubic-ish F makes points converge at different iterations; rows evaluated per call shrink."""
    rows = []

    def fn(x):
        rows.append(len(x))
        return x[:, 0] + 0.5 * x[:, 0] ** 3 - 0.2

    x0 = torch.cat([torch.zeros(10, 3), torch.rand(90, 3) * 2 - 1])
    x0[:10, 0] = 0.19218  # already (almost) on the level set
    pr = newton_project(fn, x0, 0.0, iters=20, tol=1e-5)
    assert pr.valid.all()
    assert rows[0] == 100 and rows[-1] < 100 and all(a >= b for a, b in zip(rows, rows[1:]))
    assert (pr.iterations[:10] <= 1).all() and pr.iterations.max() > 1


def test_l2_projection_onto_intersection_of_two_planes_and_a_circle():
    n1 = torch.tensor([1.0, 2.0, 0.5])
    n2 = torch.tensor([-0.3, 0.4, 1.0])
    planes = lambda x: torch.stack([x @ n1 - 0.1, x @ n2 + 0.2], 1)
    x = torch.randn(1000, 3, dtype=torch.float32)
    pr = newton_project(planes, x, 0.0, iters=5, tol=1e-5)
    assert pr.valid.all() and (pr.iterations == 1).all()  # Lemma 1 for l = 2
    assert (planes(pr.points).abs() < 1e-5).all()
    line_dir = torch.linalg.cross(n1, n2)
    # orthogonal projection onto the line: the displacement is orthogonal to its direction
    assert ((pr.points - x) @ line_dir).abs().max() < 1e-4
    # a curved intersection: sphere ∩ plane = a circle of radius 0.3 in z = 0.4
    circ = lambda x: torch.stack([x.norm(dim=1) - 0.5, x[:, 2] - 0.4], 1)
    x = torch.randn(1000, 3) * 0.2 + torch.tensor([0.0, 0.0, 0.4])
    pr = newton_project(circ, x, 0.0, iters=20, tol=1e-5, max_step=0.5)
    ok = pr.points[pr.valid]
    assert pr.valid.float().mean() > 0.97
    assert (ok[:, 2] - 0.4).abs().max() < 1e-4 and (ok[:, :2].norm(dim=1) - 0.3).abs().max() < 1e-4


def test_false_position_along_pgd_direction_on_affine_F():
    w = torch.randn(8, dtype=torch.float64)
    fn = lambda z: z @ w + 0.3
    x = torch.randn(300, 8, dtype=torch.float64)
    for norm, dual in (("linf", w.abs().sum()), ("l2", w.norm())):
        pr = false_position_project(fn, x, 0.0, norm=norm, tol=1e-9)
        assert pr.valid.all()
        assert fn(pr.points).abs().max() < 1e-9
        dist = (pr.points - x).abs().amax(1) if norm == "linf" else (pr.points - x).norm(dim=1)
        assert torch.allclose(dist, fn(x).abs() / dual, atol=1e-9)  # L∞ / L2 distance to the plane


# ------------------------------------------------------------------ sample network (§2.2, Eq. 8/9)


class _TinyNet(torch.nn.Module):
    """A smooth F(x; θ): R³ → R^l (tanh MLP plus a quadratic / linear part so {F = 0} is a perturbed
    sphere for output 0 and a perturbed plane for output 1)."""

    def __init__(self, out_dim=1):
        super().__init__()
        torch.manual_seed(1)
        self.l1 = torch.nn.Linear(3, 16)
        self.l2 = torch.nn.Linear(16, out_dim)
        with torch.no_grad():
            self.l2.weight.mul_(0.1)
        self.a = torch.nn.Parameter(torch.tensor([0.3, -0.2, 1.0]))
        self.double()

    def values(self, x):
        base = [x.pow(2).sum(1) - 0.16, x @ self.a - 0.05][: self.l2.out_features]
        return self.l2(torch.tanh(self.l1(x))) + torch.stack(base, 1)


def _tiny_mlp(out_dim=1):
    return _TinyNet(out_dim)


def _implicit_point(fn, p, J0):
    """Independent reference: the point of {F = 0} in p + rowspace(J0), found by Newton on the
    coefficients a (l unknowns): F(p + J0ᵀ a) = 0 (the minimal-norm motion Eq. 8 describes)."""
    a = torch.zeros(J0.shape[0], dtype=p.dtype)
    for _ in range(50):
        z = (p + J0.T @ a)[None].detach().requires_grad_(True)
        f = fn(z).reshape(-1)
        Jz = torch.stack([torch.autograd.grad(f[k], z, retain_graph=True)[0][0] for k in range(len(f))])
        a = a - torch.linalg.solve(Jz @ J0.T, f.detach())
    return p + J0.T @ a


@pytest.mark.parametrize("out_dim", [1, 2])
def test_sample_network_gradient_matches_eq8_by_finite_differences(out_dim):
    model = _tiny_mlp(out_dim)
    fn = lambda z: model.values(z)
    x0 = torch.tensor([[0.35, 0.1, -0.2], [-0.1, 0.3, 0.25]], dtype=torch.float64)
    pr = newton_project(fn, x0, 0.0, iters=50, tol=1e-12, max_step=0.2)
    assert pr.valid.all()
    p = pr.points
    params = list(model.parameters())
    u = [torch.randn_like(q) for q in params]  # random direction in parameter space
    v = torch.randn(3, dtype=torch.float64)
    for i in range(len(p)):
        # autograd through the sample network (Eq. 9): directional derivative of <v, p(θ)>
        pt = sample_network(fn, p[i:i + 1], 0.0)
        assert torch.allclose(pt, p[i:i + 1], atol=1e-10)  # value: p itself
        grads = torch.autograd.grad((pt[0] @ v), params, allow_unused=True)
        auto = sum(float((g * du).sum()) for g, du in zip(grads, u) if g is not None)
        # independent: central finite differences of the implicit level-set point
        _, J0 = value_and_jacobian(fn, p[i:i + 1])
        J0 = J0[0]
        h = 1e-6
        pts = []
        for sgn in (1, -1):
            with torch.no_grad():
                for q, du in zip(params, u):
                    q.add_(sgn * h * du)
            pts.append(_implicit_point(fn, p[i], J0))
            with torch.no_grad():
                for q, du in zip(params, u):
                    q.sub_(sgn * h * du)
        fd = float(((pts[0] - pts[1]) / (2 * h)) @ v)
        assert auto == pytest.approx(fd, rel=1e-4, abs=1e-7), (i, auto, fd)


def test_fused_sample_network_equals_two_pass_version():
    model = _tiny_mlp(1)
    fn = lambda z: model.values(z)[:, 0]
    p = newton_project(fn, torch.randn(20, 3, dtype=torch.float64) * 0.3, 0.0, iters=30, tol=1e-12).valid_points
    a = sample_network(fn, p, 0.0)
    b = sample_network_at(fn, p, 0.0).points
    ga = torch.autograd.grad(a.pow(2).sum(), list(model.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.pow(2).sum(), list(model.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        if x is not None:
            assert torch.allclose(x, y, atol=1e-10)


def test_own_level_samples_equal_the_sample_network_of_their_level_set():
    """level=None: each point is a sample of S_c with c = F(p; θ₀); the value is p and the
    θ-gradient is that of Eq. 9 at the fixed level c (two-pass version). own_level mixes both."""
    model = _tiny_mlp(1)
    fn = lambda z: model.values(z)[:, 0]
    p = torch.randn(30, 3, dtype=torch.float64) * 0.4
    with torch.no_grad():
        c = fn(p)
    own = sample_network_at(fn, p, None)
    assert torch.allclose(own.points.detach(), p) and torch.allclose(own.levels, c)
    ref = sample_network(fn, p, c)
    for a, b in zip(torch.autograd.grad(own.points.pow(3).sum(), list(model.parameters()), allow_unused=True),
                    torch.autograd.grad(ref.pow(3).sum(), list(model.parameters()), allow_unused=True)):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-10)
    mask = torch.arange(30) % 2 == 0
    mixed = sample_network_at(fn, p, 0.0, own_level=mask)
    assert torch.allclose(mixed.levels[mask], c[mask]) and (mixed.levels[~mask] == 0).all()
    newton = p - mixed.grads * (c / mixed.grads.pow(2).sum(1)).unsqueeze(1)  # one Newton step onto S_0
    assert torch.allclose(mixed.points.detach()[~mask], newton[~mask])


def test_tracked_pool_moves_by_one_newton_step_and_general_samples_count():
    """track: the pool keeps p − D_xF^†(F(p) − t) (Eq. 4) of this step's samples; the next step
    uses them without projecting (warm), and general samples add their own term."""
    from plugins.sample_network.losses import LevelSetRecon

    sys_ = _System(MLPSDF(MLPSDFConfig(hidden=32, layers=2, init_radius=0.3)))
    pts = torch.nn.functional.normalize(torch.randn(2000, 3), dim=1).numpy() * 0.4
    cfg = ReconConfig(n_samples=256, batch_points=256, refresh=0.25, general_samples=128, track=True)
    loss = LevelSetRecon(cfg, pts, sys_.aabb.tolist())
    fn = lambda z: sys_.chain(z)["sdf"]
    captured = {}
    orig = loss._update_pool

    def spy(P, moved, counts):
        captured.update(P=P.clone(), counts=counts)
        orig(P, moved, counts)

    loss._update_pool = spy
    loss({"step": 0}, {}, sys_)
    n0 = captured["counts"][0]
    assert captured["counts"][1] == 128
    p = captured["P"][:n0].double()
    x = p.clone().requires_grad_(True)
    sys_.double()
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    with torch.no_grad():
        step = g * (fn(p) / g.pow(2).sum(1)).unsqueeze(1)
    sys_.float()
    kept = int(loss.pool_warm[0].sum())
    assert kept >= 0.9 * n0
    assert torch.allclose(loss.pool[0][:kept].double(), (p - step)[:kept], atol=1e-5)
    loss({"step": 1}, {}, sys_)
    assert kept - 64 <= loss.info["S_0"]["warm"] <= kept  # 25% of the pool is redrawn


def test_geometric_init_starts_from_a_sphere():
    f = MLPSDF(MLPSDFConfig(hidden=256, layers=4, init_radius=0.4, activation="relu"))
    x = torch.randn(2000, 3)
    x = x / x.norm(dim=1, keepdim=True) * 0.4
    assert f(x)["sdf"].abs().mean() < 0.08  # ≈ ‖x‖ − r in expectation over the random init
    assert f(torch.zeros(1, 3))["sdf"].item() < -0.3
    assert f(x * 1.5)["sdf"].mean() > 0.1


# ------------------------------------------------------------------ surface reconstruction (Eq. 13)


class _System(torch.nn.Module):
    """Minimal stand-in for pipeline.system.System: ``chain(x, d)`` and ``aabb``."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.register_buffer("aabb", torch.tensor([-0.6] * 3 + [0.6] * 3))

    def chain(self, x, d=None):
        return self.field(x, d)


def test_sphere_point_cloud_reconstructs_below_chamfer_bound():
    from pipeline.mesh import extract_mesh
    from pipeline.metrics import chamfer
    from plugins.sample_network.losses import LevelSetRecon

    torch.manual_seed(0)  # the field's initialisation and the loss's draws, whatever ran before
    gt = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    pts, _ = trimesh.sample.sample_surface(gt, 5000, seed=0)
    sys_ = _System(MLPSDF(MLPSDFConfig(hidden=64, layers=3, init_radius=0.3)))
    loss = LevelSetRecon(ReconConfig(n_samples=512, batch_points=512, levels=[0.0]), pts, sys_.aabb.tolist())
    opt = torch.optim.Adam(sys_.parameters(), lr=2e-3)
    for k in range(300):
        L = loss({"step": k}, {}, sys_)
        opt.zero_grad()
        L.backward()
        opt.step()
    assert loss.info["S_0"]["valid"] > 400
    mesh = extract_mesh(lambda x: sys_.chain(x)["sdf"], sys_.aabb.tolist(), 96, 0.0)
    cd = chamfer(mesh, gt, n_samples=10000)
    floor = chamfer(gt, gt, n_samples=10000)["chamfer_l1"]
    print(f"sphere 300 steps: CD-L1 {cd['chamfer_l1']:.2f} (floor {floor:.2f}, bound {SPHERE_CD_L1_BOUND}), "
          f"CD-L2 {cd['chamfer_l2']:.3f}; load {os.getloadavg()[0]:.2f}")
    assert cd["chamfer_l1"] < SPHERE_CD_L1_BOUND


class _SphereSDF(torch.nn.Module):
    """The exact SDF of a sphere of radius ``r`` about the origin (with a dummy parameter for the optimiser)."""

    def __init__(self, r: float):
        super().__init__()
        self.r = torch.nn.Parameter(torch.tensor(float(r)))

    def forward(self, x, d=None):
        return {"sdf": x.norm(dim=-1) - self.r}


@pytest.mark.parametrize("r, lam, general_weight, expected", [
    (0.4, 0.0, 0.0, 0.1),   # every S_0 sample is 0.1 from the points: the level term is |R - r|
    (0.4, 2.0, 0.0, 0.3),   # + lam * mean|F(x_j)| = 2 * 0.1
    (0.5, 0.0, 1.0, 0.0),   # the exact SDF of the points' sphere: S_c lies |c| from them for every c
])  # (the last is ~4e-3 above 0: a point of S_c is up to ~5e-3 from the nearest vertex)
def test_eq13_value_on_an_exact_sphere_field(r, lam, general_weight, expected):
    """Eq. 13 on the analytic field |x| - r against 20k points on the sphere of radius R = 0.5: S_t is the
    sphere of radius r + t, so each term is known in closed form (up to the points' spacing)."""
    from plugins.sample_network.losses import LevelSetRecon

    torch.manual_seed(0)
    gt = trimesh.creation.icosphere(subdivisions=6, radius=0.5)
    pts = np.asarray(gt.vertices)  # 40962 points, ~0.005 apart
    cfg = ReconConfig(n_samples=512, batch_points=512, levels=[0.0], lam=lam, general_weight=general_weight,
                      general_samples=1024 if general_weight else 0)
    loss = LevelSetRecon(cfg, pts, [-0.8] * 3 + [0.8] * 3)
    value = float(loss({"step": 0}, {}, _System(_SphereSDF(r))).detach())
    assert value == pytest.approx(expected, abs=6e-3)


def test_eq13_general_term_is_the_mean_gap_of_the_general_levels():
    """With r = 0.4 a general sample at radius rho (level c = rho - r) is |R - rho| from the points, so its
    term is ||R - rho| - |c||; the samples lie near the points (rho ~ R), where it is ~ |R - r| = 0.1."""
    from plugins.sample_network.losses import LevelSetRecon

    gt = trimesh.creation.icosphere(subdivisions=6, radius=0.5)
    values = {}
    for gw in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = ReconConfig(n_samples=512, batch_points=512, levels=[0.0], lam=0.0, general_weight=gw,
                          general_samples=1024, general_sigmas=[0.01])
        loss = LevelSetRecon(cfg, np.asarray(gt.vertices), [-0.8] * 3 + [0.8] * 3)
        values[gw] = float(loss({"step": 0}, {}, _System(_SphereSDF(0.4))).detach())
    assert values[0.0] == pytest.approx(0.1, abs=3e-3)
    assert values[1.0] - values[0.0] == pytest.approx(0.1, abs=0.01)


def test_udf_baseline_and_recon_loss_need_points():
    from pipeline.types import NLSError
    from plugins.sample_network.losses import build_recon

    class Ctx:
        scene = None
    with pytest.raises(NLSError, match="point cloud"):
        build_recon(ReconConfig(), Ctx())


# ------------------------------------------------------------------ margin heads (§3.1, §3.2)


def _linear(d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(80, d, generator=g, dtype=torch.float64)
    y = (torch.rand(80, generator=g) > 0.5).long()
    return w, b, x, y, (lambda z: z @ w + b)


def test_eq11_alpha_minus2_l2_is_the_soft_svm_eq10():
    w, b, x, y, model = _linear()
    lam = 0.3
    hp = HeadParams(lam=lam, alpha=-2.0, norm="l2", tol=1e-9)
    L11 = classifier_loss("geometric_svm", model, x, y, hp)
    ys = 2 * y.double() - 1
    L10 = torch.relu(1 - ys * model(x)).mean() + 2 * lam * (w @ w)  # Σ_{t=±1} (1/‖w‖)^-2 = 2‖w‖²
    assert float(L11.detach()) == pytest.approx(float(L10.detach()), rel=1e-9)
    g11 = torch.autograd.grad(L11, [w, b])
    g10 = torch.autograd.grad(L10, [w, b])
    for a, c in zip(g11, g10):
        assert torch.allclose(a, c, atol=1e-9)


def test_margin_boundary_samples_match_their_definitions_on_a_linear_classifier():
    w, b, x, y, model = _linear()
    fm = lambda z: as_logits(model(z))
    ys = 2 * y.double() - 1
    for norm, dual in (("linf", w.abs().sum()), ("l2", w.norm())):
        hp = HeadParams(norm=norm, tol=1e-9)
        out = geometric_svm_distances(fm, x, y, hp)
        assert set(out) == {-1.0, 1.0}
        for t, (D, p0, pt) in out.items():
            assert model(p0).abs().max() < 1e-8                       # p0 on S_0
            assert torch.allclose(ys * model(pt), torch.full((len(pt),), t, dtype=torch.float64), atol=1e-8)
            assert float(D.detach()) == pytest.approx(1.0 / float(dual.detach()), rel=1e-7)  # D(S_0, S_t) = |t| / ‖w‖_*
    rho, ok, p = robust_boundary(fm, x, y, HeadParams(tol=1e-10))
    assert ok.all() and model(p).abs().max() < 1e-9
    assert torch.allclose(rho, model(x).abs().detach() / w.abs().sum().detach(), atol=1e-9)  # L∞ distance
    # Eq. 12 value from its definition
    eps = 0.5
    hp = HeadParams(eps_train=eps, lam=0.7, lam_wrong=2.0, ce_weight=0.0, tol=1e-10)
    L = classifier_loss("robust_margin", model, x, y, hp)
    m = (ys * model(x)).detach()
    d_inf = m.abs() / w.abs().sum().detach()
    ref = torch.where(m > 0, 0.7 * torch.relu(eps - d_inf), 2.0 * (eps + d_inf)).mean()
    assert float(L.detach()) == pytest.approx(float(ref), rel=1e-7)


def test_every_head_runs_on_a_multiclass_mlp_and_has_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.Softplus(beta=5),
                              torch.nn.Linear(32, 3))
    x = torch.rand(24, 1, 4, 4)
    y = torch.randint(0, 3, (24,))
    for kind in KINDS:
        hp = HeadParams(eps_train=0.05, pgd_steps=3, clamp=(0.0, 1.0), tol=1e-4)
        L = classifier_loss(kind, net, x, y, hp)
        g = torch.autograd.grad(L, list(net.parameters()))
        assert torch.isfinite(L) and all(torch.isfinite(t).all() for t in g), kind
        assert sum(float(t.abs().sum()) for t in g) > 0, kind


# ------------------------------------------------------------------ curves


def test_curve_reconstruction_and_polyline_export(tmp_path):
    from plugins.sample_network.curves import export_polyline, extract_polyline, order_polylines, reconstruct_curve
    from plugins.sample_network.losses import KNN

    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    circle = np.stack([0.3 * np.cos(t), 0.3 * np.sin(t), 0 * t], 1)
    lines = order_polylines(circle, spacing=0.01)
    assert len(lines) == 1 and np.allclose(lines[0][0], lines[0][-1])  # one closed loop, in order
    assert np.linalg.norm(np.diff(lines[0], axis=0), axis=1).max() < 0.02
    obj = export_polyline(lines, tmp_path / "c.obj").read_text()
    assert obj.count("\nv ") + obj.startswith("v ") == len(lines[0]) - 1 and "\nl 1 2 3" in obj
    ply = export_polyline(lines, tmp_path / "c.ply").read_text()
    assert f"element edge {len(lines[0]) - 1}" in ply

    pts = np.stack([0.3 * np.cos(t), 0.3 * np.sin(t), 0.1 * np.sin(2 * t)], 1).astype(np.float32)
    model = reconstruct_curve(pts, steps=200)
    rec = extract_polyline(model, pts, n=3000)
    allp = np.concatenate(rec)
    d_pc, _ = KNN(allp).query(pts)   # every input point has the curve nearby
    d_cp, _ = KNN(pts).query(allp)
    print(f"curve: {len(rec)} polylines, completeness mean {d_pc.mean():.4f}, accuracy median {np.median(d_cp):.4f}")
    assert d_pc.mean() < 0.02 and np.median(d_cp) < 0.01


# ------------------------------------------------------------------ data


def test_scan_source_noise_subsample_crop(tmp_path):
    from plugins.sample_network.data import build_scan

    mesh_path = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3, radius=2.0).export(mesh_path)
    base = dict(path=str(mesh_path), n_points=4000)
    clean = build_scan(ScanConfig(**base), None)()
    assert clean.points.shape == (4000, 3) and clean.normals is None and clean.gt_mesh.exists()
    r = np.linalg.norm(clean.points, axis=1)
    assert abs(r.mean() - 0.5) < 0.01 and r.std() < 0.01  # normalised to extent 1
    noisy = build_scan(ScanConfig(**base, noise=0.01), None)()
    assert 0.005 < np.linalg.norm(noisy.points, axis=1).std() < 0.02
    sub = build_scan(ScanConfig(**base, subsample=500), None)()
    assert len(sub.points) == 500
    part = build_scan(ScanConfig(**base, crop="plane", crop_keep=0.5), None)()
    assert part.points[:, 2].max() < 0.01 and 1500 < len(part.points) < 2500
    view = build_scan(ScanConfig(**base, crop="view", crop_dir=[1, 0, 0]), None)()
    assert (view.points[:, 0] > -0.05).all()
    np.savetxt(tmp_path / "pc.xyz", clean.points[:300] * 7 + 3)
    pc = build_scan(ScanConfig(path=str(tmp_path / "pc.xyz")), None)()
    assert pc.gt_mesh is None and len(pc.points) == 300 and np.ptp(pc.points, 0).max() == pytest.approx(1, abs=1e-5)


def test_classification_loaders():
    from pipeline.scenes import data_path
    from plugins.sample_network.data import binary_merge, load_fashion_mnist, load_mnist_test_split

    p, why = data_path("classify", "fashion-mnist")
    if p is None:
        pytest.skip(why)
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) == set(range(10))
    assert set(np.unique(binary_merge(y, (0, 2, 4, 6)))) == {0, 1}
    p, why = data_path("classify", "mnist-test")
    if p is None:
        pytest.skip(why)
    xtr, ytr = load_mnist_test_split("train")
    xte, yte = load_mnist_test_split("test")
    assert len(xtr) == 8000 and len(xte) == 2000
    assert not (set(map(bytes, xtr[:200].reshape(200, -1))) & set(map(bytes, xte.reshape(len(xte), -1))))


# ------------------------------------------------------------------ plugin and CLI


def test_plugin_registers_components_without_importing_torch():
    code = ("import sys; from pipeline.plugins import PluginHost; h = PluginHost.create(entry_points_=False); "
            "names = {(c.stage, c.name) for c in h.components()}; "
            "assert ('field', 'mlp_sdf') in names and ('loss', 'level_set_recon') in names, names; "
            "assert ('loss', 'geometric_svm') in names and ('scene', 'scan') in names; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_occupancy_margin_head_on_a_3d_field(tmp_path):
    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import plugin_host

    mesh_path = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3, radius=0.5).export(mesh_path)
    data = {"name": "occ", "scene": {"type": "scan", "path": str(mesh_path), "n_points": 2000},
            "field": {"type": "mlp_sdf", "hidden": 32, "layers": 2},
            "losses": [{"type": k, "n_points": 64, "pgd_steps": 2} for k in
                       ("margin_ce", "geometric_svm", "robust_margin", "pgd_at", "trades", "margin_hinge")]}
    host = plugin_host()
    cfg = validate(data, host, source="test")
    dev = torch.device("cpu")
    system = build_system(cfg, load_scene_data(cfg, dev), dev)
    for name, loss in system.losses.items():
        L = loss({"step": 0}, {}, system)
        assert torch.isfinite(L), name
        L.backward()


def test_nls_reconstruct_end_to_end_on_a_tiny_scan(tmp_path, nls):
    import yaml

    mesh_path = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=4, radius=0.5).export(mesh_path)
    scene = {"name": "tiny_sn", "method": "sample_network",
             "scene": {"type": "scan", "path": str(mesh_path), "n_points": 3000},
             "field": {"type": "mlp_sdf", "hidden": 32, "layers": 2, "init_radius": 0.3},
             "extractor": {"type": "marching_cubes", "resolution": 48},
             "losses": [{"type": "level_set_recon", "n_samples": 256, "batch_points": 256}],
             "evaluators": [{"type": "chamfer", "floor": False}],
             "train": {"steps": 40, "lr": 0.003, "log_every": 10, "checkpoint_every": 20, "threads": 1},
             "eval": {"chamfer_samples": 3000}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(scene))
    nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", check=True)
    run = next((tmp_path / "runs").glob("tiny_sn/sample_network/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 40 and (run / "meshes" / "mesh.ply").exists()
    assert not (run / "renders").exists()  # nothing to render on a scan: no empty folder
    print(f"e2e tiny scan: CD-L1 {summary['metrics']['chamfer_l1']:.2f} after 40 steps")
    assert summary["metrics"]["chamfer_l1"] < 60


def test_a_step_without_valid_samples_does_not_pin_the_pool_at_the_origin():
    """With general_samples 0 and no level set yet (every sample invalid), the pool stays unfilled, so the
    next step starts fresh; it used to start every sample from the pool's all-zero buffer."""
    from plugins.sample_network.losses import LevelSetRecon

    class Ball(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.r = torch.nn.Parameter(torch.tensor(-1.0))  # no zero level: every sample is invalid

        def forward(self, x, d=None):
            return {"sdf": (x - torch.tensor([0.1, 0.05, 0.0])).norm(dim=-1) - self.r}

    class System(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def chain(self, x, d=None):
            return self.f(x, d)

    pts, _ = trimesh.sample.sample_surface(trimesh.creation.icosphere(4, radius=0.3), 2000, seed=0)
    torch.manual_seed(0)
    field = Ball()
    loss = LevelSetRecon(ReconConfig(levels=[0.0], lam=0.0, n_samples=128, general_samples=0, init="current"),
                         pts, [-0.6] * 3 + [0.6] * 3)
    loss({}, {}, System(field))
    assert loss.info["S_0"]["valid"] == 0 and not bool(loss.pool_ready)
    with torch.no_grad():
        field.r.fill_(0.3)
    loss({}, {}, System(field))
    assert torch.unique(loss.pool[0].round(decimals=5), dim=0).shape[0] == 128


@pytest.mark.parametrize("n", [2, 3])
def test_a_level_per_output_is_not_read_as_a_level_per_point_when_n_equals_l(n):
    """F(x) = (x0, x1) with levels (0.1, -0.2): every point projects to (0.1, -0.2), also for 2 points."""
    from plugins.sample_network.projection import newton_project

    p = newton_project(lambda x: x[:, :2], torch.zeros(n, 3), torch.tensor([0.1, -0.2]), iters=3).points
    assert torch.allclose(p[:, :2], torch.tensor([[0.1, -0.2]] * n))


def test_the_margin_pool_draws_its_uniform_and_surface_points_from_one_stream(tmp_path, monkeypatch):
    """The uniform half and trimesh's surface sampling used two default_rng(0) generators, so trimesh's
    face picks repeated the uniform coordinates; trimesh now continues the pool's own generator."""
    from plugins.sample_network.config import MarginConfig
    from plugins.sample_network.margins import OccupancyMargin

    mesh_path = tmp_path / "sphere.obj"
    trimesh.creation.icosphere(subdivisions=3, radius=0.5).export(mesh_path)
    seen = []
    real = trimesh.sample.sample_surface

    def spy(mesh, count, *args, seed=None, **kwargs):
        seen.append(seed.random() if isinstance(seed, np.random.Generator) else np.random.default_rng(seed).random())
        return real(mesh, count, *args, seed=seed, **kwargs)

    monkeypatch.setattr(trimesh.sample, "sample_surface", spy)
    head = OccupancyMargin("margin_ce", MarginConfig(), mesh_path, [-1.0] * 3 + [1.0] * 3, pool=2000)
    first_uniform = (float(head.x[0, 0]) + 1.0) / 2.0  # the pool's first draw, back in [0, 1]
    assert len(seen) == 1 and abs(seen[0] - first_uniform) > 1e-3
    assert (head.y == 1).any() and (head.y == 0).any()
