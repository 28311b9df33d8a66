"""udf_marching_cubes (pipeline.udf_mesh): progress while gradients are computed, the level it meshes at
recorded as mesh_level, and the report's slice contour drawn at that level (scenes/lipschitz_bunny_open.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipeline.mesh as mesh_mod
from pipeline.udf_mesh import extract_udf_mesh, field_gradients

BOX = [-0.5] * 3 + [0.5] * 3
MARGIN = 0.01  # an unsigned hKR field is about distance - margin: its minimum sheet is at -margin
SCENE = Path(__file__).resolve().parents[1] / "scenes" / "lipschitz_bunny_open.yaml"


def shifted_udf(x: torch.Tensor) -> torch.Tensor:
    """|distance to the sphere of radius 0.35| - MARGIN."""
    return (x.norm(dim=-1) - 0.35).abs() - MARGIN


@pytest.fixture
def off_terminal(monkeypatch):
    """stderr is not a terminal, and plain progress lines start at once."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(mesh_mod, "PLAIN_PROGRESS_AFTER_S", 0.0)


def test_udf_extraction_reports_the_gradient_phase_off_a_terminal(off_terminal, capsys):
    extract_udf_mesh(shifted_udf, BOX, 24, offset="min")
    err = capsys.readouterr().err
    assert "evaluating field on 24^3 grid 13824/13824" in err, err
    grads = [line for line in err.splitlines() if line.startswith("field gradients at ")]
    total = grads[-1].split()[3]  # "field gradients at N points N/N  points  done"
    assert int(total) > 0 and f"{total}/{total}" in grads[-1] and "done" in grads[-1], err
    with mesh_mod.progress_default(False):  # -q
        extract_udf_mesh(shifted_udf, BOX, 24, offset="min")
    assert capsys.readouterr().err == ""


def test_gradient_progress_lines_come_while_it_runs_and_are_rate_limited(off_terminal, capsys):
    """A line after the first chunk (before the others are computed), then none until the last
    (StepProgress's plain lines come at most every 10 s)."""
    seen: list[str] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(capsys.readouterr().err)
        return shifted_udf(x)

    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (1000, 3))
    g = field_gradients(fn, pts, chunk=100)
    seen.append(capsys.readouterr().err)
    assert len(seen) == 11 and seen[0] == ""
    assert "field gradients at 1000 points 100/1000" in seen[1], seen  # before the second chunk ran
    assert "".join(seen[2:10]) == ""  # rate-limited
    assert "1000/1000" in seen[10] and "done" in seen[10]
    assert np.array_equal(g, field_gradients(shifted_udf, pts, chunk=2 ** 16, progress=False))  # chunking: same result


def test_udf_mesh_records_its_level_and_chamfer_reports_it(tmp_path):
    import trimesh

    from pipeline.config import EvalConfig
    from plugins.ngp.config import ChamferConfig
    from plugins.ngp.evaluate import GeometryMetrics

    m = extract_udf_mesh(shifted_udf, BOX, 32, offset="min", progress=False)
    level = m.metadata["level"]
    assert level == m.metadata["offset"] and -MARGIN - 2e-3 < level < -MARGIN + 1e-3
    assert extract_udf_mesh(shifted_udf, BOX, 32, offset=-0.009, progress=False).metadata["level"] == -0.009
    gt = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3, radius=0.35).export(gt)
    ctx = SimpleNamespace(scene=SimpleNamespace(gt_mesh=gt), cfg=SimpleNamespace(eval=EvalConfig(chamfer_samples=2000)),
                          mesh=lambda: m)
    res = GeometryMetrics(ChamferConfig(floor=False, surface=False))(ctx)
    assert res["mesh_level"] == level


def fake_run(overrides: list[str]) -> SimpleNamespace:
    """What :func:`pipeline.report.model_views.load_run` gives, for the bunny_open scene file with the
    analytic field in place of the trained one (a run without images: no renderer)."""
    from pipeline.config import load_scene
    from pipeline.testing import plugin_host

    cfg = load_scene(SCENE, plugin_host(), overrides)
    return SimpleNamespace(cfg=cfg, device="cpu", step=0, scene=SimpleNamespace(aabb=torch.tensor(BOX)),
                           system=SimpleNamespace(chain=lambda x, d=None: {"sdf": shifted_udf(x)}, renderer=None))


def test_report_contour_is_the_mesh_level_where_the_planes_cross_it():
    """The slices' contour is the evaluated mesh's level when the field crosses it on the planes (a
    calibrated level); an unsigned field's mesh level (the sheet of its minimum, below the values on the
    planes) draws no line, so the contour falls back to the extractor's option and the caption says why."""
    from pipeline.report import contour_level
    from pipeline.report.figures import field_slices

    signed = field_slices(lambda p: np.linalg.norm(p, axis=-1) - 0.35, BOX, res=32)
    assert contour_level(signed, 0.0, None) == (0.0, "the extraction level, 0")
    level, what = contour_level(signed, 0.0, 0.002)
    assert level == 0.002 and what == "the level the evaluated mesh was extracted at, 0.002"
    m = extract_udf_mesh(shifted_udf, BOX, 32, offset="min", progress=False)
    grid = field_slices(lambda p: (np.linalg.norm(p, axis=-1) - 0.31).__abs__() - MARGIN, BOX, res=32)
    assert min(float(v.min()) for v, _ in grid) > m.metadata["level"]  # the planes miss the sheet's level
    level, what = contour_level(grid, 0.0, m.metadata["level"])
    assert level == 0.0 and "not crossed on these planes" in what and "sheet of its minimum" in what, what


def test_report_slices_caption_names_the_contour(tmp_path):
    from pipeline.report import _slices
    from pipeline.report.model_views import geometry_of

    ld = fake_run(["extractor.resolution=32"])
    assert geometry_of(ld).level == 0.0
    facts = SimpleNamespace(metrics={"mesh_level": -0.5}, path=tmp_path, config={})
    from pipeline.report.html import esc

    html = _slices(facts, ld, None)
    assert esc("black: the extractor's level option, 0 (the evaluated mesh's level, -0.5, is not crossed") in html
    fixed = fake_run(["extractor.resolution=32", "extractor.offset=-0.02"])  # a configured offset is the level
    assert geometry_of(fixed).level == -0.02
