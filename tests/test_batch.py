"""`nls batch`: one run folder per scene, failures reported without stopping the others, one table."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.batch import RUN_FOLDER_LINE, _error_of, _threads_per_run
from tests.conftest import ROOT, run_nls
from tests.test_distributed import PLUGINS, env, toy_yaml


def test_run_folder_and_error_are_read_from_a_child_log():
    log = ("$ nls reconstruct a.yaml\nrun folder: /x/my runs/a/m/20260101-000000  (scene loaded in 0.1 s, "
           "device cpu)\nrun folder: /x/my runs/a/m/20260101-000000\n")
    assert RUN_FOLDER_LINE.findall(log)[0] == "/x/my runs/a/m/20260101-000000"
    assert _error_of("noise\nerror: scene file x.yaml does not exist\n", 2) == "scene file x.yaml does not exist"
    assert _error_of("Traceback\n  File x\nSegmentation fault\n", -11).startswith("exit code -11: ")


def test_threads_per_run_follow_nls_threads(monkeypatch):
    """What the batch prints per run is what each run gets: NLS_THREADS when set, else a share."""
    monkeypatch.delenv("NLS_THREADS", raising=False)
    assert _threads_per_run(16, 4) == 4 and _threads_per_run(2, 4) == 1
    monkeypatch.setenv("NLS_THREADS", "3")
    assert _threads_per_run(16, 4) == 3


def test_a_malformed_set_fails_the_batch_before_any_folder_is_made(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["batch", str(ROOT / "scenes" / "csg_dense.yaml"), "--set", "nokey", "-o", str(tmp_path)]) == 2
    assert "--set 'nokey'" in capsys.readouterr().err
    assert not (tmp_path / "batch").exists()


@pytest.mark.parametrize("n_scenes, threads", [(1, 8), (2, 4), (6, 2)])
def test_cores_are_shared_by_the_runs_that_can_run_at_once(tmp_path, monkeypatch, capsys, n_scenes, threads):
    """--jobs 4 on 8 cores: one scene gets all 8 threads (it got 2), two get 4 each, six share 4 slots."""
    import os

    from pipeline.cli import main

    import pipeline.batch

    monkeypatch.delenv("NLS_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(pipeline.batch, "run_scenes", lambda *a, **k: [])  # no scene is run
    scenes = [str(ROOT / "scenes" / "csg_dense.yaml")] * n_scenes
    assert main(["batch", *scenes, "--jobs", "4", "-o", str(tmp_path / "out")]) == 0
    assert f"{min(4, n_scenes)} at a time, {threads} thread(s) per run" in capsys.readouterr().out


def test_a_batch_whose_every_scene_is_refused_is_a_usage_error(tmp_path, capsys):
    """Missing files or a --set that no scene accepts: exit 2 and no batch folder (it was exit 1 and an
    empty folder); each refusal names its scene once."""
    from pipeline.cli import main

    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"name": "t", "scene": {"type": "procedural"}, "trian": {}}))
    assert main(["batch", str(tmp_path / "missing.yaml"), str(typo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"[1] refused {tmp_path / 'missing.yaml'}: scene file" in err
    assert f"[2] refused {typo}: 2 problems:" in err and "unknown top-level key(s) 'trian'" in err
    assert err.count(str(typo)) == 1, err
    assert "error: no scene of the batch can start (all 2 were refused, see above)" in err
    assert not (tmp_path / "out").exists()
    good = str(ROOT / "scenes" / "csg_dense.yaml")
    assert main(["batch", good, "--set", "field.resolutio=3", "-o", str(tmp_path / "out")]) == 2
    assert "it was refused" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _check_batch(out: Path, proc, good: list[str], bad: dict[str, str]) -> None:
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: some scene failed
    batch = next((out / "batch").glob("*"))
    record = json.loads((batch / "batch.json").read_text())
    by_name = {Path(s["scene"]).stem: s for s in record["scenes"]}
    assert set(by_name) == set(good) | set(bad)
    for s in record["scenes"]:  # the number the console and the log file (a scene refused before it ran has none) give it
        assert s["number"] == s["index"] + 1 and Path(s["log"] or f"{s['number']:02d}_").name.startswith(
            f"{s['number']:02d}_"), s
    for name in good:
        s = by_name[name]
        assert s["outcome"] == "ok" and s["status"] == "complete", s
        summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["scene"] == name
    for name, why in bad.items():
        assert by_name[name]["outcome"] == "failed" and why in by_name[name]["error"], by_name[name]
        assert why in proc.stderr
    run_dirs = {Path(s["run_dir"]) for s in record["scenes"] if s["outcome"] == "ok"}
    assert len(run_dirs) == len(good)  # one folder per scene
    table = (batch / "compare.md").read_text()
    header, rows = table.splitlines()[0], table.splitlines()[2:]
    scene_row = next(r for r in rows if r.startswith("| scene |"))
    assert sorted(c.strip() for c in scene_row.split("|")[2:-1]) == sorted(good)
    assert header.count("|") == len(good) + 2
    assert f"{len(good)} of {len(good) + len(bad)} scene(s) finished" in proc.stdout


def test_batch_of_three_scenes_with_broken_ones(tmp_path):
    scenes = [toy_yaml(tmp_path / f"toy{i}.yaml", name=f"toy{i}", steps=6, radius=0.3 + 0.1 * i) for i in range(3)]
    broken = toy_yaml(tmp_path / "broken.yaml", name="broken", steps=6, fail=True)  # fails while loading
    invalid = tmp_path / "invalid.yaml"  # fails validation, before any process starts
    invalid.write_text(yaml.safe_dump({**yaml.safe_load(scenes[0].read_text()), "name": "invalid",
                                       "train": {"stepz": 3}}))
    out = tmp_path / "runs"
    proc = run_nls("batch", str(scenes[0]), str(broken), str(scenes[1]), str(invalid), str(scenes[2]),
                   "--jobs", "2", "--plugins-dir", str(PLUGINS), "--output", str(out), env=env(), timeout=400)
    _check_batch(out, proc, ["toy0", "toy1", "toy2"],
                 {"broken": "a deliberately broken scene", "invalid": "train.stepz: unknown key"})


@pytest.mark.slow
def test_batch_of_procedural_nerf_scenes_under_torchrun(tmp_path):
    """The issue's check with per-scene NeRF runs on procedural shapes, spread over 2 torchrun ranks."""
    from pipeline.testing import TINY_SCENE

    names = []
    for shape in ("sphere", "torus", "box"):
        data = copy.deepcopy(TINY_SCENE)
        data["name"] = f"tiny_{shape}"
        data["scene"]["shape"] = shape
        (tmp_path / f"tiny_{shape}.yaml").write_text(yaml.safe_dump(data))
        names.append(f"tiny_{shape}")
    data = copy.deepcopy(TINY_SCENE)
    data["name"] = "tiny_missing"
    data["scene"] = {"type": "mesh", "path": str(tmp_path / "no_such_mesh.obj")}
    (tmp_path / "tiny_missing.yaml").write_text(yaml.safe_dump(data))
    files = [str(tmp_path / f"{n}.yaml") for n in (names[0], "tiny_missing", names[1], names[2])]
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "pipeline.cli", "batch", *files, "--output", str(out)],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
    _check_batch(out, proc, names, {"tiny_missing": "no_such_mesh.obj"})
    assert "[rank 1/2]" in proc.stdout  # the scenes were spread over both ranks


# -- stopping scenes: --scene-timeout, Ctrl-C, a closed terminal -----------------------------------

#: a stand-in for `nls reconstruct` (argv: run folder, signal to stop on, seconds to live): it makes the run
#: folder, prints it as nls does, and on the signal saves a checkpoint and exits 130 as nls does
FAKE_RUN = """
import os, pathlib, signal, subprocess, sys, time
run, sig, live = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
(run / "checkpoints").mkdir(parents=True)
(run / "config.yaml").write_text("name: fake\\nmethod: m\\ntrain: {steps: 100}\\n")
def stop(signum, frame):
    (run / "checkpoints" / "ckpt_00000007.pt").write_bytes(b"x")
    sys.exit(130)
if sig == "ignore":  # a child stuck where it cannot stop, with a helper process of its own
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / "helper.pid").write_text(str(helper.pid))
else:
    signal.signal(getattr(signal, sig), stop)
print(f"run folder: {run}  (scene loaded in 0.1 s, device cpu)", flush=True)
if sig in ("SIGINT", "SIGHUP"):  # as if the user pressed Ctrl-C in, or closed, the batch's terminal
    os.kill(os.getppid(), getattr(signal, sig))
time.sleep(live)
sys.exit(1)
"""


def _fake_opts(monkeypatch, tmp_path: Path, sig: str, live: float = 60.0, **kw):
    """BatchOptions whose children run FAKE_RUN instead of `nls reconstruct`."""
    from pipeline.batch import BatchOptions

    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    runs = iter(range(100))
    monkeypatch.setattr(BatchOptions, "command", lambda self, scene: [
        sys.executable, str(script), str(tmp_path / "runs" / f"{Path(scene).stem}-{next(runs)}"), sig, str(live)])
    (tmp_path / "logs").mkdir(exist_ok=True)
    return BatchOptions(**kw)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_scene_timeout_stops_the_scene_with_sigterm_so_it_checkpoints(tmp_path, monkeypatch):
    """--scene-timeout sends SIGTERM (nls saves a checkpoint and exits 130), not SIGKILL; the error says
    how to resume, never 'exit None', and the log says what the batch did."""
    from pipeline.batch import run_scene

    opts = _fake_opts(monkeypatch, tmp_path, "SIGTERM", scene_timeout=2)
    res = run_scene(0, "a.yaml", opts, tmp_path / "logs")
    assert (Path(res.run_dir) / "checkpoints" / "ckpt_00000007.pt").exists() and res.exit_code == 130, res
    assert (res.outcome, res.status) == ("timed out", "incomplete"), res
    assert res.error == (f"stopped after --scene-timeout 2 s (checkpoint ckpt_00000007.pt; resume with: "
                         f"nls resume {res.run_dir})")
    assert "None" not in res.error
    assert "nls batch: --scene-timeout 2 s reached; SIGTERM sent" in Path(res.log).read_text()


def test_a_scene_that_ignores_sigterm_is_killed_with_its_process_group(tmp_path, monkeypatch):
    """A child that does not stop within the grace period is killed, with what it started (a JIT build's
    compiler): nothing of the scene keeps running after the batch."""
    import pipeline.batch as batch

    monkeypatch.setattr(batch, "STOP_GRACE_S", 1.0, raising=False)
    opts = _fake_opts(monkeypatch, tmp_path, "ignore", scene_timeout=2)
    res = batch.run_scene(0, "a.yaml", opts, tmp_path / "logs")
    helper = int((Path(res.run_dir) / "helper.pid").read_text())
    deadline = time.time() + 10
    while _alive(helper) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(helper), "the child's helper process outlived the scene"
    assert (res.outcome, res.exit_code) == ("timed out", -9), res
    assert res.error == ("killed after --scene-timeout 2 s (still running 1 s after SIGTERM) (no checkpoint was "
                         "written, nothing to resume)")
    assert "killed (SIGKILL)" in Path(res.log).read_text()


def test_ctrl_c_reaches_the_running_scenes_and_the_rest_are_not_started(tmp_path, monkeypatch, capsys):
    """Children run in their own process groups, so the batch passes Ctrl-C on: the running scene saves a
    checkpoint, the next scene is not started, and the batch exits 130 after writing batch.json."""
    import signal

    from pipeline.batch import _finish, run_scenes

    seen = []
    old = signal.signal(signal.SIGINT, lambda *a: seen.append("not passed on"))  # what the old code left it to
    try:
        opts = _fake_opts(monkeypatch, tmp_path, "SIGINT", live=15.0)
        results = run_scenes([(0, "a.yaml"), (1, "b.yaml")], opts, 1, tmp_path / "logs")
    finally:
        signal.signal(signal.SIGINT, old)
    assert not seen
    first, second = results
    assert (first.outcome, first.exit_code) == ("stopped", 130), first
    assert first.error.startswith("stopped after Ctrl-C (checkpoint ckpt_00000007.pt; resume with: nls resume ")
    assert (second.outcome, second.exit_code, second.run_dir) == ("stopped", None, None), second
    assert second.error == "not started: the batch was stopped (Ctrl-C)"
    assert "[2] started" not in capsys.readouterr().out
    assert _finish(results, tmp_path) == 130
    assert [s["outcome"] for s in json.loads((tmp_path / "batch.json").read_text())["scenes"]] == ["stopped"] * 2


def test_batch_json_status_is_the_runs_status_as_compare_says_it(tmp_path):
    """After --no-eval the run is `trained` in batch.json, as in compare.md and the README; whether the
    scene's process succeeded is the separate `outcome`."""
    scene = toy_yaml(tmp_path / "toy.yaml", steps=4)
    out = tmp_path / "runs"
    proc = run_nls("batch", str(scene), "--no-eval", "--plugins-dir", str(PLUGINS), "--output", str(out),
                   env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    batch = next((out / "batch").glob("*"))
    (record,) = json.loads((batch / "batch.json").read_text())["scenes"]
    assert record["status"] == "trained" and record["outcome"] == "ok", record
    status_row = next(r for r in (batch / "compare.md").read_text().splitlines() if r.startswith("| status |"))
    assert status_row.split("|")[2].strip() == "trained"
    assert "(trained) ->" in proc.stdout


def test_a_closed_terminal_ends_the_batch_and_its_scenes(tmp_path):
    """SIGHUP to the batch reaches the children in their own process groups (as it did in the batch's),
    and the batch itself still ends by it."""
    child_run = tmp_path / "runs" / "a"
    (tmp_path / "fake_run.py").write_text(FAKE_RUN)
    (tmp_path / "logs").mkdir()
    batch = subprocess.run([sys.executable, "-c", f"""
import signal, sys
from pathlib import Path
from pipeline.batch import BatchOptions, run_scenes
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal, also when the tests run under nohup
BatchOptions.command = lambda self, scene: [sys.executable, {str(tmp_path / "fake_run.py")!r}, {str(child_run)!r},
                                            "SIGHUP", "20"]
run_scenes([(0, "a.yaml")], BatchOptions(), 1, Path({str(tmp_path / "logs")!r}))
"""], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert batch.returncode == -1, batch.stderr  # ended by SIGHUP
    deadline = time.time() + 10
    while not (child_run / "checkpoints" / "ckpt_00000007.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (child_run / "checkpoints" / "ckpt_00000007.pt").exists(), "the scene did not get the SIGHUP"


def test_a_runs_warnings_reach_its_summary_and_the_batch_lines(tmp_path):
    """A warning given while a scene loads is in its run's summary.json and batch.json, and the batch
    repeats it under the scene's `done` line (it was only in the scene's log); a scene without one has none."""
    msg = "the toy scene warns [on purpose]"
    loud = toy_yaml(tmp_path / "loud.yaml", name="loud", steps=4, warn=msg)
    quiet = toy_yaml(tmp_path / "quiet.yaml", name="quiet", steps=4)
    out = tmp_path / "runs"
    proc = run_nls("batch", str(loud), str(quiet), "--plugins-dir", str(PLUGINS), "--output", str(out),
                   env=env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    done = next(i for i, line in enumerate(lines) if "done" in line and "loud" in line)
    assert lines[done + 1].strip() == f"warning: {msg}", lines
    assert sum("warning:" in line for line in lines) == 1, lines
    records = {Path(r["scene"]).stem: r for r in
               json.loads((next((out / "batch").glob("*")) / "batch.json").read_text())["scenes"]}
    assert records["loud"]["warnings"] == [msg] and records["quiet"]["warnings"] == []
    summary = json.loads((Path(records["loud"]["run_dir"]) / "summary.json").read_text())
    assert summary["warnings"] == [msg]


def test_the_warnings_of_a_run_not_yet_evaluated_reach_compare(tmp_path):
    """A run trained with --no-eval has no summary.json: its warnings are in warnings.json (written with its
    checkpoints), which compare and report read; they were lost for such runs."""
    msg = "the toy scene warns [on purpose]"
    loud = toy_yaml(tmp_path / "loud.yaml", name="loud", steps=4, warn=msg)
    out = tmp_path / "runs"
    proc = run_nls("reconstruct", str(loud), "--no-eval", "-q", "--plugins-dir", str(PLUGINS), "--output", str(out),
                   env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(out.glob("loud/*/*"))
    assert not (run / "summary.json").exists()
    assert json.loads((run / "warnings.json").read_text()) == {"step": 4, "warnings": [msg]}
    res = run_nls("compare", str(run), "--json", "--plugins-dir", str(PLUGINS), env=env(), timeout=120)
    assert json.loads(res.stdout)["runs"][0]["warnings"] == [msg], res.stdout[-2000:] + res.stderr[-2000:]


def test_data_goes_to_every_scene_and_is_checked_before_any_starts(tmp_path):
    """``nls batch A.yaml B.yaml --data PATH``: each child is ``nls reconstruct X.yaml --data PATH``, and the
    precheck validates each scene file on that data (a scene that cannot take it is refused before any run)."""
    import trimesh

    from pipeline.batch import BatchOptions, precheck
    from pipeline.testing import plugin_host

    cloud = tmp_path / "scan.ply"
    import numpy as np

    trimesh.PointCloud(np.random.default_rng(0).normal(size=(300, 3))).export(cloud)
    opts = BatchOptions(data=str(cloud), steps=5)
    cmd = opts.command("scenes/lipschitz_spot.yaml")
    assert cmd[cmd.index("--data") + 1] == str(cloud)
    host = plugin_host()
    for scene in ("sample_network_spot.yaml", "lipschitz_spot.yaml"):
        assert precheck(str(ROOT / "scenes" / scene), opts, host) is None
    # an image method on a point cloud: its renderer needs images the cloud has not got
    why = precheck(str(ROOT / "scenes" / "csg_dense.yaml"), opts, host)
    assert why and "with --data" in why, why


def test_batch_passes_validation_tensorboard_and_wandb_to_every_run(tmp_path, monkeypatch, capsys):
    """--val-every, --tensorboard and --wandb reach every run as their train.* settings; without the tensorboard
    (wandb) package --tensorboard (--wandb) is refused before any scene starts."""
    import importlib.util

    from pipeline.cli import main

    import pipeline.batch

    seen = []
    monkeypatch.setattr(pipeline.batch, "run_scenes", lambda scenes, opts, *a, **k: seen.append(opts) or [])
    scene = str(ROOT / "scenes" / "csg_dense.yaml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    assert main(["batch", scene, "--val-every", "50", "--tensorboard", "--wandb", "-o", str(tmp_path / "out")]) == 0
    cmd = seen[0].command(scene)
    assert cmd[cmd.index("train.val_every=50") - 1] == "--set" and "train.tensorboard=true" in cmd
    assert "train.wandb=true" in cmd
    for package in ("tensorboard", "wandb"):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
        assert main(["batch", scene, f"--{package}", "-o", str(tmp_path / "out")]) == 2
        assert f"--{package} needs the {package} package" in capsys.readouterr().err


def test_a_batch_over_several_data_paths_trains_each_scene_file_on_each_and_averages_them(tmp_path, tiny_scene):
    """nls batch SCENE --data A B: one run per data path (named after it), the log and console lines say which, a
    missing path fails its own job only, and the table labels the runs by scene and gives the method's mean."""
    from tests.test_neus_scene import _cameras, _similarity, _write_neus

    for k, name in enumerate(("scan_a", "scan_b")):
        rng = np.random.default_rng(10 + k)
        _write_neus(tmp_path / name, *_cameras(rng, 4), _similarity(rng, 2.0), size=(32, 32), rng=rng)
    out = tmp_path / "runs"
    proc = run_nls("batch", str(tiny_scene()), "--data", str(tmp_path / "scan_a"), str(tmp_path / "scan_b"),
                   str(tmp_path / "scan_c"), "--set", "scene.test_every=2", "--steps", "3", "--output", str(out),
                   timeout=400)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # (scan_c does not exist)
    assert "3 scene(s) (1 scene file(s) on each of 3 data paths)" in proc.stdout
    assert "FAILED  " in proc.stdout and "tiny.yaml on scan_c" in proc.stdout
    record = json.loads(next(out.glob("batch/*/batch.json")).read_text())
    assert [(Path(s["data"]).name, s["outcome"]) for s in record["scenes"]] == [
        ("scan_a", "ok"), ("scan_b", "ok"), ("scan_c", "failed")]
    assert Path(record["scenes"][1]["log"]).name == "02_tiny_scan_b.log"
    table = Path(record["compare"]).read_text()
    assert "| | dense_grid/scan_a | dense_grid/scan_b |" in table and "Mean over scenes:" in table
    psnr = [float(c) for c in next(r for r in table.splitlines() if r.startswith("| psnr |")).split("|")[2:-1]]
    mean = [float(c) for c in [r for r in table.splitlines() if r.startswith("| psnr |")][1].split("|")[2:-1]]
    assert mean == pytest.approx([sum(psnr) / 2], abs=1e-4)
    scene = tmp_path / "other.yaml"
    scene.write_text("x")
    bad = run_nls("batch", str(tiny_scene()), "--data", str(tmp_path / "scan_a"), str(scene))
    assert bad.returncode == 2 and "a scene file among the data paths" in bad.stderr
