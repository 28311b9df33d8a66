"""UX audit of --plugins-dir, `nls new-plugin`, `nls batch` and `nls compare`: a folder that loads nothing
says so, scaffolded packages load without installing under their own names, the batch's console and logs
agree and it is not silent while a scene trains, and compare says what it means and no more."""

from __future__ import annotations

import copy
import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from pipeline.types import NLSError


# -- --plugins-dir and nls new-plugin -----------------------------------------------------------------------
def _scaffold(parent: Path, name: str) -> Path:
    from pipeline.scaffold import new_plugin

    return new_plugin(name, parent)


def test_a_plugins_dir_holding_a_new_plugin_package_names_its_package_folder(tmp_path, capsys, monkeypatch):
    """`--plugins-dir np/nls-my-method` (what `nls new-plugin my_method --dir np` made) loaded nothing and said
    nothing, so the scene failed later with "unknown loss type"; it is an error naming the folder to give."""
    from pipeline.cli import main

    _scaffold(tmp_path / "np", "my_method")
    monkeypatch.chdir(tmp_path)
    assert main(["plugins", "--plugins-dir", "np/nls-my-method"]) == 2
    err = capsys.readouterr().err
    assert "--plugins-dir np/nls-my-method: no plugin file in it" in err, err
    assert "pass --plugins-dir np/nls-my-method/nls_my_method" in err, err
    assert "pip install -e np/nls-my-method" in err, err
    # one level up (the --dir of new-plugin): the package folders of every project below it
    _scaffold(tmp_path / "np", "other")
    assert main(["plugins", "--plugins-dir", "np"]) == 2
    err = capsys.readouterr().err
    assert "--plugins-dir np/nls-my-method/nls_my_method --plugins-dir np/nls-other/nls_other" in err, err


def test_an_empty_plugins_dir_or_one_of_helpers_only_is_an_error_naming_it(tmp_path):
    from pipeline.testing import plugin_host

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NLSError, match=r"--plugins-dir .*empty: no plugin file in it .*Give the folder that holds "
                                       r"your plugin \.py files"):
        plugin_host(builtins=False, plugins_dirs=[empty])
    (empty / "_helpers.py").write_text("X = 1\n")
    with pytest.raises(NLSError, match=r"_helpers\.py is a helper: files named _\*\.py are not loaded as plugins"):
        plugin_host(builtins=False, plugins_dirs=[empty])


def test_two_scaffolded_plugins_load_from_their_package_folders_under_their_own_names(tmp_path):
    """Each was plugin 'plugin' (its file is plugin.py), so two could not load together."""
    from pipeline.testing import plugin_host

    a, b = _scaffold(tmp_path, "alpha"), _scaffold(tmp_path, "beta_two")
    host = plugin_host(builtins=False, plugins_dirs=[a / "nls_alpha", b / "nls_beta_two"])
    assert [p.name for p in host.plugins()] == ["alpha", "beta_two"]
    assert host.component("loss", "alpha_opacity").plugin == "alpha"
    assert host.component("loss", "beta_two_opacity").plugin == "beta_two"
    assert [p.source for p in host.plugins()] == [str((a / "nls_alpha" / "plugin.py").resolve()),
                                                  str((b / "nls_beta_two" / "plugin.py").resolve())]
    assert sys.modules["nls_local_plugins.alpha"].__file__ == str((a / "nls_alpha" / "plugin.py").resolve())


def test_a_plugin_py_outside_a_package_keeps_its_file_name(tmp_path):
    from pipeline.testing import plugin_host

    (tmp_path / "plugin.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            register("loose_loss", "torch.nn:Identity")
    '''))
    assert [p.name for p in plugin_host(builtins=False, plugins_dirs=[tmp_path]).plugins()] == ["plugin"]


def test_a_plugin_installed_and_given_with_plugins_dir_says_to_load_it_one_way(tmp_path, monkeypatch):
    """Once named as its entry point, a scaffolded plugin that is also installed clashes by name; the
    remedy is not 'rename one of them' (they are the same plugin)."""
    from importlib.metadata import EntryPoint

    import pipeline.plugins as plugins

    root = _scaffold(tmp_path, "twice")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(plugins, "entry_points", lambda group: [EntryPoint("twice", "nls_twice.plugin", "nls")])
    monkeypatch.delenv("NLS_LOAD_PLUGINS", raising=False)
    with pytest.raises(NLSError, match=r"two plugins are named 'twice': one from entry point of .*, one from "
                                       r".*plugin\.py; load it one way: drop that --plugins-dir, or leave the "
                                       r"installed one out with NLS_LOAD_PLUGINS"):
        plugins.PluginHost.create(builtins=False, plugins_dirs=[root / "nls_twice"])


def test_new_plugin_says_how_to_use_the_package_without_installing_it(tmp_path, capsys):
    """Its output and README named only `pip install -e`; the --plugins-dir line they give now works:
    a short reconstruction with the scaffolded loss, the package not installed."""
    from pipeline.cli import main
    from pipeline.scaffold import next_steps
    from pipeline.testing import TINY_SCENE

    root = _scaffold(tmp_path, "sparse_a")
    text = next_steps("sparse_a", root)
    assert f"pip install -e {root}" in text
    line = next(ln for ln in text.splitlines() if "without installing" in ln)
    assert line.endswith(f"nls reconstruct SCENE.yaml --plugins-dir {root / 'nls_sparse_a'}"), line
    readme = (root / "README.md").read_text()
    assert "nls reconstruct SCENE.yaml --plugins-dir nls_sparse_a" in readme and "as plugin `sparse_a`" in readme

    scene = copy.deepcopy(TINY_SCENE)
    scene["losses"] = [{"type": "photometric"}, {"type": "sparse_a_opacity", "weight": 0.01}]
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    rc = main(["reconstruct", str(path), "--plugins-dir", str(root / "nls_sparse_a"), "--steps", "2", "-q",
               "--no-eval", "--output", str(tmp_path / "runs")])
    assert rc == 0, capsys.readouterr().err
    run = next((tmp_path / "runs").glob("*/*/*"))
    recorded = {p["name"]: p for p in json.loads((run / "plugins.json").read_text())["plugins"]}
    assert recorded["sparse_a"]["source"] == str((root / "nls_sparse_a" / "plugin.py").resolve())


def test_new_plugin_prints_the_plugins_dir_line(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["new-plugin", "printed", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pip install -e" in out and f"--plugins-dir {tmp_path / 'nls-printed' / 'nls_printed'}" in out, out


# -- nls batch ----------------------------------------------------------------------------------------------
#: a stand-in for `nls reconstruct` (argv: run folder, seconds to live, exit code, error line): it makes the
#: run folder, prints it as nls does, logs step 5 of 100, lives a while, then prints its error and exits
FAKE_RUN = """
import pathlib, sys, time
run, live, code, error = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
(run / "checkpoints").mkdir(parents=True)
(run / "config.yaml").write_text("name: fake\\nmethod: m\\ntrain: {steps: 100}\\n")
print(f"run folder: {run}  (scene loaded in 0.1 s, device cpu)", flush=True)
(run / "metrics.jsonl").write_text('{"step": 5, "loss": 0.5}\\n{"step": 5, "lo')  # the last line being written
time.sleep(live)
if error:
    print(f"error: {error}", flush=True)
sys.exit(code)
"""


def _fake(monkeypatch, tmp_path: Path, live: float, code: int = 0, error: str = ""):
    from pipeline.batch import BatchOptions

    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    monkeypatch.setattr(BatchOptions, "command", lambda self, scene: [
        sys.executable, str(script), str(tmp_path / "runs" / Path(scene).stem), str(live), str(code),
        error.format(scene=scene)])
    (tmp_path / "logs").mkdir(exist_ok=True)
    return BatchOptions()


def test_a_refused_scene_is_reported_after_the_batch_header(tmp_path, monkeypatch, capsys):
    """It was printed as `[2] FAILED` before `batch of 3 scene(s)`."""
    import pipeline.batch
    from pipeline.cli import main
    from tests.conftest import ROOT

    monkeypatch.setattr(pipeline.batch, "run_scenes", lambda *a, **k: [])  # no scene is run
    good = str(ROOT / "scenes" / "csg_dense.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(Path(good).read_text()), "trian": {}}))
    main(["batch", good, str(bad), good, "-o", str(tmp_path / "out")])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("batch of 3 scene(s)"))
    failed = next(i for i, ln in enumerate(lines) if ln.startswith(f"[2] FAILED  {bad}: "))
    assert header < failed, lines
    assert lines[failed].count(str(bad)) == 1, lines[failed]


def test_log_files_are_numbered_as_the_console_numbers_the_scenes(tmp_path, monkeypatch):
    """[1] and [3] on the console had logs 00_ and 02_."""
    from pipeline.batch import run_scene

    opts = _fake(monkeypatch, tmp_path, live=0)
    res = run_scene(2, "third.yaml", opts, tmp_path / "logs")
    assert Path(res.log).name == "03_third.log" and res.outcome == "ok", res


def test_a_childs_error_naming_its_scene_file_does_not_repeat_it(tmp_path, monkeypatch, capsys):
    """'scenes/missing_data.yaml: scenes/missing_data.yaml: scene.path = ...': the batch's lines name the
    scene, and so did the child's own error."""
    from pipeline.batch import _finish, run_scene

    opts = _fake(monkeypatch, tmp_path, live=0, code=2, error="{scene}: scene.path = 'x.obj': no such file")
    res = run_scene(0, "scenes/missing_data.yaml", opts, tmp_path / "logs")
    assert (res.outcome, res.error) == ("failed", "scene.path = 'x.obj': no such file"), res
    _finish([res], tmp_path)
    err = capsys.readouterr().err
    assert err.count("scenes/missing_data.yaml") == 1 and "no such file" in err, err


def test_a_running_scene_is_reported_now_and_then_with_its_step(tmp_path, monkeypatch):
    """Nothing was printed between `[1] started` and its end (minutes to hours); now the start names the
    log, and `running` lines give the elapsed time and the logged step, at doubling intervals."""
    import pipeline.batch as batch

    monkeypatch.setattr(batch, "PROGRESS_FIRST_S", 0.4)
    opts = _fake(monkeypatch, tmp_path, live=2.2)
    said: list[str] = []
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            said.append(msg)

    (res,) = batch.run_scenes([(0, "a.yaml")], opts, 1, tmp_path / "logs", say=say)
    assert res.outcome == "ok", res
    assert said[0] == f"[1] started a.yaml  (log: {tmp_path / 'logs' / '01_a.log'})", said
    running = [s for s in said if s.startswith("[1] running a.yaml: ")]
    assert running and all(s.endswith(", step 5 of 100") for s in running), said
    assert 2 <= len(running) <= 3, said  # at 0.4, 1.2 (and 2.8) s: doubling, not every tick
    assert said[-1].startswith("[1] done    a.yaml"), said


def test_scene_progress_before_the_run_folder_and_after_the_last_step(tmp_path):
    from pipeline.batch import scene_progress

    log = tmp_path / "01_a.log"
    log.write_text("$ nls reconstruct a.yaml\n")
    assert scene_progress(log) == "loading its scene"
    run = tmp_path / "run"
    run.mkdir()
    log.write_text(f"run folder: {run}  (scene loaded in 0.1 s, device cpu)\n")
    (run / "config.yaml").write_text("train: {steps: 20, max_seconds: 30}\n")
    assert scene_progress(log) == "training, no step logged yet"
    (run / "metrics.jsonl").write_text('{"step": 7}\n')
    assert scene_progress(log) == "step 7 of 20 (or 30 s)"
    (run / "metrics.jsonl").write_text('{"step": 20}\n')
    assert scene_progress(log) == "trained (20 steps), rendering and evaluating"


# -- nls compare ----------------------------------------------------------------------------------------------
def _run(root: Path, name: str, *, scene: str = "s", steps: int = 100, logged: int = 100, ckpts: tuple = (),
         summary: bool = True, scene_cfg: dict | None = None, sha: str = "a" * 64) -> Path:
    """A run folder as nls writes it, without training: config.yaml, metrics.jsonl, scene.json, checkpoints
    and (for a finished run) summary.json."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"name": scene, "method": "dense_grid", "scene": scene_cfg or {"type": "procedural", "shape": "sphere"},
           "field": {"type": "dense_grid"}, "train": {"steps": steps, "max_seconds": None},
           "eval": {"split": "test"}, "evaluators": [{"type": "psnr"}]}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": s / 10}) + "\n"
                                               for s in range(1, logged + 1)))
    (run / "scene.json").write_text(json.dumps({"gt_mesh_sha256": sha}))
    for step in ckpts:
        (run / "checkpoints" / f"ckpt_{step:08d}.pt").write_bytes(b"")
    if summary:
        (run / "summary.json").write_text(json.dumps({"scene": scene, "method": "dense_grid", "step": steps,
                                                      "train_seconds": 9.0, "parameters": 10,
                                                      "metrics": {"psnr": 20.0}}))
    return run


def test_a_killed_run_without_a_checkpoint_says_it_has_none(tmp_path):
    """It said 'newest checkpoint at step None'."""
    from pipeline.compare import compare_runs

    done = _run(tmp_path, "done")
    killed = _run(tmp_path, "killed", logged=3, summary=False)
    halfway = _run(tmp_path, "halfway", logged=60, ckpts=(50,), summary=False)
    c = compare_runs([done, killed, halfway])
    stopped = next(w for w in c.warnings if w.startswith("not finished"))
    assert "dense_grid/killed (step 3 of 100, no checkpoint)" in stopped, stopped
    assert "dense_grid/halfway (step 60 of 100, newest checkpoint at step 50)" in stopped, stopped
    assert "None" not in " ".join(c.warnings), c.warnings


def test_runs_on_different_scenes_get_one_statement_not_every_setting(tmp_path):
    """It said the scenes differ, then listed every scene key that differs and the ground truths' sha256."""
    from pipeline.compare import compare_runs

    a = _run(tmp_path, "a", scene="csg", scene_cfg={"type": "procedural", "shape": "csg", "n_train": 48})
    b = _run(tmp_path, "b", scene="spot", steps=300, sha="b" * 64,
             scene_cfg={"type": "geometry", "path": "spot.obj", "n_points": 100000})
    c = compare_runs([a, b])
    assert len(c.warnings) == 1, c.warnings
    assert c.warnings[0].startswith("the runs are on different scenes (csg, spot): their metrics are not comparable, "
                                    "so no best value is marked"), c.warnings
    assert "sha256" not in c.warnings[0] and "n_points" not in c.warnings[0] and c.best == {}
    # what is said of runs on different scenes: the evaluators one of them lacks, and unfinished runs
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["evaluators"].append({"type": "chamfer"})
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    (b / "summary.json").unlink()
    warnings = compare_runs([a, b]).warnings
    assert [w.split(":")[0] for w in warnings] == ["the runs are on different scenes (csg, spot)",
                                                  "the evaluators differ", "not finished, so not marked best"]
