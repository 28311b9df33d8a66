"""Export, resume, report and eval as a user meets them: meshes back in the input file's frame, what is
read back being what is reported, progress on long field sampling, complete runs, output names, crops."""

from __future__ import annotations

import json
import shlex
import sys

import numpy as np
import pytest
import trimesh
import yaml

from pipeline.testing import TINY_SCENE

BOX = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
#: the input of the geometry scenes: a ball far from the origin, much larger than the normalised box
CENTRE, RADIUS = np.array([100.0, -20.0, 7.0]), 40.0


def sphere(p):
    return p.norm(dim=-1) - 0.5


# -- runs shared by the CLI tests --------------------------------------------------------------------

@pytest.fixture(scope="module")
def procedural(tmp_path_factory):
    """A tiny procedural run, made from another folder with a relative --plugins-dir: (run dir, the
    reconstruct's stdout, the plugins folder)."""
    from tests.conftest import run_nls

    root = tmp_path_factory.mktemp("procedural")
    plugins = root / "np" / "x"
    plugins.mkdir(parents=True)
    (plugins / "noop.py").write_text('"""A plugin that registers nothing."""\n')
    scene = root / "tiny.yaml"
    scene.write_text(yaml.safe_dump(TINY_SCENE))
    res = run_nls("reconstruct", str(scene), "--output", str(root / "runs"), "-q", "--plugins-dir", "np/x",
                  cwd=root, check=True)
    return next((root / "runs").glob("tiny/*/*")), res.stdout, plugins


def _ball_run(root, kind: str):
    from tests.conftest import run_nls

    ball = trimesh.creation.icosphere(subdivisions=3, radius=RADIUS)
    ball.apply_translation(CENTRE)
    ball.export(root / "ball.obj")
    scene = {"name": "ball", "method": "sample_network",
             "scene": {"type": kind, "path": str(root / "ball.obj"), "n_points": 500},
             "field": {"type": "mlp_sdf", "hidden": 128, "layers": 3, "init_radius": 0.5},
             "extractor": {"type": "marching_cubes", "resolution": 32},
             "losses": [{"type": "level_set_recon", "n_samples": 256, "batch_points": 256}],
             "evaluators": [],
             "train": {"steps": 30, "lr": 1e-3, "log_every": 10, "checkpoint_every": 30, "threads": 1}}
    (root / "s.yaml").write_text(yaml.safe_dump(scene))
    run_nls("reconstruct", str(root / "s.yaml"), "--output", str(root / "runs"), "-q", check=True)
    return next((root / "runs").glob("ball/*/*"))


@pytest.fixture(scope="module")
def geometry_run(tmp_path_factory):
    """A geometry scene of a ball of radius 40 centred at (100, -20, 7), trained for seconds."""
    return _ball_run(tmp_path_factory.mktemp("geometry"), "geometry")


# -- 1. meshes in the input file's frame -------------------------------------------------------------

def _distance_to_ball(path) -> float:
    back = trimesh.load(path, force="mesh")
    return float(np.abs(np.linalg.norm(back.vertices - CENTRE, axis=1) - RADIUS).mean())


@pytest.mark.parametrize("kind", ["geometry", "scan"])
def test_export_frame_input_lies_on_the_input_mesh(kind, geometry_run, tmp_path, nls):
    """scene.json records how the input was normalised, and `--frame input` maps the mesh back onto the
    input file; the default stays the run's frame (the normalised box, far from the input here)."""
    run = geometry_run if kind == "geometry" else _ball_run(tmp_path, "scan")  # scan: plugin sample_network
    frame = json.loads((run / "scene.json").read_text())["input_frame"]
    assert frame["scale"] == pytest.approx(1 / (2 * RADIUS), rel=1e-3)
    assert frame["centre"] == pytest.approx(CENTRE.tolist(), abs=1e-3 * RADIUS)
    res = nls("export", str(run), "-o", str(tmp_path / "in.ply"), "--frame", "input", check=True)
    assert "in the coordinates of the input file" in res.stdout, res.stdout
    nls("export", str(run), "-o", str(tmp_path / "run.ply"), check=True)
    size = 2 * RADIUS
    assert _distance_to_ball(tmp_path / "in.ply") < 0.02 * size
    assert _distance_to_ball(tmp_path / "run.ply") > 0.5 * size  # as before: the run's frame


def test_export_frame_input_is_refused_for_a_scene_without_an_input_frame(procedural, tmp_path, nls):
    run, _, _ = procedural
    res = nls("export", str(run), "-o", str(tmp_path / "m.ply"), "--frame", "input", "--level", "0.02")
    assert res.returncode == 2, res.stderr
    assert "--frame input" in res.stderr and "procedural" in res.stderr and "no input frame" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "m.ply").exists()


# -- 2. welded at the file's precision ----------------------------------------------------------------

def _split_edges(mesh, eps: float = 1e-10):
    """``mesh`` (watertight) with some edges split at a point ``eps`` of the edge from one end: still
    watertight in float64, but the new vertex and that end are one point in float32."""
    v = list(np.asarray(mesh.vertices, np.float32).astype(np.float64))  # ends exactly representable
    faces = [list(f) for f in mesh.faces]
    used: set[int] = set()
    for fi in range(0, 140, 7):
        a, b, x = faces[fi]
        if a in used or b in used:
            continue
        fj, f = next((j, f) for j, f in enumerate(faces)
                     if j != fi and any((f[i], f[(i + 1) % 3]) == (b, a) for i in range(3)))
        y = f[(next(i for i in range(3) if (f[i], f[(i + 1) % 3]) == (b, a)) + 2) % 3]
        m = len(v)
        v.append(v[a] + eps * (v[b] - v[a]))
        used |= {a, b}
        faces[fi], faces[fj] = [a, m, x], [b, m, y]
        faces += [[m, b, x], [m, a, y]]
    return trimesh.Trimesh(np.array(v), np.array(faces), process=False)


@pytest.mark.parametrize("ext", [".ply", ".glb", ".stl", ".obj", ".off"])
def test_a_watertight_mesh_with_vertices_float32_cannot_tell_apart_reads_back_watertight(ext, tmp_path):
    from pipeline.mesh import export_mesh, read_back_watertight, weld_for_format

    mesh = _split_edges(trimesh.creation.icosphere(subdivisions=3, radius=0.5))
    assert mesh.is_watertight and len(np.unique(mesh.vertices.astype(np.float32), axis=0)) < len(mesh.vertices)
    path = export_mesh(mesh, tmp_path / f"m{ext}")
    assert read_back_watertight(path)
    welded, back = weld_for_format(mesh, ext), trimesh.load(path, force="mesh")
    assert welded.is_watertight and (len(back.vertices), len(back.faces)) == (len(welded.vertices), len(welded.faces))
    assert len(mesh.vertices) == 659  # the mesh given is left as it was


# -- 3. progress of field sampling --------------------------------------------------------------------

def test_narrow_band_sampling_reports_progress(capsys):
    """`lipschitz:` extraction (the narrow band) had no progress at all, and extract_mesh dropped it."""
    from pipeline.mesh import extract_mesh, field_to_grid_narrow

    field_to_grid_narrow(sphere, BOX, 33, 0.0, 1.0, progress=True)
    err = capsys.readouterr().err
    assert "evaluating field on 9^3 coarse grid" in err and "evaluating field near level 0" in err, err
    extract_mesh(sphere, BOX, 33, 0.0, lipschitz=1.0, progress=True)
    assert "near level 0" in capsys.readouterr().err
    extract_mesh(sphere, BOX, 33, 0.0, lipschitz=1.0, progress=False)
    assert capsys.readouterr().err == ""


def test_sampling_off_a_terminal_prints_plain_lines_once_it_takes_long(monkeypatch, capsys):
    """Without a terminal nothing was shown, however long: plain lines now start after a few seconds
    (here: at once), and not at all for quick work or under progress_default(False) (-q)."""
    import pipeline.mesh as mesh_mod

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    mesh_mod.extract_mesh(sphere, BOX, 33, 0.0, lipschitz=1.0)
    mesh_mod.field_to_grid(sphere, BOX, 20)
    assert capsys.readouterr().err == ""  # quick: silent
    monkeypatch.setattr(mesh_mod, "PLAIN_PROGRESS_AFTER_S", 0.0)
    mesh_mod.extract_mesh(sphere, BOX, 33, 0.0, lipschitz=1.0)
    mesh_mod.field_to_grid(sphere, BOX, 20)
    err = capsys.readouterr().err
    assert "near level 0" in err and "evaluating field on 20^3 grid 8000/8000" in err, err
    with mesh_mod.progress_default(False):
        mesh_mod.extract_mesh(sphere, BOX, 33, 0.0, lipschitz=1.0)
    assert capsys.readouterr().err == ""


# -- 4. resume of a complete run ----------------------------------------------------------------------

def test_resume_of_a_complete_run_says_so_and_rewrites_nothing(procedural, nls):
    run, _, _ = procedural
    summary = (run / "summary.json")
    before = (summary.read_bytes(), summary.stat().st_mtime_ns)
    renders = sorted(p.stat().st_mtime_ns for p in (run / "renders").rglob("*.png"))
    for extra in ([], ["--no-eval"]):
        res = nls("resume", str(run), "-q", *extra, check=True)
        assert "is complete" in res.stdout and f"nls eval {run}" in res.stdout, res.stdout
        assert "eval.json" in res.stdout and "(writes summary.json)" not in res.stdout + res.stderr
        assert "finishing evaluation only" not in res.stderr
    assert (summary.read_bytes(), summary.stat().st_mtime_ns) == before
    assert sorted(p.stat().st_mtime_ns for p in (run / "renders").rglob("*.png")) == renders


def test_resume_of_a_trained_unevaluated_run_still_evaluates_it(tmp_path, nls):
    scene = tmp_path / "tiny.yaml"
    scene.write_text(yaml.safe_dump(TINY_SCENE))
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run = next((tmp_path / "runs").glob("tiny/*/*"))
    res = nls("resume", str(run), "-q", check=True)
    assert "finishing evaluation only" in res.stderr and (run / "summary.json").is_file()


# -- 5. follow-up hints ------------------------------------------------------------------------------

def test_follow_up_hints_name_the_plugins_dir_absolutely(procedural):
    run, stdout, plugins = procedural
    flag = f"--plugins-dir {shlex.quote(str(plugins))}"
    assert f"nls render {run} {flag}" in stdout and f"nls export {run} {flag}" in stdout, stdout
    assert "--plugins-dir np/x" not in stdout


# -- 6. report output names ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.pdf", "x", "x.html.txt"])
def test_report_refuses_an_output_that_is_not_html(name, procedural, tmp_path, nls):
    run, _, _ = procedural
    res = nls("report", str(run), "-o", str(tmp_path / name), "--no-model", "-q")
    assert res.returncode == 2 and ".html" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / name).exists()


# -- 7. eval --set scene.splits on a scene without splits -------------------------------------------

def test_eval_scene_splits_on_a_procedural_scene_names_the_scene_type(procedural, nls):
    run, _, _ = procedural
    res = nls("eval", str(run), "--set", "scene.splits=[train,test,val]")
    assert res.returncode == 2, res.stderr
    assert "scene type 'procedural' has no splits option" in res.stderr and "blender" in res.stderr, res.stderr
    assert "unknown key" not in res.stderr and not (run / "eval.json").exists()


# -- 8. crops ----------------------------------------------------------------------------------------

def test_a_cropped_export_says_it_is_open_and_close_caps_it(geometry_run, tmp_path, nls):
    crop = ["--bbox", "-0.6", "-0.6", "-0.6", "0.6", "0.6", "0.0"]
    res = nls("export", str(geometry_run), "-o", str(tmp_path / "half.ply"), *crop, check=True)
    assert "watertight=False" in res.stdout and "open where the surface leaves the --bbox box" in res.stdout
    assert "--close" in res.stdout, res.stdout
    res = nls("export", str(geometry_run), "-o", str(tmp_path / "capped.ply"), *crop, "--close", check=True)
    assert "watertight=True" in res.stdout and "open where" not in res.stdout, res.stdout
    capped = trimesh.load(tmp_path / "capped.ply", force="mesh")
    assert capped.bounds[1][2] == pytest.approx(0.0, abs=1e-6)
    whole = nls("export", str(geometry_run), "-o", str(tmp_path / "whole.ply"), check=True)
    assert "open where" not in whole.stdout

