"""End to end through the CLI: reconstruct -> summary with IoU, nls infer -> mesh, nls eval -> JSON."""

from __future__ import annotations

import json

import pytest

from pipeline.scenes import data_path
from pipeline.testing import assert_metrics_noted

R2N2, WHY = data_path("shapenet_r2n2")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    if R2N2 is None:
        pytest.skip(f"R2N2 data not available: {WHY}")
    from tests.conftest import run_nls

    out = tmp_path_factory.mktemp("runs")
    proc = run_nls("reconstruct", "scenes/deep_level_sets_r2n2.yaml", "--steps", "4", "--output", str(out), "-q",
                   "--device", "cpu", "--set", "scene.image_size=32", "--set", "field.width=4",
                   "--set", "field.channels=8", "--set", "train.batch_items=4",
                   "--set", "extractor.resolution=32", "--set", "scene.objects=[bench, lamp]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("*/*/*"))


def test_reconstruct_writes_iou_per_object(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    ev = s["evaluators"]["shape_iou"]
    assert set(ev["per_object"]) == {"bench", "lamp"} and 0 <= s["metrics"]["iou"] <= 1
    assert ev["n_objects"] == 2 and "seen shapes" in ev["shapes"]
    assert_metrics_noted(s)
    assert (run_dir / "meshes" / "mesh.ply").exists()  # the first test view's reconstruction


def test_infer_from_two_images_and_eval(run_dir, tmp_path, nls):
    import trimesh

    imgs = [str(R2N2 / "bench" / "rendering" / f"{i:02d}.png") for i in (0, 5)]
    proc = nls("infer", str(run_dir), *imgs, "-o", str(tmp_path / "m.ply"), "--resolution", "32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 image(s)" in proc.stdout and len(trimesh.load(tmp_path / "m.ply").faces) > 0
    proc = nls("eval", str(run_dir), "--output", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "iou" in json.loads((tmp_path / "e.json").read_text())["metrics"]


def test_infer_with_a_missing_image_is_a_clear_error(run_dir, tmp_path, nls):
    proc = nls("infer", str(run_dir), str(tmp_path / "nope.png"), "-o", str(tmp_path / "m.ply"))
    assert proc.returncode == 2 and "nope.png does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    folder = nls("infer", str(run_dir), str(tmp_path), "-o", str(tmp_path / "m.ply"))
    assert folder.returncode == 2 and f"image {tmp_path} is a folder; give image files" in folder.stderr
    (tmp_path / "notes.png").write_text("not an image")
    text = nls("infer", str(run_dir), str(tmp_path / "notes.png"), "-o", str(tmp_path / "m.ply"))
    assert text.returncode == 2 and "notes.png cannot be read as an image (PNG/JPG)" in text.stderr
    assert len(text.stderr.strip().splitlines()) == 1  # not imageio's advice to install backends


@pytest.mark.parametrize("args, message", [
    (["--resolution", "0"], "argument --resolution: 0 is out of range: give an integer in 16..1024"),
    (["--resolution", "100000"], "argument --resolution: 100000 is out of range: give an integer in 16..1024"),
    (["--level", "nan"], "argument --level: nan: give a finite number"),
])
def test_infer_checks_resolution_and_level_as_export_does(run_dir, tmp_path, nls, args, message):
    """--resolution 0 was silently the default, 100000 an out-of-memory error, --level nan an empty level set."""
    proc = nls("infer", str(run_dir), str(tmp_path / "x.png"), "-o", str(tmp_path / "m.ply"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_infer_is_listed_in_help(nls):
    assert "infer" in nls("--help").stdout


def test_infer_on_a_run_of_another_field_names_its_field(tmp_path_factory, tmp_path, nls):
    from tests.short_runs import short_run

    run = short_run(tmp_path_factory, "dense_grid")
    proc = nls("infer", str(run), str(tmp_path / "x.png"), "-o", str(tmp_path / "m.ply"))  # checked first
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "trained field 'dense_grid'" in proc.stderr and "DenseGridField" not in proc.stderr, proc.stderr
