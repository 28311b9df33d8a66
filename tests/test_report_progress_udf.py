"""Per-image progress of the report's renders and of the sphere_trace evaluator; the report's slices of an
unsigned field (the evaluated mesh's cross-section where the planes miss its level); `nls view`'s level
slider starting at the shown mesh's level."""

from __future__ import annotations

import json
import socket
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_render_progress import AABB, SlabRenderer, eval_context, fake_clock, slab
from tests.test_udf_progress_level import BOX, MARGIN, fake_run, shifted_udf


@pytest.fixture
def off_terminal(monkeypatch):
    """stderr is not a terminal; each clock reading of pipeline.progress is 1 s after the last."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    fake_clock(monkeypatch)


def slab_run(tmp_path) -> SimpleNamespace:
    """What :func:`pipeline.report.model_views.load_run` gives for a run of the slab density field with a
    renderer that reports its chunks (2 test views of 7x5 pixels, chunks of 4)."""
    ctx = eval_context(tmp_path, SlabRenderer())
    chain = lambda x, d=None: {"density": slab(x, d)[1], "rgb": slab(x, d)[0]}  # noqa: E731
    return SimpleNamespace(cfg=SimpleNamespace(eval=ctx.cfg.eval, stages={}), device="cpu", step=7,
                           scene=SimpleNamespace(splits=ctx.scene.splits, aabb=AABB),
                           system=SimpleNamespace(renderer=ctx.system.renderer, chain=chain, eval=lambda: None))


# -- 1. the report's renders -------------------------------------------------------------------------

def test_report_renders_from_the_checkpoint_show_progress_within_each_image(tmp_path, off_terminal, capsys):
    """Like `nls eval`: the fraction of each image's pixels, sparse lines off a terminal; -q: nothing."""
    from pipeline.report import _depth_normals, _split_renders

    ld, facts = slab_run(tmp_path), SimpleNamespace(path=tmp_path, config={})
    html = _split_renders(facts, "test", [], ld, None, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert html.count("<img") == 2 and "test view 1 (step 7)" in html
    assert lines[0] == "rendering test 0/2  image 1/2: 11% of pixels  eta –", lines
    assert lines[-1] == "rendering test 2/2  image 2/2: 100% of pixels  done", lines
    assert "<img" in _depth_normals(facts, ld, None, progress=True)
    assert capsys.readouterr().err.splitlines()[-1] == "rendering test 1/1  image 1/1: 100% of pixels  done"
    _split_renders(facts, "test", [], ld, None, progress=False)
    _depth_normals(facts, ld, None, progress=False)
    assert capsys.readouterr().err == ""


# -- 2. the sphere_trace evaluator --------------------------------------------------------------------

def trace_context(progress: bool) -> SimpleNamespace:
    """An EvalContext's parts the sphere_trace evaluator reads: a sphere SDF and a sphere_tracing renderer
    tracing 16 rays at a time."""
    from plugins.lipschitz.tracing import SphereTracer, sphere_sdf

    sdf = sphere_sdf((0, 0, 0), 0.5)
    tracer = SphereTracer(SimpleNamespace(near=0.0, far=4.0, max_steps=64, eps=1e-3, lipschitz=1.0, chunk=16))
    system = SimpleNamespace(chain=lambda x, d=None: {"sdf": sdf(x)}, renderer=tracer, eval=lambda: None)
    return SimpleNamespace(system=system, scene=SimpleNamespace(gt_mesh=None, aabb=AABB), device="cpu",
                           renders_root=None, progress=progress)


def test_sphere_trace_evaluator_shows_progress_within_each_view(off_terminal, capsys):
    from plugins.lipschitz.config import SphereTraceEvalConfig
    from plugins.lipschitz.tracing import SphereTraceEvaluator

    ev = SphereTraceEvaluator(SphereTraceEvalConfig(n_views=2, image_size=8))
    shown = ev(trace_context(True))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "sphere tracing 0/2  view 1/2: 25% of pixels  eta –", lines  # 64 rays, 16 at a time
    assert lines[-1] == "sphere tracing 2/2  view 2/2: 100% of pixels  done", lines
    assert ev(trace_context(False)) == shown and capsys.readouterr().err == ""
    assert shown["trace_hit_rate"] > 0


# -- 3. the report's slices of an unsigned field ---------------------------------------------------------

@pytest.fixture(scope="module")
def udf_mesh():
    """The sheet an unsigned field |r - 0.35| - MARGIN is meshed at (offset: min), its level about -MARGIN."""
    from pipeline.udf_mesh import extract_udf_mesh

    return extract_udf_mesh(shifted_udf, BOX, 32, offset="min", progress=False)


def test_unsigned_slices_draw_the_mesh_cross_section_where_the_planes_miss_its_level(udf_mesh):
    """The field's minimum is MARGIN below zero only on the sphere itself, so no plane crosses the mesh's
    level -MARGIN: each plane gets the mesh's cross-section, a circle of radius 0.35, drawn in black."""
    from pipeline.report import slice_lines
    from pipeline.report.figures import field_slices, slices_png
    from pipeline.report.model_views import Geometry, geometry_of

    geo = geometry_of(fake_run(["extractor.resolution=32"]))
    assert geo.unsigned and geo.level == 0.0
    sl = field_slices(lambda p: shifted_udf(torch.as_tensor(p)).numpy(), BOX, res=48)
    level, sections, what = slice_lines(sl, BOX, geo, -MARGIN, udf_mesh, "meshes/mesh.ply")
    assert level == -MARGIN and sorted(sections) == [0, 1, 2]
    for axis, seg in sections.items():
        r = np.linalg.norm(seg.reshape(-1, 2), axis=-1)
        assert len(seg) > 20 and np.abs(r - 0.35).max() < 0.02, (axis, len(seg), r.min(), r.max())
    assert what == ("the cross-section of the evaluated mesh, meshes/mesh.ply, on x = 0, y = 0 and z = 0, where the "
                    "field does not cross its level -0.01 (an unsigned field's mesh is the sheet of its minimum)")
    dark = [int((np.asarray(_png(slices_png(sl, BOX, "sdf", level, s)))[..., :3].max(-1) < 60).sum())
            for s in (None, sections)]
    assert dark[1] > dark[0] + 300, dark  # the circles are drawn
    signed = Geometry("sdf", 0.0, "below")  # a signed field keeps its contour
    assert slice_lines(sl, BOX, signed, -MARGIN, udf_mesh)[1] is None


def _png(data: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(data)


def test_report_slices_caption_names_the_mesh_and_falls_back_without_one(tmp_path, udf_mesh):
    from pipeline.mesh import export_mesh
    from pipeline.report import _slices
    from pipeline.report.html import esc

    ld = fake_run(["extractor.resolution=32"])
    facts = SimpleNamespace(metrics={"mesh_level": -MARGIN}, path=tmp_path, config={})
    mesh_path = export_mesh(udf_mesh, tmp_path / "meshes" / "mesh.ply")
    html = _slices(facts, ld, None, mesh_path)
    assert esc("black: the cross-section of the evaluated mesh, meshes/mesh.ply, on x = 0, y = 0 and z = 0") in html
    without = _slices(facts, ld, None, None)
    assert esc("black: the extractor's level option, 0 (the evaluated mesh's level, -0.01, is not crossed") in without


# -- 4. nls view's level slider ---------------------------------------------------------------------------

def test_summary_mesh_level_is_that_of_the_mesh_summary_names(tmp_path):
    from pipeline.report.collect import summary_mesh_level

    summary = {"mesh": "meshes/mesh.ply", "metrics": {"mesh_level": -0.01}}
    assert summary_mesh_level(summary, tmp_path, tmp_path / "meshes" / "mesh.ply") == -0.01
    assert summary_mesh_level(summary, tmp_path, tmp_path / "meshes" / "other.ply") is None
    assert summary_mesh_level({"metrics": {"mesh_level": -0.01}}, tmp_path, tmp_path / "meshes" / "mesh.ply") is None
    assert summary_mesh_level(None, tmp_path, tmp_path / "meshes" / "mesh.ply") is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("recorded", ["mesh", "below"])
def test_view_slider_starts_at_the_level_of_the_shown_mesh(tmp_path, monkeypatch, udf_mesh, recorded):
    """An unsigned field meshed at offset: min: the slider starts at the level summary.json records for
    meshes/mesh.ply (not at the extractor's 0), clamped to the range of the cached grid."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    import pipeline.report.model_views as model_views
    from pipeline.mesh import export_mesh
    from pipeline.runs import RunDir
    from pipeline.viewer import LevelSetViewer

    level = udf_mesh.metadata["level"] if recorded == "mesh" else -1.0
    export_mesh(udf_mesh, tmp_path / "meshes" / "mesh.ply")
    (tmp_path / "summary.json").write_text(json.dumps({"mesh": "meshes/mesh.ply", "metrics": {"mesh_level": level}}))
    ld = fake_run(["extractor.resolution=32"])
    ld.run, ld.scene.splits, ld.scene.points = RunDir(tmp_path), {}, None
    monkeypatch.setattr(model_views, "load_run", lambda run_dir, host=None: ld)
    v = LevelSetViewer(tmp_path, port=free_port(), resolution=16)
    try:
        assert v.ready.wait(60), "the level grid was not cached within a minute"
        lo, hi = float(v.grid.min()), float(v.grid.max())
        assert v.shown_level == level and v.geo.level == 0.0
        assert v.slider.value == pytest.approx(float(np.clip(level, lo, hi)), abs=1e-6)
        assert v.slider.value != pytest.approx(0.0, abs=1e-4)
        assert f"level {level:.4g}" in v.status.content
    finally:
        v.stop()
