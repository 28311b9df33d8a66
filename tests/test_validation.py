"""Validation during training (``train.val_every``, :mod:`pipeline.validation`): preview cameras and
ground truth, the logged PSNR against the evaluation path's, bit-identical training with and without
it, and the errors before training."""

from __future__ import annotations

import copy
import json
from pathlib import Path
import dataclasses

import numpy as np
import pytest
import torch

from pipeline.build import build_system, load_scene_data
from pipeline.config import dump_yaml, validate
from pipeline.runs import RunDir
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.train import Trainer, seed_everything
from pipeline.types import NLSError
from pipeline.scenes.blender import area_downscale
from pipeline.validation import metric_name, preview_factor


def _trainer(tmp_path, name: str, **train) -> Trainer:
    data = copy.deepcopy(TINY_SCENE)
    data["train"].update({"steps": 8, **train})
    cfg = validate(data, plugin_host())
    seed_everything(cfg.train.seed)  # as nls reconstruct does: every trainer starts from the same parameters
    scene = load_scene_data(cfg, "cpu")
    run = RunDir.create(tmp_path, name, "m")
    run.config_path.write_text(dump_yaml(cfg.to_dict()))  # a run folder nls report can read
    return Trainer(cfg, build_system(cfg, scene, torch.device("cpu")), scene, run, torch.device("cpu"), progress=False)


def test_preview_pixels_are_the_centres_of_full_size_blocks():
    """Preview pixel (u, v) at 1/f size casts the ray of the full-size block's centre, and its ground truth
    is that block's mean."""
    from pipeline.rays import pixel_rays
    from pipeline.types import Cameras

    assert [preview_factor(800, 800, 200), preview_factor(801, 600, 200), preview_factor(64, 48, 200),
            preview_factor(640, 480, None)] == [4, 5, 1, 1]
    cams = Cameras(torch.eye(4)[None], torch.tensor([50.0]), torch.tensor([60.0]), torch.tensor([33.0]),
                   torch.tensor([21.0]), 64, 40)
    f = 4
    small = cams.select([0]).downscaled(f)
    assert (small.width, small.height) == (16, 10)
    u, v = torch.tensor([0.5, 7.5, 15.5]), torch.tensor([0.5, 3.5, 9.5])
    o1, d1 = pixel_rays(small, torch.zeros(3, dtype=torch.long), u, v)
    o2, d2 = pixel_rays(cams, torch.zeros(3, dtype=torch.long), u * f, v * f)
    assert torch.allclose(d1, d2, atol=1e-6) and torch.equal(o1, o2)
    img = np.random.default_rng(0).random((10, 13, 3))
    m = area_downscale(img, 3)
    assert m.shape == (3, 4, 3)
    assert np.allclose(m[1, 2], img[3:6, 6:9].mean(axis=(0, 1)))
    assert metric_name("val") == "psnr_val" and metric_name("train") == "psnr_train_views"


def test_validation_logs_psnr_and_previews_without_changing_training(tmp_path):
    """With val_every the run logs psnr_test at those steps and writes preview images; its parameters and
    optimiser state end bit-identical to a run without it (random states restored, clock untouched)."""
    plain = _trainer(tmp_path / "a", "plain")
    plain.fit()
    val = _trainer(tmp_path / "b", "val", val_every=3, val_views=2)
    val.fit()
    for k, v in plain.system.state_dict().items():
        assert torch.equal(v, val.system.state_dict()[k]), k
    for i, st in plain.optimizer.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, val.optimizer.state_dict()["state"][i][k]), (i, k)
    logged = {r["step"]: r.get("psnr_test") for r in val.run.read_metrics()}
    assert [s for s, p in logged.items() if p is not None] == [3, 6, 8]  # every 3rd step and the last
    scores = [p for p in logged.values() if p is not None]
    assert all(3 < p < 60 for p in scores) and scores == sorted(scores)  # ~8 dB and rising after so few steps
    assert not any("psnr_test" in r for r in plain.run.read_metrics())
    previews = sorted(p.name for p in (val.run.renders_dir / "progress").glob("*.png"))
    (validator,) = val.validators  # the held-out views only: a run with images validates its mesh when asked
    assert len(validator.views) == 2  # tiny has 2 test views: both, each with its preview and its own PSNR
    assert previews == sorted(f"{v.name}_{s:08d}.png" for v in validator.views for s in (3, 6, 8))
    last = val.run.read_metrics()[-1]
    each = [last[f"psnr_test/{v.name}"] for v in validator.views]
    assert last["psnr_test"] == pytest.approx(np.mean(each)) and each[0] != each[1]
    from pipeline.report import build_report

    html = build_report(val.run.path, use_model=False, progress=False).read_text()
    assert all(f"the PSNR is psnr_test/{v.name} in metrics.jsonl" in html for v in validator.views)


def test_full_size_validation_psnr_is_the_evaluation_psnr(tmp_path):
    """With val_max_side null the validation PSNR of a view is the PSNR `nls eval` computes for it."""
    from pipeline.evaluate import EvalContext, render_split
    from pipeline.metrics import psnr

    tr = _trainer(tmp_path, "full", val_every=8, val_max_side=None)
    tr.fit()
    logged = tr.run.read_metrics()[-1]["psnr_test"]
    ctx = EvalContext(cfg=tr.cfg, scene=tr.scene, system=tr.system, run=tr.run, device=torch.device("cpu"),
                      progress=False, out_dir=tmp_path / "eval")
    ((pred, gt),) = render_split(ctx)  # the tiny scene evaluates 1 image: view 0, the validation view
    assert logged == pytest.approx(psnr(pred, gt), abs=1e-4)


def test_training_view_previews_are_rendered_as_training_sees_them(tmp_path):
    """Validating on the training split of a run that refines poses and learns exposures: each view's logged
    PSNR is the one `nls eval --split train` computes for it after training (refined pose, the image's
    colour transform); with the poses as given and no transform it is not."""
    from pipeline.evaluate import EvalContext, render_split
    from pipeline.metrics import psnr
    from pipeline.pose_refinement import refined_scene

    tr = _trainer(tmp_path, "train_views", val_every=8, val_max_side=None, val_split="train", val_views=2,
                  refine_poses=True, pose_lr=0.05, exposure="gain", exposure_lr=0.3)
    tr.fit()
    (validator,) = tr.validators
    assert [v.index for v in validator.views] == [0, 4]
    logged = tr.run.read_metrics()[-1]
    cfg = dataclasses.replace(tr.cfg, eval=tr.cfg.eval.model_copy(update={"every": 4, "max_images": None}))
    scores = {}
    exposure = tr.system.exposure
    for name, scene in [("refined", refined_scene(tr.scene, tr.system)), ("as given", tr.scene)]:
        tr.system.exposure = exposure if name == "refined" else None
        ctx = EvalContext(cfg=cfg, scene=scene, system=tr.system, run=tr.run, device=torch.device("cpu"),
                          progress=False, split="train", out_dir=tmp_path / name)
        scores[name] = [psnr(pred, gt) for pred, gt in render_split(ctx)]
    want = [logged[f"psnr_train_views/{v.name}"] for v in validator.views]
    assert want == pytest.approx(scores["refined"], abs=1e-4)
    # barely trained (about 9 dB), so the pose and colour corrections move the PSNR little, but far more than that
    assert min(abs(a - b) for a, b in zip(want, scores["as given"])) > 1e-3, (want, scores)
    refined = refined_scene(tr.scene, tr.system).splits["train"].cameras.c2w
    for view in validator.views:
        c2w = validator.camera(view).c2w[0]
        assert torch.allclose(c2w, refined[view.index], atol=1e-6)
        assert (c2w - tr.scene.splits["train"].cameras.c2w[view.index]).abs().max() > 1e-3


def test_validation_refuses_a_missing_split(tmp_path):
    """(A run without images validates its mesh instead: tests/test_geometry_validation.py.)"""
    with pytest.raises(NLSError, match=r"train.val_split = 'tset': the scene has no such split \(it has train, test\); set "
                       r"train.val_split to one of them .*did you mean 'test'"):
        _trainer(tmp_path, "s", val_every=2, val_split="tset")


def test_report_shows_previews_over_training_and_the_psnr_panel(tmp_path):
    """`nls report` shows the previews at up to 6 steps spread over training, the last included, titled with
    the logged validation PSNR; the training curves put psnr_train and psnr_test on one panel."""
    from pipeline.report import build_report, progress_previews

    tr = _trainer(tmp_path, "rep", val_every=1, steps=9)
    tr.fit()
    shots = progress_previews(tr.run.path)
    assert [s for s, _ in next(iter(shots.values()))] == list(range(1, 10))
    html = build_report(tr.run.path, use_model=False, progress=False).read_text()
    assert "Validation during training" in html
    assert "9 previews in renders/progress/, 6 shown" in html and "psnr_test in metrics.jsonl" in html
    assert "Images in renders/progress/" not in html  # not repeated as a folder of other images


def test_tensorboard_events_mirror_the_metrics_and_a_resume_drops_the_lost_steps(tmp_path):
    """train.tensorboard writes every logged number as a scalar and each validation preview as an image; a
    session resumed from the step-3 checkpoint of a run logged to step 6 purges the events after step 3, so
    TensorBoard shows each step once, as metrics.jsonl does."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (the tensorboard extra) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = _trainer(tmp_path, "tb", val_every=3, tensorboard=True, steps=6, checkpoint_every=3)
    first.fit()
    run = first.run
    (run.path / "checkpoints" / "ckpt_00000006.pt").unlink()  # as a kill after step 6 would leave it
    again = _trainer(tmp_path, "tb2", val_every=3, tensorboard=True, steps=6, checkpoint_every=3)
    again.run = run
    again.load_state(run.load_checkpoint())
    assert again.step == 3
    run.truncate_metrics_after(3)  # as nls resume does
    again.fit()
    events = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    logged = run.read_metrics()
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in logged])
    assert [e.step for e in events.Scalars("psnr_test")] == [3, 6]
    (tag,) = events.Tags()["images"]
    assert tag.startswith("test/") and [e.step for e in events.Images(tag)] == [3, 6]
    assert events.Images(tag)[-1].width == 3 * 32  # prediction | ground truth | depth of the 32 px view


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as if tensorboard were not installed
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(NLSError, match=r"train.tensorboard = true needs the tensorboard package.*pip install "
                                       r"'.\[tensorboard\]'"):
        _trainer(tmp_path, "tb", tensorboard=True)


class _FakeWandb:
    """A stand-in for the wandb package: each W&B run id keeps its logged steps (as a server would), and a run
    resumed under a known id starts at the step after its last."""

    def __init__(self):
        self.inits, self.history, self.summaries, self.finished = [], {}, {}, 0

    def Image(self, array):  # noqa: N802 (wandb's name)
        return ("image", np.asarray(array).shape)

    def init(self, **kwargs):
        self.inits.append(kwargs)
        steps = self.history.setdefault(kwargs["id"], [])
        fake = self

        class Run:
            step = (steps[-1][0] + 1) if steps else 0
            summary = fake.summaries.setdefault(kwargs["id"], {})

            def log(self, values, step, commit=True):
                assert step >= self.step, "W&B drops a step below the run's"
                steps.append((step, values))
                self.step = step

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_gets_the_metrics_and_previews_and_a_resume_goes_on_in_the_same_wandb_run(tmp_path, monkeypatch):
    """train.wandb sends every logged line at its step and each validation preview as an image to a W&B run named
    after the run folder, grouped by scene, with the run's config; its id is kept in wandb.json, so a session
    resumed from the step-3 checkpoint of a run W&B has to step 6 goes on in the same W&B run and sends nothing
    W&B already has."""
    import sys

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    first = _trainer(tmp_path, "wb", val_every=3, wandb=True, wandb_project="level-sets", steps=6, checkpoint_every=3)
    first.fit()
    run = first.run
    (init,) = fake.inits
    assert init["project"] == "level-sets" and init["resume"] == "allow" and init["dir"] == str(run.path)
    assert init["name"] == "/".join(run.path.resolve().parts[-3:]) and init["group"] == "wb"
    assert init["config"]["train"]["wandb"] is True and fake.finished == 1
    assert json.loads((run.path / "wandb.json").read_text()) == {"id": init["id"], "project": "level-sets"}
    logged = run.read_metrics()
    sent = fake.history[init["id"]]
    scalars = [(s, v) for s, v in sent if "loss" in v]
    assert [s for s, _ in scalars] == [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert [v["loss"] for _, v in scalars] == pytest.approx([r["loss"] for r in logged])
    images = [(s, v) for s, v in sent if any(isinstance(x, tuple) for x in v.values())]
    assert [s for s, _ in images] == [3, 6] and next(iter(images[0][1])).startswith("test/")

    (run.path / "checkpoints" / "ckpt_00000006.pt").unlink()  # as a kill after step 6 would leave it
    again = _trainer(tmp_path, "wb2", val_every=3, wandb=True, wandb_project="level-sets", steps=8,
                     checkpoint_every=3)
    again.run = run
    again.load_state(run.load_checkpoint())
    run.truncate_metrics_after(3)
    again.fit()
    assert fake.inits[1]["id"] == init["id"] and fake.finished == 2
    assert [s for s, v in fake.history[init["id"]] if "loss" in v] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_wandb_runs_offline_with_the_real_package(tmp_path, monkeypatch):
    """With wandb installed and WANDB_MODE=offline, a run trains with train.wandb and leaves W&B's offline run
    (its id from wandb.json) in <run>/wandb/, with the validation previews among its media."""
    pytest.importorskip("wandb", reason="the wandb package (the wandb extra) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tr = _trainer(tmp_path, "wb", val_every=4, wandb=True, steps=4)
    tr.fit()
    run_id = json.loads((tr.run.path / "wandb.json").read_text())["id"]
    (offline,) = (tr.run.path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (offline / f"run-{run_id}.wandb").stat().st_size > 0
    assert list((offline / "files" / "media").rglob("*.png")), "the validation preview was not kept"
    from pipeline import notices
    from pipeline.wandb_log import publish_summary

    before = len(notices.kept())
    publish_summary(tr.run.path, "nls", {"metrics": {"psnr": 20.5, "name": "x"}, "step": 4})
    assert len(notices.kept()) == before  # (no warning: W&B took the summary)
    assert len(list((tr.run.path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(NLSError, match=r"train.wandb = true needs the wandb package.*pip install '.\[wandb\]'"):
        _trainer(tmp_path, "wb", wandb=True)


def _reconstructed_with_wandb(tmp_path, monkeypatch) -> tuple[_FakeWandb, Path]:
    """The stand-in W&B module and the run folder of a 2-step ``nls reconstruct --wandb`` of the tiny scene."""
    import importlib.util
    import sys

    import yaml

    from pipeline.cli import main

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    scene = tmp_path / "tiny.yaml"
    scene.write_text(yaml.safe_dump(copy.deepcopy(TINY_SCENE)))
    assert main(["reconstruct", str(scene), "--steps", "2", "--wandb", "-q", "--output", str(tmp_path / "runs")]) == 0
    return fake, next((tmp_path / "runs").glob("*/*/*/summary.json")).parent


def test_nls_reconstruct_wandb_puts_the_final_metrics_in_the_wandb_run_s_summary(tmp_path, monkeypatch, capsys):
    """nls reconstruct --wandb: after training, the evaluation's metrics (summary.json's) become the summary of the
    same W&B run, the figures W&B's runs table shows."""
    fake, run = _reconstructed_with_wandb(tmp_path, monkeypatch)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert len(fake.inits) == 2 and fake.inits[0]["id"] == fake.inits[1]["id"] and fake.finished == 2
    final = fake.summaries[fake.inits[0]["id"]]
    assert final["psnr"] == pytest.approx(metrics["psnr"]) and final["step"] == 2 and "train_seconds" in final


def test_nls_eval_of_a_wandb_run_adds_its_metrics_beside_training_s(tmp_path, monkeypatch, capsys):
    """nls eval of a run trained with --wandb puts eval.json's metrics into the same W&B run's summary under eval/
    (under the -o file's stem for another output), leaving training's final figures as they were; --no-wandb
    sends nothing."""
    from pipeline.cli import main

    fake, run = _reconstructed_with_wandb(tmp_path, monkeypatch)
    summary = fake.summaries[fake.inits[0]["id"]]
    trained = dict(summary)
    assert main(["eval", str(run), "-q", "--set", "eval.max_images=1"]) == 0
    assert "sent its metrics to the run's W&B summary as eval/<metric>" in capsys.readouterr().out
    evaluated = json.loads((run / "eval.json").read_text())["metrics"]
    assert summary["eval/psnr"] == pytest.approx(evaluated["psnr"]) and summary["eval/step"] == 2
    assert {k: summary[k] for k in trained} == trained  # training's figures kept
    assert fake.inits[-1]["id"] == fake.inits[0]["id"] and fake.finished == 3
    assert main(["eval", str(run), "-q", "-o", str(run / "one_view.json"), "--set", "eval.max_images=1"]) == 0
    assert summary["one_view/psnr"] == pytest.approx(json.loads((run / "one_view.json").read_text())["metrics"]["psnr"])
    assert main(["eval", str(run), "-q", "--no-wandb", "-o", str(tmp_path / "elsewhere.json")]) == 0
    assert fake.finished == 4 and not any(k.startswith("eval-elsewhere/") for k in summary)
    assert main(["eval", str(run), "-q", "-o", str(tmp_path / "elsewhere.json")]) == 0
    assert "eval-elsewhere/psnr" in summary
