"""`nls batch`: one run folder per scene, failures reported without stopping the others, one table."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

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

    monkeypatch.delenv("NLS_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    scenes = [str(tmp_path / f"missing{i}.yaml") for i in range(n_scenes)]  # refused before any run starts
    assert main(["batch", *scenes, "--jobs", "4", "-o", str(tmp_path / "out")]) == 1
    assert f"{min(4, n_scenes)} at a time, {threads} thread(s) per run" in capsys.readouterr().out


def _check_batch(out: Path, proc, good: list[str], bad: dict[str, str]) -> None:
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: some scene failed
    batch = next((out / "batch").glob("*"))
    record = json.loads((batch / "batch.json").read_text())
    by_name = {Path(s["scene"]).stem: s for s in record["scenes"]}
    assert set(by_name) == set(good) | set(bad)
    for name in good:
        s = by_name[name]
        assert s["status"] == "complete", s
        summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "complete" and summary["scene"] == name
    for name, why in bad.items():
        assert by_name[name]["status"] == "failed" and why in by_name[name]["error"], by_name[name]
        assert why in proc.stderr
    run_dirs = {Path(s["run_dir"]) for s in record["scenes"] if s["status"] == "complete"}
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
