"""``pipeline.evaluate.extract`` keeps the meshes it extracted from a run's checkpoint (pipeline.mesh_cache)
and reads them back instead of meshing the field again.

The run is the tiny sphere scene with an analytic density field in place of the trained one (the cache
keys on the checkpoint's sha256, not on its weights), so every extraction takes milliseconds.
"""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch

from pipeline.evaluate import EvalContext, extract, flatten, run_evaluators
from pipeline.mesh import progress_default
from pipeline.mesh_cache import EXTRACTED, KEEP_MESHES, entry_path, load_mesh
from pipeline.runs import RunDir
from plugins.ngp.extract import MarchingCubes


def _density(x: torch.Tensor, d=None) -> dict:
    """A ball of radius 0.3 whose density crosses the default level 10 there: (M, 3) -> {"density": (M,)}."""
    return {"density": 40.0 * (0.55 - x.norm(dim=-1))}


@pytest.fixture(scope="module")
def built():
    """(cfg, scene) of the tiny sphere scene with a chamfer evaluator."""
    from pipeline.build import load_scene_data
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host

    data = copy.deepcopy(TINY_SCENE)
    data["evaluators"] = [{"type": "chamfer", "floor": False}]
    data["eval"]["chamfer_samples"] = 2000
    cfg = validate(data, plugin_host())
    return cfg, load_scene_data(cfg, torch.device("cpu"))


@pytest.fixture
def ctx(built, tmp_path):
    """A fresh EvalContext of a run folder with one checkpoint (step 1)."""
    cfg, scene = built
    run = RunDir.create(tmp_path, "tiny", "dense_grid")
    run.save_checkpoint({"step": 1, "model": {}}, 1)
    system = types.SimpleNamespace(chain=_density, eval=lambda: None, renderer=None)
    return EvalContext(cfg, scene, system, run, torch.device("cpu"))


@pytest.fixture
def calls(monkeypatch) -> list:
    """The keyword arguments of every MarchingCubes.extract call."""
    seen: list = []
    orig = MarchingCubes.extract

    def counted(self, chain, **kw):
        seen.append(kw)
        return orig(self, chain, **kw)

    monkeypatch.setattr(MarchingCubes, "extract", counted)
    return seen


def _same(a, b) -> None:
    """``a`` and ``b`` hold bit-identical vertices and faces of the same dtypes, and equal metadata."""
    va, vb = np.asarray(a.vertices), np.asarray(b.vertices)
    assert va.dtype == vb.dtype == np.float64 and np.array_equal(va, vb)
    assert np.asarray(a.faces).dtype == np.asarray(b.faces).dtype == np.int64
    assert np.array_equal(a.faces, b.faces) and a.metadata == b.metadata


def _entries(ctx) -> list:
    return sorted((ctx.run.path / EXTRACTED).glob("*.npz"))


def test_a_second_extraction_reads_the_mesh_back(ctx, calls, capsys):
    first = extract(ctx)
    assert len(calls) == 1 and len(_entries(ctx)) == 1 and "reused" not in capsys.readouterr().err
    again = extract(ctx)
    assert len(calls) == 1 and again is not first
    _same(first, again)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mesh: reused the one extracted from this checkpoint at resolution 48 "
                   f"({_entries(ctx)[0].relative_to(ctx.run.path)})"]
    with progress_default(False):  # -q: reused without a word
        extract(ctx)
    assert len(calls) == 1 and capsys.readouterr().err == ""


def test_other_arguments_or_a_newer_checkpoint_extract_again(ctx, calls):
    extract(ctx)
    for kw in ({"resolution": 40}, {"level": 5.0}, {"bbox": [-0.6] * 3 + [0.6] * 3}):
        n = len(calls)
        extract(ctx, **kw)
        assert len(calls) == n + 1, kw
        assert calls[-1] == {**kw, "device": ctx.device, **{k: None for k in ("resolution", "level", "bbox")
                                                            if k not in kw}}
    n = len(calls)
    ctx.run.save_checkpoint({"step": 2, "model": {}}, 2)
    extract(ctx)
    assert len(calls) == n + 1


def test_the_entries_stay_at_the_cap_and_the_reused_one_is_kept(ctx, calls):
    extract(ctx)
    for res in (32, 36, 40):
        extract(ctx, resolution=res)
        extract(ctx)  # the mesh at the default resolution, reused: the most recently used entry
    assert len(_entries(ctx)) == KEEP_MESHES and len(calls) == 4
    extract(ctx, resolution=40)
    assert len(calls) == 4  # the newest other entry is still there


def test_a_damaged_entry_is_extracted_again_and_replaced(ctx, calls):
    first = extract(ctx)
    path, = _entries(ctx)
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b"not a zip file", good.replace(b"vertices", b"vErtices")):
        path.write_bytes(damaged)
        n = len(calls)
        _same(extract(ctx), first)
        assert len(calls) == n + 1
        _same(extract(ctx), first)  # the entry written again
        assert len(calls) == n + 1


def test_a_mesh_changed_by_the_caller_leaves_the_next_one_alone(ctx, calls):
    first = extract(ctx)
    kept = (np.array(first.vertices), np.array(first.faces), copy.deepcopy(first.metadata))
    mine = extract(ctx)
    mine.apply_translation([1.0, 0.0, 0.0])
    mine.metadata["level"] = 99.0
    mine.metadata["bbox"].append(7)
    again = extract(ctx)
    assert len(calls) == 1
    assert np.array_equal(again.vertices, kept[0]) and np.array_equal(again.faces, kept[1])
    assert again.metadata == kept[2]


def test_eval_metrics_are_identical_with_the_mesh_read_back(ctx, built, calls):
    cfg, scene = built
    fresh = flatten(run_evaluators(ctx))
    again = EvalContext(cfg, scene, ctx.system, ctx.run, ctx.device)
    assert flatten(run_evaluators(again)) == fresh and len(calls) == 1
    assert fresh["chamfer_l1"] > 0 and fresh["mesh_level"] == 10.0


def test_no_cache_without_checkpoint_for_opted_out_extractors_or_while_trained_elsewhere(ctx, calls, monkeypatch):
    for ck in ctx.run.checkpoints():
        ck.unlink()
    extract(ctx)
    extract(ctx)
    assert len(calls) == 2 and not _entries(ctx)
    ctx.run.save_checkpoint({"step": 3, "model": {}}, 3)
    monkeypatch.setattr(MarchingCubes, "cache_meshes", False, raising=False)
    extract(ctx)
    extract(ctx)
    assert len(calls) == 4 and not _entries(ctx)
    monkeypatch.setattr(MarchingCubes, "cache_meshes", True, raising=False)
    monkeypatch.setattr(RunDir, "trainer_pid", lambda self: "1")  # its newest checkpoint may be a later model
    extract(ctx)
    extract(ctx)
    assert len(calls) == 6 and not _entries(ctx)


def test_a_mesh_over_the_size_cap_is_not_kept(ctx, calls, monkeypatch):
    import pipeline.mesh_cache as mesh_cache

    mesh = extract(ctx, resolution=24)
    monkeypatch.setattr(mesh_cache, "MAX_ENTRY_BYTES", 24 * (len(mesh.vertices) + len(mesh.faces)) - 1)
    extract(ctx, resolution=32)
    extract(ctx, resolution=32)
    assert len(calls) == 3 and len(_entries(ctx)) == 1  # the small one only


def test_a_run_folder_that_cannot_keep_meshes_still_extracts(ctx, calls):
    (ctx.run.path / EXTRACTED).parent.mkdir(parents=True, exist_ok=True)
    (ctx.run.path / EXTRACTED).write_text("a file where the folder would be")
    extract(ctx)
    extract(ctx)
    assert len(calls) == 2


def test_an_entry_is_used_for_its_own_key_only(ctx, calls):
    extract(ctx)
    path, = _entries(ctx)
    other = "f" * 64
    path.rename(entry_path(ctx.run, other))
    assert load_mesh(ctx.run, other) is None  # its file name matches that key, the key stored in it does not


def test_a_calibrated_mesh_is_kept_as_the_mesh_at_its_level(built, tmp_path, calls, monkeypatch):
    """``calibrate: silhouettes``: the level is recorded as before, and the calibrated mesh is the one reused at
    that level, the same as meshing the field at the recorded level again."""
    import json

    from pipeline.evaluate import CALIBRATIONS

    cfg, scene = built
    choice = cfg.stages["extractor"]
    calibrating = copy.deepcopy(cfg)
    calibrating.stages["extractor"].options = choice.options.model_copy(update={"calibrate": "silhouettes"})
    run = RunDir.create(tmp_path, "tiny", "dense_grid")
    run.save_checkpoint({"step": 1, "model": {}}, 1)
    ctx = EvalContext(calibrating, scene, types.SimpleNamespace(chain=_density, eval=lambda: None), run, "cpu")
    first = extract(ctx)
    (entry,) = json.loads((run.path / CALIBRATIONS).read_text()).values()
    assert calls[0]["level"] is None and "reused" not in first.metadata["level_calibration"]
    again = extract(ctx)
    assert len(calls) == 1 and again.metadata["level_calibration"] == {**entry["calibration"], "reused": True}
    assert np.array_equal(again.vertices, first.vertices) and again.metadata["level"] == entry["level"]
    explicit = extract(ctx, level=entry["level"])  # `nls export --level L`: the same call of the extractor
    assert len(calls) == 1 and "level_calibration" not in explicit.metadata
    for path in _entries(ctx):
        path.unlink()
    _same(extract(ctx), again)  # meshed afresh at the recorded level
    assert len(calls) == 2 and calls[1]["level"] == entry["level"]
    # while another process trains the run, its newest checkpoint may not be the model loaded: the record of
    # that checkpoint is neither used nor added to
    run.save_checkpoint({"step": 2, "model": {}}, 2)
    monkeypatch.setattr(RunDir, "trainer_pid", lambda self: "1")
    extract(ctx)
    assert len(calls) == 3 and calls[2]["level"] is None
    assert len(json.loads((run.path / CALIBRATIONS).read_text())) == 1
