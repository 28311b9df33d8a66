"""``nls reconstruct DATA``: a data folder or mesh file instead of a scene YAML trains the default scene
(pipeline/data_scene.py) on it, and the run folder holds the whole config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.data_scene import DATA_SCENE, POINT_SCENE, data_scene, is_data_path
from pipeline.testing import assert_metrics_noted


def _config(runs: Path) -> dict:
    [cfg] = runs.glob("*/*/*/config.yaml")
    return yaml.safe_load(cfg.read_text())


def test_a_colmap_folder_trains_the_default_scene(tmp_path, capsys):
    pytest.importorskip("pycolmap", reason="pycolmap is not installed (pip install 'neural-level-sets[colmap]')")
    from tests.test_colmap_scene import make_colmap

    cap = make_colmap(tmp_path / "my scan (v2)")["root"]
    assert main(["reconstruct", str(cap), "--steps", "2", "--no-eval", "-q", "--output", str(tmp_path / "runs")]) == 0
    cfg = _config(tmp_path / "runs")
    assert cfg["name"] == "my_scan_v2" and cfg["method"] == "dense_grid" and cfg["train"]["steps"] == 2
    assert cfg["scene"]["type"] == "colmap" and cfg["scene"]["path"] == str(cap.resolve())
    assert cfg["field"]["type"] == DATA_SCENE["field"]["type"] and cfg["scene"]["aabb"] is None
    # the capture's sparse points: the mesh is scored against them as well as the images; its poses were
    # estimated, so each training view's fit is checked too
    assert [e["type"] for e in cfg["evaluators"]] == ["psnr", "point_fit", "train_views"]
    assert "my_scan_v2/dense_grid/" in capsys.readouterr().out


def test_a_mesh_file_is_rendered_and_trained(tmp_path):
    import trimesh

    mesh = tmp_path / "box.obj"
    trimesh.creation.box().export(mesh)
    assert main(["reconstruct", str(mesh), "--steps", "2", "--no-eval", "-q", "--output", str(tmp_path / "runs"),
                 "--set", "scene.n_train=4", "--set", "scene.n_test=1", "--set", "scene.image_size=16"]) == 0
    cfg = _config(tmp_path / "runs")
    assert cfg["name"] == "box" and cfg["scene"]["type"] == "mesh" and cfg["scene"]["n_train"] == 4


def test_a_folder_no_scene_source_reads_is_a_config_error_that_lists_what_is_read(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["reconstruct", str(tmp_path / "photos"), "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "photos: this folder is neither a scene YAML nor data a scene source recognises" in err
    assert "COLMAP capture (images/ beside sparse/0/cameras.bin or .txt)" in err and "mesh file" in err
    assert not (tmp_path / "runs").exists()


def test_scene_files_stay_scene_files(tmp_path):
    assert not is_data_path(tmp_path / "missing.yaml") and not is_data_path(tmp_path / "missing")
    (tmp_path / "a.YML").write_text("name: a\n")
    (tmp_path / "m.obj").write_text("")
    assert not is_data_path(tmp_path / "a.YML") and is_data_path(tmp_path / "m.obj") and is_data_path(tmp_path)
    assert data_scene(tmp_path / "m.obj", "mesh")["scene"] == {"type": "mesh", "path": str((tmp_path / "m.obj").resolve())}


def test_the_default_scene_is_lego_dense_without_its_box():
    """The docstring's claim: lego_dense.yaml's settings, less its name, description, scene block, and with
    5000 steps."""
    lego = yaml.safe_load((Path(__file__).parents[1] / "scenes" / "lego_dense.yaml").read_text())
    for key, value in DATA_SCENE.items():
        if key == "train":
            assert {**value, "steps": lego["train"]["steps"]} == lego["train"] and value["steps"] == 5000
        elif key != "description":
            assert value == lego[key], key


def _sphere_points(n: int, radius: float, seed: int = 0):
    import numpy as np

    p = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * p / np.linalg.norm(p, axis=1, keepdims=True)


def test_point_files_are_told_from_mesh_files_by_their_suffix_or_ply_header(tmp_path):
    import numpy as np
    import trimesh

    from pipeline.testing import plugin_host

    host = plugin_host()
    points = _sphere_points(200, 0.5)
    trimesh.PointCloud(points).export(tmp_path / "cloud.ply")  # binary, no face element
    (tmp_path / "empty_faces.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                                              "property float y\nproperty float z\nelement face 0\n"
                                              "property list uchar int vertex_indices\nend_header\n0 0 0\n")
    trimesh.creation.icosphere().export(tmp_path / "sphere.ply")
    np.savetxt(tmp_path / "cloud.xyz", points)
    np.save(tmp_path / "cloud.npy", points)
    (tmp_path / "not_a_ply.ply").write_bytes(b"\x00garbage")
    kinds = {p.name: host.scene_type_for_path(p) for p in sorted(tmp_path.iterdir())}
    assert kinds == {"cloud.npy": "geometry", "cloud.ply": "geometry", "cloud.xyz": "geometry",
                     "empty_faces.ply": "geometry", "not_a_ply.ply": "mesh", "sphere.ply": "mesh"}


def test_a_point_cloud_file_trains_a_surface_scored_against_its_points(tmp_path, capsys):
    """``nls reconstruct cloud.ply``: a faceless .ply trains POINT_SCENE (sample networks on the geometry
    source), and point_fit scores the mesh against the input points."""
    import json

    import trimesh

    cloud = tmp_path / "ball scan.ply"
    trimesh.PointCloud(_sphere_points(3000, 0.5)).export(cloud)
    assert main(["reconstruct", str(cloud), "--steps", "40", "-q", "--output", str(tmp_path / "runs"),
                 "--set", "extractor.resolution=48", "--set", "eval.chamfer_samples=3000", "--val-every", "20",
                 "--set", "train.val_resolution=48", "--set", "train.val_samples=3000"]) == 0
    cfg = _config(tmp_path / "runs")
    assert cfg["name"] == "ball_scan" and cfg["method"] == "sample_network" and cfg["scene"]["type"] == "geometry"
    assert [e["type"] for e in cfg["evaluators"]] == ["point_fit"]
    [summary] = (tmp_path / "runs").glob("*/*/*/summary.json")
    assert_metrics_noted(json.loads(summary.read_text()))
    fit = json.loads(summary.read_text())["evaluators"]["point_fit"]
    # the field starts as a sphere of radius 0.35 (init_radius) in the normalised frame, where the cloud is a
    # sphere of radius 0.5: a residual of 150 at step 0, far less once it has moved out to the points
    assert fit["n_points"] == 3000 and 0 <= fit["fit_residual_l1"] < 30, fit
    # validation while training (a run without images meshes its field): at the evaluator's resolution and sample
    # count, the last validation's figure is the evaluator's
    logged = [json.loads(line) for line in (summary.parent / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_fit_chamfer_l1"] for r in logged if "val_fit_chamfer_l1" in r}
    assert list(val) == [20, 40] and val[40] == pytest.approx(fit["fit_chamfer_l1"], rel=1e-9), (val, fit)
    assert sorted(p.name for p in (summary.parent / "renders" / "progress").iterdir()) == [
        "val_mesh_00000020.png", "val_mesh_00000040.png"]
    assert "ball_scan/sample_network/" in capsys.readouterr().out


def test_point_fit_measures_the_distance_from_the_points_to_the_mesh():
    """On an icosphere of radius 0.5 and points on the sphere of radius 0.52 the exact residual is 0.02 in the
    run's frame, 0.02 / 1.04 once the points' bounding box is scaled to 1."""
    from types import SimpleNamespace

    import trimesh

    from pipeline.config import EvalConfig
    from pipeline.report.collect import better
    from plugins.ngp.config import PointFitConfig
    from plugins.ngp.evaluate import PointFitMetrics

    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    points = _sphere_points(4000, 0.52, seed=1)
    ctx = SimpleNamespace(scene=SimpleNamespace(points=points), mesh=lambda: mesh,
                          cfg=SimpleNamespace(eval=EvalConfig(chamfer_samples=4000)))
    res = PointFitMetrics(PointFitConfig(max_points=1000))(ctx)
    expected = 0.02 / 1.04 * 1e3
    assert abs(res["fit_residual_l1"] - expected) < 0.2 and abs(res["fit_residual_p95"] - expected) < 0.3, res
    # sampled nearest neighbours: never closer than the exact surface distance, on both sides
    assert res["fit_completeness_l1"] >= expected and res["fit_accuracy_l1"] >= expected, res
    assert res["n_points"] == 4000 and better("fit_residual_l1") == "lower" and better("fit_fscore@0.01") == "higher"
    assert better("fit_accuracy_l1") == "lower" and better("fit_chamfer_l1") == "lower"
    from pipeline.types import NLSError

    for none in (None, points[:0]):  # a COLMAP model without sparse points in the box: skipped, with the reason
        with pytest.raises(NLSError, match="the scene has no input points"):
            PointFitMetrics(PointFitConfig())(SimpleNamespace(scene=SimpleNamespace(points=none), mesh=lambda: mesh,
                                                              cfg=ctx.cfg))


def test_the_point_scene_is_sample_network_spot_scored_against_its_points():
    """The docstring's claim: sample_network_spot.yaml's method and training, with point_fit for its chamfer and
    the normal term for clouds with normals."""
    spot = yaml.safe_load((Path(__file__).parents[1] / "scenes" / "sample_network_spot.yaml").read_text())
    for key, value in POINT_SCENE.items():
        if key == "evaluators":
            assert spot[key] == [{"type": "chamfer"}] and value == [{"type": "point_fit"}]
        elif key == "losses":  # and IGR's normal term, for a cloud that has normals
            assert value == spot[key] + [{"type": "point_normals", "weight": 1.0, "if_missing": "skip"}]
        elif key != "description":
            assert value == spot[key], key
    assert data_scene(Path("c.xyz"), "geometry", {"points", "gt_mesh"})["method"] == "sample_network"
    assert data_scene(Path("m.obj"), "mesh", {"images", "gt_mesh"})["method"] == "dense_grid"


def test_data_trains_a_scene_files_settings_on_other_data(tmp_path):
    """``nls reconstruct SCENE.yaml --data PATH``: the file's method and settings, the data's source (with its
    defaults) and name, point_fit added for a source with points, and train_views for one whose poses were
    estimated (colmap, photos, video)."""
    import trimesh

    from pipeline.data_scene import with_data

    cloud = tmp_path / "my scan.ply"
    trimesh.PointCloud(_sphere_points(500, 0.5)).export(cloud)
    spot = yaml.safe_load((Path(__file__).parents[1] / "scenes" / "lipschitz_spot.yaml").read_text())
    got = with_data(spot, cloud, "geometry", {"points", "gt_mesh"})
    assert got["name"] == "my_scan" and got["method"] == "lipschitz" and got["field"] == spot["field"]
    assert got["scene"] == {"type": "geometry", "path": str(cloud.resolve())}  # spot's n_points is for spot.obj
    assert got["evaluators"] == [*spot["evaluators"], {"type": "point_fit"}]
    lego = {"name": "lego", "scene": {"type": "blender", "path": "x", "aabb": [-1] * 3 + [1] * 3},
            "evaluators": [{"type": "psnr"}, {"type": "point_fit"}]}
    got = with_data(lego, tmp_path, "colmap", {"images", "points"})
    assert got["scene"] == {"type": "colmap", "path": str(tmp_path.resolve())}  # lego's box is not the data's
    assert got["evaluators"] == [*lego["evaluators"], {"type": "train_views"}]  # point_fit listed: not twice
    lego["evaluators"].append({"type": "train_views", "below_db": 3.0})
    assert with_data(lego, tmp_path, "photos", {"images", "points"})["evaluators"] == lego["evaluators"]
    assert with_data(lego, tmp_path, "blender", {"images"})["evaluators"] == lego["evaluators"]

    runs = tmp_path / "runs"
    scene = Path(__file__).parents[1] / "scenes" / "sample_network_spot.yaml"
    assert main(["reconstruct", str(scene), "--data", str(cloud), "--steps", "2", "--no-eval", "-q",
                 "--output", str(runs)]) == 0
    cfg = _config(runs)
    assert cfg["name"] == "my_scan" and cfg["scene"]["type"] == "geometry" and cfg["method"] == "sample_network"
    assert [e["type"] for e in cfg["evaluators"]] == ["chamfer", "point_fit"]


@pytest.mark.parametrize("args, why", [
    (["{scene}", "--data", "{tmp}/missing.ply"], "--data {tmp}/missing.ply: no such file or folder"),
    (["{scene}", "--data", "{scene}"], "a scene file, not data"),
    (["{tmp}", "--data", "{tmp}"], "is data already; give a scene file"),
    (["{scene}", "--data", "{tmp}/notes.txt"], "--data {tmp}/notes.txt: this file is neither a scene YAML nor data"),
])
def test_bad_data_is_a_config_error_naming_it(tmp_path, capsys, args, why):
    scene = str(Path(__file__).parents[1] / "scenes" / "sample_network_spot.yaml")
    (tmp_path / "notes.txt").write_text("not points\n")
    fill = {"scene": scene, "tmp": str(tmp_path)}
    assert main(["reconstruct", *(a.format(**fill) for a in args), "--output", str(tmp_path / "runs")]) == 2
    assert why.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
