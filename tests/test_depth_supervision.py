"""Depth maps (nerfstudio's ``depth_file_path``, ``PosedImages.depths``) and the ``depth`` loss: read in the file's
units, resampled to the images, turned into distances along the training rays, and pulled on by the loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.types import Cameras, ConfigError, DataError, PosedImages, SceneData
from tests.test_colmap_scene import pycolmap  # noqa: F401  (the fixture)


def test_depth_maps_are_read_scaled_resampled_and_cleaned(tmp_path):
    import imageio.v3 as iio

    from pipeline.scenes.depth_maps import depth_downscale, read_depth

    mm = np.array([[1000, 2000], [0, 65535]], np.uint16)
    iio.imwrite(tmp_path / "d.png", mm)
    d = read_depth(tmp_path / "d.png", 1e-3, (4, 6))  # a 2x2 sensor map for a 4x6 photo: nearest stored pixel
    assert d.shape == (4, 6) and d.dtype == np.float32
    assert np.allclose(d[:2, :3], 1.0) and np.allclose(d[:2, 3:], 2.0) and (d[2:, :3] == 0).all()
    assert np.allclose(d[2:, 3:], 65.535)  # (16 bits kept)
    np.save(tmp_path / "d.npy", np.array([[np.nan, -1.0, np.inf], [0.5, 1.5, 2.5]]))
    assert np.array_equal(read_depth(tmp_path / "d.npy", 2.0, (2, 3)), np.array([[0, 0, 0], [1, 3, 5]], np.float32))
    np.save(tmp_path / "rgb.npy", np.ones((2, 3, 3)))
    with pytest.raises(DataError, match=r"rgb.npy has shape \(2, 3, 3\); a depth map holds one value per pixel"):
        read_depth(tmp_path / "rgb.npy", 1.0, (2, 3))
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(DataError, match="bad.npy: cannot be read"):
        read_depth(tmp_path / "bad.npy", 1.0, (2, 3))
    block = np.array([[2.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]], np.float32)
    assert np.array_equal(depth_downscale(block, 2), np.array([[3.0, 0.0]], np.float32))  # (the given ones' mean)


def test_a_ray_s_distance_is_its_z_depth_over_its_angle_to_the_axis():
    from pipeline.rays import pixel_rays
    from pipeline.train import ray_distance

    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # looking down world +x
    cams = Cameras(c2w[None], torch.tensor([50.0]), torch.tensor([50.0]), torch.tensor([32.0]),
                   torch.tensor([24.0]), 64, 48)
    u, v = torch.tensor([32.0, 32.0 + 50.0, 0.5]), torch.tensor([24.0, 24.0, 47.5])
    _, d = pixel_rays(cams, torch.zeros(3, dtype=torch.long), u, v)
    t = ray_distance(torch.tensor([2.0, 2.0, 0.0]), d, c2w[None].expand(3, 4, 4))
    assert t[:, 0].tolist() == pytest.approx([2.0, 2.0 * math.sqrt(2.0), 0.0])  # on the axis; 45 degrees off; none


def _depth_folder(root: Path, n: int = 4, size: int = 16, scale: float = 1e-3) -> dict[str, np.ndarray]:
    """A nerfstudio folder (:func:`tests.test_ignore_masks.write_nerfstudio_folder`) whose frames give a
    ``depth_file_path`` each (16-bit PNG in units of ``scale`` world units: a ramp, 0 on the first row); returns
    each frame's depth in world units by name."""
    import imageio.v3 as iio

    from tests.test_ignore_masks import write_nerfstudio_folder

    (root / "depth").mkdir(parents=True)
    depths = {}

    def depth(k: int, name: str) -> dict:
        stored = (np.arange(size)[:, None] * 100 + 1000 * (k + 1) + np.zeros((1, size))).astype(np.uint16)
        stored[0] = 0
        iio.imwrite(root / "depth" / f"{name}.png", stored)
        depths[name] = stored.astype(np.float64) * scale
        return {"depth_file_path": f"depth/{name}.png"}

    write_nerfstudio_folder(root, n, size, depth, depth_unit_scale_factor=scale)
    return depths


def test_a_transforms_json_with_depth_file_paths_loads_its_depths(tmp_path):
    from pipeline.scenes.blender import load_blender

    truth = _depth_folder(tmp_path / "ns", scale=2e-3)
    scene = load_blender(tmp_path / "ns", splits=("train", "test"))
    train = scene.splits["train"]
    assert train.depths.shape == (3, 16, 16)
    for i, name in enumerate(train.names):
        assert np.allclose(train.depths[i].numpy(), truth[name], rtol=1e-6)
    assert scene.meta["depths"]["unit_scale"] == 2e-3
    assert scene.meta["depths"]["pixels_with_depth"] == {"train": 0.9375, "test": 0.9375}  # (all but a row)
    from pipeline.report import capture_rows

    assert ("depth maps", f"{scene.meta['depths']['from']}; pixels with a depth: train 93.8 %, test 93.8 %") \
        in capture_rows(scene.meta)
    assert load_blender(tmp_path / "ns", splits=("train",), depths=False).splits["train"].depths is None
    half = load_blender(tmp_path / "ns", splits=("train",), downscale=2).splits["train"]
    assert half.depths.shape == (3, 8, 8) and np.allclose(half.depths[0, 0].numpy(), truth["frame_00001"][1, 0])

    doc = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    del doc["frames"][1]["depth_file_path"]
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"3 of its 4 frames give a 'depth_file_path' but frames\[1\] does not; "
                                        r"give every frame one, or none \(scene.depths: false"):
        load_blender(tmp_path / "ns", splits=("train",))
    doc["frames"][1]["depth_file_path"] = "depth/none.png"
    doc["depth_unit_scale_factor"] = 0
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="'depth_unit_scale_factor' must be positive"):
        load_blender(tmp_path / "ns", splits=("train",))
    doc["depth_unit_scale_factor"] = 1e-3
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"frames\[1\]: depth map not found: .*none.png"):
        load_blender(tmp_path / "ns", splits=("train",))


def _scene_with_depths(depths) -> SceneData:
    n, h, w = depths.shape
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, 2, 3] = 4.0
    cams = Cameras(c2w, torch.full((n,), 20.0), torch.full((n,), 20.0), torch.full((n,), w / 2),
                   torch.full((n,), h / 2), w, h)
    split = PosedImages(torch.rand(n, h, w, 3), cams, depths=torch.as_tensor(depths, dtype=torch.float32))
    return SceneData(splits={"train": split}, aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]))


def test_the_sampler_hands_each_ray_its_measured_distance():
    from pipeline.train import RaySampler

    z = np.tile(np.arange(1, 7, dtype=np.float32)[:, None], (2, 1, 5))  # (2, 6, 5): row r at z-depth r + 1
    z[1, :, 0] = 0.0
    sampler = RaySampler(_scene_with_depths(z), torch.device("cpu"), seed=0)
    batch = sampler.sample(500)
    cos = -batch["dirs"][:, 2]  # the cameras look down -z
    i = batch["image_index"]
    got = batch["depth"][:, 0]
    rows = torch.round(batch["depth"][:, 0] * cos).long()  # back to the z-depth: a whole number here
    assert ((rows >= 0) & (rows <= 6)).all() and torch.allclose(got * cos, rows.float(), atol=1e-5)
    assert (got[(i == 1) & (rows == 0)] == 0).all() and (rows == 0).any()
    plain = _scene_with_depths(z)
    plain.splits["train"].depths = None
    assert "depth" not in RaySampler(plain, torch.device("cpu"), seed=0).sample(4)


def test_the_depth_loss_pulls_the_rendered_depth_to_the_measured_one_where_there_is_one():
    from plugins.ngp.config import DepthLossConfig
    from plugins.ngp.losses import DepthLoss, build_depth

    pred = torch.tensor([[1.0], [2.0], [3.0]], requires_grad=True)
    batch = {"depth": torch.tensor([[1.5], [0.0], [2.0]])}
    loss = DepthLoss(DepthLossConfig(weight=2.0))(batch, {"depth": pred}, None)
    assert float(loss.detach()) == pytest.approx(2.0 * (0.5 + 1.0) / 2)
    loss.backward()
    assert pred.grad[:, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0])  # (the ray without depth is left alone)
    rel = DepthLoss(DepthLossConfig(kind="relative", weight=1.0))(batch, {"depth": pred.detach()}, None)
    assert float(rel) == pytest.approx((0.5 / 1.5 + 1.0 / 2.0) / 2)
    none = DepthLoss(DepthLossConfig())({"depth": torch.zeros(3, 1)}, {"depth": pred}, None)
    assert float(none.detach()) == 0.0 and none.requires_grad

    class Ctx:
        scene = _scene_with_depths(np.ones((1, 2, 2)))

    assert isinstance(build_depth(DepthLossConfig(), Ctx()), DepthLoss)
    Ctx.scene.splits["train"].depths = None
    with pytest.raises(ConfigError, match="losses: depth needs depth maps of the training images"):
        build_depth(DepthLossConfig(), Ctx())


def _ds_nerf_by_hand(w, t0, t1, d, sigma_rel):
    """DS-NeRF's discrete L_Depth over padded rows (R, S), each ray's sum over sigma sqrt(2 pi), the mean over rays with
    d > 0 (the loss's docstring), in float64 numpy."""
    w, t0, t1, d = (np.asarray(a, np.float64) for a in (w, t0, t1, d))
    rows = []
    for i in np.flatnonzero(d > 0):
        sigma = sigma_rel * d[i]
        mid, dt = (t0[i] + t1[i]) / 2, t1[i] - t0[i]
        g = np.exp(-0.5 * ((mid - d[i]) / sigma) ** 2)
        rows.append(np.sum(-np.log(w[i] + 1e-5) * g * dt) / (sigma * math.sqrt(2 * math.pi)))
    return float(np.mean(rows))


def test_the_ds_nerf_depth_loss_is_the_paper_s_sum_on_the_padded_and_the_packed_samples():
    from plugins.ngp.config import DepthLossConfig
    from plugins.ngp.losses import DepthLoss

    g = torch.Generator().manual_seed(0)
    n_rays, n_cols = 4, 30
    counts = [30, 12, 0, 25]  # (a ray with no sample left: its sum is 0)
    t0 = torch.zeros(n_rays, n_cols)
    for i, c in enumerate(counts):
        t0[i, :c] = 1.0 + 0.1 * torch.arange(c) + 0.05 * i
    t1 = torch.where(t0 > 0, t0 + 0.1, t0)
    w = (torch.rand(n_rays, n_cols, generator=g) * 0.2 * (t1 > t0)).requires_grad_(True)
    d = torch.tensor([[2.0], [1.5], [2.2], [0.0]])  # (the last ray has no depth)
    loss = DepthLoss(DepthLossConfig(kind="ds_nerf", sigma=0.05, weight=3.0))
    padded = loss({"depth": d}, {"weights": w, "t_starts": t0, "t_ends": t1}, None)
    assert float(padded.detach()) == pytest.approx(3.0 * _ds_nerf_by_hand(w.detach(), t0, t1, d[:, 0], 0.05),
                                                   rel=1e-5)
    padded.backward()
    assert w.grad[3].abs().max() == 0 and w.grad[0].abs().max() > 0  # (the ray without depth is left alone)

    keep = t1 > t0
    packed = {"weights": w.detach()[keep], "t_starts": t0[keep], "t_ends": t1[keep],
              "ray_indices": keep.nonzero(as_tuple=True)[0]}
    assert float(loss({"depth": d}, packed, None)) == pytest.approx(float(padded.detach()), rel=1e-6)
    with pytest.raises(Exception, match="kind ds_nerf.*needs the renderer's weights, t_starts, t_ends"):
        loss({"depth": d}, {"depth": d}, None)


def test_a_keypoint_s_uncertainty_divides_the_l1_penalty_and_widens_ds_nerf_s_gaussian():
    """With ``batch["depth_uncertainty"]`` u (a keypoint's reprojection error over the mean): l1 is |depth - D| / u;
    ds_nerf's sigma is sigma D u (the float64 sum with per-ray sigmas); ``uncertainty: false`` ignores u."""
    from plugins.ngp.config import DepthLossConfig
    from plugins.ngp.losses import DepthLoss

    pred = torch.tensor([[1.0], [2.0], [3.0]])
    batch = {"depth": torch.tensor([[1.5], [0.0], [2.0]]), "depth_uncertainty": torch.tensor([[2.0], [1.0], [0.5]])}
    l1 = DepthLoss(DepthLossConfig(weight=1.0))(batch, {"depth": pred}, None)
    assert float(l1) == pytest.approx((0.5 / 2.0 + 1.0 / 0.5) / 2)
    plain = DepthLoss(DepthLossConfig(weight=1.0, uncertainty=False))(batch, {"depth": pred}, None)
    assert float(plain) == pytest.approx((0.5 + 1.0) / 2)

    t0 = torch.stack([1.0 + 0.05 * torch.arange(40)] * 3)
    t1 = t0 + 0.05
    w = torch.rand(3, 40, generator=torch.Generator().manual_seed(1)) * 0.1
    got = DepthLoss(DepthLossConfig(kind="ds_nerf", sigma=0.03, weight=1.0))(batch, {"weights": w, "t_starts": t0,
                                                                                   "t_ends": t1}, None)
    rows = []
    for i in (0, 2):
        D, sig = float(batch["depth"][i]), 0.03 * float(batch["depth"][i]) * float(batch["depth_uncertainty"][i])
        mid, dt = ((t0[i] + t1[i]) / 2).double().numpy(), (t1[i] - t0[i]).double().numpy()
        g = np.exp(-0.5 * ((mid - D) / sig) ** 2)
        rows.append(np.sum(-np.log(w[i].double().numpy() + 1e-5) * g * dt) / (sig * math.sqrt(2 * math.pi)))
    assert float(got) == pytest.approx(float(np.mean(rows)), rel=1e-5)


def test_the_ds_nerf_loss_alone_makes_a_ray_terminate_at_its_depth_spread_as_its_gaussian():
    """Minimising the loss over a free ray of densities gives the weights of the Gaussian N(D, sigma^2) (the KL's
    minimiser): its mean is D and its spread sigma."""
    import nerfacc

    from plugins.ngp.config import DepthLossConfig
    from plugins.ngp.losses import DepthLoss

    t0 = torch.linspace(0.0, 4.0, 401)[:-1][None]  # (1, 400) samples of 0.01
    t1 = t0 + 0.01
    log_sigma = torch.full_like(t0, -3.0).requires_grad_(True)
    loss = DepthLoss(DepthLossConfig(kind="ds_nerf", sigma=0.02, weight=1.0))
    opt = torch.optim.Adam([log_sigma], lr=0.1)
    d = torch.tensor([[2.5]])
    for _ in range(600):
        w, _, _ = nerfacc.render_weight_from_density(t0, t1, log_sigma.exp())
        value = loss({"depth": d}, {"weights": w, "t_starts": t0, "t_ends": t1}, None)
        opt.zero_grad()
        value.backward()
        opt.step()
    w = w.detach()[0]
    mid = ((t0 + t1) / 2)[0]
    mean = float((w * mid).sum() / w.sum())
    spread = float(((w * (mid - mean) ** 2).sum() / w.sum()).sqrt())
    assert float(w.sum()) > 0.97
    assert mean == pytest.approx(2.5, abs=0.01) and spread == pytest.approx(0.02 * 2.5, rel=0.15)


def test_the_ds_nerf_loss_reads_the_nerfacc_path_s_packed_samples_as_the_torch_path_s_padded_ones():
    if not torch.cuda.is_available():
        reason = "no CUDA device: the ds_nerf loss on nerfacc's packed samples (the CUDA path) was not tested"
        print(reason)
        pytest.skip(reason)
    from pipeline.rendering import render_rays
    from plugins.ngp.config import DepthLossConfig
    from plugins.ngp.losses import DepthLoss
    from tests.test_rendering import AABB, STEP, TinyField, down_rays, updated_grid

    field = TinyField(dtype=torch.float32).cuda()
    o, d = (a.cuda() for a in down_rays(n=4))
    kw = dict(aabb=AABB.cuda(), grid=updated_grid().to("cuda"), step_size=STEP)
    packed = render_rays(o, d, field, **kw)
    padded = render_rays(o, d, field, backend="torch", **kw)
    assert packed["backend"] == "nerfacc" and packed["weights"].ndim == 1 and padded["weights"].ndim == 2
    measured = padded["depth"].detach() + 0.02  # (a depth within the slab, a little behind the rendered one)
    loss = DepthLoss(DepthLossConfig(kind="ds_nerf", sigma=0.05, weight=1.0))
    a, b = loss({"depth": measured}, packed, None), loss({"depth": measured}, padded, None)
    assert float(a) == pytest.approx(float(b), rel=1e-3) and float(a) > 0
    a.backward()
    assert field.log_sigma.grad.abs() > 0


def test_nls_reconstruct_trains_with_the_depth_loss_and_warns_of_evaluators_it_will_skip(tmp_path):
    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls

    _depth_folder(tmp_path / "ns", n=5, size=24)
    scene = {**TINY_SCENE, "name": "depth_tiny", "scene": {"type": "blender", "path": str(tmp_path / "ns"),
                                                           "aabb": [-1, -1, -1, 1, 1, 1]},
             "losses": [{"type": "photometric"}, {"type": "depth", "weight": 0.5},
                        {"type": "depth", "kind": "ds_nerf", "weight": 0.1}],
             "evaluators": [{"type": "psnr", "ssim": False}, {"type": "chamfer"},
                            {"type": "sensor_depth", "save_images": 1}]}
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    proc = run_nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--steps", "3",
                   "--set", "train.depth_rays=64", check=True)
    assert "evaluator chamfer will be skipped after training: the scene has no ground-truth mesh" in proc.stderr
    run = next((tmp_path / "runs").glob("depth_tiny/*/*/summary.json")).parent
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(any(k.endswith("_depth") and v > 0 for k, v in row.items() if k.startswith("loss/")) for row in logged)
    assert json.loads((run / "scene.json").read_text())["depths"]["pixels_with_depth"]["train"] > 0.9
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["sensor_depth_pixels"] == 24 * 23 and np.isfinite(metrics["sensor_depth_l1"])  # (the test view)
    assert len(list((run / "renders" / "sensor_depth_test").glob("*.png"))) == 1

    scene["scene"]["depths"] = False
    path.write_text(yaml.safe_dump(scene))
    proc = run_nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--steps", "1")
    assert proc.returncode != 0 and "losses: depth needs depth maps of the training images" in proc.stderr
    scene["losses"] = [{"type": "photometric"}]
    path.write_text(yaml.safe_dump(scene))
    proc = run_nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--steps", "1",
                   "--set", "train.depth_rays=64")
    assert proc.returncode != 0 and "train.depth_rays=64 draws rays through the pixels with a measured depth" \
        in proc.stderr


def test_the_sensor_depth_evaluator_scores_the_rendered_depth_against_the_split_s_maps():
    import types

    from plugins.ngp.config import DepthConfig
    from plugins.ngp.evaluate import SensorDepthMetrics

    z = np.full((2, 6, 8), 2.0, np.float32)
    z[:, 0] = 0.0  # no depth on the first row
    scene = _scene_with_depths(z)  # cameras at z = 4 looking down -z, fx = fy = 20, centre (4, 3)
    u, v = np.meshgrid(np.arange(8) + 0.5, np.arange(6) + 0.5)
    along = 2.0 * np.sqrt(1 + ((u - 4) / 20) ** 2 + ((v - 3) / 20) ** 2)  # the z-depth 2 along each centre ray
    rendered = [(i, {"depth": (along + 0.1 * i).astype(np.float32)}) for i in range(2)]
    cfg = types.SimpleNamespace(eval=types.SimpleNamespace(split="train"))
    ctx = types.SimpleNamespace(split=None, cfg=cfg, scene=scene, depths=lambda: rendered, renders_root=None)
    out = SensorDepthMetrics(DepthConfig(save_images=0))(ctx)
    assert out["sensor_depth_pixels"] == 2 * 5 * 8
    assert out["sensor_depth_l1"] == pytest.approx(0.05, abs=1e-6)  # 0 on view 0, 0.1 on view 1
    assert out["sensor_depth_abs_rel"] == pytest.approx(np.mean(0.1 / along[1:]) / 2, rel=1e-5)
    scene.splits["train"].depths = None
    with pytest.raises(Exception, match="sensor_depth evaluator needs depth maps of the eval split"):
        SensorDepthMetrics(DepthConfig())(ctx)


def _write_colmap_array(path: Path, values: np.ndarray) -> None:
    """``values`` (H, W) as COLMAP writes a dense array: ``width&height&channels&``, then float32, x fastest."""
    h, w = values.shape
    path.write_bytes(f"{w}&{h}&1&".encode() + np.ascontiguousarray(values, np.float32).tobytes())


def colmap_mesh_z(mesh, c2w: np.ndarray, f: float) -> np.ndarray:
    """(32, 32) z-depth, in the COLMAP units of :func:`tests.test_colmap_scene.make_colmap`'s world (SIGMA times the
    scene's), of ``mesh`` seen by the tiny sphere's 32 px view ``c2w`` (focal ``f``, centred); 0 where a ray misses."""
    from pipeline.mesh_views import mesh_depth
    from tests.test_colmap_scene import SIGMA

    cams = Cameras(torch.tensor(c2w[None], dtype=torch.float32), torch.tensor([f]), torch.tensor([f]),
                   torch.tensor([16.0]), torch.tensor([16.0]), 32, 32)
    t = mesh_depth(mesh, cams, 0)
    v, u = np.mgrid[0:32, 0:32] + 0.5
    cos = 1.0 / np.sqrt(1 + ((u - 16) / f) ** 2 + ((v - 16) / f) ** 2)
    return np.where(np.isfinite(t), SIGMA * t * cos, 0.0)


def test_a_colmap_capture_s_stereo_depth_maps_land_on_the_surface_in_the_run_s_frame(tmp_path,
                                                                                    pycolmap):  # noqa: F811
    """The tiny sphere as a COLMAP capture in a world scaled by SIGMA, turned and moved, with depth maps of its
    mesh in COLMAP units as patch_match_stereo writes them (NAME.geometric.bin): loaded, each pixel's depth along
    its ray meets the mesh carried into the run's frame where the mesh's own ray cast does."""
    import trimesh

    from pipeline.mesh_views import mesh_depth
    from pipeline.rays import pixel_rays
    from pipeline.scenes.colmap import load_colmap
    from pipeline.train import ray_distance
    from tests.test_colmap_scene import SIGMA, SHIFT, _q, _source_folder, make_colmap, truth

    made = make_colmap(tmp_path / "cap", camera_of=lambda k: 1)
    root = made["root"]
    mesh = trimesh.load(_source_folder() / "gt_mesh.ply")
    (root / "stereo" / "depth_maps").mkdir(parents=True)
    for k, (_, c2w, f) in enumerate(truth()["frames"]):
        z = colmap_mesh_z(mesh, c2w, f)
        _write_colmap_array(root / "stereo" / "depth_maps" / f"{k:03d}.png.geometric.bin", z)
    scene = load_colmap(root, test_every=0, depths="stereo/depth_maps")
    train = scene.splits["train"]
    assert scene.meta["depths"]["unit_scale"] == scene.meta["input_frame"]["scale"]
    to_run = np.asarray(scene.meta["input_frame"]["to_run"])
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = SIGMA * _q(), SHIFT  # the rendered scene's world -> COLMAP's
    in_run = mesh.copy().apply_transform(to_run @ world)
    for i in range(len(train)):
        cast = mesh_depth(in_run, train.cameras, i)
        v, u = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
        index = torch.full((1024,), i)
        _, d = pixel_rays(train.cameras, index, u.reshape(-1), v.reshape(-1))
        got = ray_distance(train.depths[i].reshape(-1), d, train.cameras.c2w[index])[:, 0].reshape(32, 32).numpy()
        hit = np.isfinite(cast)
        assert hit.sum() > 50 and np.array_equal(hit, got > 0)
        assert np.allclose(got[hit], cast[hit], rtol=1e-4)
    from plugins.scenes.config import ColmapConfig
    from plugins.scenes.sources import build_colmap

    configured = build_colmap(ColmapConfig(path=str(root), test_every=0, downscale=1, depths="stereo/depth_maps"),
                              None)()
    assert torch.equal(configured.splits["train"].depths, train.depths)
    with pytest.raises(DataError, match=r"no depth map for 10 of the 10 images: 000.png, 001.png, 002.png, 003.png, "
                                        r"004.png ... \(for 000.png it looked for 000.png.geometric.bin, "):
        load_colmap(root, test_every=0, depths="sparse")


def test_keypoint_depths_keep_the_nearest_point_of_a_pixel_and_drop_the_outside():
    from pipeline.scenes.depth_maps import keypoint_depths

    xy = np.array([[0.5, 0.5], [0.9, 0.2], [2.5, 1.5], [3.0, 0.5], [-0.1, 0.5], [1.5, 1.5]])
    z = np.array([2.0, 1.5, 3.0, 4.0, 5.0, -1.0])
    d = keypoint_depths(xy, z, (2, 3))
    assert np.array_equal(d, np.array([[1.5, 0, 0], [0, 0, 3.0]], np.float32))
    from pipeline.scenes.depth_maps import keypoint_maps

    depth, error = keypoint_maps(xy, z, (2, 3), np.array([0.1, 0.7, 0.3, 0.4, 0.5, 0.6]))
    assert np.array_equal(depth, d)  # (the value of the point whose depth the pixel keeps: 0.7, not 0.1)
    assert np.allclose(error, np.array([[0.7, 0, 0], [0, 0, 0.3]], np.float32))


def test_sparse_depth_puts_each_keypoint_s_point_depth_at_its_pixel_and_depth_rays_draw_them(tmp_path,
                                                                                           pycolmap):  # noqa: F811
    """The tiny sphere's COLMAP capture with each surface point observed where it projects in the views that see it:
    with sparse_depth, the loaded depth at a keypoint's pixel is that point's z-depth in the run's units (SIGMA
    times the source's, times the normalisation's scale), and nothing elsewhere, nor where the image is transparent
    (alpha < 0.5); depth rays go through them only. Beside each, its point's reprojection error (points.txt's
    ERROR, varied here), which the sampler hands the losses as that error over the mean (held to [0.25, 4])."""
    from pipeline.scenes.colmap import load_colmap
    from pipeline.train import RaySampler
    from tests.test_colmap_scene import SIGMA, _q, make_colmap, truth

    made = make_colmap(tmp_path / "cap", camera_of=lambda k: 1, extra_points=False)
    root, model = made["root"], made["model"]
    rng = np.random.default_rng(3)
    d = rng.normal(size=(400, 3))
    pts = 0.4 * d / np.linalg.norm(d, axis=1, keepdims=True)  # (make_colmap's sphere points, in its order)
    errors = 0.1 + 0.3 * (np.arange(len(pts)) % 7)  # (reprojection errors, pixels)
    lines = (model / "images.txt").read_text().splitlines()
    heads = [line for line in lines if line and not line.startswith("#")]
    tracks: dict[int, list[str]] = {}
    expected = []  # (view, row, col, z in source units)
    body = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "# POINTS2D[]"]
    for k, (head, (_, c2w, f)) in enumerate(zip(heads, truth()["frames"])):
        o = c2w[:3, 3]
        cam = (pts - o) @ c2w[:3, :3]  # OpenGL camera coordinates
        z = -cam[:, 2]
        u, v = f * cam[:, 0] / z + 16, -f * cam[:, 1] / z + 16
        seen = np.flatnonzero(((pts * (o - pts)).sum(1) > 0.02) & (u > 0) & (u < 32) & (v > 0) & (v < 32))
        obs = []
        for j, p in enumerate(seen):
            obs.append(f"{float(u[p])!r} {float(v[p])!r} {p + 1}")
            tracks.setdefault(p + 1, []).append(f"{k + 1} {j}")
        body += [head, " ".join(obs)]
        nearest = {}
        for p in seen:
            key = (int(v[p]), int(u[p]))
            if z[p] < nearest.get(key, (np.inf,))[0]:
                nearest[key] = (z[p], errors[p])
        expected += [(k, r, c, zz, ee) for (r, c), (zz, ee) in nearest.items()]
    (model / "images.txt").write_text("\n".join(body) + "\n")
    Q = _q()
    from tests.test_colmap_scene import SHIFT, _fmt

    (model / "points3D.txt").write_text("".join(
        f"{i + 1} {_fmt(SIGMA * Q @ p + SHIFT)} 200 200 200 {float(errors[i])!r} {' '.join(tracks.get(i + 1, []))}\n"
        for i, p in enumerate(pts)))
    scene = load_colmap(root, test_every=0, sparse_depth=True)
    depths = scene.splits["train"].depths.numpy()
    scale = scene.meta["input_frame"]["scale"]
    assert scene.meta["depths"]["from"].endswith("(sparse_depth)")
    alpha = scene.splits["train"].alphas.numpy()[..., 0]
    dropped = [e for e in expected if alpha[e[0], e[1], e[2]] < 0.5]  # (on the silhouette's transparent side)
    assert 0 < len(dropped) < 0.2 * len(expected) and all(depths[k, r, c] == 0 for k, r, c, *_ in dropped)
    expected = [e for e in expected if alpha[e[0], e[1], e[2]] >= 0.5]
    got = np.array([depths[k, r, c] for k, r, c, *_ in expected])
    assert len(expected) > 200 and np.allclose(got, [SIGMA * scale * z for *_, z, _ in expected], rtol=1e-5)
    assert int((depths > 0).sum()) == len(expected)  # nothing but the keypoints' pixels
    errs = scene.splits["train"].depth_errors.numpy()
    want = np.array([e for *_, e in expected])
    assert scene.meta["depths"]["mean_reprojection_error_px"]["train"] == pytest.approx(want.mean(), rel=1e-3)
    assert np.allclose([errs[k, r, c] for k, r, c, *_ in expected], want, rtol=1e-5)
    assert int((errs > 0).sum()) == len(expected)
    sampler = RaySampler(scene, torch.device("cpu"), seed=0)
    batch = sampler.sample(300, measured=True)
    assert (batch["depth"] > 0).all()
    ratio = np.clip(want / want.mean(), 0.25, 4.0)
    from pipeline.train import uncertainty

    mapped = uncertainty(scene.splits["train"]).numpy()
    assert np.allclose([mapped[k, r, c] for k, r, c, *_ in expected], ratio, rtol=1e-5)
    spread = batch["depth_uncertainty"][:, 0].numpy()
    assert np.abs(spread[:, None] - ratio[None]).min(1).max() < 1e-5 and spread.std() > 0.2
    with pytest.raises(DataError, match="not both"):
        load_colmap(root, depths="x", sparse_depth=True)
