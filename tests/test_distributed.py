"""Distributed training under torchrun (DDP over gloo on CPU): equivalence with one process, a killed
rank, resume with another world size, mismatched configs and a rendezvous that never completes.

The method trained is the toy dataset-based plugin in ``tests/distributed_plugins`` (SDF regression
items of a sphere, an MLP field, a mean-squared loss plus an eikonal term on globally drawn points,
and a first layer frozen for the first steps): it trains through the same Trainer/DatasetBatches
path as ``hypernet`` and ``deep_level_sets``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.distributed import DistInfo, check_same_config, flatten_dict, from_env
from pipeline.runs import RunDir
from pipeline.testing import TINY_SCENE
from pipeline.types import ConfigError
from tests.conftest import ROOT, run_nls

PLUGINS = ROOT / "tests" / "distributed_plugins"
STEPS = 30


def toy_yaml(path: Path, *, name: str = "toy", steps: int = STEPS, delay_s: float = 0.0, **scene) -> Path:
    data = {
        "name": name, "method": "toy_mlp",
        "scene": {"type": "toy_sphere_items", "items": 64, **scene},
        "field": {"type": "toy_mlp", "hidden": 32, "freeze_first_steps": 3},
        "losses": [{"type": "toy_sdf_mse", "eikonal": 0.1, "delay_s": delay_s}],
        "train": {"steps": steps, "batch_items": 8, "lr": 0.01, "log_every": 1, "checkpoint_every": 5,
                  "device": "cpu", "seed": 3},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", "NLS_DIST_TIMEOUT": "60",
            **extra}


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "pipeline.cli", *args]


def only_run(root: Path) -> RunDir:
    runs = sorted(root.glob("*/*/*/config.yaml"))
    assert len(runs) == 1, f"expected exactly one run folder under {root}, found {runs}"
    return RunDir.open(runs[0].parent)


def losses(run: RunDir) -> list[float]:
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)), "metric lines lost or repeated"
    return [r["loss"] for r in rows]


def final_params(run: RunDir) -> dict[str, torch.Tensor]:
    return run.load_checkpoint()["model"]


def assert_same_params(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), f"{k}: max diff {(a[k] - b[k]).abs().max()}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """One process, the whole global batch of 8 items per step."""
    tmp = tmp_path_factory.mktemp("ref")
    run_nls("reconstruct", str(toy_yaml(tmp / "toy.yaml")), "--plugins-dir", str(PLUGINS), "--output",
            str(tmp / "runs"), "-q", "--no-eval", env=env(), check=True, timeout=300)
    return only_run(tmp / "runs")


# -- fast unit checks ------------------------------------------------------------------

def test_layout_from_torchrun_variables():
    assert from_env({}) == DistInfo()
    info = from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                     "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (info.world_size, info.rank, info.local_rank, info.local_world_size) == (4, 3, 1, 2)
    assert not info.is_main and info.enabled
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        from_env({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(ConfigError, match="RANK"):
        from_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        from_env({"WORLD_SIZE": "two"})


def test_flattened_keys_name_list_items():
    assert flatten_dict({"a": {"b": 1}, "l": [{"w": 2}, 3]}) == {"a.b": 1, "l.0.w": 2, "l.1": 3}
    check_same_config({"x": 1}, DistInfo())  # one process: nothing to compare, no process group needed


# -- torchrun end to end ---------------------------------------------------------------

def test_two_processes_follow_the_single_process_loss_trajectory(reference, tmp_path):
    scene = toy_yaml(tmp_path / "toy.yaml")
    proc = subprocess.run(torchrun("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output",
                                   str(tmp_path / "runs"), "-q", "--no-eval"),
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path / "runs")  # rank 0 made the one run folder, rank 1 wrote nothing
    one, two = losses(reference), losses(run)
    assert len(one) == len(two) == STEPS
    assert one[-1] < 0.3 * one[0], "the reference did not train, so the comparison would prove nothing"
    for step, (a, b) in enumerate(zip(one, two), 1):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-7), f"step {step}: 1 process {a}, 2 processes {b}"
    assert_same_params(final_params(reference), final_params(run))
    assert run.load_checkpoint()["world_size"] == 2
    assert "torchrun --nnodes=1 --nproc_per_node=2 -m pipeline.cli reconstruct" in (run.path / "cmd.txt").read_text()
    assert "2 processes (gloo)" in proc.stderr


def test_hypernet_two_processes_match_one(tmp_path):
    """The issue's check on the real method: a small hypernet configuration (Littwin & Wolf 2019) on
    the R2N2 objects, 2 gloo processes against 1 with the same global batch (4 items) and seed.
    Group norm: torch has no SyncBatchNorm on CPU, so BatchNorm would see each rank's half only."""
    from pipeline.scenes import data_root

    scene = ROOT / "scenes" / "hypernet_r2n2.yaml"
    root = data_root()
    if not scene.exists() or root is None or not (root / "shapenet_r2n2").is_dir():
        pytest.skip(f"needs scenes/hypernet_r2n2.yaml and the R2N2 objects under the data root ({root}); "
                    f"set NLS_DATA")
    small = ["--steps", "8", "--set", "field.norm=group", "--set", "field.width=4", "--set", "field.blocks=1",
             "--set", "scene.image_size=32", "--set", "scene.n_points=256", "--set", "train.batch_items=4",
             "--set", "train.log_every=1", "--set", "train.device=cpu", "-q", "--no-eval"]
    one = run_nls("reconstruct", str(scene), "--output", str(tmp_path / "one"), *small, env=env(), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(torchrun("reconstruct", str(scene), "--output", str(tmp_path / "two"), *small),
                         capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 8 and la[-1] < la[0]
    assert lb == pytest.approx(la, rel=1e-4, abs=1e-7)
    # (no parameter-by-parameter check here: the first conv's bias feeds only a one-channel-per-group
    # GroupNorm, so its gradient is rounding noise that Adam normalises into lr-sized random steps;
    # such parameters differ between any two summation orders while the function stays the same)


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with ``RANK=rank`` among the children of ``parent``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


def test_killed_rank_ends_the_job_clearly_and_resume_with_one_process_completes_it(reference, tmp_path):
    scene = toy_yaml(tmp_path / "toy.yaml", delay_s=0.15)  # same numbers as the reference, slower steps
    out = tmp_path / "runs"
    t0 = time.time()
    proc = subprocess.Popen(torchrun("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output",
                                     str(out), "-q", "--no-eval"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        victim = None
        while time.time() - t0 < 240:
            if proc.poll() is not None:
                raise AssertionError(f"the job ended before the kill: {proc.communicate()[1][-3000:]}")
            victim = victim or _worker_pid(proc.pid, 1)
            if victim and list(out.glob("*/*/*/checkpoints/ckpt_*.pt")):
                break
            time.sleep(0.1)
        assert victim, "rank 1 was not found among torchrun's children"
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - t_kill < 60, "the surviving rank hung instead of ending"
    # torchrun's report names the dead rank and the signal; rank 0 says what happened if it got that far
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", err) and "SIGKILL" in err, err[-3000:]
    if "error:" in err:
        assert "lost contact with the other processes" in err and "nls resume" in err, err[-3000:]
        assert f"--plugins-dir {PLUGINS.resolve()}" in err, err[-3000:]  # the hint's command runs as given
    run = only_run(out)
    killed_at = run.load_checkpoint()["step"]
    assert 0 < killed_at < STEPS, "the kill should land mid-training"

    res = run_nls("resume", str(run.path), "--plugins-dir", str(PLUGINS), "-q", "--no-eval", env=env(),
                  timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"from step {killed_at}/{STEPS} with 1 process(es) (the checkpoint was written by 2)" in res.stderr
    assert run.load_checkpoint()["step"] == STEPS
    # the resumed single process continues the very same trajectory (batch order, RNG, optimiser)
    assert losses(run)[killed_at:] == pytest.approx(losses(reference)[killed_at:], rel=1e-4, abs=1e-7)
    assert_same_params(final_params(reference), final_params(run))


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_a_killed_launcher_stops_its_workers_with_a_checkpoint(tmp_path):
    steps = 400  # far more than the test waits for: only the launcher's death can end it early
    scene = toy_yaml(tmp_path / "toy.yaml", steps=steps, delay_s=0.05)
    out = tmp_path / "runs"
    proc = subprocess.Popen(torchrun("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output",
                                     str(out), "-q", "--no-eval"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    workers: list[int] = []
    try:
        t0 = time.time()
        while time.time() - t0 < 240:
            if proc.poll() is not None:
                raise AssertionError(f"the job ended before the kill: {proc.communicate()[1][-3000:]}")
            workers = [w for w in (_worker_pid(proc.pid, r) for r in (0, 1)) if w]
            if len(workers) == 2 and list(out.glob("*/*/*/checkpoints/ckpt_*.pt")):
                break
            time.sleep(0.1)
        assert len(workers) == 2, "the two workers were not found among torchrun's children"
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its workers run in sessions of their own
        t_kill = time.time()
        _, err = proc.communicate(timeout=120)  # the pipes close as the last worker ends
        while not all(_exited(w) for w in workers) and time.time() - t_kill < 60:  # (it may still be exiting)
            time.sleep(0.1)
        waited = time.time() - t_kill
    finally:
        for w in workers:
            if not _exited(w):
                os.kill(w, signal.SIGKILL)
    assert waited < 60 and all(_exited(w) for w in workers), err[-3000:]
    assert re.search(r"the torchrun launcher \(pid \d+\) is gone: stopping at step \d+ with a checkpoint; resume "
                     r"it with `nls resume ", err), err[-3000:]
    assert err.count("the torchrun launcher (pid") == 1, err[-3000:]  # said by local rank 0, not by both
    run = only_run(out)
    stopped = run.load_checkpoint()["step"]
    assert 0 < stopped < steps and losses(run) and len(losses(run)) == stopped  # saved at the step it stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank: int, world: int, port: int, **extra: str) -> dict:
    return env(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **extra)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def test_mismatched_configs_across_ranks_are_refused_on_every_rank(tmp_path):
    scene = toy_yaml(tmp_path / "toy.yaml")
    port = _free_port()
    procs = [subprocess.Popen(_cli("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output",
                                   str(tmp_path / "runs"), "-q", "--set", f"train.lr={lr}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_rank_env(r, 2, port), cwd=ROOT)
             for r, lr in enumerate((0.01, 0.02))]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    for r, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 2, err[-2000:]
        assert f"[rank {r}/2] the 2 processes disagree on the resolved config" in err
        assert "config.train.lr: rank 0 has 0.01, rank 1 has 0.02" in err
        assert "train.steps" not in err  # only the keys that differ are named
        assert "Traceback" not in err
    assert not list((tmp_path / "runs").glob("*/*/*")), "no run folder may be made for a refused job"


def test_rendezvous_timeout_is_a_clear_error(tmp_path):
    scene = toy_yaml(tmp_path / "toy.yaml")
    args = _cli("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output", str(tmp_path / "runs"), "-q")
    t0 = time.time()
    lonely = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=_rank_env(0, 2, _free_port(), NLS_DIST_TIMEOUT="3"))
    assert lonely.returncode == 2 and time.time() - t0 < 60
    assert "rendezvous failed: not all 2 processes met" in lonely.stderr and "NLS_DIST_TIMEOUT" in lonely.stderr
    assert "Traceback" not in lonely.stderr


@pytest.mark.slow
def test_ctrl_c_under_torchrun_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    """Ctrl-C reaches torchrun and its workers (one process group); the ranks agree on the step to stop
    at (the stop flag is all-reduced with the metrics) and rank 0 saves it."""
    scene = toy_yaml(tmp_path / "toy.yaml", steps=100000, delay_s=0.05)
    out = tmp_path / "runs"
    proc = subprocess.Popen(torchrun("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output",
                                     str(out), "-q", "--no-eval"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
                            start_new_session=True)
    t0 = time.time()
    while not list(out.glob("*/*/*/checkpoints/ckpt_*.pt")):
        assert proc.poll() is None and time.time() - t0 < 240, "no checkpoint appeared"
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    run = only_run(out)
    step = run.load_checkpoint()["step"]
    assert f"interrupted at step {step}/100000; checkpoint saved (ckpt_{step:08d}.pt)" in err, err[-3000:]
    assert len(losses(run)) == step  # every step up to the stop was logged once, none after it


def test_the_lost_contact_hint_offers_a_resume_only_when_there_is_a_checkpoint(tmp_path):
    """It offered `nls resume RUN` for a run with no checkpoint (or one just removed), and left out the
    --plugins-dir its plugins need."""
    import json

    from pipeline.distributed import _resume_hint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert "no checkpoint yet, so there is nothing to resume" in _resume_hint(run)
    assert "nothing to resume" in _resume_hint(tmp_path / "removed")
    (run / "checkpoints" / "ckpt_00000010.pt").write_bytes(b"x")
    (run / "plugins.json").write_text(json.dumps({"plugins": [
        {"name": "ngp", "source": "builtin"}, {"name": "toy", "source": str(PLUGINS.resolve() / "toy_sdf.py")}]}))
    hint = _resume_hint(run)
    assert hint.startswith(f"resume it with `nls resume {run} --plugins-dir {PLUGINS.resolve()}`"), hint


def test_errors_under_torchrun_carry_the_rank(monkeypatch, capsys, tmp_path):
    """Each rank printed the same untagged `error:` line; they now say which rank speaks (once, even when
    the message was tagged already)."""
    from pipeline.cli import main

    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)
    assert main(["reconstruct", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [rank 1/2] scene file") and err.count("[rank") == 1, err
    monkeypatch.delenv("RANK")  # a torchrun environment that is itself broken: the message stays as it is
    assert main(["reconstruct", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: scene file")


def test_validation_under_torchrun_is_rank_0s_and_the_others_wait_for_it(tiny_scene, tmp_path):
    """train.val_every under two processes: rank 0 renders and logs the held-out view at every 3rd step and
    the last, the other rank waits for it at the same steps (a barrier outside the training clock), and the
    run ends normally with one set of previews."""
    scene = tiny_scene(train={**TINY_SCENE["train"], "steps": 6, "val_every": 3, "log_every": 2})
    proc = subprocess.run(torchrun("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval"),
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path / "runs")
    assert [(r["step"], "psnr_test" in r) for r in run.read_metrics()] == [
        (2, False), (3, True), (4, False), (6, True)]
    assert sorted(p.name[-12:] for p in (run.path / "renders" / "progress").glob("*.png")) == [
        "00000003.png", "00000006.png"]
