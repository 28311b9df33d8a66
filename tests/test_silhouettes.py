"""Silhouette calibration of the mesh level, anti-aliased evaluation and pixel-jittered training rays.

Ground truth: a sphere of radius R rendered by the project's ray caster with 4x4 rays per pixel
(alpha = pixel coverage); candidate meshes are level sets of analytic SDFs, so the right level is
known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from pipeline.mesh import extract_mesh
from pipeline.scenes.blender import load_blender
from pipeline.scenes.mesh_render import rays_hit, render_mesh_views
from pipeline.silhouettes import calibrate_level, silhouette_error, silhouette_rays
from pipeline.types import NLSError

R = 0.3
BOX = [-0.5] * 3 + [0.5] * 3


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory):
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=R)
    folder = render_mesh_views(mesh, tmp_path_factory.mktemp("sph") / "views", n_train=6, n_test=1, width=40,
                               height=40, supersample=4)
    return load_blender(folder)


def _sphere_mesh(level: float, radius: float = R, res: int = 96):
    return extract_mesh(lambda x: x.norm(dim=-1) - radius, BOX, res, level)


def test_rays_hit_matches_analytic_sphere():
    m = trimesh.creation.icosphere(subdivisions=4, radius=R)
    o = np.tile([[0.0, 0.0, 2.0]], (5, 1))
    target = np.array([[0, 0, 0], [0.25, 0, 0], [0.31, 0, 0], [0, -0.29, 0], [0.5, 0.5, 0]], float)
    d = target - o
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    # a ray towards a point p of the z=0 plane passes within |p| * 2 / sqrt(4 + |p|^2) of the centre
    expect = np.linalg.norm(target, axis=1) * 2 / np.sqrt(4 + np.linalg.norm(target, axis=1) ** 2) < R
    assert rays_hit(m, o, d).tolist() == expect.tolist()


def test_silhouette_rays_cover_the_band_only(sphere_scene):
    tr = sphere_scene.splits["train"]
    rays = silhouette_rays(tr, subsamples=2, band=1)
    assert rays.origins.shape == (len(rays) * 4, 3) and rays.subsamples == 2
    assert np.allclose(np.linalg.norm(rays.dirs, axis=1), 1.0)
    # the band holds partial pixels plus a rim of full/empty ones, never the whole image
    a = rays.alpha
    assert ((a > 0.01) & (a < 0.99)).mean() > 0.2 and len(rays) < 0.5 * tr.alphas[..., 0].numel()
    sub = silhouette_rays(tr, max_pixels=50, seed=1)
    assert len(sub) == 50


def test_silhouette_error_is_zero_at_the_true_level_and_signed(sphere_scene):
    rays = silhouette_rays(sphere_scene.splits["train"])
    err0, bias0 = silhouette_error(_sphere_mesh(0.0), rays)
    err_out, bias_out = silhouette_error(_sphere_mesh(0.01), rays)
    err_in, bias_in = silhouette_error(_sphere_mesh(-0.01), rays)
    assert err0 < 0.05 and abs(bias0) < 0.03
    assert err_out > 2 * err0 and err_in > 2 * err0
    assert bias_out > 0.05 and bias_in < -0.05  # too large -> positive, too small -> negative


@pytest.mark.parametrize("shrink", [0.0, 0.008])
def test_calibrate_level_recovers_the_offset(sphere_scene, shrink):
    """A field whose zero level is `shrink` inside the true sphere calibrates to level +shrink."""
    rays = silhouette_rays(sphere_scene.splits["train"])
    grid_step = 1.0 / 95
    levels = [0.25 * k * grid_step for k in range(-8, 9)]
    best, table = calibrate_level(lambda lv: _sphere_mesh(lv, radius=R - shrink), levels, rays)
    assert abs(best - shrink) < 0.25 * grid_step
    assert len(table) >= len(levels) and table == sorted(table, key=lambda r: r["level"])
    errs = {round(r["level"], 9): r["error"] for r in table}
    assert errs[round(best, 9)] == min(errs.values())


def test_calibrate_level_skips_empty_levels_and_refuses_all_empty(sphere_scene):
    rays = silhouette_rays(sphere_scene.splits["train"], max_pixels=400)
    best, table = calibrate_level(lambda lv: _sphere_mesh(lv), [-0.6, -0.01, 0.0, 0.01], rays)
    assert -0.01 <= best <= 0.01 and -0.6 not in [r["level"] for r in table]
    with pytest.raises(NLSError, match="empty level set"):
        calibrate_level(lambda lv: _sphere_mesh(lv), [-0.7, -0.6], rays)
    with pytest.raises(NLSError, match="at least 2"):
        calibrate_level(lambda lv: _sphere_mesh(lv), [0.0], rays)
    with pytest.raises(NLSError, match="at least 2 different"):
        calibrate_level(lambda lv: _sphere_mesh(lv), [0.0, 0.0], rays)
    # a repeated best level (calibrate_levels from a user) used to divide by zero in the parabola
    best, _ = calibrate_level(lambda lv: _sphere_mesh(lv), [-0.01, 0.0, 0.0, 0.01], rays)
    assert -0.01 <= best <= 0.01


def test_silhouette_rays_need_alpha(sphere_scene):
    from dataclasses import replace

    with pytest.raises(NLSError, match="alpha channel"):
        silhouette_rays(replace(sphere_scene.splits["train"], alphas=None))


def test_extractor_calibrates_its_level(sphere_scene):
    """marching_cubes with calibrate: silhouettes on a field shrunk by 0.006 meshes at about +0.006."""
    from pipeline.types import ConfigError
    from plugins.ngp.config import MarchingCubesConfig
    from plugins.ngp.extract import MarchingCubes, build_marching_cubes

    chain = lambda x, d: {"sdf": x.norm(dim=-1) - (R - 0.006)}  # noqa: E731
    mc = MarchingCubes(MarchingCubesConfig(resolution=96, calibrate="silhouettes", level=0.0), {"sdf"}, BOX,
                       sphere_scene.splits["train"])
    mesh = mc.extract(chain)
    cal = mesh.metadata["level_calibration"]
    assert abs(mesh.metadata["level"] - 0.006) < 0.003 and cal["method"] == "silhouettes" and cal["pixels"] > 0
    r = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(r.mean() - R) < 0.003
    # an explicit level (nls export --level) is used as given
    assert mc.extract(chain, level=0.0).metadata["level"] == 0.0
    # no alpha in the training images: a config error before anything runs
    from dataclasses import replace

    class NoAlpha:
        scene = replace(sphere_scene, splits={"train": replace(sphere_scene.splits["train"], alphas=None)})

    with pytest.raises(ConfigError, match="no alpha"):
        build_marching_cubes(MarchingCubesConfig(calibrate="silhouettes"), NoAlpha)


# -- anti-aliasing ----------------------------------------------------------------------------

def _cameras(scene):
    return scene.splits["train"].cameras


def _disc_radiance(x, d):
    """A thin opaque disc of radius R at z = 0 (any view): rgb 0, density huge inside."""
    inside = (x[:, :2].norm(dim=-1) < R) & (x[:, 2].abs() < 0.02)
    return torch.zeros(len(x), 3), inside.float() * 1e4


def test_render_image_supersample_is_the_mean_of_sub_pixel_rays(sphere_scene):
    from pipeline.rays import image_pixel_coords, image_rays, pixel_rays
    from pipeline.rendering import render_image, render_rays

    cams = _cameras(sphere_scene)
    kw = dict(aabb=torch.tensor(BOX), step_size=0.005, background=torch.ones(3))
    one = render_image(cams, 0, _disc_radiance, chunk=500, **kw)
    o, d = image_rays(cams, 0)
    ref1 = render_rays(o, d, _disc_radiance, **kw)["rgb"].view(40, 40, 3)
    assert torch.equal(one["rgb"], ref1)  # supersample 1 = pixel centres, unchanged
    two = render_image(cams, 0, _disc_radiance, chunk=333, supersample=2, **kw)
    u, v = image_pixel_coords(40, 40, 0, 1600)
    cam = torch.zeros(1600, dtype=torch.long)
    ref2 = sum(render_rays(*pixel_rays(cams, cam, u + a, v + b), _disc_radiance, **kw)["rgb"]
               for a in (-0.25, 0.25) for b in (-0.25, 0.25)) / 4
    assert torch.allclose(two["rgb"], ref2.view(40, 40, 3), atol=1e-6)
    # edge pixels now take intermediate values; interior and background pixels do not change
    partial = ((two["rgb"][..., 0] > 0.05) & (two["rgb"][..., 0] < 0.95)).sum()
    assert partial > ((one["rgb"][..., 0] > 0.05) & (one["rgb"][..., 0] < 0.95)).sum()
    with pytest.raises(ValueError, match="supersample"):
        render_image(cams, 0, _disc_radiance, supersample=0, **kw)


def test_ray_sampler_jitter_stays_inside_the_sampled_pixel(sphere_scene):
    from pipeline.train import RaySampler
    from pipeline.types import PosedImages, SceneData

    tr = sphere_scene.splits["train"]
    N, H, W, _ = tr.images.shape
    code = torch.arange(N * H * W, dtype=torch.float32).view(N, H, W, 1) / (N * H * W)
    scene = SceneData(splits={"train": PosedImages(code.expand(N, H, W, 3).contiguous(), tr.cameras)},
                      aabb=torch.tensor(BOX))
    for jitter in (False, True):
        b = RaySampler(scene, torch.device("cpu"), 0, jitter).sample(2000)
        flat = torch.round(b["rgb"][:, 0] * N * H * W).long()
        k, v, u = flat // (H * W), (flat // W) % H, flat % W
        # back-project each direction into its camera: pixel coordinates (x, y) of the ray
        c2w = tr.cameras.c2w[k]
        dc = (c2w[:, :3, :3].transpose(1, 2) @ b["dirs"][:, :, None])[:, :, 0]
        x = tr.cameras.fx[k] * dc[:, 0] / -dc[:, 2] + tr.cameras.cx[k]
        y = -tr.cameras.fy[k] * dc[:, 1] / -dc[:, 2] + tr.cameras.cy[k]
        fu, fv = x - u, y - v
        assert ((fu > -1e-4) & (fu < 1 + 1e-4) & (fv > -1e-4) & (fv < 1 + 1e-4)).all()
        if jitter:
            assert fu.std() > 0.25 and abs(float(fu.mean()) - 0.5) < 0.05  # uniform over the pixel
        else:
            assert torch.allclose(fu, torch.full_like(fu, 0.5), atol=1e-3)


def test_sphere_tracer_supersample_gives_partial_edge_pixels(sphere_scene):
    from plugins.lipschitz.config import SphereTracingConfig
    from plugins.lipschitz.tracing import SphereTracer

    cams = _cameras(sphere_scene)
    tracer = SphereTracer(SphereTracingConfig(far=4.0, max_steps=96))
    query = lambda x, d: {"sdf": x.norm(dim=-1) - R}  # noqa: E731
    one = tracer.render_image(cams, 0, query)
    two = tracer.render_image(cams, 0, query, supersample=2)
    assert one["opacity"].shape == two["opacity"].shape == (40, 40, 1)
    assert set(torch.unique(one["opacity"]).tolist()) <= {0.0, 1.0}
    frac = two["opacity"][(two["opacity"] > 0) & (two["opacity"] < 1)]
    assert len(frac) > 0 and set(torch.unique(frac).tolist()) <= {0.25, 0.5, 0.75}
    # the covered area matches the GT alpha (4x4 rays per pixel) to a fraction of the rim
    alpha = sphere_scene.splits["train"].alphas[0]
    assert abs(float(two["opacity"].sum() - alpha.sum())) < 0.1 * float(((alpha > 0) & (alpha < 1)).sum())
    assert two["num_samples"] > one["num_samples"]


def test_eval_and_export_reuse_the_level_calibrated_for_the_same_checkpoint(tmp_path):
    """`nls eval` and `nls export` meshed every candidate level again (10 of 14.6 s of an rs_sdf export);
    the level calibrated at the end of training is recorded by checkpoint and extractor and reused, while
    another resolution calibrates afresh."""
    import copy
    import json

    import yaml

    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls

    data = copy.deepcopy(TINY_SCENE)
    data["extractor"] = {"type": "marching_cubes", "resolution": 48, "calibrate": "silhouettes"}
    data["train"]["steps"] = 60
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    run_nls("reconstruct", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "runs"), "-q", check=True)
    run = next((tmp_path / "runs").glob("*/*/*"))
    record = run / "meshes" / "level_calibrations.json"
    (key, entry), = json.loads(record.read_text()).items()
    assert len(entry["calibration"]["candidates"]) >= 2
    out = run_nls("export", str(run), "-o", str(tmp_path / "a.ply"), check=True)
    assert (tmp_path / "a.ply").read_bytes() == (run / "meshes" / "mesh.ply").read_bytes()
    assert f"density level {entry['level']}" in out.stdout
    record.write_text(json.dumps({key: {**entry, "level": 2.5}}))  # what is recorded is what is used
    assert "density level 2.5)" in run_nls("export", str(run), "-o", str(tmp_path / "b.ply"), check=True).stdout
    run_nls("export", str(run), "-o", str(tmp_path / "c.ply"), "--resolution", "40", check=True)
    assert len(json.loads(record.read_text())) == 2  # another resolution: calibrated and recorded anew
