"""reconstruct -> render -> export -> eval on a run folder, and a trained tiny scene against truth."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import trimesh
import yaml

from pipeline.mesh import linear_to_srgb, srgb_to_linear
from pipeline.metrics import chamfer
from pipeline.scenes.mesh_render import load_mesh

# A small sphere scene that trains in well under a minute on 2 cores.
QUALITY = dict(
    scene={"type": "procedural", "shape": "sphere", "n_train": 24, "n_test": 3, "image_size": 48,
           "supersample": 1, "gt_resolution": 96},
    field={"type": "dense_grid", "resolution": 48, "features": 4},
    renderer={"type": "volume", "samples_per_ray": 128, "grid_resolution": 32},
    extractor={"type": "marching_cubes", "resolution": 96},
    losses=[{"type": "photometric"}, {"type": "tv", "weight": 1e-3, "density_only": True}],
    evaluators=[{"type": "psnr"}, {"type": "chamfer", "floor": True}],
    train={"steps": 300, "batch_rays": 1024, "checkpoint_every": 100, "log_every": 20, "grid_warmup": 64,
           "lr": 0.01},
    eval={"max_images": 3, "chamfer_samples": 20000},
)
def _view_index(name: str) -> int:
    """``r_12_pred_gt_depth.png`` -> 12."""
    return int(name.split("_")[1])


#: floors stated here and in the issue notes; measured values are printed
PSNR_FLOOR_DB = 23.0  # measured 24.8 on 2 busy cores
CHAMFER_L1_BOUND = 40.0  # x10^3 in the GT-normalised frame (4% of the extent); measured 26, floor ~6


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import yaml

    from tests.conftest import run_nls

    tmp = tmp_path_factory.mktemp("quality")
    p = tmp / "sphere.yaml"
    p.write_text(yaml.safe_dump({"name": "sphere", **QUALITY}))
    proc = run_nls("reconstruct", str(p), "-o", str(tmp / "runs"), "-q", check=True)
    run = next((tmp / "runs").glob("sphere/dense_grid/*"))
    return run, proc


def test_trained_tiny_scene_reaches_psnr_floor(trained_run):
    run, proc = trained_run
    summary = json.loads((run / "summary.json").read_text())
    psnr = summary["metrics"]["psnr"]
    print(f"tiny sphere: test PSNR {psnr:.2f} dB (floor {PSNR_FLOOR_DB}), "
          f"chamfer_l1 {summary['metrics']['chamfer_l1']:.2f} (floor {summary['metrics']['chamfer_l1_floor']:.2f})")
    assert psnr >= PSNR_FLOOR_DB
    m = summary["metrics"]  # same samples, exact distances: never above the sampled figure
    assert 0 < m["chamfer_l1_surface"] < m["chamfer_l1"] and 0 < m["chamfer_l2_surface"] <= m["chamfer_l2"]


def test_quiet_run_prints_no_progress_lines(trained_run):
    _, proc = trained_run  # `reconstruct -q`, trained and evaluated
    noise = [ln for ln in proc.stderr.splitlines() if ln.startswith(("training ", "rendering "))]
    assert not noise, noise


def test_plain_progress_eta_leaves_out_the_first_step(monkeypatch, capsys):
    """Off a terminal: a line per interval, the ETA from the rate after the first step."""
    from pipeline import progress

    clock = iter([130.0, 131.0, 132.0, 133.0, 139.0])  # step 1 ends at 130 s (start-up), then 1 s per step
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.StepProgress(10, 0, "training", plain_every_s=0.5) as bar:
        for step in (1, 2, 3, 4, 10):
            bar.advance(step)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split()[1] for ln in lines] == ["1/10", "2/10", "3/10", "4/10", "10/10"], lines
    # no rate yet after one step; then 1 step per second (not 130 s per step)
    assert [ln.split("  ")[-1] for ln in lines] == ["eta –", "eta 8s", "eta 7s", "eta 6s", "done"], lines


def test_a_run_needing_an_unloaded_plugin_says_which(trained_run, nls, tmp_path):
    """config.yaml names a field from a --plugins-dir file; opening the run without it says how."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["field"] = {"type": "my_field"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    info = json.loads((run / "plugins.json").read_text())
    info["plugins"] += [{"name": "myfield", "version": "9.9", "source": str(tmp_path / "plugs" / "myfield.py")},
                        {"name": "their_pkg", "version": "1.2", "source": "entry point of their-pkg"}]
    (run / "plugins.json").write_text(json.dumps(info))
    res = nls("export", str(run), "-o", str(tmp_path / "m.ply"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "my_field" in res.stderr and f"pass --plugins-dir {tmp_path / 'plugs'}" in res.stderr, res.stderr
    assert "their_pkg (entry point of their-pkg, version 1.2): install it" in res.stderr, res.stderr


def test_exported_mesh_is_watertight_and_close_to_truth(trained_run, nls, tmp_path):
    run, _ = trained_run
    out = tmp_path / "mesh.obj"
    res = nls("export", str(run), "-o", str(out), "--resolution", "96", check=True)
    assert "watertight=True" in res.stdout
    mesh = trimesh.load(out, force="mesh")
    assert mesh.is_watertight
    gt = load_mesh(json.loads((run / "scene.json").read_text())["gt_mesh"])
    cd = chamfer(mesh, gt, n_samples=20000)
    print(f"exported mesh: CD-L1 {cd['chamfer_l1']:.2f} x10^3, NC {cd['normal_consistency']:.3f}")
    assert cd["chamfer_l1"] < CHAMFER_L1_BOUND
    # --up z: the same vertices a quarter turn about x, +Z to +Y (glTF's up)
    turned = tmp_path / "turned.obj"
    said = nls("export", str(run), "-o", str(turned), "--resolution", "96", "--up", "z", check=True).stdout
    assert "turned the run's +Z up to +Y up (x, y, z) -> (x, z, -y) (--up z)" in said, said  # never silently
    a, b = (np.asarray(trimesh.load(p, force="mesh", process=False).vertices) for p in (out, turned))
    assert np.allclose(b, a[:, [0, 2, 1]] * [1, 1, -1], atol=1e-5)
    # .glb (glTF is +Y up) takes the run's own up axis by default: this scene's world is +Z up
    assert json.loads((run / "scene.json").read_text())["generator"]["world_up"] == "+z"
    res = nls("export", str(run), "-o", str(tmp_path / "default.glb"), "--resolution", "96", check=True)
    assert "turned the run's +Z up to +Y up (x, y, z) -> (x, z, -y) for glTF" in res.stdout
    nls("export", str(run), "-o", str(tmp_path / "kept.glb"), "--resolution", "96", "--up", "y", check=True)
    bounds = {p: trimesh.load(tmp_path / p, force="mesh", process=False).bounds for p in ("default.glb", "kept.glb")}
    assert np.allclose(bounds["default.glb"], trimesh.load(turned, force="mesh").bounds, atol=1e-5)
    assert np.allclose(bounds["kept.glb"], mesh.bounds, atol=1e-5)


def test_render_with_turntable_and_eval(trained_run, nls, tmp_path):
    run, _ = trained_run
    nls("render", str(run), "--split", "test", "--spiral", "4", "-o", str(tmp_path / "r"), check=True)
    pngs = sorted((tmp_path / "r" / "test").glob("*.png"))
    assert len(pngs) == 6  # 3 renders + 3 side-by-sides
    assert list((tmp_path / "r").glob("turntable.*"))
    # --every 2: views 0 and 2 of the 3, the same pixels as in the full render
    nls("render", str(run), "--every", "2", "-o", str(tmp_path / "e"), check=True)
    full = sorted((tmp_path / "r" / "test").glob("*_pred_gt_depth.png"), key=lambda p: _view_index(p.name))
    every = sorted((tmp_path / "e" / "test").glob("*_pred_gt_depth.png"), key=lambda p: _view_index(p.name))
    assert [p.name for p in every] == [full[0].name, full[2].name]
    for a, b in zip(every, (full[0], full[2])):
        assert np.array_equal(imageio.imread(a), imageio.imread(b)), a.name
    ev = nls("eval", str(run), "-o", str(tmp_path / "m.json"), check=True)  # -o: every command that writes
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["metrics"]["psnr"] > 0 and "chamfer_l1" in data["metrics"]
    # stdout: a table as reconstruct prints it (4 decimals; the JSON keeps every digit), not raw JSON
    assert f"psnr {data['metrics']['psnr']:.4f}" in " ".join(ev.stdout.replace("│", " ").split()), ev.stdout
    assert "{" not in ev.stdout and f"wrote {tmp_path / 'm.json'}" in ev.stdout
    txt = nls("eval", str(run), "-o", str(tmp_path / "m.txt"))
    assert txt.returncode == 2 and "nls eval writes JSON; give a file name ending in .json" in txt.stderr
    assert not (tmp_path / "m.txt").exists()


def test_export_errors(trained_run, nls, tmp_path):
    run, _ = trained_run
    bad = nls("export", str(run), "-o", str(tmp_path / "mesh.xyz"))
    assert bad.returncode == 2 and ".ply" in bad.stderr and "Traceback" not in bad.stderr
    empty = nls("export", str(run), "-o", str(tmp_path / "m.ply"), "--level", "1e9")
    assert empty.returncode == 2 and "empty level set" in empty.stderr


def test_export_checks_its_output_before_loading_the_run(tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.commands import export

    monkeypatch.setattr(export, "open_run", lambda *a, **k: pytest.fail("the run was loaded before -o was checked"))
    (tmp_path / "afile").write_text("x")
    for out, message in [(tmp_path, "it is a directory. Give a file name"),
                         (tmp_path / "m.xyz", "unknown extension '.xyz'; valid: .ply"),
                         (tmp_path / "afile" / "m.ply", "is a file, not a folder")]:
        assert cli.main(["export", str(tmp_path / "run"), "-o", str(out)]) == 2
        assert message in capsys.readouterr().err, out


def test_report_and_compare_refuse_to_overwrite_a_runs_records(trained_run, nls):
    run, _ = trained_run
    for argv in (["report", str(run), "--no-model", "-q", "-o"], ["compare", str(run), "--markdown", "-o"]):
        for name in ("config.yaml", "summary.json", "eval.json"):
            before = (run / name).read_bytes() if (run / name).exists() else None
            bad = nls(*argv, str(run / name))
            assert bad.returncode == 2 and f"that is the run's own {name}" in bad.stderr, (argv, bad.stderr)
            assert ((run / name).read_bytes() if (run / name).exists() else None) == before


def test_scene_and_method_names_cannot_leave_the_runs_root(tmp_path):
    from pipeline.runs import RunDir

    run = RunDir.create(tmp_path / "root", "..", "..")
    assert (tmp_path / "root") in run.path.resolve().parents
    assert run.path.parent.name == "__" and run.path.parent.parent.name == "__"


def test_eval_refuses_a_renders_folder_that_is_a_file_before_any_work(tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.commands import evaluation

    monkeypatch.setattr(evaluation, "open_run", lambda *a, **k: pytest.fail("the run was loaded before -o was checked"))
    (tmp_path / "ev_renders").write_text("x")
    assert cli.main(["eval", str(tmp_path / "run"), "-o", str(tmp_path / "ev.json")]) == 2
    assert f"its renders go to {tmp_path / 'ev_renders'}, which is a file" in capsys.readouterr().err


def test_commands_on_missing_run_folder(nls, tmp_path):
    for cmd in ("resume", "render", "eval"):
        proc = nls(cmd, str(tmp_path / "nope"))
        assert proc.returncode == 2 and "does not exist" in proc.stderr, cmd


def test_summary_prints_whole_commands_when_piped(tmp_path, capsys):
    """The paths and follow-up commands after a run are not broken at the 80-column pipe width."""
    from pipeline.commands.training import _print_summary

    run = tmp_path / ("a_long_folder_name_" * 4) / "csg" / "dense_grid" / "20261203-083106"
    flags = " --plugins-dir /opt/my_plugins"  # what _plugins_flags gives for --plugins-dir /opt/my_plugins
    _print_summary({"scene": "csg", "method": "dense_grid", "step": 10, "train_seconds": 1.0,
                    "device": "cpu_with_a_long_description_" * 2, "metrics": {"psnr": 30.0},
                    "mesh": "meshes/mesh.ply", "renders": "renders/test"}, run, flags)
    lines = capsys.readouterr().out.splitlines()
    for want in (f"nls render {run}{flags} --spiral 60", f"nls export {run}{flags} -o {run / 'meshes' / 'mesh.glb'} --resolution 384",
                 str(run / "meshes/mesh.ply"), str(run / "renders/test"), "1 s training on cpu_with"):
        assert any(want in line for line in lines), (want, lines)


def test_summary_without_a_mesh_or_metrics_says_so(tmp_path, capsys):
    """After 'mesh export skipped', the suggested export names a level (the default one made nothing), and an
    empty metrics table is a sentence."""
    from pipeline.commands.training import _print_summary

    run = tmp_path / "csg" / "dense_grid" / "20261205-000000"
    _print_summary({"scene": "csg", "method": "dense_grid", "step": 10, "train_seconds": 1.0, "device": "cpu",
                    "metrics": {}, "mesh": None, "renders": "renders/test"}, run)
    out = capsys.readouterr().out
    assert "no metrics (no evaluator ran or every one was skipped)" in out
    assert f"nls export {run} -o {run / 'meshes' / 'mesh.glb'} --level L" in out and "--resolution 384" not in out


def test_a_load_state_dict_error_keeps_its_first_detail():
    import torch

    from pipeline.train import load_error

    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError) as exc:
        model.load_state_dict({"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
    text = load_error(exc.value)
    assert text.startswith("Error(s) in loading state_dict for Linear:") and "size mismatch for weight" in text
    assert len(load_error(RuntimeError("x" * 1000))) == 400


def test_follow_up_commands_carry_the_plugins_dirs():
    """As absolute paths: a relative one broke the printed command when run from another folder."""
    import argparse
    import shlex
    from pathlib import Path

    from pipeline.commands.training import _plugins_flags

    here = shlex.quote(str(Path("a dir").absolute()))
    assert _plugins_flags(argparse.Namespace(plugins_dir=["a dir", "/b"])) == f" --plugins-dir {here} --plugins-dir /b"
    assert _plugins_flags(argparse.Namespace(plugins_dir=None)) == ""


@pytest.mark.parametrize("argv, message", [
    (["render", "RUN", "--spiral", "-3"], "--spiral: -3 is out of range: give an integer in 0..3600"),
    (["export", "RUN", "-o", "m.ply", "--resolution", "4"],
     "--resolution: 4 is out of range: give an integer in 16..1024"),
    (["export", "RUN", "-o", "m.ply", "--resolution", "100000"],
     "--resolution: 100000 is out of range: give an integer in 16..1024"),
    (["view", "RUN", "--resolution", "1"], "--resolution: 1 is out of range: give an integer in 16..512"),
    (["view", "RUN", "--port", "99999"], "--port: 99999 is out of range: give an integer in 0..65535"),
    (["view", "RUN", "--port", "-5"], "--port: -5 is out of range: give an integer in 0..65535"),
    (["reconstruct", "s.yaml", "--steps", "0"], "--steps: 0 is out of range: give an integer >= 1"),
    (["reconstruct", "s.yaml", "--steps", "abc"], "--steps: 'abc' is not an integer"),
    (["batch", "s.yaml", "--steps", "0"], "--steps: 0 is out of range: give an integer >= 1"),
    (["batch", "s.yaml", "--jobs", "0"], "--jobs: 0 is out of range: give an integer >= 1"),
    (["batch", "s.yaml", "--scene-timeout", "-1"], "--scene-timeout: -1: give a number of seconds > 0"),
    (["batch", "s.yaml", "--scene-timeout", "nan"], "--scene-timeout: nan: give a number of seconds > 0"),
    (["view", "RUN", "--seconds", "0"], "--seconds: 0: give a number of seconds > 0"),
    (["export", "RUN", "-o", "m.ply", "--level", "nan"], "--level: nan: give a finite number"),
    (["export", "RUN", "-o", "m.ply", "--level", "-inf"], "--level: -inf: give a finite number"),
])
def test_out_of_range_numbers_are_usage_errors(argv, message, capsys):
    """Values that used to crash late (--spiral -3) or silently mean the default (--resolution 0)."""
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("-2e-3", -0.002), ("-2E-3", -0.002), ("-.5", -0.5),
                                             ("-1.", -1.0), ("-1e+1", -10.0), ("-3", -3.0)])
def test_negative_numbers_in_any_notation_are_option_values(value, expected):
    """argparse alone read ``--level -2e-3`` as an unknown option ("expected one argument")."""
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["export", "RUN", "-o", "m.ply", "--level", value,
                                      "--bbox", value, "-1", "-1", "1", "1", "1"])
    assert args.level == expected and args.bbox[0] == expected


def test_bad_output_paths_fail_before_any_work(tmp_path):
    """-o/--output naming a directory, or under a file, is refused with the path, not an OSError."""
    from pipeline.runs import check_output_file
    from pipeline.types import NLSError

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(NLSError, match="adir: it is a directory"):
        check_output_file(tmp_path / "adir", "report")
    with pytest.raises(NLSError, match="afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "sub" / "eval.json", "metrics")
    ok = check_output_file(tmp_path / "new" / "deeper" / "eval.json", "metrics")
    assert ok.parent.is_dir() and not ok.exists()


def test_eval_and_report_refuse_a_bad_output_before_evaluating(nls, tmp_path):
    """The check runs before the run folder is even opened, so nothing is computed and then lost."""
    (tmp_path / "afile").write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    for args in (["eval", str(run), "--output", str(tmp_path / "afile" / "e.json")],
                 ["report", str(run), "-o", str(tmp_path / "afile" / "r.html"), "--no-model"]):
        proc = nls(*args)
        assert proc.returncode == 2 and "afile is a file, not a folder" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_run_commands_on_a_file_say_it_is_not_a_run_folder(tmp_path):
    from pipeline.runs import RunDir
    from pipeline.types import NLSError

    f = tmp_path / "scene.yaml"
    f.write_text("name: x\n")
    with pytest.raises(NLSError, match="scene.yaml is a file, not a run folder"):
        RunDir.open(f)


def test_an_eval_split_the_scene_lacks_fails_before_training(tiny_scene, nls, tmp_path):
    res = nls("reconstruct", str(tiny_scene()), "--set", "eval.split=val", "-o", str(tmp_path / "runs"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"--set eval.split=val (on {tiny_scene()}): eval.split = 'val': the scene has no such split (it has " \
           f"train, test)" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("config.yaml"))


def test_an_extractor_quantity_the_chain_lacks_fails_before_training(tiny_scene, nls, tmp_path):
    scene = tiny_scene(extractor={"type": "marching_cubes", "resolution": 16})
    res = nls("reconstruct", str(scene), "--set", "extractor.quantity=sdf", "-o", str(tmp_path / "runs"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "extractor.quantity = 'sdf', but the field chain produces only density, rgb, voxels; use quantity: " \
           "auto or density" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("config.yaml"))


def _true_vertex_colors(vertices, gt) -> np.ndarray:
    """(V,3) colour the procedural scene's images show at the GT surface point nearest each vertex:
    render_mesh_views's albedo times its Lambertian + ambient shading, with its default light."""
    import inspect

    import igl

    from pipeline.scenes.mesh_render import _albedo, render_mesh_views

    opt = {k: p.default for k, p in inspect.signature(render_mesh_views).parameters.items()}
    _, tri, loc = igl.point_mesh_squared_distance(np.ascontiguousarray(vertices, dtype=np.float64),
                                                  np.asarray(gt.vertices, np.float64), np.asarray(gt.faces))
    tri = np.asarray(tri).astype(int)
    light = np.asarray(opt["light_dir"], float) / np.linalg.norm(opt["light_dir"])
    lo, hi = gt.bounds
    albedo = _albedo(gt, tri, loc, opt["base_color"], opt["texture_strength"], lo, float((hi - lo).max()))
    shade = opt["ambient"] + (1 - opt["ambient"]) * np.clip(gt.face_normals[tri] @ light, 0, None)
    return np.clip(albedo * shade[:, None], 0, 1)


def test_exported_vertex_colours_match_the_scene(trained_run, nls, tmp_path):
    """`export --colors` bakes the field's radiance; on the sphere it matches the shading the
    training images were rendered with about as well as the run's own test renders match theirs
    (mean error under the renders' RMSE, from their PSNR), and clearly better than the best
    single colour does."""
    run, _ = trained_run
    gt = load_mesh(json.loads((run / "scene.json").read_text())["gt_mesh"])
    render_rmse = 10 ** (-json.loads((run / "summary.json").read_text())["metrics"]["psnr"] / 20)
    for ext in (".ply", ".glb"):
        out = tmp_path / f"mesh{ext}"
        # --up y: the truth is looked up at the vertices, in the coordinates the run trained in
        res = nls("export", str(run), "-o", str(out), "--resolution", "64", "--colors", "--up", "y", check=True)
        assert "vertex colours" in res.stdout
        mesh = trimesh.load(out, force="mesh")
        assert mesh.visual.kind == "vertex"
        baked = np.asarray(mesh.visual.vertex_colors, float)[:, :3] / 255
        if ext == ".glb":  # glTF stores linear colours; the images (and the truth) are sRGB
            baked = linear_to_srgb(baked)
        truth = _true_vertex_colors(np.asarray(mesh.vertices), gt)
        err = np.abs(baked - truth).mean()
        flat = np.abs(truth.mean(axis=0) - truth).mean()
        print(f"{ext}: baked colour error {err:.4f}, best single colour {flat:.4f}, renders' RMSE {render_rmse:.4f}")
        assert err < 0.6 * flat and err < render_rmse
    out = tmp_path / "normal.ply"  # the colour along the inward normal, as before the views' colours
    nls("export", str(run), "-o", str(out), "--resolution", "64", "--colors", "--color-from", "normal", check=True)
    mesh = trimesh.load(out, force="mesh")
    normal = np.abs(np.asarray(mesh.visual.vertex_colors, float)[:, :3] / 255
                    - _true_vertex_colors(np.asarray(mesh.vertices), gt)).mean()
    print(f"--color-from normal: baked colour error {normal:.4f} (views: {err:.4f})")
    assert normal < render_rmse and err < normal + 0.002
    for ext in (".stl", ".off"):  # trimesh writes no colours into these
        bad = nls("export", str(run), "-o", str(tmp_path / f"m{ext}"), "--colors")
        assert bad.returncode == 2 and "keep no vertex colours" in bad.stderr and not (tmp_path / f"m{ext}").exists()
        assert "UserWarning" not in res.stderr


def test_rendered_depth_arrays_match_ray_casting(trained_run, nls, tmp_path):
    """`render --depth` writes float32 depth and opacity per view; where the sphere is opaque the
    depth follows the distance to the ground-truth mesh along the same rays (ray casting). The
    expected termination depth of this short run's soft density lies a little behind the true
    surface (measured: 4.5% further, median), so the bound is 6% and the two must correlate; the
    median depth (NAME_depth_median.npy) must lie nearer the surface than the expected depth."""
    import yaml

    from pipeline.scenes.mesh_render import render_mesh_views

    run, _ = trained_run
    res = nls("render", str(run), "--depth", "--max-images", "2", "--supersample", "1", "-o", str(tmp_path / "r"),
              check=True)
    assert "wrote 2 test renders" in res.stdout and "depth/opacity .npy" in res.stdout
    sc = yaml.safe_load((run / "config.yaml").read_text())["scene"]
    gt_mesh = load_mesh(json.loads((run / "scene.json").read_text())["gt_mesh"])
    # the same test cameras, with exact depth (render_mesh_views is how the scene was made)
    render_mesh_views(gt_mesh, tmp_path / "gt", n_train=0, n_test=sc["n_test"], width=sc["image_size"],
                      height=sc["image_size"], camera_angle_x=sc["camera_angle_x"], radius=sc["radius"],
                      seed=sc["seed"], depth=True)
    depths = sorted((tmp_path / "r" / "test").glob("*_depth.npy"))
    assert len(depths) == 2
    for f in depths:
        pred, opacity = np.load(f), np.load(str(f).replace("_depth.npy", "_opacity.npy"))
        median = np.load(str(f).replace("_depth.npy", "_depth_median.npy"))
        truth = np.load(tmp_path / "gt" / "test" / f.name)
        assert pred.dtype == median.dtype == np.float32 and pred.shape == median.shape == opacity.shape == truth.shape
        both = (opacity > 0.99) & (truth > 0)
        rel = np.abs(pred[both] / truth[both] - 1)
        rel_median = np.abs(median[both] / truth[both] - 1)
        corr = np.corrcoef(pred[both], truth[both])[0, 1]
        print(f"{f.name}: {both.sum()} opaque pixels, median relative depth error {np.median(rel):.4f} "
              f"(median depth: {np.median(rel_median):.4f}), correlation {corr:.3f}, opacity where the mesh is "
              f"missed {opacity[truth == 0].mean():.3f}")
        assert both.sum() > 0.5 * (truth > 0).sum() and np.median(rel) < 0.06 and corr > 0.9
        assert np.median(rel_median) < np.median(rel)  # the median depth stays nearer the surface
        assert opacity[truth == 0].mean() < 0.05


def test_a_typo_in_the_settings_of_a_run_is_refused_before_torch_is_imported(trained_run, tmp_path):
    """`nls eval` resolves the run's config with its --set overrides before anything heavy is imported, so a
    misspelt option is refused at once (about 0.5 s on 2 cores instead of 2.6 s)."""
    from tests.conftest import cli_in_fresh_python

    run, _ = trained_run
    for text in ("evaluators=[{type: chamfr}]", "eval.chamfer_sample=10", "train.steps=5"):
        rc, _, heavy = cli_in_fresh_python(["eval", str(run), "-o", str(tmp_path / "x.json"), "--set", text])
        assert rc == 2 and heavy == [], (text, rc, heavy)
    assert not (tmp_path / "x.json").exists()


def test_eval_can_change_the_evaluators_but_not_the_model(trained_run, nls, tmp_path):
    run, _ = trained_run
    before = (run / "config.yaml").read_text()
    out = tmp_path / "e.json"
    res = nls("eval", str(run), "-o", str(out), "--set", "evaluators=[{type: chamfer, floor: false, surface: true}]",
              "--set", "eval.chamfer_samples=5000", check=True)
    data = json.loads(out.read_text())
    assert "chamfer_l1_surface" in data["metrics"] and "psnr" not in data["metrics"], res.stdout
    before_renders = sorted(p.name for p in (run / "renders").rglob("*"))
    res = nls("eval", str(run), "-o", str(tmp_path / "tr.json"), "--set", "eval.split=train",
              "--set", "eval.max_images=1", "--set", "evaluators=[{type: psnr}]", check=True)
    assert f"and its renders to {tmp_path / 'tr_renders' / 'train'}" in res.stdout, res.stdout
    assert len(list((tmp_path / "tr_renders" / "train").glob("*_pred_gt_depth.png"))) == 1
    assert sorted(p.name for p in (run / "renders").rglob("*")) == before_renders  # training's renders untouched
    # a finer ray step than training's: it reaches the renderer and is recorded; the model stays as trained
    spp = yaml.safe_load(before)["renderer"]["samples_per_ray"]
    nls("eval", str(run), "-o", str(tmp_path / "fine.json"), "--set", "eval.split=train", "--set", "eval.max_images=1",
        "--set", "evaluators=[{type: psnr}]", "--set", f"renderer.samples_per_ray={4 * spp}", check=True)
    coarse, fine = (json.loads((tmp_path / f).read_text()) for f in ("tr.json", "fine.json"))
    assert (coarse["config"]["renderer"]["samples_per_ray"], fine["config"]["renderer"]["samples_per_ray"]) == (spp, 4 * spp)
    assert fine["metrics"]["psnr"] != coarse["metrics"]["psnr"], "the finer step did not change the render"
    assert abs(fine["metrics"]["psnr"] - coarse["metrics"]["psnr"]) < 3, (coarse["metrics"], fine["metrics"])
    grid = nls("eval", str(run), "-o", str(tmp_path / "x.json"), "--set", "renderer.grid_resolution=16")
    assert grid.returncode == 2 and "'renderer.grid_resolution' is part of the trained run" in grid.stderr, grid.stderr
    assert data["overrides"] == ["evaluators=[{type: chamfer, floor: false, surface: true}]", "eval.chamfer_samples=5000"]
    assert (run / "config.yaml").read_text() == before
    bad = nls("eval", str(run), "-o", str(tmp_path / "x.json"), "--set", "train.steps=5")
    assert bad.returncode == 2 and "eval changes only evaluators, eval, extractor" in bad.stderr
    assert not (tmp_path / "x.json").exists()
    typo = nls("eval", str(run), "-o", str(tmp_path / "x.json"), "--set", "evaluators=[{type: chamfr}]")
    assert typo.returncode == 2 and "--set evaluators=[{type: chamfr}]" in typo.stderr and "Traceback" not in typo.stderr
    # a misspelt option is the user's typo, not an option an older nls wrote into config.yaml
    for text, key in (("eval.chamfer_sample=10", "eval.chamfer_sample"), ("extractor.resolutoin=32", "extractor.resolutoin"),
                      ("evaluators=[{type: chamfer, bogus: 1}]", "evaluators.0.bogus")):
        typo = nls("eval", str(run), "-o", str(tmp_path / "x.json"), "--set", text)
        assert typo.returncode == 2 and f"{key}: unknown key" in typo.stderr, typo.stderr
    # every evaluator skipped (here: no surface at the asked level) is a failed eval, with the reasons kept
    skipped = nls("eval", str(run), "-o", str(tmp_path / "skip.json"), "--set", "evaluators=[{type: chamfer}]",
                  "--set", "extractor.level=1000000")
    assert skipped.returncode == 1 and "nothing was evaluated" in skipped.stderr, skipped.stderr
    assert "empty level set" in json.loads((tmp_path / "skip.json").read_text())["evaluators"]["chamfer"]["skipped"]
    for name in ("summary.json", "metrics.jsonl", "checkpoints/x.json"):  # the run's own records stay as trained
        bad = nls("eval", str(run), "-o", str(run / name), "-q")
        assert bad.returncode == 2 and "that is the run's own" in bad.stderr, bad.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    for text, why in (("evaluators=[]", "nothing to evaluate: --set emptied the evaluators"),
                      ("eval.split=val", "--set eval.split=val (on ")):
        res = nls("eval", str(run), "-o", str(tmp_path / "x.json"), "--set", text)
        assert res.returncode == 2 and why in res.stderr, res.stderr
    assert not (tmp_path / "x.json").exists()


def test_srgb_conversions_invert_each_other_and_hit_known_values():
    c = np.linspace(0, 1, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(c)), c, atol=1e-12)
    assert abs(float(srgb_to_linear(0.5)) - 0.214041) < 1e-6  # the standard's mid-grey


def test_nls_own_warnings_are_one_line_and_others_keep_their_form(capsys):
    """A warning of nls's own code prints as `warning: ...` (it printed file:line and a line of source)."""
    import warnings
    from pathlib import Path

    from pipeline.cli import _one_line_warnings

    root = Path(__file__).resolve().parents[1]
    passed_on = []
    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, filename, *a, **k: passed_on.append((str(message), filename))
        _one_line_warnings()
        exec(compile("import warnings; warnings.warn('ours')", str(root / "pipeline" / "x.py"), "exec"))
        exec(compile("import warnings; warnings.warn('theirs')", "/elsewhere/lib.py", "exec"))
    err = capsys.readouterr().err
    assert "warning: ours\n" in err and "x.py" not in err
    from pipeline import notices

    assert "ours" in notices.kept() and "theirs" not in notices.kept()  # kept for the run's summary
    assert passed_on == [("theirs", "/elsewhere/lib.py")]  # Python's own form, as before


def test_a_split_on_disk_that_the_run_did_not_load_is_named_as_such(tmp_path):
    """lego's val split exists on disk; a run that loaded [train, test] says so (it said lego has no val)."""
    import types

    from pipeline.evaluate import missing_split_message

    (tmp_path / "transforms_val.json").write_text("{}")
    scene = types.SimpleNamespace(splits={"train": 1, "test": 1}, meta={"source": "blender", "root": str(tmp_path)})
    text = missing_split_message(scene, "val", "--split")
    assert "this run loaded only the splits train, test (its scene.splits)" in text
    assert f"{tmp_path} has transforms_val.json" in text and "--set 'scene.splits=[train, test, val]'" in text
    assert "no such split" in missing_split_message(scene, "extra", "--split")  # not on disk either


def test_eval_can_load_a_split_that_training_did_not(tmp_path):
    """lego's val split without retraining: `nls eval --set eval.split=val --set 'scene.splits=[...]'` loads it
    and eval.json records the splits; dropping a trained split, or a value that is not a list, is refused."""
    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls
    from tests.test_blender import make_blender

    data = make_blender(tmp_path / "data", n=2, size=16, splits=("train", "test", "val"))
    scene = dict(TINY_SCENE, name="blend", scene={"type": "blender", "path": str(data), "splits": ["train", "test"]},
                 extractor=None, train=dict(TINY_SCENE["train"], steps=3))
    scene = {k: v for k, v in scene.items() if v is not None}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scene))
    run_nls("reconstruct", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "runs"), "-q", "--no-eval",
            check=True)
    run = next((tmp_path / "runs").glob("blend/*/*"))
    render = run_nls("render", str(run), "--split", "val", "-o", str(tmp_path / "r"))
    assert render.returncode == 2 and "evaluate it with nls eval RUN --set eval.split=val --set " \
        "'scene.splits=[train, test, val]'" in render.stderr, render.stderr
    refused = run_nls("eval", str(run), "--set", "eval.split=val")
    assert refused.returncode == 2 and "load it too with --set 'scene.splits=[train, test, val]'" in refused.stderr
    ok = run_nls("eval", str(run), "--set", "eval.split=val", "--set", "scene.splits=[train, test, val]", "-q")
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = json.loads((run / "eval.json").read_text())
    assert record["config"]["scene"]["splits"] == ["train", "test", "val"]
    assert record["config"]["eval"]["split"] == "val"
    assert record["evaluators"]["psnr"]["n_images"] == 1 and (run / "eval_renders" / "val" / "r_0.png").is_file()
    dropped = run_nls("eval", str(run), "--set", "scene.splits=[train, val]")
    assert dropped.returncode == 2 and "not drop test; give [train, test, val]" in dropped.stderr
    scalar = run_nls("eval", str(run), "--set", "scene.splits=val")
    assert scalar.returncode == 2 and "takes a list of split names" in scalar.stderr


def test_ctrl_c_while_torch_loads_is_a_plain_interrupt(monkeypatch, capsys):
    """Ctrl-C during torch's import left it half-initialised, and leaving the process group then raised
    (AttributeError: partially initialized module 'torch' ...): a traceback and exit 1 instead of 130."""
    import sys

    import pipeline.cli
    import pipeline.distributed

    def interrupted(args):
        raise KeyboardInterrupt

    def half_imported():
        raise AttributeError("partially initialized module 'torch' has no attribute 'fx'")

    monkeypatch.setattr(pipeline.cli, "cmd_plugins", interrupted)
    monkeypatch.setattr(pipeline.distributed, "shutdown", half_imported)
    monkeypatch.setitem(sys.modules, "torch.distributed", sys.modules.get("torch.distributed") or object())
    assert pipeline.cli.main(["plugins"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_view_resolution_is_bounded(tmp_path, capsys):
    """--resolution 100000 tried to allocate 3.55 PiB in the viewer's thread: a traceback and exit 0."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["view", str(tmp_path), "--resolution", "100000"])
    assert exc.value.code == 2
    assert "argument --resolution: 100000 is out of range: give an integer in 16..512" in capsys.readouterr().err


def test_an_argument_a_command_does_not_take_is_reported_by_that_command(capsys):
    """It was `nls: error: unrecognized arguments: extra` with nls's usage, not the command's."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["render", "RUN", "extra"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "nls render: error: unrecognized arguments: extra" in err
    assert "usage: nls render" in err
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert "nls: error: unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("command, option, says", [
    (["reconstruct"], "--steps", "default: the scene's train.steps"),
    (["batch"], "--steps", "default: each scene's train.steps"),
    (["batch"], "--scene-timeout", "default: no limit"),
    (["render"], "--spiral", "0..3600 frames"),
    (["view"], "--resolution", "16..512"),
])
def test_help_gives_defaults_and_ranges(capsys, command, option, says):
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert option in text and says in text


def test_a_run_copied_to_a_machine_with_another_data_root_finds_its_data(tmp_path):
    """config.yaml holds scene.path with ${NLS_DATA} expanded: a run made under one data root could not be
    evaluated, rendered or resumed where the data lies under another (scene.path: no such file)."""
    import os

    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls
    from tests.test_blender import make_blender

    make_blender(tmp_path / "root1" / "nerf" / "toy", n=2, size=16)
    scene = {**TINY_SCENE, "name": "moved", "scene": {"type": "blender", "path": "${NLS_DATA}/nerf/toy"},
             "train": dict(TINY_SCENE["train"], steps=3)}
    scene.pop("extractor", None)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scene))
    env = {**os.environ, "NLS_DATA": str(tmp_path / "root1")}
    run_nls("reconstruct", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "runs"), "-q", "--no-eval",
            env=env, check=True)
    run = next((tmp_path / "runs").glob("moved/*/*"))
    assert json.loads((run / "scene.json").read_text())["data_root"] == str(tmp_path / "root1")
    (tmp_path / "root1").rename(tmp_path / "root2")
    proc = run_nls("eval", str(run), "-q", env={**env, "NLS_DATA": str(tmp_path / "root2")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"the same path under this data root is used: {tmp_path / 'root2' / 'nerf' / 'toy'}" in proc.stderr
    gone = run_nls("eval", str(run), "-q", env={**env, "NLS_DATA": str(tmp_path)})  # not under this root
    assert gone.returncode == 2 and "scene.path" in gone.stderr and "no such file or folder" in gone.stderr


def test_the_allocator_keeps_freed_grid_buffers_on_glibc(monkeypatch):
    """nls tunes glibc's malloc at start (a 28% faster demo on 2 cores, bit-identical); an environment that
    tunes it already (MALLOC_*) is left alone."""
    import platform

    from pipeline.cli import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()[0] or 'unknown libc'}): mallopt is not called there")
    assert keep_freed_memory() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False


def test_a_second_eval_of_one_output_is_refused_while_the_first_writes(trained_run, nls, tmp_path):
    """Two `nls eval` with one output shared the staging folder and deleted each other's renders."""
    import os

    from pipeline.runs import exclusive_lock

    run, _ = trained_run
    out = tmp_path / "e.json"
    with exclusive_lock(tmp_path / ".e.lock", lambda pid: "held", "tests"):  # as a running eval holds it
        res = nls("eval", str(run), "-o", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"{out} is being written by another nls eval (pid {os.getpid()})" in res.stderr, res.stderr
    assert not out.exists()


def test_a_path_part_over_255_bytes_is_one_error_line(trained_run, nls, tmp_path):
    run, _ = trained_run
    res = nls("export", str(run), "-o", str(tmp_path / ("x" * 260 + ".ply")))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "a file name is too long" in res.stderr and "at most 255 bytes" in res.stderr, res.stderr
