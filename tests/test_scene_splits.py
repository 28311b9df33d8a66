"""``scene.splits`` names checked against the dataset folder: a name it does not hold (a typo such as
``tset``) is an error naming scene.splits (or the --set that gave it), the splits the folder holds and the
nearest one; a standard NeRF name the folder lacks (a dataset without val) stays a warning. And the
eval.split message of a trained run: --set advice, not the scene file, and the splits left on disk."""

from __future__ import annotations

import json
import types
import warnings

import pytest
import yaml

from pipeline.build import load_scene_data
from pipeline.config import load_scene
from pipeline.evaluate import check_eval_split, missing_split_message
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.types import ConfigError, NLSError
from tests.test_blender import make_blender
from tests.test_blender_input import _ngp


def _scene_file(tmp_path, data, **scene):
    """A tiny scene file loading the Blender folder ``data`` (``scene`` adds options)."""
    doc = dict(TINY_SCENE, name="blend", scene={"type": "blender", "path": str(data), **scene},
               train=dict(TINY_SCENE["train"], steps=3))
    doc.pop("extractor")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load(path, overrides=()):
    cfg = load_scene(path, plugin_host(), list(overrides))
    return load_scene_data(cfg, "cpu", list(overrides))


def test_a_misspelt_split_in_a_set_is_an_error_naming_the_set_and_the_folder_splits(tmp_path):
    data = make_blender(tmp_path / "data", splits=("train", "test", "val"))
    path = _scene_file(tmp_path, data, splits=["train", "test"])
    with pytest.raises(ConfigError) as err:
        _load(path, ["scene.splits=[train,tset]"])
    msg = str(err.value)
    assert msg.startswith(f"--set scene.splits=[train,tset] (on {path}): scene.splits = [train, tset]: "), msg
    assert f"{data} has no split 'tset'; it holds the splits train, val, test (transforms_train.json, " \
           "transforms_val.json, transforms_test.json); did you mean 'test'?" in msg, msg
    assert "eval.split" not in msg


def test_a_misspelt_split_in_the_scene_file_blames_the_file(tmp_path):
    data = make_blender(tmp_path / "data", splits=("train", "test"))
    path = _scene_file(tmp_path, data, splits=["train", "Test", "holdout"])
    with pytest.raises(ConfigError) as err:
        _load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: scene.splits = [train, Test, holdout]: {data} has none of the splits 'Test', "
                          f"'holdout'; it holds the splits train, test"), msg
    assert "did you mean 'test' for 'Test'?" in msg, msg


def test_a_custom_split_on_disk_loads(tmp_path):
    data = make_blender(tmp_path / "data", splits=("train", "test", "holdout"))
    scene = _load(_scene_file(tmp_path, data, splits=["train", "holdout"]))
    assert set(scene.splits) == {"train", "holdout"}


def test_a_standard_split_the_dataset_lacks_is_still_only_a_warning(tmp_path):
    """Many datasets have no val split (the scenes nls renders itself, captures): a scene file that lists it
    loads the others, as before."""
    data = make_blender(tmp_path / "data", splits=("train", "test"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = _load(_scene_file(tmp_path, data, splits=["train", "val", "test"]))
    assert set(scene.splits) == {"train", "test"} and scene.meta["splits_missing"] == ["val"]
    assert any("no transforms file for split(s) ['val']; loading ['train', 'test'] (the folder holds train, test)"
               in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_a_folder_with_only_custom_split_files_names_them(tmp_path):
    """Standard names asked of a folder holding only transforms_training.json: the loader's error names the
    split files it found (it listed only transforms_{train,val,test}.json)."""
    from pipeline.scenes.blender import load_blender
    from pipeline.types import DataError

    data = make_blender(tmp_path / "data", splits=("training",))
    with pytest.raises(DataError, match=r"no transforms file in .* for the splits \['train', 'test'\].*it holds "
                                        r"transforms_\*\.json for the split\(s\) training: name them in scene.splits"):
        load_blender(data, splits=("train", "test"))


def test_an_instant_ngp_split_no_frame_has_is_an_error(tmp_path):
    """instant-ngp's transforms.json: a name that no frame's 'split' key gives was dropped without a word."""
    data = _ngp(tmp_path)
    frames = json.loads((data / "transforms.json").read_text())
    frames["frames"][1]["split"] = "holdout"
    (data / "transforms.json").write_text(json.dumps(frames))
    path = _scene_file(tmp_path, data, splits=["train", "holdot"])
    with pytest.raises(ConfigError) as err:
        _load(path)
    msg = str(err.value)
    assert "scene.splits = [train, holdot]" in msg and "has no split 'holdot'" in msg, msg
    assert "it holds the splits train, holdout" in msg and "did you mean 'holdout'?" in msg, msg
    assert set(_load(_scene_file(tmp_path, data, splits=["train", "holdout"])).splits) == {"train", "holdout"}


# --------------------------------------------------------------------------- eval.split of a trained run


def _blender_scene(root, loaded):
    return types.SimpleNamespace(splits=dict.fromkeys(loaded, 1), meta={"source": "blender", "root": str(root)})


def test_the_eval_split_message_names_the_splits_on_disk_and_the_nearest(tmp_path):
    root = make_blender(tmp_path / "data", n=1, splits=("train", "test", "val"))
    msg = missing_split_message(_blender_scene(root, ["train", "test"]), "vall", "eval.split")
    assert msg.startswith("eval.split = 'vall': the scene has no such split (it has train, test)"), msg
    assert f"{root} holds the splits train, val, test (transforms_train.json, transforms_val.json, transforms_test.json), of which val is not loaded" in msg
    assert "did you mean 'val'? (load it too with --set 'scene.splits=[train, test, val]')" in msg, msg
    # nothing more on disk than loaded: the message as before, with the nearest loaded split
    plain = missing_split_message(_blender_scene(root, ["train", "test", "val"]), "tset", "eval.split")
    assert "holds the splits" not in plain and plain.endswith("; did you mean 'test'?"), plain


def test_eval_of_a_trained_run_advises_a_set_not_the_scene_file(tmp_path):
    root = make_blender(tmp_path / "data", n=1, splits=("train", "test", "val"))
    run = tmp_path / "run"
    cfg = types.SimpleNamespace(source=str(run / "config.yaml"), eval=types.SimpleNamespace(split="vall"))
    system = types.SimpleNamespace(renderer=object())
    with pytest.raises(NLSError) as err:
        check_eval_split(cfg, _blender_scene(root, ["train", "test"]), system, ["eval.split=vall"], run_config=True)
    msg = str(err.value)
    assert msg.startswith(f"--set eval.split=vall (on {run / 'config.yaml'}): eval.split = 'vall': "), msg
    assert "in the scene file" not in msg and "give one of them with nls eval RUN --set eval.split=NAME" in msg
    assert "train, val, test" in msg and "did you mean 'val'?" in msg, msg
    cfg.source = str(tmp_path / "s.yaml")  # a scene file before training: editing it is still advice
    with pytest.raises(NLSError, match="set eval.split to one of them in the scene file or with --set"):
        check_eval_split(cfg, _blender_scene(root, ["train", "test"]), system)


# --------------------------------------------------------------------------- the commands


def test_reconstruct_and_eval_blame_the_misspelt_split(tmp_path, nls):
    """The audit's cases: `--set scene.splits=[train,tset]` blamed eval.split and the scene file; `nls eval
    --set 'scene.splits=[train, test, vall]'` never said the dataset has val."""
    data = make_blender(tmp_path / "data", n=2, size=16, splits=("train", "test", "val"))
    path = _scene_file(tmp_path, data, splits=["train", "test"])
    res = nls("reconstruct", str(path), "--set", "scene.splits=[train,tset]", "-o", str(tmp_path / "runs"), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"--set scene.splits=[train,tset] (on {path}): scene.splits = [train, tset]: {data} has no split " \
           f"'tset'" in res.stderr and "did you mean 'test'?" in res.stderr, res.stderr
    assert "eval.split" not in res.stderr and "warning" not in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("config.yaml"))

    nls("reconstruct", str(path), "-o", str(tmp_path / "runs"), "-q", "--no-eval", check=True)
    run = next((tmp_path / "runs").glob("blend/*/*"))
    bad = nls("eval", str(run), "--set", "scene.splits=[train, test, vall]", "--set", "eval.split=vall")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert f"--set scene.splits=[train, test, vall] (on {run / 'config.yaml'}): scene.splits = [train, test, " \
           f"vall]: {data} has no split 'vall'; it holds the splits train, val, test" in bad.stderr, bad.stderr
    assert "did you mean 'val'?" in bad.stderr, bad.stderr
    split = nls("eval", str(run), "--set", "eval.split=vall")
    assert split.returncode == 2 and "in the scene file" not in split.stderr, split.stderr
    assert "--set eval.split=NAME" in split.stderr and "holds the splits train, val, test" in split.stderr
    assert "did you mean 'val'? (load it too with --set 'scene.splits=[train, test, val]')" in split.stderr
    assert not (run / "eval.json").exists()
