"""``nls reconstruct DATA``: a data folder or mesh file instead of a scene YAML trains the default scene
(pipeline/data_scene.py) on it, and the run folder holds the whole config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.data_scene import DATA_SCENE, data_scene, is_data_path


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
