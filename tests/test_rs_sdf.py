"""rs_sdf: blur against scipy, weak SDF against analytic distances, Monte-Carlo certify, gradients,
the 3-phase schedule and a CLI run."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.system import FieldChain
from pipeline.testing import assert_metrics_noted
from pipeline.types import NLSError
from plugins.rs_sdf.blur import gaussian_blur3d
from plugins.rs_sdf.certifier import RandomizedSmoothing
from plugins.rs_sdf.certify import certify, clopper_pearson, grid_radius_agreement, occupancy_to_sdf, sdf_bound
from plugins.rs_sdf.config import RandomizedSmoothingConfig
from plugins.rs_sdf.grid import grid_points, sample_grid, voxel_size
from plugins.scenes.shapes import box as box_sdf
from plugins.scenes.shapes import sphere

ROOT = Path(__file__).resolve().parents[1]
BOX = torch.tensor([-0.6, -0.6, -0.6, 0.6, 0.6, 0.6])


class GridField(nn.Module):
    """An occupancy field given by a fixed vertex grid (what voxel_occupancy exposes)."""

    def __init__(self, V: torch.Tensor, box: torch.Tensor = BOX):
        super().__init__()
        self.V = nn.Parameter(V.clone())
        self.box = box

    def occupancy_grid(self):
        return self.V, self.box

    def forward(self, x, d=None):
        return {"occupancy": sample_grid(self.V, self.box, x)}


def indicator_grid(sdf_fn, box: torch.Tensor, R: int, ss: int = 4) -> torch.Tensor:
    """Occupancy (R,R,R) of {sdf < 0}: each vertex the fraction of ss^3 sub-samples inside its voxel."""
    pts = grid_points(box, (R, R, R))
    h = voxel_size(box, (R, R, R))
    off = (torch.arange(ss) + 0.5) / ss - 0.5
    occ = torch.zeros(len(pts))
    for dx in off:
        for dy in off:
            for dz in off:
                occ += (sdf_fn(pts + h * torch.stack([dx, dy, dz])) < 0).float()
    return (occ / ss ** 3).view(R, R, R)


def weak_sdf(V: torch.Tensor, sigma: float, x: torch.Tensor, box: torch.Tensor = BOX) -> torch.Tensor:
    """The certifier component applied through a FieldChain (the path training uses)."""
    cert = RandomizedSmoothing(RandomizedSmoothingConfig(sigma=sigma), box)
    chain = FieldChain(GridField(V, box), cert)
    with torch.no_grad():
        return chain(x)["sdf"]


# -- blur --------------------------------------------------------------------------------------

def _kernel_or_skip():
    from plugins.rs_sdf.blur import KERNEL

    if not KERNEL.load():
        pytest.skip(f"C++ blur kernel did not build: {KERNEL.status()['error']}")


@pytest.mark.parametrize("sigma", [0.7, 1.5, (1.5, 2.0, 2.5)])
@pytest.mark.parametrize("shape", [(37, 30, 26), (5, 300, 3)])
def test_blur_kernel_matches_scipy(sigma, shape):
    """The C++ kernel (float32) against scipy in float64; shapes cover tap radii longer than an
    axis and planes wider than one column block."""
    from scipy.ndimage import gaussian_filter

    _kernel_or_skip()
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = gaussian_filter(x.numpy(), sigma, mode="constant", truncate=4.0)
    y = gaussian_blur3d(x.float(), sigma, method="kernel")
    np.testing.assert_allclose(y.double().numpy(), ref, atol=2e-6)
    auto = gaussian_blur3d(x.float(), sigma)  # auto picks the kernel on CPU float32
    assert torch.equal(auto, y)


def test_blur_kernel_backward_is_the_adjoint():
    """<G x, g> == <x, G g> with the kernel on both sides, and the autograd gradient equals G g."""
    _kernel_or_skip()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(20, 17, 23, generator=gen, requires_grad=True)
    g = torch.rand(20, 17, 23, generator=gen)
    y = gaussian_blur3d(x, (1.1, 0.8, 1.7), method="kernel")
    (grad,) = torch.autograd.grad(y, x, g)
    ref = gaussian_blur3d(g.double(), (1.1, 0.8, 1.7), method="matmul")
    np.testing.assert_allclose(grad.double().numpy(), ref.numpy(), atol=2e-6)
    assert abs(float((y.detach().double() * g).sum() - (x.detach().double() * grad).sum())) < 1e-3


def test_blur_kernel_refuses_float64():
    _kernel_or_skip()
    with pytest.raises(ValueError, match="float32 CPU grid"):
        gaussian_blur3d(torch.zeros(4, 4, 4, dtype=torch.float64), 1.0, method="kernel")


@pytest.mark.parametrize("method", ["matmul", "conv", "fft"])
@pytest.mark.parametrize("sigma", [1.5, (1.5, 2.0, 2.5)])
def test_blur_matches_scipy(method, sigma):
    from scipy.ndimage import gaussian_filter

    x = torch.rand(37, 30, 26, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = gaussian_filter(x.numpy(), sigma, mode="constant", truncate=4.0)
    y = gaussian_blur3d(x, sigma, method=method)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("method", ["matmul", "conv", "fft"])
def test_blur_gradient_is_exact(method):
    x = torch.rand(7, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: gaussian_blur3d(v, (1.2, 0.7, 0.9), method=method), (x,))


_TRITON_CHECK = """
import json, sys, torch
from scipy.ndimage import gaussian_filter
from plugins.rs_sdf.blur import gaussian_blur3d
gen = torch.Generator().manual_seed(3)
x = torch.rand(19, 13, 22, dtype=torch.float64, generator=gen)
g = torch.rand(19, 13, 22, dtype=torch.float64, generator=gen)
sigma = (1.2, 0.9, 1.5)  # radius ceil(4 sigma) here = scipy's int(4 sigma + 0.5)
xf = x.float().requires_grad_(True)
y = gaussian_blur3d(xf, sigma, method="triton")
y.backward(g.float())
ref, ref_g = (gaussian_filter(a.numpy(), sigma, mode="constant", truncate=4.0) for a in (x, g))
print(json.dumps({"fwd": float(abs(y.detach().double().numpy() - ref).max()),
                  "bwd": float(abs(xf.grad.double().numpy() - ref_g).max()), "dtype": str(y.dtype)}))
"""


def test_blur_triton_kernels_match_scipy_in_the_interpreter():
    """The Triton path (one kernel per axis, used on CUDA) run on CPU through Triton's interpreter
    (``TRITON_INTERPRET=1``, set before triton is imported, hence a fresh process): forward against
    scipy, backward against scipy's blur of the output gradient (the adjoint)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the `test` extra installs it on Linux x86-64; CUDA builds of "
                    "PyTorch ship it)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHECK], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["dtype"] == "torch.float32" and res["fwd"] < 1e-6 and res["bwd"] < 1e-6, res


def test_blur_triton_is_refused_where_it_cannot_run(monkeypatch):
    """``method: triton`` on a CPU grid without the interpreter: the certifier refuses it before training
    starts, naming the key; a blur outside training (a CUDA-trained run rendered on CPU) warns and takes
    the FFT, which computes the same blur."""
    from plugins.rs_sdf.blur import triton_kernels

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = triton_kernels().available(torch.device("cpu"))
    assert not ok and ("CUDA" in why or "not importable" in why), why
    x = torch.rand(6, 5, 4)
    with pytest.warns(RuntimeWarning, match="blur method 'triton' cannot run here.*using the FFT"):
        y = gaussian_blur3d(x, 1.0, method="triton")
    assert torch.equal(y, gaussian_blur3d(x, 1.0, method="fft"))
    with pytest.raises(ValueError, match="blur method 'triton'"):
        triton_kernels().blur3d(x, [torch.ones(1)] * 3)
    rs = RandomizedSmoothing(RandomizedSmoothingConfig(method="triton"), BOX)
    with pytest.raises(NLSError, match="certifier.method: 'triton'"):
        rs.prepare_kernels(torch.device("cpu"))


def test_blur_auto_method_by_device_dtype_and_radius(monkeypatch):
    """``auto``: the C++ kernel (else matmul) for float32 CPU grids, the FFT for wide taps; on CUDA the
    Triton kernels where triton runs, else the FFT (the device is only inspected, none is needed)."""
    from plugins.rs_sdf import blur_triton
    from plugins.rs_sdf.blur import FFT_RADIUS, KERNEL, auto_method

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_method(cpu, torch.float32, 8) == ("kernel" if KERNEL.load() else "matmul")
    assert auto_method(cpu, torch.float64, 8) == "matmul" and auto_method(cpu, torch.float64, FFT_RADIUS + 1) == "fft"
    monkeypatch.setattr(blur_triton, "available", lambda device: (True, ""))
    assert auto_method(cuda, torch.float32, 8) == "triton"
    assert auto_method(cuda, torch.float32, FFT_RADIUS + 1) == "fft" and auto_method(cuda, torch.float64, 8) == "fft"
    monkeypatch.setattr(blur_triton, "available", lambda device: (False, "no triton"))
    assert auto_method(cuda, torch.float32, 8) == "fft"


def test_blur_auto_falls_back_to_the_fft_when_triton_fails(monkeypatch):
    """A triton that imports but cannot compile (toolchain, driver): ``auto`` warns once, gives the FFT's
    result, and picks the FFT from then on; an explicit ``method: triton`` still raises."""
    from plugins.rs_sdf import blur, blur_triton

    def broken(v, taps):
        raise RuntimeError("ptxas not found")

    monkeypatch.setattr(blur, "_TRITON_FAILED", [])
    monkeypatch.setattr(blur_triton, "available", lambda device: (True, ""))
    monkeypatch.setattr(blur_triton, "blur3d", broken)
    monkeypatch.setattr(blur, "auto_method", lambda device, dtype, radius: "triton")  # as on a CUDA grid
    x = torch.rand(9, 8, 7, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="Triton blur failed .*ptxas not found.*takes the FFT"):
        y = gaussian_blur3d(x, 1.1)
    assert torch.allclose(y, gaussian_blur3d(x, 1.1, method="fft"), atol=1e-12)
    monkeypatch.undo()
    monkeypatch.setattr(blur, "_TRITON_FAILED", ["RuntimeError: ptxas not found"])
    monkeypatch.setattr(blur_triton, "available", lambda device: (True, ""))
    assert blur.auto_method(torch.device("cuda"), torch.float32, 8) == "fft"
    monkeypatch.setattr(blur_triton, "blur3d", broken)
    with pytest.raises(RuntimeError, match="ptxas"):
        gaussian_blur3d(x.float(), 1.1, method="triton")


def test_reconstruct_refusing_triton_on_cpu_leaves_no_run_folder(tmp_path, nls):
    """``nls reconstruct`` with ``certifier.method: triton`` on CPU: exit 2, the error names the key, and
    the run folder made before the Trainer refused the job is removed (nothing was trained)."""
    scene = tmp_path / "rs.yaml"
    scene.write_text(yaml.safe_dump(_tiny_rs_scene()))
    res = nls("reconstruct", str(scene), "-q", "--device", "cpu", "-o", str(tmp_path / "runs"),
              "--set", "certifier.method=triton", env={"TRITON_INTERPRET": ""})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "certifier.method: 'triton' cannot run here" in res.stderr and "Traceback" not in res.stderr
    assert "removed" in res.stderr and not list((tmp_path / "runs").glob("*/*/*")), res.stderr


def test_blur_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D grid"):
        gaussian_blur3d(torch.zeros(4, 4), 1.0)
    with pytest.raises(ValueError, match="truncate"):
        gaussian_blur3d(torch.zeros(4, 4, 4), 1.0, truncate=2.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur3d(torch.zeros(4, 4, 4), 0.0)


# -- weak SDF against analytic distances ---------------------------------------------------------

def test_half_space_weak_sdf_is_the_signed_distance():
    """Blur of a half-space indicator is Phi(-d/sigma), so the weak SDF is exactly d where Phi^-1 is
    not clamped. Tolerance 0.2 voxel (discretisation: vertex sampling + trilinear interpolation),
    away from the grid boundary by more than the blur radius (zero padding there)."""
    box = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    R, sigma = 96, 0.08
    n = torch.tensor([0.48, -0.6, 0.64])
    n = n / n.norm()
    plane = lambda p: p @ n - 0.05  # noqa: E731
    V = indicator_grid(plane, box, R)
    h = float(voxel_size(box, (R, R, R))[0])
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(20000, 3, generator=g) * 2 - 1) * (1 - 4 * sigma - 2 * h)
    d = plane(x)
    keep = d.abs() < 3.3 * sigma  # Phi^-1 unclamped (eps = 1e-4 clamps at 3.72 sigma)
    w = weak_sdf(V, sigma, x[keep], box)
    err = (w - d[keep]).abs()
    assert keep.sum() > 2000
    assert float(err.max()) < 0.2 * h, f"max error {float(err.max()):.5f} vs voxel {h:.5f}"
    # beyond the clamp the value is the bound, finite
    far = weak_sdf(V, sigma, torch.tensor([[0.4, -0.4, 0.5]]), box)
    assert torch.isfinite(far).all() and abs(float(far)) == pytest.approx(sdf_bound(sigma, 1e-4), rel=1e-4)


SHAPES = {"ball": lambda p: sphere(p, radius=0.35), "box": lambda p: box_sdf(p, (0.25, 0.2, 0.3))}


@functools.lru_cache(maxsize=None)
def _shape_setup(name: str, R: int = 96, sigma: float = 0.03):
    V = indicator_grid(SHAPES[name], BOX, R, ss=3)
    x = torch.rand(20000, 3, generator=torch.Generator().manual_seed(2)) - 0.5
    return V, x, weak_sdf(V, sigma, x), SHAPES[name](x), float(voxel_size(BOX, (R, R, R))[0])


def test_ball_weak_sdf_is_a_lower_bound():
    """|weak SDF| <= |SDF| + tol at random points. For a smooth convex shape smoothing moves the
    level set inward by O(sigma^2 / radius), so tol = h/2 + sigma^2/radius (h the voxel size)."""
    sigma, rho = 0.03, 0.35
    V, x, w, s, h = _shape_setup("ball", sigma=sigma)
    over = w.abs() - s.abs()
    tol = 0.5 * h + sigma ** 2 / rho
    assert float(over.max()) < tol, f"max |w|-|s| = {float(over.max()):.5f} > tol {tol:.5f}"
    assert (torch.sign(w) == torch.sign(s))[s.abs() > 2 * h].all()


def _smoothed_boundary_distance(V: torch.Tensor, sigma: float, x: torch.Tensor) -> np.ndarray:
    """Distance from x to the smoothed classifier's decision boundary {G_sigma * V = 1/2}."""
    import igl

    from pipeline.mesh import grid_to_mesh

    S = gaussian_blur3d(V, sigma / float(voxel_size(BOX, V.shape)[0])).numpy()
    mesh = grid_to_mesh(S, BOX.tolist(), 0.5, inside="above")
    d, _, _, _ = igl.signed_distance(x.double().numpy(), np.asarray(mesh.vertices, np.float64),
                                     np.asarray(mesh.faces, np.int64))
    return np.abs(d)


@pytest.mark.parametrize("name", ["ball", "box"])
def test_weak_sdf_is_a_certified_radius(name):
    """Cohen et al.'s guarantee, which holds for any shape: the smoothed classifier is constant in
    the ball of radius |weak SDF|, so |weak SDF| <= distance to its boundary {p = 1/2} (+ h/2)."""
    V, x, w, s, h = _shape_setup(name)
    x, w = x[:3000], w[:3000]
    dist = _smoothed_boundary_distance(V, 0.03, x)
    assert float((w.abs().numpy() - dist).max()) < 0.5 * h


def test_box_lower_bound_holds_inside_and_fails_past_corners():
    """For the box the claim |weak| <= |SDF| + tol holds at random points inside and near faces, but
    not outside corners and edges: smoothing rounds them, so a point diagonally out from a corner at
    distance sigma gets a weak SDF of about 2 sigma. (For convex shapes weak >= SDF everywhere.)"""
    sigma = 0.03
    V, x, w, s, h = _shape_setup("box", sigma=sigma)
    free = w.abs() < 0.99 * sdf_bound(sigma, 1e-4)  # where Phi^-1 is not clamped
    assert float((s - w)[free].max()) < 0.5 * h  # weak >= true signed distance (convex shape)
    deep = s < -2 * sigma  # inside, away from the rounded edges
    assert float((w.abs() - s.abs())[deep].max()) < 0.5 * h
    corner = torch.tensor([[0.25, 0.2, 0.3]]) + sigma / math.sqrt(3)
    wc = float(weak_sdf(V, sigma, corner))
    assert wc > 1.5 * sigma  # true distance is sigma: the corner is where the lower bound fails


def test_sigma_in_world_units_is_resolution_independent():
    sigma = 0.05
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(3)) * 0.9 - 0.45
    ws = {R: weak_sdf(indicator_grid(SHAPES["ball"], BOX, R, ss=2), sigma, x) for R in (64, 128)}
    h = float(voxel_size(BOX, (64, 64, 64))[0])
    diff = (ws[128] - ws[64]).abs()
    # discretisation error of the coarse grid: well under half a voxel, a few % of it on average
    assert float(diff.max()) < 0.4 * h and float(diff.mean()) < 0.05 * h


@pytest.mark.parametrize("scene", ["rs_sdf_csg", "rs_sdf_spot", "rs_sdf_lego"])
def test_the_scenes_level_offsets_the_shrink_of_smoothing(scene):
    """The paper meshes at a slightly negative level of its weak SDF, which is positive inside: just outside
    the smoothed zero level, which smoothing has moved inside a convex surface. With this project's sign
    (negative inside) that level is positive. Exact for a ball: G_sigma * 1_ball at distance r from the centre
    is the noncentral chi-square CDF P(chi2_3(r^2/sigma^2) <= R^2/sigma^2)."""
    from scipy.optimize import brentq
    from scipy.stats import ncx2, norm

    cfg = yaml.safe_load((Path(__file__).parents[1] / "scenes" / f"{scene}.yaml").read_text())
    level, sigma, R = cfg["extractor"]["level"], cfg["certifier"]["sigma"], 0.3
    p = torch.tensor([float(ncx2.cdf(R ** 2 / sigma ** 2, 3, (r / sigma) ** 2)) for r in (0.29, 0.31)])
    assert (occupancy_to_sdf(p, sigma)[0] < 0 < occupancy_to_sdf(p, sigma)[1])  # the project's sign

    def radius(lv):
        return brentq(lambda r: -sigma * norm.ppf(ncx2.cdf(R ** 2 / sigma ** 2, 3, (r / sigma) ** 2)) - lv,
                      R - 0.1, R + 0.1)
    shrink, at_level, mirrored = radius(0.0) - R, radius(level) - R, radius(-level) - R
    assert shrink < 0 and at_level > shrink  # the mesh moves out, against the shrink
    assert abs(at_level) < abs(mirrored) / 2, (at_level, mirrored)  # and nearer the truth than the other sign


def test_occupancy_to_sdf_sign_and_clamp():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    s = occupancy_to_sdf(p, 0.1, eps=1e-3)
    assert torch.isfinite(s).all()
    assert s[0] > 0 and s[-1] < 0 and s[2] == 0  # negative inside
    assert float(s[3]) == pytest.approx(-0.1 * 1.2815516, rel=1e-5)


# -- Monte-Carlo certify -------------------------------------------------------------------------

def test_clopper_pearson_against_exact_binomial():
    from scipy.stats import binom

    lo, hi = clopper_pearson(np.array([7]), 50, 0.05)
    assert binom.sf(6, 50, lo[0]) == pytest.approx(0.025, rel=1e-6)  # P(K >= 7 | lo) = alpha/2
    assert binom.cdf(7, 50, hi[0]) == pytest.approx(0.025, rel=1e-6)


def test_certify_half_space_radius_and_abstain():
    n = torch.tensor([1.0, 0.0, 0.0])
    occ = lambda p: (p @ n < 0).float()  # noqa: E731
    x = torch.tensor([[-0.1, 0, 0], [0.05, 0.2, 0], [0.0, 0, 0]])
    r = certify(occ, x, 0.05, n0=100, n=20000, alpha=0.001, soft=False)
    assert r["inside"].tolist()[:2] == [True, False]
    assert r["abstain"][2]  # on the boundary p = 1/2
    true = np.array([0.1, 0.05])
    assert (r["radius"][:2] <= true).all() and (r["radius"][:2] > 0.8 * true).all()


def test_certify_abstains_at_a_lower_bound_of_exactly_one_half(monkeypatch):
    import plugins.rs_sdf.certify as C

    real = C.clopper_pearson
    monkeypatch.setattr(C, "clopper_pearson", lambda k, n, alpha, two_sided=True: (
        np.full(np.shape(k), 0.5) if not two_sided else real(k, n, alpha)))
    out = C.certify(lambda p: (p[:, 0] < 0).float(), torch.zeros(3, 3), 0.1, n0=10, n=50)
    assert out["abstain"].all() and (out["radius"] == 0).all()


def test_grid_radius_agrees_with_monte_carlo_certify():
    """Grid smoothing of V vs Monte-Carlo CERTIFY of the same occupancy (V trilinearly interpolated):
    the grid's p lies in the two-sided Clopper-Pearson interval (alpha = 0.001) at >= 95% of points."""
    sigma = 0.05
    V = indicator_grid(SHAPES["box"], BOX, 64)
    field = GridField(V)
    g = torch.Generator().manual_seed(4)
    cand = torch.rand(4000, 3, generator=g) - 0.5
    s = SHAPES["box"](cand)
    x = torch.cat([cand[s.abs() < 2 * sigma][:40], cand[:24]])
    cert = RandomizedSmoothing(RandomizedSmoothingConfig(sigma=sigma), BOX)
    chain = FieldChain(field, cert)
    with torch.no_grad():
        p_grid = chain(x)["smoothed_occupancy"].double().numpy()
        mc = certify(lambda p: field(p)["occupancy"], x, sigma, n0=100, n=4000, alpha=0.001, seed=1)
    agree = grid_radius_agreement(p_grid, mc)
    assert agree["within_ci"] >= 0.95, agree
    # Cohen's radius (a one-sided lower bound) never exceeds the grid's radius by more than the CI allows
    r_grid = np.abs(occupancy_to_sdf(torch.from_numpy(p_grid), sigma).numpy())
    ok = ~mc["abstain"]
    assert (mc["radius"][ok] <= r_grid[ok] + 0.1 * sigma).mean() >= 0.95


# -- component behaviour --------------------------------------------------------------------------

def test_certifier_blurs_once_per_step_and_needs_the_query():
    V = indicator_grid(SHAPES["ball"], BOX, 24)
    field = GridField(V)
    cert = RandomizedSmoothing(RandomizedSmoothingConfig(sigma=0.05), BOX)
    chain = FieldChain(field, cert)
    calls = []
    orig = cert.occupancy_grid
    cert.occupancy_grid = lambda f: calls.append(1) or orig(f)
    x = torch.rand(50, 3) - 0.5
    chain(x), chain(x), chain(x)
    assert len(calls) == 1
    with torch.no_grad():
        field.V.mul_(0.5)  # parameters changed outside training: recomputed
    chain(x)
    assert len(calls) == 2
    cert.on_train_step(1)
    chain(x)
    assert len(calls) == 3
    with pytest.raises(NLSError, match="query points"):
        cert({"occupancy": torch.zeros(3)})


def test_certifier_rasterises_fields_without_a_grid():
    """Any occupancy field: an analytic ball rasterised by the certifier gives the ball's weak SDF."""

    class Ball(nn.Module):
        def forward(self, x, d=None):
            return {"occupancy": (sphere(x, radius=0.3) < 0).float()}

    cert = RandomizedSmoothing(RandomizedSmoothingConfig(sigma=0.05, resolution=97), BOX)
    out = FieldChain(Ball(), cert)(torch.tensor([[0.0, 0, 0.4], [0.0, 0, 0.0]]))
    assert float(out["sdf"][0]) == pytest.approx(0.1, abs=0.02)
    assert float(out["sdf"][1]) < -0.15


def test_density_map_needs_a_width():
    from pipeline.types import ConfigError
    from plugins.rs_sdf.config import HardOccupancyConfig
    from plugins.rs_sdf.density import build_hard_occupancy

    class Ctx:
        class cfg:
            stages = {"certifier": None}

    with pytest.raises(ConfigError, match="density.width"):
        build_hard_occupancy(HardOccupancyConfig(), Ctx)
    dm = build_hard_occupancy(HardOccupancyConfig(width=0.1, scale=10), Ctx)
    s = torch.linspace(-1, 1, 11)
    dens = dm({"sdf": s})["density"]
    assert (dens[1:] <= dens[:-1]).all() and float(dens[5]) == pytest.approx(5.0, rel=1e-4)


# -- the voxel field in the pipeline -----------------------------------------------------------------

def _tiny_rs_scene(**field_opts) -> dict:
    from pipeline.testing import TINY_SCENE

    data = copy.deepcopy(TINY_SCENE)
    data["field"] = {"type": "voxel_occupancy", "resolution": 24, "appearance": "dense_grid",
                     "dense_grid": {"resolution": 16, "features": 4}, **field_opts}
    data["certifier"] = {"type": "randomized_smoothing", "sigma": 0.06}
    data["density"] = {"type": "hard_occupancy", "width": 0.05}
    data["extractor"] = {"type": "marching_cubes", "quantity": "sdf", "resolution": 24, "level": -0.002}
    return data


def _system(data):
    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import plugin_host

    cfg = validate(data, plugin_host(), source="test")
    scene = load_scene_data(cfg, torch.device("cpu"))
    return cfg, scene, build_system(cfg, scene, torch.device("cpu"))


def test_gradient_flows_from_a_rendered_pixel_to_the_voxels():
    cfg, scene, system = _system(_tiny_rs_scene(ngp_steps=0, init_occupancy=0.5))
    field = system.chain.field
    with torch.no_grad():  # a ball of occupancy so rays cross a surface
        field.logits.copy_(torch.logit(indicator_grid(SHAPES["ball"], field.box, 24).clamp(0.05, 0.95)))
    system.train()
    field.on_train_step(0)
    o = torch.tensor([[0.0, 0.0, 2.0]])
    d = torch.tensor([[0.02, 0.01, -1.0]])
    d = d / d.norm()
    out = system.renderer.render_rays(o, d, system.chain, training=False)
    out["rgb"].sum().backward()
    g = field.logits.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # the ray runs near the z axis: voxels far from it (beyond the blur radius) get no gradient
    assert float(g[:4, :4].abs().sum()) == 0.0


def test_phase_schedule_initialises_voxels_from_the_nerf_and_freezes_parts():
    cfg, scene, system = _system(_tiny_rs_scene(ngp_steps=3, voxel_steps=2))
    field = system.chain.field
    with torch.no_grad():  # an opaque NeRF in the whole box
        field.appearance.grid.params[:, 0] = 100.0
    field.on_train_step(0)
    assert int(field.phase) == 0 and not field.logits.requires_grad
    assert all(p.requires_grad for p in field.appearance.parameters())
    field.on_train_step(3)
    assert int(field.phase) == 1 and field.logits.requires_grad
    assert not any(p.requires_grad for p in field.appearance.parameters())
    assert float(torch.sigmoid(field.logits.detach()).min()) == pytest.approx(1 - field.cfg.init_clamp, rel=1e-4)
    field.on_train_step(5)
    assert int(field.phase) == 2 and all(p.requires_grad for p in field.parameters())
    assert int(system.state_dict()["chain.field.phase"]) == 2


def test_phases_by_budget_fraction_follow_the_trainer():
    """ngp_fraction / voxel_fraction place the phases by the budget fraction the Trainer reports."""
    from pipeline.runs import RunDir
    from pipeline.train import Trainer
    from pipeline.types import ConfigError

    data = _tiny_rs_scene(ngp_fraction=0.5, voxel_fraction=0.25)
    data["train"] = {**data.get("train", {}), "steps": 8, "checkpoint_every": 100, "log_every": 100}
    cfg, scene, system = _system(data)
    field = system.chain.field
    assert [field.phase_at(0, p) for p in (0.0, 0.49, 0.5, 0.74, 0.75, 1.0)] == [0, 0, 1, 1, 2, 2]
    seen = []
    field.on_train_progress = lambda f, _orig=field.on_train_progress: (seen.append(f), _orig(f))
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, system, scene, RunDir.create(Path(d), "t", "rs"), torch.device("cpu"), progress=False)
        phases = []
        for _ in range(8):
            trainer.train_step()
            phases.append(int(field.phase))
    assert seen == [k / 8 for k in range(8)]
    assert phases == [0, 0, 0, 0, 1, 1, 2, 2]
    for bad in ({"ngp_fraction": 0.5}, {"ngp_fraction": 0.7, "voxel_fraction": 0.4}):
        with pytest.raises(ConfigError, match="ngp_fraction"):
            _system(_tiny_rs_scene(**bad))


def test_step_phases_under_a_time_budget_warn(capsys):
    """Phases by step with train.max_seconds: the time budget may cut them, so training says so
    once at its start (loading the run for render/export does not)."""
    data = _tiny_rs_scene(ngp_steps=4, voxel_steps=2)
    data["train"] = {**data.get("train", {}), "steps": 8, "max_seconds": 30}
    field = _system(data)[2].chain.field
    assert "max_seconds" not in capsys.readouterr().err
    field.on_train_step(0)
    err = capsys.readouterr().err
    assert "train.max_seconds = 30" in err and "field.ngp_fraction" in err
    field.on_train_step(1)
    assert "max_seconds" not in capsys.readouterr().err
    data["field"].update(ngp_fraction=0.5, voxel_fraction=0.25)
    _system(data)[2].chain.field.on_train_step(0)
    assert "max_seconds" not in capsys.readouterr().err


def test_steps_ending_in_phase_1_warn(capsys):
    """train.steps <= field.ngp_steps: V would never be trained, so training says so once at its
    start; a budget that reaches phase 2 does not warn."""
    data = _tiny_rs_scene(ngp_steps=8, voxel_steps=2)
    data["train"] = {**data.get("train", {}), "steps": 8}
    field = _system(data)[2].chain.field
    assert "phase 1" not in capsys.readouterr().err  # building (render, export) does not warn
    field.on_train_step(0)
    err = capsys.readouterr().err
    assert "train.steps = 8 ends within phase 1 (field.ngp_steps = 8)" in err and "never" in err, err
    field.on_train_step(1)
    assert "phase 1" not in capsys.readouterr().err
    data["train"]["steps"] = 9
    _system(data)[2].chain.field.on_train_step(0)
    assert "phase 1" not in capsys.readouterr().err


def test_each_phase_restarts_its_learning_rate():
    """V decays over phases 2-3 from its full rate; the appearance field over phase 1 and again over 3."""
    from pipeline.runs import RunDir
    from pipeline.train import Trainer, window_fraction

    assert window_fraction(0.3) == 0.3 and window_fraction(0.25, [[0.5, 1.0]]) == 0.0
    assert window_fraction(0.75, [[0.0, 0.5], [0.5, 1.0]]) == 0.5
    data = _tiny_rs_scene(ngp_steps=4, voxel_steps=2)
    data["train"] = {**data.get("train", {}), "steps": 8, "lr": 0.01, "lr_final_factor": 0.1,
                     "checkpoint_every": 100, "log_every": 100}
    cfg, scene, system = _system(data)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, system, scene, RunDir.create(Path(d), "t", "rs"), torch.device("cpu"), progress=False)
        lrs = []
        for _ in range(8):
            trainer.train_step()  # the rate set after step k is the one step k + 1 uses
            lrs.append({g.get("name"): g["lr"] for g in trainer.optimizer.param_groups})
    vox = [r["voxels"] / (0.01 * system.chain.field.cfg.voxel_lr_scale) for r in lrs]
    grids = [r["grids"] / (0.01 * system.chain.field.appearance.cfg.grid_lr_scale) for r in lrs]
    # after step k the budget fraction is (k+1)/8; phase 2 starts at 0.5, phase 3 at 0.75
    assert vox[3] == pytest.approx(1.0) and vox[5] == pytest.approx(0.1 ** 0.5) and vox[7] == pytest.approx(0.1)
    assert grids[1] == pytest.approx(0.1 ** 0.5) and grids[5] == pytest.approx(1.0) and grids[7] == pytest.approx(0.1)


#: the rs_sdf evaluators, sized for the tiny scene
RS_EVALUATORS = [{"type": "psnr", "ssim": False}, {"type": "sdf_slices", "size": 32, "axes": ["z"]},
                 {"type": "certify_check", "n_points": 8, "n": 200}]


def reconstruct_rs(data: dict, tmp_path: Path, nls, device: str) -> tuple[Path, dict]:
    """``nls reconstruct`` of the scene ``data`` on ``device``: (run folder, summary.json)."""
    import yaml

    p = tmp_path / "rs.yaml"
    p.write_text(yaml.safe_dump(data))
    proc = nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", "--device", device)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").glob("*/*/*"))
    return run, json.loads((run / "summary.json").read_text())


def test_cli_run_through_all_phases(tmp_path, nls):
    data = _tiny_rs_scene(ngp_steps=2, voxel_steps=2)
    data["evaluators"] = RS_EVALUATORS
    run, summary = reconstruct_rs(data, tmp_path, nls, "cpu")
    assert summary["metrics"]["sdf_slices"] == 1 and (run / "sdf_slices" / "sdf_z_0.50.png").exists()
    assert 0 <= summary["metrics"]["certify_within_ci"] <= 1
    assert_metrics_noted(summary)
    ckpt = torch.load(sorted((run / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert int(ckpt["model"]["chain.field.phase"]) == 2


def test_bad_options_are_config_errors(tmp_path, nls):
    import yaml

    data = _tiny_rs_scene()
    data["certifier"]["truncate"] = 1.0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    proc = nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q")
    assert proc.returncode == 2
    assert "certifier.truncate" in proc.stderr and "Traceback" not in proc.stderr


def _bench_module():
    """scripts/benchmarks/rs_sdf.py, imported from its file (scripts/ is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks" / "rs_sdf.py"
    spec = importlib.util.spec_from_file_location("bench_rs_sdf", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_held_out_geometry_cases_are_the_spot_scenes_with_only_the_mesh_changed():
    """``scripts/bench.py rs_sdf --scenes kitten,3holes`` runs the spot scenes unchanged except for
    the mesh and the name, for RS-SDF and the baseline alike."""
    from pipeline.config import load_scene
    from pipeline.scenes import data_path
    from pipeline.testing import plugin_host

    bench = _bench_module()
    with pytest.raises(SystemExit, match="unknown"):  # checked before any data is needed
        bench.bench_geometry(type("A", (), {"scenes": "kitten,teapot", "rs_run": None, "baseline_run": None})())
    meshes, why = data_path("meshes")
    if meshes is None:
        pytest.skip(f"held-out meshes need the data root: {why}")
    host = plugin_host()
    for name in bench.HELD_OUT_MESHES:
        rs_file, base_file, sets = bench.scene_files(name, "hash")
        for scene_file in (rs_file, base_file):
            ref = load_scene(scene_file, host).to_dict()
            cfg = load_scene(scene_file, host, sets).to_dict()
            assert cfg["name"] == name and Path(cfg["scene"]["path"]).is_file()
            assert Path(cfg["scene"]["path"]).name == bench.HELD_OUT_MESHES[name]
            for d in (ref, cfg):
                d.pop("name"), d["scene"].pop("path")
            assert cfg == ref


def test_csg_completeness_by_part_finds_a_filled_tunnel():
    """The bench's by-part breakdown against truth: the GT mesh misses nothing anywhere; the shape with
    its tunnel left undrilled misses the tunnel wall only, by about the tunnel's depth."""
    from pipeline.mesh import extract_mesh
    from plugins.scenes.shapes import csg, csg_parts

    bench = _bench_module()
    box = [-0.6] * 3 + [0.6] * 3
    gt = extract_mesh(csg, box, 160, 0.0, inside="below")
    undrilled = extract_mesh(lambda x: csg_parts(x)[..., :2].min(-1).values, box, 160, 0.0, inside="below")
    res = bench.csg_completeness_by_part({"gt": gt, "filled": undrilled}, gt, n=20000)
    assert res["share"]["tunnel"] > 0.1 and abs(sum(res["share"].values()) - 1) < 1e-9
    assert max(res["gt"].values()) < 0.01  # samples of a mesh lie on it
    assert res["filled"]["box"] < 1 and res["filled"]["sphere"] < 1  # x10^3: what stayed is where it was
    assert res["filled"]["tunnel"] > 100  # 138: a wall point lies up to the half-length 0.32 from an end face


def test_geometry_jobs_give_both_set_to_both_methods_and_set_to_rs_sdf_only():
    """``--both-set`` (e.g. a sparse-view comparison) reaches the RS-SDF and the baseline scene alike,
    ``--set`` only RS-SDF, and a finished run given with ``--baseline-run`` is not retrained."""
    bench = _bench_module()
    args = dict(baseline="hash", steps=300, both_set=["scene.n_train=16"], set=["certifier.sigma=0.01"],
                rs_run=None, baseline_run=None)
    jobs = {label: (scene, sets) for label, scene, sets in
            bench.geometry_jobs("csg", type("A", (), args)())}
    assert jobs["rs"] == (bench.ROOT / "scenes" / "rs_sdf_csg.yaml",
                          ["train.steps=300", "scene.n_train=16", "certifier.sigma=0.01"])
    assert jobs["baseline"] == (bench.ROOT / "scenes" / "rs_sdf_csg_hash_baseline.yaml",
                                ["train.steps=300", "scene.n_train=16"])
    only_rs = bench.geometry_jobs("csg", type("A", (), {**args, "baseline_run": "some/run"})())
    assert [label for label, _, _ in only_rs] == ["rs"]
    with pytest.raises(SystemExit, match="does not exist"):  # spot has no dense baseline scene
        bench.geometry_jobs("spot", type("A", (), {**args, "baseline": "dense"})())


def test_bench_geometry_checks_every_case_before_training_any(monkeypatch):
    """``--baseline dense`` with the default ``--scenes csg,spot`` used to train csg for minutes, then stop at
    spot's missing dense baseline scene without writing anything."""
    bench = _bench_module()
    trained = []
    monkeypatch.setattr(bench, "geometry_case", lambda name, a: trained.append(name) or {})
    args = dict(scenes="csg,spot", baseline="dense", steps=None, both_set=[], set=[], rs_run=None, baseline_run=None)
    with pytest.raises(SystemExit, match="rs_sdf_spot_dense_baseline.yaml does not exist"):
        bench.bench_geometry(type("A", (), args)())
    assert trained == []


def test_lego_jobs_give_both_set_to_every_run_and_device_sizes_by_device():
    """``bench.py rs_sdf --only lego``: one RS-SDF run per grid (``none``: baselines only), ``--set`` to
    RS-SDF only, ``--both-set`` (e.g. random backgrounds) to every run, GPU sizes for RS-SDF on CUDA and
    CPU sizes for the hash baseline on CPU, the val split with ``--val-images``; bad grids and counts are
    refused before anything trains."""
    bench = _bench_module()
    args = dict(lego_phases="0.5,0.2", lego_grid="256,384", lego_baselines="hash", lego_rs_run=None, budget=75.0,
                test_images=10, device="cuda", set=["certifier.sigma=0.01"],
                both_set=["renderer.random_background=true"], val_images=0, test_every=0, lego_steps=None)
    jobs = {label: (scene.name, sets) for label, scene, sets in bench.lego_jobs(type("A", (), args)())}
    assert list(jobs) == ["rs_sdf_256", "rs_sdf_384", "hash"]
    for label in ("rs_sdf_256", "rs_sdf_384"):
        scene, sets = jobs[label]
        assert scene == "rs_sdf_lego.yaml" and f"field.resolution={label[-3:]}" in sets
        assert set(bench.LEGO_CUDA_RS_SETS) <= set(sets) and sets[-2:] == args["set"] + args["both_set"]
    scene, sets = jobs["hash"]
    assert scene == "lego_hash.yaml" and sets[-1] == "renderer.random_background=true"
    assert set(bench.lego_shared_training()) <= set(sets)  # on CUDA too: RS-SDF's loss and decay
    assert "certifier.sigma=0.01" not in sets and "train.max_seconds=75.0" in sets
    cpu = {label: sets for label, _, sets in bench.lego_jobs(type("A", (), {**args, "device": "cpu",
                                                                                 "lego_grid": "none"})())}
    assert list(cpu) == ["hash"] and set(bench.LEGO_CPU_SETS["hash"]) <= set(cpu["hash"])
    # the baseline trains with RS-SDF's loss and decay, not with its 20k-step GPU schedule
    rs_scene = yaml.safe_load((bench.ROOT / "scenes" / "rs_sdf_lego.yaml").read_text())
    shared = ['losses=[{"type": "photometric"}]', "train.lr_final_factor=0.1"]
    assert set(shared) <= set(cpu["hash"]) and bench.lego_shared_training() == shared
    from pipeline.config import parse_override

    assert [parse_override(o)[1] for o in shared] == [rs_scene["losses"], rs_scene["train"]["lr_final_factor"]]
    assert all("scene.splits=[train,val,test]" not in sets for _, sets in jobs.values())
    with_val = bench.lego_jobs(type("A", (), {**args, "val_images": 10})())  # --val-images: every run loads val
    assert all("scene.splits=[train,val,test]" in sets for _, _, sets in with_val)
    with pytest.raises(SystemExit, match="--val-images"):
        bench.lego_jobs(type("A", (), {**args, "val_images": -1})())
    with pytest.raises(SystemExit, match="--test-every"):
        bench.lego_jobs(type("A", (), {**args, "test_every": -1})())
    # --lego-steps: the same step count for every run instead of the wall-clock budget
    by_steps = bench.lego_jobs(type("A", (), {**args, "lego_steps": 2400})())
    assert all("train.steps=2400" in sets and not any(s.startswith("train.max_seconds") for s in sets)
               for _, _, sets in by_steps)
    assert all(sum(s.startswith("train.steps=") for s in sets) == 1
               for sets in [sets for _, _, sets in by_steps] + [sets for _, sets in jobs.values()])
    with pytest.raises(SystemExit, match="--lego-steps"):
        bench.lego_jobs(type("A", (), {**args, "lego_steps": 0})())
    assert bench.lego_grids("192") == [192] and bench.lego_grids("none") == []
    for bad in ("", "12x", "4", "1024"):
        with pytest.raises(SystemExit, match="--lego-grid"):
            bench.lego_grids(bad)
    with pytest.raises(SystemExit, match="at least one"):
        bench.lego_jobs(type("A", (), {**args, "lego_grid": "none", "lego_baselines": ""})())


def test_per_view_psnr_reads_the_side_by_sides_in_view_order(tmp_path):
    """``bench.py rs_sdf --test-every``: each view's PSNR from its prediction | truth | depth PNG, views
    ordered by number (r_2 before r_10), against the PSNR computed from the arrays that were written."""
    import imageio.v3 as iio

    from pipeline.metrics import psnr

    bench = _bench_module()
    rng = np.random.default_rng(0)
    want = {}
    for i, noise in ((10, 0.02), (2, 0.1), (0, 0.05)):
        gt = rng.random((8, 8, 3))
        pred = np.clip(gt + noise * rng.standard_normal(gt.shape), 0, 1)
        p8, g8 = (np.round(a * 255).astype(np.uint8) for a in (pred, gt))
        iio.imwrite(tmp_path / f"r_{i}_pred_gt_depth.png", np.concatenate([p8, g8, np.zeros_like(g8)], 1))
        iio.imwrite(tmp_path / f"r_{i}.png", p8)  # a plain render beside it is not a side-by-side
        want[f"r_{i}"] = psnr(p8 / 255.0, g8 / 255.0)
    got = bench.per_view_psnr(tmp_path)
    assert list(got) == ["r_0", "r_2", "r_10"]
    assert all(abs(got[k] - want[k]) < 1e-3 for k in want), (got, want)


@pytest.mark.parametrize("metric", ["sampled", "surface"])
def test_baseline_threshold_refinement_finds_the_level_between_coarse_steps(metric):
    """The benchmark's baseline sweep is refined between the coarse best level and its neighbours:
    for spheres of radius level/10 against a GT sphere of radius 0.7, the coarse 2x sweep's best is 5
    (radius 0.5), and two refinement rounds land within 5% of 7 with a lower Chamfer."""
    import trimesh

    bench = _bench_module()
    gt = trimesh.creation.icosphere(subdivisions=4, radius=0.7)
    mesh_at = lambda lv: trimesh.creation.icosphere(subdivisions=4, radius=lv / 10)  # noqa: E731
    levels = [1.0, 2.0, 5.0, 10.0, 20.0]
    score = bench._scorer(gt, 4000, metric)
    coarse = bench._sweep(mesh_at, levels, score, "sphere")
    assert coarse["best_level"] == 5.0
    fine = bench._refine(mesh_at, coarse, score, "sphere")
    assert abs(fine["best_level"] - 7.0) < 0.35, fine["best_level"]
    assert fine["chamfer_l1"] < 0.5 * coarse["chamfer_l1"]
    assert (fine["coarse_best_level"], fine["coarse_chamfer_l1"]) == (5.0, coarse["chamfer_l1"])
    scored = [r["level"] for r in fine["sweep"]]
    assert scored == sorted(scored) and set(levels) <= set(scored) and len(scored) == len(set(scored))


def test_training_blurs_once_per_step_with_the_renderers_no_grad_queries():
    """The renderer's grid update and culling query the field under no_grad before the step's forward:
    the grid they build (with its graph, as the field is training) serves the forward too."""
    import tempfile
    from pathlib import Path

    import plugins.rs_sdf.certifier as certifier_module
    from pipeline.runs import RunDir
    from pipeline.train import Trainer

    calls = []
    orig = certifier_module.gaussian_blur3d

    def counting(v, *a, **k):
        calls.append(v.requires_grad)
        return orig(v, *a, **k)

    data = _tiny_rs_scene(ngp_steps=1, voxel_steps=2)
    data["train"] = {**data["train"], "steps": 5, "checkpoint_every": 100, "log_every": 100}
    cfg, scene, system = _system(data)
    certifier_module.gaussian_blur3d = counting
    try:
        with tempfile.TemporaryDirectory() as d:
            tr = Trainer(cfg, system, scene, RunDir.create(Path(d), "t", "rs"), torch.device("cpu"), progress=False)
            per_step = []
            for _ in range(5):
                calls.clear()
                tr.train_step()
                per_step.append(list(calls))
    finally:
        certifier_module.gaussian_blur3d = orig
    assert per_step[0] == [] and all(s == [True] for s in per_step[1:]), per_step


def test_eikonal_is_zero_during_the_nerf_phase_and_trains_after_it():
    import tempfile
    from pathlib import Path

    from pipeline.runs import RunDir
    from pipeline.train import Trainer

    data = _tiny_rs_scene(ngp_steps=2, voxel_steps=1)
    data["losses"] = [{"type": "photometric"}, {"type": "eikonal", "weight": 0.01, "n_points": 64}]
    data["train"] = {**data["train"], "steps": 4, "checkpoint_every": 100, "log_every": 100}
    cfg, scene, system = _system(data)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, system, scene, RunDir.create(Path(d), "t", "rs"), torch.device("cpu"), progress=False)
        eik = [tr.train_step()["loss/1_eikonal"] for _ in range(4)]
    assert eik[:2] == [0.0, 0.0] and all(e > 0 for e in eik[2:]), eik


def test_a_tiny_eps_still_gives_a_finite_sdf():
    p = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    sdf = occupancy_to_sdf(p, 0.02, eps=1e-9)
    sdf.sum().backward()
    assert torch.isfinite(sdf).all() and torch.isfinite(p.grad).all()


def test_native_kernel_builds_are_keyed_by_the_cpu(monkeypatch):
    """The blur kernel is built with -march=native: a build cached by a CPU with other instruction-set
    extensions must not be loaded (it would die of SIGILL), so the build name carries a CPU tag."""
    from pathlib import Path

    from pipeline import cpp_kernels

    tag = cpp_kernels.host_cpu_tag()
    assert len(tag) == 8 and tag == cpp_kernels.host_cpu_tag()
    real = Path.read_text

    def other_cpu(self, *a, **k):
        return "flags\t: fpu sse sse2\n" if str(self) == "/proc/cpuinfo" else real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", other_cpu)
    assert cpp_kernels.host_cpu_tag() != tag


def test_bench_runs_log_to_files_and_a_failure_names_its_log(tmp_path, monkeypatch, tiny_scene):
    """The geometry bench trains its pair in parallel, each run logging to a file beside its folder (two
    pipes read one after the other could stall the second run); a failing run's log is named."""
    bench = _bench_module()
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    monkeypatch.setenv("NLS_THREADS", "1")
    scene = tiny_scene()
    runs = bench.reconstruct([("a", scene, ["train.steps=2"]), ("b", scene, ["train.steps=3"])], "cpu", 2)
    assert set(runs) == {"a", "b"} and runs["a"] != runs["b"]  # one scene, two jobs: two folders
    steps = {k: max(int(p.stem.split("_")[-1]) for p in (r / "checkpoints").glob("*.pt")) for k, r in runs.items()}
    assert steps == {"a": 2, "b": 3}
    assert len(list((tmp_path / "runs").glob("*.log"))) == 2
    with pytest.raises(SystemExit, match=r"failed with exit code 2 \(log: .*\.log\)"):
        bench.reconstruct([("bad", scene, ["train.steps=0"])], "cpu", 1)


@pytest.mark.parametrize("init_density, state, advice", [(1e12, "empty", "lower"), (1e-12, "full", "raise")])
def test_degenerate_voxel_start_warns(capsys, init_density, state, advice):
    """At the phase switch, a V initialised empty (no NeRF density above field.init_density) or full
    says so, naming the keys: phases 2-3 cannot find a surface from there. A usual start does not warn."""
    data = _tiny_rs_scene(ngp_steps=2, voxel_steps=2, init_density=init_density)
    field = _system(data)[2].chain.field
    field.on_train_step(0)
    assert "voxel grid V starts" not in capsys.readouterr().err
    field.on_train_step(2)
    err = capsys.readouterr().err
    assert f"the voxel grid V starts {state}" in err and "(step 2)" in err, err
    assert f"{advice} field.init_density" in err and "field.ngp_steps" in err
    assert int(field.phase) == 1  # a warning, not a refusal


def test_usual_voxel_start_does_not_warn(capsys):
    data = _tiny_rs_scene(ngp_steps=2, voxel_steps=2)
    field = _system(data)[2].chain.field
    field.nerf_occupancy_grid = lambda: (grid_ball(field) < 0.3).float()  # a ball: V starts partly occupied
    field.on_train_step(2)
    assert "voxel grid V starts" not in capsys.readouterr().err
    assert 0.0 < float(torch.sigmoid(field.logits.detach()).mean()) < 1.0


def grid_ball(field):
    from plugins.rs_sdf.grid import grid_points

    return grid_points(field.box, field.grid_shape).norm(dim=-1).view(field.grid_shape)
