"""`nls reconstruct` with the lipschitz plugin's components on a tiny `geometry` scene, then `nls export`."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.scenes import data_path
from pipeline.testing import assert_metrics_noted


def test_reconstruct_tiny_geometry_scene(nls, tmp_path):
    mesh, why = data_path("meshes", "spot.obj")
    if mesh is None:
        pytest.skip(why)
    scene = {
        "name": "tiny_lip",
        "scene": {"type": "geometry", "path": str(mesh), "n_points": 2000},
        "field": {"type": "lipschitz_sll", "depth": 2, "width": 32},
        "extractor": {"type": "marching_cubes", "resolution": 40},
        "losses": [{"type": "hkr", "n_uniform": 4000, "n_near": 4000, "batch_size": 256}],
        "evaluators": [{"type": "chamfer", "floor": False}, {"type": "distance_quality", "n_points": 1000},
                       {"type": "sphere_trace", "n_views": 1, "image_size": 16},
                       {"type": "level_set_points", "n_points": 200}],
        "train": {"steps": 40, "lr": 0.01, "checkpoint_every": 20, "log_every": 10},
        "eval": {"chamfer_samples": 2000},
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(scene))
    res = nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", check=True, timeout=300)
    assert "nls render" not in res.stdout and "nls export" in res.stdout, res.stdout  # nothing to render
    run = next((tmp_path / "runs").glob("tiny_lip/*/*"))
    summary = json.loads((run / "summary.json").read_text())
    m = summary["metrics"]
    assert_metrics_noted(summary)  # sphere_trace, distance_quality, level_set_points and chamfer
    assert summary["step"] == 40
    for key in ("chamfer_l1", "dist_max_over", "dist_grad_max", "trace_steps_per_ray", "trace_overshoot_rate",
                "level_set_n_points"):
        assert key in m, key
    assert m["dist_grad_max"] <= 1 + 1e-5  # 1-Lipschitz by construction, also through the pipeline
    assert m["trace_passed_field_rate"] == 0.0
    assert (run / "meshes" / "level_set_points.ply").exists() 
    assert summary["evaluators"]["level_set_points"]["level_set_path"] == "meshes/level_set_points.ply"
    assert list((run / "renders" / "sphere_trace").glob("view_*.png"))
    # a re-evaluation into another file writes its evaluators' files beside it, never over training's
    saved = {p: p.read_bytes() for p in [*(run / "renders" / "sphere_trace").glob("*"), run / "meshes" / "level_set_points.ply"]}
    ev = tmp_path / "ev" / "st.json"
    res = nls("eval", str(run), "-o", str(ev), "--set", "evaluators=[{type: sphere_trace, n_views: 1, image_size: 8}, "
              "{type: level_set_points, n_points: 100}]", check=True, timeout=300)
    assert {p: p.read_bytes() for p in saved} == saved
    assert (tmp_path / "ev" / "st_renders" / "sphere_trace" / "view_00.png").is_file()
    assert (tmp_path / "ev" / "st_renders" / "meshes" / "level_set_points.ply").is_file()
    assert json.loads(ev.read_text())["evaluators"]["level_set_points"]["level_set_path"] == "meshes/level_set_points.ply"
    assert "evaluator sphere_trace (1/2)..." in res.stderr and not list((tmp_path / "ev").glob(".*partial"))
    out = tmp_path / "m.ply"
    res = nls("export", str(run), "-o", str(out), "--resolution", "32", check=True)
    assert out.exists()
    assert "labels from" not in res.stderr, res.stderr  # exporting builds the model, not the training loss
    res = nls("export", str(run), "-o", str(tmp_path / "c.ply"), "--colors")
    assert res.returncode == 2 and "no trained colour to bake" in res.stderr and not (tmp_path / "c.ply").exists()
    res = nls("render", str(run), "-o", str(tmp_path / "r"))
    assert res.returncode == 2 and "no posed images" in res.stderr and "nls export" in res.stderr, res.stderr
    assert "--split" not in res.stderr, res.stderr  # it was not given: no split would help
    assert not (tmp_path / "r").exists()  # refused before any folder was made


def test_hkr_on_a_point_cloud_without_normals_is_refused_clearly(nls, tmp_path):
    import numpy as np

    pts = np.random.default_rng(0).random((500, 3))
    f = tmp_path / "cloud.npy"
    np.save(f, pts)
    scene = {"name": "bad", "scene": {"type": "geometry", "path": str(f)},
             "field": {"type": "lipschitz_sll", "depth": 1, "width": 8},
             "losses": [{"type": "hkr", "normals": "given", "n_uniform": 1000, "n_near": 1000}],
             "train": {"steps": 1}}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(scene))
    res = nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", timeout=300)
    assert res.returncode == 2, res.stderr
    assert "no normals" in res.stderr and "Traceback" not in res.stderr
