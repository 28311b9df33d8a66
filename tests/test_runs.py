"""Run folders, atomic checkpoints, corrupt-checkpoint errors, SIGKILL/SIGINT and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.runs import RunDir, load_checkpoint_file
from pipeline.types import CheckpointError, NLSError
from tests.conftest import ROOT


def test_checkpoint_round_trip_and_pruning(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    for step in (1, 2, 3):
        run.save_checkpoint({"step": step, "model": {"w": torch.full((3,), float(step))}}, step)
    names = [p.name for p in run.checkpoints()]
    assert names == ["ckpt_00000002.pt", "ckpt_00000003.pt"]
    st = run.load_checkpoint()
    assert st["step"] == 3 and torch.equal(st["model"]["w"], torch.full((3,), 3.0))
    assert not list(run.ckpt_dir.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage_no_digest"])
def test_corrupt_checkpoint_is_rejected_clearly(tmp_path, damage):
    run = RunDir.create(tmp_path, "s", "m")
    run.save_checkpoint({"step": 1, "model": {"w": torch.zeros(1000)}}, 1)
    p = run.save_checkpoint({"step": 2, "model": {"w": torch.ones(1000)}}, 2)
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        p.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        p.with_suffix(".pt.sha256").unlink()
        p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as exc:
        run.load_checkpoint()
    msg = str(exc.value)
    assert str(p) in msg and "corrupt" in msg and "ckpt_00000001.pt" in msg  # names the fallback


def test_no_checkpoint(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        run.load_checkpoint()


def test_json_records_take_tensors_and_arrays_of_any_size(tmp_path):
    import numpy as np

    run = RunDir.create(tmp_path, "s", "m")
    values = {"scalar": torch.tensor(1.5), "vector": torch.tensor([1, 2]), "np_scalar": np.float32(2.5),
              "np_array": np.arange(3), "grid": torch.zeros(2, 2), "path": Path("a/b")}
    run.write_json("values.json", values)
    run.log_metrics({"step": 1, **values})
    expect = {"scalar": 1.5, "vector": [1, 2], "np_scalar": 2.5, "np_array": [0, 1, 2],
              "grid": [[0.0, 0.0], [0.0, 0.0]], "path": "a/b"}
    assert run.read_json("values.json") == expect
    assert run.read_metrics() == [{"step": 1, **expect}]


def test_read_json_gives_none_for_missing_damaged_and_non_utf8_files(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    (run.path / "bad.json").write_text("{not json")
    (run.path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    assert run.read_json("missing.json") is None
    assert run.read_json("bad.json") is None
    assert run.read_json("latin1.json") is None


def _start(scene_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "reconstruct", str(scene_path), "--output",
                             str(out), "-q", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = list(out.glob("*/*/*/checkpoints/ckpt_*.pt"))
        if ck:
            return ck[0].parents[1]
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def _long_tiny(tiny_scene, steps=400):
    return tiny_scene(train={"steps": steps, "batch_rays": 256, "checkpoint_every": 20, "log_every": 5,
                             "grid_warmup": 4, "grid_update_every": 4})


def test_sigkill_then_resume_reaches_the_same_final_step(tiny_scene, tmp_path, nls):
    steps = 400
    scene = _long_tiny(tiny_scene, steps)
    out = tmp_path / "runs"
    proc = _start(scene, out, "--no-eval")
    run_dir = _wait_for_checkpoint(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = RunDir.open(run_dir)
    killed_at = run.load_checkpoint()["step"]
    assert 0 < killed_at < steps, "the kill should land mid-training"
    res = nls("resume", str(run_dir), "-q", check=True)
    assert f"from step {killed_at}/{steps}" in res.stderr
    final = run.load_checkpoint()
    assert final["step"] == steps
    logged = [r["step"] for r in run.read_metrics()]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # no repeated or lost lines
    summary = json.loads(run.summary_path.read_text())
    assert summary["step"] == steps and summary["status"] == "complete"
    # resuming a finished run never trains past the budget, nor evaluates it again: it says it is complete
    again = nls("resume", str(run_dir), "-q", "--no-eval", check=True)
    assert "is complete" in again.stdout and f"nls eval {run_dir}" in again.stdout, again.stdout
    assert "(writes summary.json)" not in again.stdout
    assert run.load_checkpoint()["step"] == steps


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tiny_scene, tmp_path):
    scene = _long_tiny(tiny_scene, 100000)
    out = tmp_path / "runs"
    proc = _start(scene, out, "--no-eval")
    run_dir = _wait_for_checkpoint(out, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and f"nls resume {run_dir}" in err
    assert "Traceback" not in err
    step = RunDir.open(run_dir).load_checkpoint()["step"]
    assert step > 20  # the interrupt wrote a checkpoint beyond the periodic one


def test_resume_rejects_corrupt_checkpoint(tiny_scene, tmp_path, nls):
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run_dir = next((tmp_path / "runs").glob("*/*/*"))
    ck = RunDir.open(run_dir).latest_checkpoint()
    ck.write_bytes(ck.read_bytes()[:200])
    proc = nls("resume", str(run_dir))
    assert proc.returncode == 2
    assert "corrupt or truncated" in proc.stderr and "Traceback" not in proc.stderr


def test_a_config_edited_after_training_is_named_by_key(tiny_scene, tmp_path, nls):
    """Checkpoints keep the config they were trained with, so a mismatch names what changed in config.yaml,
    not only torch's state-dict sizes; resume and render say the same."""
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run_dir = next((tmp_path / "runs").glob("*/*/*"))
    assert torch.load(RunDir.open(run_dir).latest_checkpoint(), weights_only=False)["config"]["field"]["resolution"] == 32
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["field"]["resolution"] = 40
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    for command in ("resume", "render"):
        proc = nls(command, str(run_dir))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "config.yaml differs from the config the checkpoint was trained with: field.resolution (32 -> 40)" \
            in proc.stderr, proc.stderr


def test_resume_of_a_run_older_than_an_option_does_not_take_the_option_for_an_edit(tiny_scene, tmp_path, nls):
    """A checkpoint written before nls had an option (here train.val_views, val_max_side and tensorboard) holds
    no value for it, while config.yaml read back gets its default: resume compares the two with the defaults
    filled in, so it warns about the value that did change (train.lr) and not about the options added since."""
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run = RunDir.open(next((tmp_path / "runs").glob("*/*/*")))
    for p in run.path.glob("checkpoints/ckpt_00000006.pt*"):
        p.unlink()
    state = run.load_checkpoint()
    for key in ("val_views", "val_max_side", "tensorboard"):
        del state["config"]["train"][key]
    state["config"]["train"]["lr"] = 0.5
    run.save_checkpoint(state, 3)
    res = nls("resume", str(run.path), "-q", "--no-eval", check=True)
    edited = [line for line in res.stderr.splitlines() if "was edited after checkpoint step 3" in line]
    assert len(edited) == 1 and "train.lr (0.5 -> 0.01)" in edited[0], res.stderr
    assert not any(k in edited[0] for k in ("val_views", "val_max_side", "tensorboard")), edited[0]


def test_run_folder_is_self_describing(tiny_scene, tmp_path, nls):
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", check=True)
    run = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    for name in ("config.yaml", "plugins.json", "metrics.jsonl", "summary.json", "cmd.txt", "checkpoints",
                 "renders", "scene.json"):
        assert (run / name).exists(), name
    assert not (run / "meshes").exists()  # the tiny scene has no extractor: no empty folder
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["field"]["type"] == "dense_grid" and cfg["train"]["steps"] == 6
    plugins = json.loads((run / "plugins.json").read_text())
    assert plugins["components"]["field:dense_grid"]["plugin"] == "ngp"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("metrics", "train_seconds", "device", "versions", "step"):
        assert key in summary
    assert "psnr" in summary["metrics"]
    assert "nls reconstruct" in (run / "cmd.txt").read_text()
    assert (run / "meshes" / "mesh.ply").exists() or "mesh" in summary


def test_lr_decays_over_the_step_or_time_budget(tiny_scene, tmp_path):
    import copy

    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.train import Trainer

    data = copy.deepcopy(TINY_SCENE)
    data["train"].update(steps=4, lr=0.01, lr_final_factor=0.1)
    cfg = validate(data, plugin_host())
    scene = load_scene_data(cfg, "cpu")
    tr = Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene,
                 RunDir.create(tmp_path, "a", "b"), torch.device("cpu"), progress=False)
    base = [g["initial_lr"] for g in tr.optimizer.param_groups]
    tr.fit()
    for g, b in zip(tr.optimizer.param_groups, base):
        assert g["lr"] == pytest.approx(b * 0.1)  # decayed to the final factor at the last step
    # metrics.jsonl logs every group's rate under its name: the dense grid's grids and colour MLP
    last = tr.run.read_metrics()[-1]
    lrs = {k: v for k, v in last.items() if k.startswith("lr")}
    field = tr.system.chain.field.cfg
    grid_scale, mlp_scale = field.grid_lr_scale, field.mlp_lr_scale
    assert lrs == pytest.approx({"lr/grids": 0.01 * grid_scale * 0.1, "lr/mlp": 0.01 * mlp_scale * 0.1})
    cfg.train.max_seconds = 1e-9  # a time budget that is already spent counts as the end
    cfg.train.steps = 100
    tr.step, tr.elapsed = 1, 1.0
    tr._set_lr()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(base[0] * 0.1)


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tiny_scene, tmp_path, nls):
    """Resume from the mid-run checkpoint of a copy: model and optimiser end exactly as the original's.
    The 64³ occupancy grid is large enough that its update runs on several threads, where
    nerfacc's own update is racy (tests/test_rendering.py); with the default 16³ it stays serial."""
    scene = _long_tiny(tiny_scene, 40)
    two = {"NLS_THREADS": "2"}  # as many threads as the race needs, also when scripts/test.sh asks for one
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval",
        "--set", "renderer.grid_resolution=64", check=True, env=two)
    (original,) = list((tmp_path / "runs").glob("*/*/*"))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    for p in copy.glob("checkpoints/ckpt_00000040.pt*"):
        p.unlink()
    assert RunDir.open(copy).load_checkpoint()["step"] == 20
    res = nls("resume", str(copy), "-q", "--no-eval", check=True, env=two)
    assert "from step 20/40" in res.stderr
    a, b = RunDir.open(original).load_checkpoint(), RunDir.open(copy).load_checkpoint()
    assert a["step"] == b["step"] == 40
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]) if torch.is_tensor(v) else v == sb[i][k], (i, k)


def test_corrupt_checkpoint_advice_checks_the_fallback_and_the_digest_file(tmp_path):
    """Recommend the older checkpoint only when it verifies; a malformed .sha256 is named as such."""
    run = RunDir.create(tmp_path, "s", "m")
    old = run.save_checkpoint({"step": 1, "model": {"w": torch.zeros(100)}}, 1)
    new = run.save_checkpoint({"step": 2, "model": {"w": torch.ones(100)}}, 2)
    good = new.read_bytes()
    new.write_bytes(good[:50])
    old.write_bytes(old.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="ckpt_00000001.pt is damaged too"):
        run.load_checkpoint()
    new.write_bytes(good)
    new.with_suffix(".pt.sha256").write_text("not a digest\n")
    with pytest.raises(CheckpointError, match=r"ckpt_00000002.pt.sha256 is not a sha256 digest") as exc:
        run.load_checkpoint()
    assert "is corrupt or truncated" not in str(exc.value)  # the checkpoint itself is not blamed


def test_atomic_writes_keep_the_umask_mode_and_name_the_path_on_failure(tmp_path):
    from pipeline.runs import atomic_write_text, check_output_file, process_umask

    old = os.umask(0o022)
    process_umask.cache_clear()  # the umask is read once per process; this test sets its own
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    finally:
        os.umask(old)
        process_umask.cache_clear()
    (tmp_path / "f").write_text("x")
    with pytest.raises(NLSError, match=r"cannot write .*f/b.json: Not a directory"):
        atomic_write_text(tmp_path / "f" / "b.json", "{}")
    if Path("/proc").is_dir():  # writable to access() as root, yet no file can be made there
        with pytest.raises(NLSError, match="cannot write metrics to /proc/e.json"):
            check_output_file(Path("/proc/e.json"), "metrics")
    assert not list(tmp_path.glob(".*.tmp"))


def test_sigterm_before_the_first_step_removes_the_run_folder_as_ctrl_c_does(tiny_scene, tmp_path, capsys,
                                                                            monkeypatch):
    """SIGTERM while the trainer is set up (JIT builds, checks) ended the process on the spot, leaving a run
    folder with no checkpoint (and, during a first kernel build, torch's build lock)."""
    import signal

    import pipeline.train
    from pipeline.cli import main

    real = pipeline.train.Trainer.__init__

    def term_during_setup(self, *a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        real(self, *a, **kw)

    monkeypatch.setattr(pipeline.train.Trainer, "__init__", term_during_setup)
    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 130
    err = capsys.readouterr().err
    assert "(interrupted before training)" in err and not list((tmp_path / "runs").glob("tiny/dense_grid/*"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone after the block


def test_sigterm_during_a_scenes_first_build_removes_its_temporary_cache_folder(tiny_scene, tmp_path, capsys,
                                                                               monkeypatch):
    """SIGTERM while a scene was first rendered into the cache ended the process on the spot (exit 143, no
    word) and left the half-written ``.procedural-*`` folder behind; it now stops as Ctrl-C does."""
    import signal

    import plugins.scenes.sources as sources
    from pipeline.cli import main

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))  # a cold cache: the scene is built here
    real = sources.cached_render
    made = []

    def term_while_making(kind, options, make):
        def make_then_term(folder):
            make(folder)
            made.append(folder)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the manifest is written
        return real(kind, options, make_then_term)

    monkeypatch.setattr(sources, "cached_render", term_while_making)
    unhandled = []  # without the fix SIGTERM lands here (its default would end pytest) and the build goes on

    def outer(signum, frame):
        unhandled.append(signum)

    previous = signal.signal(signal.SIGTERM, outer)
    try:
        code = main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"])
        assert signal.getsignal(signal.SIGTERM) is outer  # the command's handler is gone after the load
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not unhandled and code == 130
    assert "interrupted" in capsys.readouterr().err
    assert made and not made[0].exists()  # the temporary folder was there, and is gone
    assert not list((tmp_path / "cache" / "scenes").iterdir())  # no entry, whole or partial
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("config.yaml"))


def test_an_atomic_write_sweeps_the_old_temp_files_of_killed_writers(tmp_path):
    """A SIGKILLed export left its 8 MB temporary mesh for good; a write of the same file now removes such
    leftovers once they are an hour old (a younger one may be another writer at work), and nothing else."""
    from pipeline.runs import atomic_write_text

    old, young, other = (tmp_path / ".m.ply.k1ll3d.tmp", tmp_path / ".m.ply.w0rk1n.tmp",
                         tmp_path / ".m.plyx.abc.tmp")
    for p in (old, young, other):
        p.write_bytes(b"half a mesh")
    os.utime(old, (1_600_000_000, 1_600_000_000))
    os.utime(other, (1_600_000_000, 1_600_000_000))
    atomic_write_text(tmp_path / "m.ply", "ply")
    assert not old.exists() and young.exists() and other.exists()


def test_fused_adam_trains_to_the_same_model_up_to_rounding(tiny_scene, tmp_path):
    """train.fused_adam takes torch's fused kernel (recorded in the checkpoint's optimiser state); the
    parameters end within float rounding of the default kernels', not bit for bit."""
    import torch

    from pipeline.cli import main

    states = {}
    for fused in ("false", "true"):
        out = tmp_path / fused
        assert main(["reconstruct", str(tiny_scene()), "--output", str(out), "-q", "--no-eval",
                     "--set", f"train.fused_adam={fused}"]) == 0
        states[fused] = RunDir.open(next(out.glob("tiny/dense_grid/*"))).load_checkpoint()
    assert states["true"]["optimizer"]["param_groups"][0]["fused"] is True
    assert not states["false"]["optimizer"]["param_groups"][0].get("fused")
    a, b = states["false"]["model"], states["true"]["model"]
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_kernels_are_prepared_before_the_clock_starts(tmp_path, monkeypatch):
    """Every module's ``prepare_kernels(device)`` runs once when the Trainer is made, before any step
    (a first-use JIT build must not count as training time); on CPU the renderer's leaves nerfacc's
    CUDA backend alone."""
    import copy

    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.train import Trainer
    from plugins.ngp.renderer import VolumeRenderer

    import plugins.ngp.hashgrid as hashgrid

    calls, loads = [], []
    real, real_load = VolumeRenderer.prepare_kernels, hashgrid.load_cpu_kernel
    monkeypatch.setattr(VolumeRenderer, "prepare_kernels", lambda self, dev: (calls.append(dev), real(self, dev)))
    monkeypatch.setattr(hashgrid, "load_cpu_kernel", lambda *a: (loads.append(1), real_load(*a))[1])
    already = "nerfacc.cuda._backend" in sys.modules
    data = copy.deepcopy(TINY_SCENE)
    data["field"] = {"type": "hash_grid", "n_levels": 4, "log2_hashmap_size": 12, "max_resolution": 64, "hidden": 16}
    data["train"].update(steps=2)
    cfg = validate(data, plugin_host())
    scene = load_scene_data(cfg, "cpu")
    tr = Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene,
                 RunDir.create(tmp_path, "a", "b"), torch.device("cpu"), progress=False)
    assert calls == [torch.device("cpu")] and tr.step == 0 and tr.elapsed == 0.0
    assert loads, "the hash grid's CPU kernel was not loaded before training"
    tr.fit()
    assert len(calls) == 1
    if not already:  # a GPU run in this process may have loaded it legitimately
        assert "nerfacc.cuda._backend" not in sys.modules


def test_a_missing_nerfacc_cuda_build_is_one_clear_error(monkeypatch):
    import types

    from pipeline.rendering import load_nerfacc_cuda

    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", None)  # its import fails, as a failed build does
    with pytest.raises(NLSError, match=r"could not be built or loaded \(ModuleNotFoundError.*CUDA_HOME"):
        load_nerfacc_cuda()
    monkeypatch.setitem(sys.modules, "nerfacc.cuda._backend", types.SimpleNamespace(_C=None))  # no nvcc
    with pytest.raises(NLSError, match="no nvcc was found.*--device cpu"):
        load_nerfacc_cuda()


def _tiny_trainer(tmp_path, **train):
    """An in-process Trainer on the tiny scene with ``train`` options, writing to a fresh run folder."""
    import copy

    from pipeline.build import build_system, load_scene_data
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.train import Trainer

    data = copy.deepcopy(TINY_SCENE)
    data["train"].update(train)
    cfg = validate(data, plugin_host())
    scene = load_scene_data(cfg, "cpu")
    return Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene,
                   RunDir.create(tmp_path, "a", "b"), torch.device("cpu"), progress=False)


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    """A NaN that reaches the weights behind a finite loss stops training at the next checkpoint, which
    is not written, so the newest good checkpoint survives pruning."""
    tr = _tiny_trainer(tmp_path, steps=6, checkpoint_every=2)
    original = tr.train_step

    def step_then_poison():
        rec = original()
        if tr.step == 3:
            with torch.no_grad():
                next(tr.system.parameters()).view(-1)[0] = float("nan")
        return rec

    tr.train_step = step_then_poison
    with pytest.raises(NLSError, match=r"diverged before step 4: parameter\(s\) .* hold NaN or inf.*"
                                       r"ckpt_00000002.pt is the newest good one"):
        tr.fit()
    assert [p.name for p in tr.run.checkpoints()] == ["ckpt_00000002.pt"]


def test_a_stop_during_the_final_save_still_counts_as_an_interruption(tmp_path):
    tr = _tiny_trainer(tmp_path, steps=3, checkpoint_every=100)
    original = tr.save

    def save_then_signal():
        original()
        if tr.step == 3:
            tr.stop.requested = True  # what the SIGTERM handler does while the last checkpoint is written

    tr.save = save_then_signal
    res = tr.fit()
    assert res.step == 3 and res.interrupted and res.saved


def test_a_forced_stop_between_checkpoints_is_reported_as_unsaved(tmp_path, capsys):
    """A second Ctrl-C stops at once: fit says no checkpoint holds that step, and the CLI message names
    the newest checkpoint instead of claiming one was saved."""
    import types

    from pipeline.commands.training import _train_and_finish

    tr = _tiny_trainer(tmp_path, steps=8, checkpoint_every=2)
    original = tr.train_step

    def step_then_force():
        rec = original()
        if tr.step == 3:
            raise KeyboardInterrupt  # the second Ctrl-C's handler raises at once
        return rec

    tr.train_step = step_then_force
    ld = types.SimpleNamespace(run=tr.run, cfg=tr.cfg, step=0)
    args = types.SimpleNamespace(plugins_dir=None, no_eval=True, quiet=True)
    assert _train_and_finish(ld, tr, args) == 130
    err = capsys.readouterr().err
    assert "interrupted at step 3/8 without a checkpoint (a forced stop); the newest is ckpt_00000002.pt" in err
    assert "checkpoint saved" not in err


def test_a_second_ctrl_c_while_the_stop_checkpoint_is_written_waits_for_it(tmp_path):
    """Ctrl-C, then a second Ctrl-C while the stop's checkpoint is being written: the checkpoint is
    finished (no orphan digest, no bare "interrupted") and the run stops there, resumable."""
    import signal

    tr = _tiny_trainer(tmp_path, steps=8, checkpoint_every=100)
    original_step, original_save = tr.train_step, tr.save

    def step_then_ctrl_c():
        rec = original_step()
        if tr.step == 3:
            tr.stop._handler(signal.SIGINT, None)  # the first Ctrl-C: the ranks agree on it with step 4
        return rec

    def save_with_second_ctrl_c():
        tr.stop._handler(signal.SIGINT, None)  # arrives while the checkpoint is written
        original_save()

    tr.train_step, tr.save = step_then_ctrl_c, save_with_second_ctrl_c
    res = tr.fit()
    assert res.step == 4 and res.interrupted and res.saved
    assert sorted(p.name for p in tr.run.ckpt_dir.iterdir()) == ["ckpt_00000004.pt", "ckpt_00000004.pt.sha256"]


def test_a_second_trainer_of_the_same_run_folder_is_refused(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    with run.training_lock():
        with pytest.raises(NLSError, match=rf"is being trained by another nls process \(pid {os.getpid()}\)"):
            with run.training_lock():  # a second open of .lock, as another process would make
                pass
    with run.training_lock():  # released on exit
        pass


def test_checkpoint_leftovers_of_a_killed_save_are_cleaned(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    (run.ckpt_dir / "ckpt_00000004.pt.sha256").write_text("0" * 64 + "\n")  # its checkpoint never landed
    (run.ckpt_dir / ".ckpt_00000004.pt.x1y2.tmp").write_bytes(b"half")
    run.save_checkpoint({"step": 6}, 6)
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["ckpt_00000006.pt", "ckpt_00000006.pt.sha256"]


def test_a_full_disk_while_logging_is_one_clear_error(tmp_path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system to simulate a full disk")
    run = RunDir.create(tmp_path, "s", "m")
    monkeypatch.setattr(RunDir, "metrics_path", property(lambda self: Path("/dev/full")))
    with pytest.raises(NLSError, match="cannot append to /dev/full: No space left on device"):
        run.log_metrics({"step": 1})


def test_resume_of_a_run_that_another_process_trains_is_refused(tiny_scene, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_path = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    capsys.readouterr()
    with RunDir.open(run_path).training_lock():
        assert main(["resume", str(run_path), "-q", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert f"{run_path} is being trained by another nls process (pid {os.getpid()})" in err
    assert (run_path / "cmd.txt").read_text().count("resume") == 0  # refused before writing anything
    assert main(["resume", str(run_path), "-q", "--no-eval"]) == 0  # unlocked: it runs, with nothing to do
    out = capsys.readouterr()
    assert "already reached its step budget" in out.out + out.err
    assert "nothing to train (--no-eval: not evaluated either)" in out.out + out.err


def test_render_of_a_run_in_training_names_the_step_it_sees(tiny_scene, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_path = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    run = RunDir.open(run_path)
    assert run.trainer_pid() is None
    step = int(run.load_checkpoint()["step"])
    capsys.readouterr()
    with run.training_lock():
        assert run.trainer_pid() == str(os.getpid())
        assert main(["render", str(run_path), "--max-images", "1", "-q", "-o", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"note: {run_path} is being trained (pid {os.getpid()}); this uses its newest checkpoint, step {step}" in err
    assert run.trainer_pid() is None
    assert main(["render", str(run_path), "--max-images", "1", "-q", "-o", str(tmp_path / "r")]) == 0
    assert "being trained" not in capsys.readouterr().err


def test_a_render_that_cannot_be_written_is_one_error_and_keeps_the_old_images(tiny_scene, tmp_path, capsys,
                                                                          monkeypatch):
    """A full disk while rendering: an error naming the file (exit 2, not a plugin's failure), and the renders
    of an earlier command stay whole (they used to be left as 0-byte PNGs that crashed nls report)."""
    import pipeline.runs as runs
    from pipeline.cli import main

    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_path = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    out = tmp_path / "r"
    assert main(["render", str(run_path), "--max-images", "1", "-q", "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in (out / "test").iterdir()}
    assert before and all(before.values())
    capsys.readouterr()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    assert main(["render", str(run_path), "--max-images", "1", "-q", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'test'}" in err and "No space left on device" in err and "plugin" not in err
    assert {p.name: p.read_bytes() for p in (out / "test").iterdir()} == before  # no temp files either


@pytest.mark.parametrize("raised, message", [
    (ValueError("bad index"), r"rendering \d+ training rays \(renderer 'volume' of plugin ngp on field 'dense_grid' "
                              r"of plugin ngp\) failed: ValueError: bad index \(NLS_TRACE_PLUGINS=1"),
    ("oom", r"out of device memory while training on \d+ rays .*lower train.batch_rays or renderer.samples_per_ray"),
    ("field oom", r"out of device memory while training on \d+ rays"),  # not blamed on the field
])
def test_a_failing_render_during_training_is_one_clear_error(tmp_path, monkeypatch, raised, message):
    from pipeline.types import NLSError

    monkeypatch.delenv("NLS_TRACE_PLUGINS", raising=False)
    tr = _tiny_trainer(tmp_path, steps=2, grid_warmup=10)
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    exc = oom("CUDA out of memory. Tried to allocate 2.00 GiB") if "oom" in str(raised) else raised

    def fail(*args, **kwargs):
        raise exc

    if raised == "field oom":  # deep inside the chain, under the renderer
        monkeypatch.setattr(tr.system.renderer, "update", lambda *a, **k: None)
        monkeypatch.setattr(tr.system.chain.field, "forward", fail)
    else:
        monkeypatch.setattr(tr.system.renderer, "render_rays", fail)
    with pytest.raises(NLSError, match=message):
        tr.fit()


@pytest.mark.parametrize("raised", ["oom", "memory", "other"])
def test_out_of_memory_anywhere_is_one_clear_error(monkeypatch, capsys, raised):
    import pipeline.cli as cli

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    exc = {"oom": oom("CUDA out of memory. Tried to allocate 9.00 GiB"), "memory": MemoryError(),
           "other": RuntimeError("a bug")}[raised]

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_plugins", fail)
    if raised == "other":  # not memory: a bug of nls's own keeps its traceback
        with pytest.raises(RuntimeError, match="a bug"):
            cli.main(["plugins"])
        return
    assert cli.main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory (") and "lower the sizes" in err, err


def test_each_rank_gets_its_own_slice_of_the_random_backgrounds(tmp_path):
    """Every rank holds the same generator: rank r's rays take rows r of one draw for the global batch, as
    one process would give them, not a draw of their own (which would repeat rank 0's colours)."""
    import copy

    from pipeline.distributed import DistInfo

    tr = _tiny_trainer(tmp_path, steps=2, batch_rays=64)
    tr.system.renderer.cfg = copy.copy(tr.system.renderer.cfg)
    object.__setattr__(tr.system.renderer.cfg, "random_background", True)
    sampler_state, rng = tr.sampler.gen.get_state(), torch.get_rng_state()
    _, whole = tr._ray_batch()
    per_rank = []
    for rank in (0, 1):
        tr.sampler.gen.set_state(sampler_state)
        torch.set_rng_state(rng)
        tr.dist = DistInfo(world_size=2, rank=rank, local_world_size=2)
        per_rank.append(tr._ray_batch()[1])
    assert torch.equal(torch.cat(per_rank), whole)


def test_a_digest_that_cannot_be_read_is_a_checkpoint_error(tmp_path):
    run = RunDir.create(tmp_path, "s", "m")
    path = run.save_checkpoint({"step": 1, "model": {}}, 1)
    digest = path.with_suffix(".pt.sha256")
    digest.unlink()
    digest.mkdir()  # exists, but reading it fails as a file pruned mid-read would
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint_file(path)


def test_a_filesystem_without_locks_trains_unguarded_with_a_warning(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = RunDir.create(tmp_path, "s", "m")
    entered = False
    with run.training_lock():
        entered = True
    assert entered and "cannot lock" in capsys.readouterr().err


def test_resume_checks_the_eval_split_before_training(tiny_scene, tmp_path, capsys):
    """The scene's data lost the eval split (here: config.yaml names one it never had): resume says so
    before it trains, as reconstruct does, instead of failing after training."""
    from pipeline.cli import main

    scene = tiny_scene(train={**yaml.safe_load(tiny_scene().read_text())["train"], "steps": 4})
    assert main(["reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_path = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    cfg = yaml.safe_load((run_path / "config.yaml").read_text())
    cfg["train"]["steps"] = 8
    cfg["eval"]["split"] = "val"
    (run_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["resume", str(run_path), "-q"]) == 2
    assert "eval.split" in capsys.readouterr().err
    assert RunDir.open(run_path).latest_checkpoint().name == "ckpt_00000004.pt"  # nothing was trained


def test_cmd_txt_runs_again_from_another_folder(tmp_path, monkeypatch):
    """cmd.txt records the working directory (``cd <cwd> && ...``, shell-quoted), so a command with
    relative paths (a batch child's scene file) can be run again from anywhere."""
    run = RunDir.create(tmp_path / "runs", "s", "m")
    work = tmp_path / "my work"
    work.mkdir()
    (work / "scene.yaml").write_text("the scene\n")
    monkeypatch.chdir(work)
    run.record_command(["cat", "scene.yaml"])
    line = (run.path / "cmd.txt").read_text()
    assert line == f"cd '{work}' && cat scene.yaml\n"
    again = subprocess.run(line, shell=True, capture_output=True, text=True, cwd="/")
    assert again.stdout == "the scene\n", again.stderr


def test_reconstruct_repeats_the_runs_warnings_after_its_metrics(tmp_path):
    """A warning given before training is said again beside the final metrics (where it is read, past the
    progress bars) and kept in summary.json; a command in the same process starts with none kept."""
    from pipeline import notices
    from tests.conftest import run_nls
    from tests.test_distributed import PLUGINS, env, toy_yaml

    msg = "the toy scene warns"
    scene = toy_yaml(tmp_path / "loud.yaml", name="loud", steps=3, warn=msg)
    proc = run_nls("reconstruct", str(scene), "--plugins-dir", str(PLUGINS), "--output", str(tmp_path / "runs"),
                   env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: {msg}" in proc.stderr  # when it happened
    lines = proc.stdout.splitlines()
    at = lines.index(f"warning: {msg}")
    assert lines[at + 1].startswith("run folder:")
    (summary,) = (tmp_path / "runs").glob("*/*/*/summary.json")
    assert json.loads(summary.read_text())["warnings"] == [msg]
    notices.keep("left over from an earlier command")
    from pipeline.cli import main

    assert main(["plugins"]) == 0 and notices.kept() == []


def test_checkpoints_carry_the_runs_warnings_and_thread_count(tmp_path, capsys):
    """An evaluation-only resume (after --no-eval, or a stop during the final evaluation) wrote
    `warnings: []`: the warnings given while training (e.g. rs_sdf's phase-1 warning) were only in the
    process that trained. A resume with another thread count is not bit-identical, and says so."""
    from pipeline import notices
    from pipeline.build import build_system, load_scene_data
    import types

    from pipeline.commands.training import _warn_if_layout_differs
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.train import Trainer

    cfg = validate(TINY_SCENE, plugin_host(), source="tiny")
    device = torch.device("cpu")
    scene = load_scene_data(cfg, device)
    trainer = Trainer(cfg, build_system(cfg, scene, device), scene, RunDir.create(tmp_path, "tiny", "dense"), device,
                      progress=False)
    notices.reset()
    notices.keep("given while training")
    state = trainer.state()
    assert state["warnings"] == ["given while training"] and state["threads"] == torch.get_num_threads()
    notices.reset()
    trainer.load_state(state)
    assert notices.kept() == ["given while training"]
    single = types.SimpleNamespace(is_main=True, world_size=1)
    _warn_if_layout_differs({"world_size": 1, "threads": torch.get_num_threads()}, single)
    assert notices.kept() == ["given while training"] and "warning" not in capsys.readouterr().err
    _warn_if_layout_differs({"world_size": 1, "threads": torch.get_num_threads() + 3}, single)
    assert "thread(s) per process" in capsys.readouterr().err and len(notices.kept()) == 2
    # another number of processes: NLS_THREADS would not help, so that is not what it advises
    _warn_if_layout_differs({"world_size": 2, "threads": torch.get_num_threads()}, single)
    err = capsys.readouterr().err
    assert "trained by 2 process(es) and this resume runs 1" in err and "NLS_THREADS" not in err
    _warn_if_layout_differs({"world_size": 2}, types.SimpleNamespace(is_main=False, world_size=1))
    assert capsys.readouterr().err == ""  # the main rank speaks for the job
    notices.reset()


def test_a_ground_truth_that_changed_since_the_run_is_warned_about(tiny_scene, tmp_path, nls):
    """Resume and eval used a scene's changed data silently (a mesh scene whose file was replaced was scored
    against the new mesh); the GT's sha256 in scene.json is now checked when a run is reopened."""
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run_dir = next((tmp_path / "runs").glob("*/*/*"))
    same = nls("eval", str(run_dir), "-q", "-o", str(tmp_path / "a.json"))
    assert same.returncode == 0 and "ground-truth mesh" not in same.stderr
    record = json.loads((run_dir / "scene.json").read_text())
    record["gt_mesh_sha256"] = "0" * 64  # as if the file had been replaced since
    (run_dir / "scene.json").write_text(json.dumps(record))
    changed = nls("eval", str(run_dir), "-q", "-o", str(tmp_path / "b.json"))
    assert changed.returncode == 0
    assert f"is not the one {run_dir} was made with (its sha256 differs from scene.json's)" in changed.stderr


def test_a_stopped_eval_leaves_the_previous_eval_and_its_renders_together(tiny_scene, tmp_path, capsys):
    """A killed `nls eval` rewrote eval_renders/ in place before the atomic eval.json, so the report paired
    new renders with old metrics; a shorter eval also left the views of a longer one behind."""
    import pipeline.evaluate
    from pipeline.cli import main
    from pipeline.testing import TINY_SCENE

    scene = tiny_scene(scene={**TINY_SCENE["scene"], "n_test": 3})
    assert main(["reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_dir = next((tmp_path / "runs").glob("*/*/*"))
    renders = run_dir / "eval_renders" / "test"
    assert main(["eval", str(run_dir), "-q", "--set", "eval.max_images=3"]) == 0
    first = (run_dir / "eval.json").read_bytes()
    views = {p.name: p.read_bytes() for p in renders.iterdir()}
    assert len(views) == 6  # 3 views, each a render and a side-by-side

    def stopped(*args):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline.evaluate, "depth_to_uint8", stopped)  # after the first view's PNG is written
        assert main(["eval", str(run_dir), "-q", "--set", "eval.max_images=3", "--set", "eval.supersample=2"]) == 130
    assert (run_dir / "eval.json").read_bytes() == first
    assert {p.name: p.read_bytes() for p in renders.iterdir()} == views
    assert main(["eval", str(run_dir), "-q", "--set", "eval.max_images=1"]) == 0
    assert len(list(renders.iterdir())) == 2  # the one view this eval rendered, not the three before it
    assert not list(run_dir.glob(".eval*"))  # no staging folder left
    capsys.readouterr()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_during_the_final_evaluation_says_how_to_finish(tiny_scene, tmp_path, capsys, monkeypatch, how):
    """Ctrl-C there printed only `interrupted`; SIGTERM ended the process with exit 143 and no word. Both
    now exit 130 naming the resume that evaluates the trained run; a run with no checkpoint names the
    --output that puts a new run beside it."""
    import pipeline.commands.training
    from pipeline.cli import main

    def stop(*args, **kwargs):
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(pipeline.commands.training, "finish_run", stop)
    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q"]) == 130
    run_dir = next((tmp_path / "runs").glob("*/*/*"))
    assert f"interrupted during the final evaluation; the run is trained (step 6). Evaluate it with: nls resume " \
           f"{run_dir}" in capsys.readouterr().err
    for ck in RunDir.open(run_dir).checkpoints():
        ck.unlink()
    assert main(["resume", str(run_dir)]) == 2
    assert f"`nls reconstruct {run_dir / 'config.yaml'} --output {tmp_path / 'runs'}`" in capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_written_leaves_no_digest_and_the_previous_one_intact(tmp_path, monkeypatch):
    """A full disk failed the write but left ckpt_N.pt.sha256 beside no ckpt_N.pt until the next save."""
    import pipeline.runs as runs

    run = RunDir.create(tmp_path, "s", "m")
    good = run.save_checkpoint({"w": torch.ones(3)}, 1)

    def full(path, data):
        raise NLSError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(runs, "atomic_write_bytes", full)
    with pytest.raises(NLSError, match="No space left"):
        run.save_checkpoint({"w": torch.zeros(3)}, 2)
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == [good.name, good.name + ".sha256"]


def test_resume_warns_when_config_yaml_was_edited(tiny_scene, tmp_path, capsys):
    """train.steps (or any key) edited in config.yaml after the checkpoint: the checkpoint loads, so resume
    goes on, but it says which keys changed, since the run is no longer the one that started. An
    unedited resume says nothing."""
    from pipeline.cli import main

    scene = tiny_scene(train={**yaml.safe_load(tiny_scene().read_text())["train"], "steps": 6,
                              "checkpoint_every": 2})
    assert main(["reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run_path = next((tmp_path / "runs").glob("tiny/dense_grid/*"))
    for name in ("ckpt_00000006.pt",):  # back to step 4: a run that was stopped there
        (run_path / "checkpoints" / name).unlink()
    (run_path / "summary.json").unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["resume", str(run_path), "-q", "--no-eval"]) == 0
    assert "was edited" not in capsys.readouterr().err
    cfg = yaml.safe_load((run_path / "config.yaml").read_text())
    cfg["train"]["steps"] = 8
    (run_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["resume", str(run_path), "-q", "--no-eval"]) == 0
    err = capsys.readouterr().err
    assert "config.yaml was edited after checkpoint step 6" in err and "train.steps (6 -> 8)" in err, err
    assert RunDir.open(run_path).latest_checkpoint().name == "ckpt_00000008.pt"


def test_a_parent_of_runs_given_as_a_run_lists_the_runs_below_it(tmp_path):
    """``nls render outputs/csg/dense_grid`` (one level too high): the error names the run folders below,
    newest first, so the user can pick one; a folder with no runs below keeps the plain message."""
    old = RunDir.create(tmp_path / "runs", "csg", "dense_grid")
    (old.path / "config.yaml").write_text("name: csg\n")
    os.utime(old.path, (1e9, 1e9))
    new = RunDir.create(tmp_path / "runs", "csg", "rs_sdf")
    (new.path / "config.yaml").write_text("name: csg\n")
    for parent in (tmp_path / "runs" / "csg", tmp_path / "runs" / "csg" / "rs_sdf"):
        with pytest.raises(NLSError) as err:
            RunDir.open(parent)
        assert f"the runs below it, newest first: {new.path}" in str(err.value), err.value
    assert str(old.path) in str(pytest.raises(NLSError, RunDir.open, tmp_path / "runs" / "csg").value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NLSError, match=r"Give a folder made by `nls reconstruct`\.$"):
        RunDir.open(tmp_path / "empty")
