"""Geometry validation during training (:mod:`pipeline.geometry_validation`): the score and preview of an
analytic sphere against its known offset, training bit for bit as without it, both kinds on an image run,
the report's mesh previews, and the errors before training."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from pipeline.build import build_system, load_scene_data
from pipeline.config import dump_yaml, validate
from pipeline.geometry_validation import (DISTANCE_SPAN, PREVIEW_NAME, GeometryValidator, PreviewCamera,
                                          check_geometry_validation, distances_to, shade)
from pipeline.runs import RunDir
from pipeline.system import FieldChain
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.train import Trainer, seed_everything
from pipeline.types import NLSError, SceneData

R_GT, R_FIELD = 0.3, 0.305  # the reference sphere, and the analytic field's zero level just outside it


class SphereSDF(torch.nn.Module):
    """The signed distance to the sphere of radius ``r`` at the origin: {"sdf": (N,)}."""

    def __init__(self, r: float):
        super().__init__()
        self.r = r

    def forward(self, x, d=None):
        return {"sdf": x.norm(dim=-1) - self.r}


def _geometry_cfg(path, **train):
    data = {"name": "ball", "scene": {"type": "geometry", "path": str(path), "n_points": 2000},
            "field": {"type": "lipschitz_sll", "depth": 2, "width": 16},
            "extractor": {"type": "marching_cubes", "resolution": 32},
            "losses": [{"type": "hkr", "n_uniform": 2000, "n_near": 2000, "batch_size": 256}],
            "evaluators": [], "train": {"steps": 6, "log_every": 3, "checkpoint_every": 6, "val_resolution": 24,
                                        "val_samples": 2000, "val_max_side": 48, **train}}
    return validate(data, plugin_host())


def _trainer(tmp_path, cfg, name: str) -> Trainer:
    seed_everything(cfg.train.seed)
    scene = load_scene_data(cfg, "cpu")
    run = RunDir.create(tmp_path, name, "m")
    run.config_path.write_text(dump_yaml(cfg.to_dict()))
    return Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene, run, torch.device("cpu"), progress=False)


@pytest.fixture
def ball(tmp_path):
    path = tmp_path / "ball.ply"
    trimesh.creation.icosphere(subdivisions=4, radius=R_GT).export(path)
    return path


def _analytic_validator(tmp_path, scene: SceneData) -> GeometryValidator:
    cfg = _geometry_cfg(tmp_path / "unused.ply", val_every=1, val_resolution=64, val_samples=20000, val_max_side=120)
    system = SimpleNamespace(chain=FieldChain(SphereSDF(R_FIELD)), eval=lambda: None)
    return GeometryValidator(cfg, scene, system, tmp_path / "renders", torch.device("cpu"))


@pytest.mark.parametrize("reference", ["mesh", "points"])
def test_an_analytic_sphere_scores_its_known_offset(tmp_path, ball, reference):
    """The sphere of radius 0.305 against the sphere of 0.3 (its mesh, or 20k points on it): every point of each
    lies 0.005 from the other, 8.33 x10^3 of the reference's side 0.6, so the Chamfer-L1 is that plus the
    protocol's sampling floor (measured here as the sphere's mesh against the reference). The preview's mesh panel covers
    the disc the sphere projects to, and its hits lie 0.005 from the reference."""
    from pipeline.metrics import chamfer

    gt = trimesh.load(ball)
    aabb = torch.tensor([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5])
    points = np.asarray(gt.sample(20000, seed=1), np.float64) if reference == "points" else None
    scene = SceneData(splits={}, aabb=aabb, gt_mesh=ball if reference == "mesh" else None, points=points)
    val = _analytic_validator(tmp_path, scene)
    record = val(7)
    key = "val_chamfer_l1" if reference == "mesh" else "val_fit_chamfer_l1"
    assert list(record) == [key] and val.key == key
    ref = gt if reference == "mesh" else points
    floor = chamfer(gt, ref, n_samples=20000)["chamfer_l1"]  # a second sampling of the sphere against the reference
    offset = (R_FIELD - R_GT) / (2 * R_GT) * 1e3  # 8.33
    assert offset - 0.2 < record[key] < offset + floor + 0.5, (record, floor)
    # the preview: mesh | reference | distance, from a camera whose disc of the sphere is known analytically
    png = tmp_path / "renders" / "progress" / f"{PREVIEW_NAME}_00000007.png"
    assert png.is_file() and val.preview[0] == PREVIEW_NAME
    side = val.camera.side
    assert val.preview[1].shape == (side, 3 * side, 3)
    mesh_panel, ref_panel, dist_panel = np.split(val.preview[1].astype(int), 3, axis=1)
    eye = np.linalg.norm(val.camera.c2w[:3, 3])

    def disc_radius(r: float) -> float:  # in pixels: the sphere's silhouette subtends asin(r / eye)
        return val.camera.focal * np.tan(np.arcsin(r / eye))

    covered = (mesh_panel < 255).any(-1)
    assert abs(covered.sum() - np.pi * disc_radius(R_FIELD) ** 2) < 0.03 * np.pi * disc_radius(R_FIELD) ** 2
    rows, cols = np.nonzero((ref_panel < 255).any(-1))  # the reference's pixels (points leave gaps between them)
    reach = np.hypot(rows + 0.5 - side / 2, cols + 0.5 - side / 2).max()
    assert disc_radius(R_GT) - 1.5 < reach < disc_radius(R_GT) + 1.0, (reach, disc_radius(R_GT))
    assert ((dist_panel < 255).any(-1) == covered).all()
    _, _, hits = shade(trimesh.creation.icosphere(subdivisions=5, radius=R_FIELD), *val.rays, side)
    d = distances_to(ref, hits)
    # to the mesh: exact, up to the icospheres' facets lying inside their spheres (sagitta ~2e-4 for the reference)
    assert np.median(d) == pytest.approx(R_FIELD - R_GT, abs=0.0015 if reference == "points" else 3e-4)
    assert val.span == pytest.approx(DISTANCE_SPAN * 2 * R_GT, rel=0.02)


def test_a_field_without_a_surface_logs_no_score(tmp_path, ball, capsys):
    scene = SceneData(splits={}, aabb=torch.tensor([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]), gt_mesh=ball)
    val = _analytic_validator(tmp_path, scene)
    val.system.chain = FieldChain(SphereSDF(-1.0))  # positive everywhere: no zero level
    assert val(3) == {}
    # |x| + 1 on the 64^3 grid over the box: from 1 + sqrt(3)/126 (the grid points nearest the centre) to 1 + sqrt(3)/2
    assert "at step 3: the field has no surface yet (it ranges over [1.014, 1.866] in the box, level 0)" in capsys.readouterr().err
    mesh_panel, ref_panel, dist_panel = np.split(val.preview[1], 3, axis=1)
    assert (mesh_panel == 255).all() and (dist_panel == 255).all() and (ref_panel < 255).any()


def test_camera_frames_the_points_to_nine_tenths_of_the_image():
    import itertools

    corners = np.array(list(itertools.product(*zip([-0.4, -0.25, -0.2], [0.4, 0.25, 0.2]))))
    cam = PreviewCamera.framing(corners, 100)
    img = cam.splat(corners)
    rows, cols = np.nonzero(img[..., 0] < 1)
    assert len(rows) == 8 and rows.min() >= 4 and cols.min() >= 4 and rows.max() < 96 and cols.max() < 96
    assert max(cols.max() - 50, 50 - cols.min(), rows.max() - 50, 50 - rows.min()) >= 44  # 90 % of the half-side
    # points splatted and the mesh ray-cast land on the same pixels, for a box off the image's centre
    box = trimesh.creation.box(extents=(0.2, 0.1, 0.15), transform=trimesh.transformations.translation_matrix(
        [0.25, 0.1, -0.1]))
    cast = shade(box, *cam.rays(), cam.side)[0][..., 0] < 1
    dots = cam.splat(np.asarray(box.sample(20000, seed=0)))[..., 0] < 1
    from scipy.ndimage import binary_dilation

    # a point near the silhouette can fall in a pixel whose centre ray misses: one pixel of slack
    assert cast.sum() > 100 and not (dots & ~binary_dilation(cast)).any() and (cast & ~dots).sum() < 0.1 * cast.sum()


def test_validation_of_a_run_without_images_trains_bit_for_bit(tmp_path, ball):
    """A geometry run with val_every logs val_chamfer_l1 at every 3rd step and the last, writes the mesh
    previews, and ends with parameters identical to the same run without validation."""
    plain = _trainer(tmp_path / "a", _geometry_cfg(ball), "plain")
    plain.fit()
    val = _trainer(tmp_path / "b", _geometry_cfg(ball, val_every=3), "val")
    assert [type(v).__name__ for v in val.validators] == ["GeometryValidator"]
    val.fit()
    for k, v in plain.system.state_dict().items():
        assert torch.equal(v, val.system.state_dict()[k]), k
    logged = {r["step"]: r.get("val_chamfer_l1") for r in val.run.read_metrics()}
    assert [s for s, c in logged.items() if c is not None] == [3, 6]
    assert all(0 < c < 500 for c in logged.values() if c is not None)
    previews = sorted(p.name for p in (val.run.renders_dir / "progress").glob("*.png"))
    assert previews == [f"{PREVIEW_NAME}_{s:08d}.png" for s in (3, 6)]


def test_an_image_run_validates_both_its_views_and_its_mesh(tmp_path):
    """train.val_geometry on a run with images adds the mesh (against the procedural scene's ground truth) to
    the held-out view; the report shows both series."""
    from pipeline.report import build_report

    data = copy.deepcopy(TINY_SCENE)
    data["train"].update(steps=40, val_every=20, val_geometry=True, val_resolution=24, val_samples=2000)
    data["extractor"]["level"] = 0.1  # the density of so short a run stays below the default level 10
    cfg = validate(data, plugin_host())
    tr = _trainer(tmp_path, cfg, "both")
    assert [type(v).__name__ for v in tr.validators] == ["Validator", "GeometryValidator"]
    tr.fit()
    last = tr.run.read_metrics()[-1]
    assert last["step"] == 40 and "psnr_test" in last and "val_chamfer_l1" in last, last
    html = build_report(tr.run.path, use_model=False, progress=False).read_text()
    assert "mesh previews" in html and "validation previews" in html
    assert "the figure is val_chamfer_l1 in metrics.jsonl" in html


def test_a_run_refining_its_poses_calibrates_on_the_refined_cameras(tmp_path):
    """With train.refine_poses, the mesh's silhouette calibration during training sees the training views from the
    refined cameras, as `nls eval` does afterwards (refined_scene), not from the poses as given; without it the
    validator keeps the extractor it built at the start."""
    data = copy.deepcopy(TINY_SCENE)
    data["train"].update(steps=4, val_every=2, val_geometry=True, val_resolution=24, val_samples=2000,
                         refine_poses=True)
    data["extractor"].update(level=None, calibrate="silhouettes", calibrate_levels=[0.05, 0.1])
    cfg = validate(data, plugin_host())
    tr = _trainer(tmp_path, cfg, "poses")
    (val,) = [v for v in tr.validators if type(v).__name__ == "GeometryValidator"]
    with torch.no_grad():
        tr.system.poses.rotation.normal_(0, 0.02)  # a correction as training would learn it
    given = tr.scene.splits["train"].cameras
    refined = tr.system.poses.refined(given)
    seen = val.current_extractor().train_split.cameras
    assert torch.equal(seen.c2w, refined.c2w) and not torch.allclose(seen.c2w, given.c2w, atol=1e-4)
    tr.system.poses = None
    assert val.current_extractor() is val.extractor


def test_errors_before_training_name_the_option(tmp_path, ball):
    data = copy.deepcopy(TINY_SCENE)
    data["renderer"], data["losses"], data["evaluators"] = None, [{"type": "tv"}], []
    data["train"].update(val_every=2, val_geometry=False)
    cfg = validate(data, plugin_host())
    scene = load_scene_data(cfg, "cpu")
    with pytest.raises(NLSError, match=r"train.val_every = 2: this run renders no images \(it has no renderer "
                                       r"stage\) and train.val_geometry = false"):
        Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene, RunDir.create(tmp_path, "r", "m"),
                torch.device("cpu"), progress=False)
    cfg = _geometry_cfg(ball, val_every=2)
    cfg.stages["extractor"] = None
    with pytest.raises(NLSError, match=r"train.val_every = 2 on a run without images: the scene file has no "
                                       r"extractor stage"):
        check_geometry_validation(cfg, SimpleNamespace(datasets={}, gt_mesh=ball, points=None))
    cfg = _geometry_cfg(ball, val_every=2, val_geometry=True)
    with pytest.raises(NLSError, match=r"train.val_geometry = true: this run learns a collection of shapes"):
        check_geometry_validation(cfg, SimpleNamespace(datasets={"train": []}, gt_mesh=None, points=None))
    with pytest.raises(NLSError, match=r"neither a ground-truth mesh nor input points"):
        check_geometry_validation(cfg, SimpleNamespace(datasets={}, gt_mesh=None, points=None))
