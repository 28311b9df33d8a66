"""Scene validation: every bad input gives one paragraph naming the file, key, value and what is valid."""

from __future__ import annotations

import re

import yaml
import pytest

from pipeline.config import apply_overrides, load_scene, validate
from pipeline.hookspecs import hookimpl
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.types import ConfigError


class RgbOnlyPlugin:
    """A field that produces only colour: nothing marching cubes can contour."""

    @hookimpl
    def nls_register_fields(self, register):
        register("rgb_only", lambda cfg, ctx: None, produces={"rgb"})


def write(tmp_path, data, name="scene.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_valid_scene_round_trips_through_resolved_yaml(tmp_path, nls_host):
    cfg = load_scene(write(tmp_path, TINY_SCENE), nls_host)
    resolved = yaml.safe_dump(cfg.to_dict())
    again = validate(yaml.safe_load(resolved), nls_host, source="resolved")
    assert again.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["field"]["resolution"] == 32
    assert cfg.to_dict()["renderer"]["occ_threshold"] == 0.01  # defaults are filled in


def test_overrides_are_typed_and_reach_lists(tmp_path, nls_host):
    p = write(tmp_path, TINY_SCENE)
    cfg = load_scene(p, nls_host, ["train.steps=17", "field.resolution=40", "losses.0.kind=huber",
                                   "train.device=cpu"])
    assert cfg.train.steps == 17 and cfg.choice("field").options.resolution == 40
    assert cfg.losses[0].options.kind == "huber"


def test_changing_a_block_type_drops_the_old_components_options(tmp_path, nls_host):
    """`--set field.type=hash_grid` on a dense-grid scene: dense_grid's options are not carried over
    (they would fail hash_grid's validation); options the same command sets are kept, in any order."""
    data = dict(TINY_SCENE, field={"type": "dense_grid", "resolution": 40})
    p = write(tmp_path, data)
    for sets in (["field.type=hash_grid", "field.n_levels=4"], ["field.n_levels=4", "field.type=hash_grid"]):
        cfg = load_scene(p, nls_host, sets)
        assert cfg.choice("field").name == "hash_grid" and cfg.choice("field").options.n_levels == 4, sets
        assert "resolution" not in apply_overrides(data, sets)["field"]
    same = apply_overrides(data, ["field.type=dense_grid"])  # the same type keeps its options
    assert same["field"] == {"type": "dense_grid", "resolution": 40}
    assert load_scene(p, nls_host, ["field.type=dense_grid"]).choice("field").options.resolution == 40


def test_overrides_reach_shorthand_blocks(tmp_path, nls_host):
    """`field: dense_grid` and `losses: [photometric]` are `{type: ...}` blocks to --set as well."""
    data = dict(TINY_SCENE, field="dense_grid", losses=["photometric"])
    p = write(tmp_path, data)
    cfg = load_scene(p, nls_host, ["losses.0.weight=2", "field.resolution=40"])
    assert cfg.losses[0].options.weight == 2 and cfg.choice("field").options.resolution == 40
    cfg = load_scene(p, nls_host, ["field.type=hash_grid", "field.n_levels=4", "losses.0.type=photometric"])
    assert cfg.choice("field").name == "hash_grid" and cfg.choice("field").options.n_levels == 4
    assert apply_overrides(data, ["field=hash_grid", "field.n_levels=4"])["field"] == {"type": "hash_grid", "n_levels": 4}
    with pytest.raises(ConfigError, match="train.steps is a int, not a mapping"):
        apply_overrides(TINY_SCENE, ["train.steps.x=1"])  # a plain value stays a plain value


@pytest.mark.parametrize("override, needle", [
    ("train.steps", "expected KEY=VALUE"),
    ("losses.5.weight=1", r"indexes a list of 1 items; use an index 0..0, or give the whole list to add items, "
                          r"e.g. --set 'losses=\[\{type: NAME"),
    ("train.steps.x=1", "not a mapping"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(TINY_SCENE, [override])


def test_an_override_error_names_the_override_not_the_file(tmp_path, nls_host):
    p = write(tmp_path, TINY_SCENE)
    with pytest.raises(ConfigError) as err:
        load_scene(p, nls_host, ["train.steps=17", "train.batch_rays=many", "field.resolution=40"])
    assert str(err.value).startswith(f"--set train.batch_rays=many (on {p}): train.batch_rays = 'many'"), err.value
    bad = write(tmp_path, {**TINY_SCENE, "train": {**TINY_SCENE["train"], "stepz": 3}})
    with pytest.raises(ConfigError) as err:  # the file is at fault: it is named, whatever --set adds
        load_scene(bad, nls_host, ["train.steps=17"])
    assert str(err.value).startswith(f"{bad}: train.stepz: unknown key"), err.value


@pytest.mark.parametrize("block, override", [({"train": [1]}, "train.steps=3"),
                                             ({"field": 5}, "field.resolution=16")])
def test_a_files_block_of_the_wrong_kind_is_blamed_on_the_file_not_on_a_set(tmp_path, nls_host, block, override):
    """--steps N on a file whose `train` is a list said '--set train.steps=N: ... indexes a list', a --set the
    user never typed, with advice to replace the block."""
    bad = write(tmp_path, {**TINY_SCENE, **block})
    key = next(iter(block))
    with pytest.raises(ConfigError) as err:
        load_scene(bad, nls_host, [override])
    assert str(err.value).startswith(f"{bad}: {key} must be a mapping"), err.value


@pytest.mark.parametrize("value", ["[{type: photometric}", "{type: dense_grid, resolution: 16"])
def test_a_set_value_that_is_broken_yaml_is_named_as_such(value):
    """It was taken as a string, and the error then said e.g. "unknown field type '{type: dense_grid, ...'"."""
    with pytest.raises(ConfigError, match=r"the value is not valid YAML \(expected ',' or '[\]}]'"):
        apply_overrides(TINY_SCENE, [f"losses={value}"])
    assert apply_overrides(TINY_SCENE, ["description=a: b: c"])["description"] == "a: b: c"  # plain text stays text


def test_every_mistake_in_a_file_is_reported_at_once(tmp_path, nls_host):
    data = {**TINY_SCENE, "field": {**TINY_SCENE["field"], "resolutoin": 32},
            "train": {**TINY_SCENE["train"], "steps": "many"}, "eval": {"max_images": 0}}
    with pytest.raises(ConfigError) as err:
        load_scene(write(tmp_path, data), nls_host)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("scene.yaml: 3 problems:"), lines
    assert lines[1].startswith("  - field.resolutoin: unknown key; valid keys here: resolution"), lines
    assert lines[2].startswith("  - train.steps = 'many'"), lines
    assert lines[3].startswith("  - eval.max_images = 0"), lines


@pytest.mark.parametrize("override", ["extractor.level=nan", "extractor.level=inf", "train.lr=-inf",
                                      "eval.chamfer_samples=.nan"])
def test_non_finite_numbers_are_refused(tmp_path, nls_host, override):
    with pytest.raises(ConfigError, match="finite number|valid integer"):
        load_scene(write(tmp_path, TINY_SCENE), nls_host, [override])


def test_missing_file(nls, tmp_path):
    proc = nls("reconstruct", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "nope.yaml does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_yaml(nls, tmp_path):
    p = write(tmp_path, "scene:\n  type: procedural\n field: [oops\n")
    proc = nls("reconstruct", str(p))
    assert proc.returncode == 2
    assert "is not valid YAML at line" in proc.stderr and str(p) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_component_lists_available_with_plugins(nls, tmp_path):
    data = {**TINY_SCENE, "field": {"type": "hash_gird"}}
    proc = nls("reconstruct", str(write(tmp_path, data)))
    assert proc.returncode == 2
    err = proc.stderr
    assert "field.type" in err and "'hash_gird'" in err
    assert "dense_grid (plugin ngp)" in err and "hash_grid (plugin ngp)" in err


def test_wrong_type_names_key_value_and_help(nls, tmp_path):
    data = {**TINY_SCENE, "field": {"type": "dense_grid", "resolution": "big"}}
    proc = nls("reconstruct", str(write(tmp_path, data)))
    assert proc.returncode == 2
    assert "field.resolution = 'big'" in proc.stderr and "voxels per side" in proc.stderr


def test_unknown_option_lists_valid_keys(tmp_path, nls_host):
    data = {**TINY_SCENE, "train": {"stpes": 3}}
    with pytest.raises(ConfigError, match=r"train.stpes: unknown key; valid keys here: steps, batch_rays"):
        load_scene(write(tmp_path, data), nls_host)


def test_unknown_top_level_key(tmp_path, nls_host):
    with pytest.raises(ConfigError, match="unknown top-level key.*'feild'"):
        load_scene(write(tmp_path, {**TINY_SCENE, "feild": {}}), nls_host)


def test_incompatible_chain_is_refused_before_training(tmp_path):
    host = plugin_host(("rgbonly", RgbOnlyPlugin()))
    data = {**TINY_SCENE, "field": {"type": "rgb_only"}}
    data.pop("renderer")
    data["losses"] = []
    data["evaluators"] = []
    with pytest.raises(ConfigError) as exc:
        load_scene(write(tmp_path, data), host)
    msg = str(exc.value)
    assert "extractor 'marching_cubes' needs sdf or occupancy or density" in msg
    assert "only provides gt_mesh, images, rgb" in msg


def test_incompatible_chain_cli(nls, tmp_path):
    # eikonal needs an sdf; the dense grid gives density
    data = {**TINY_SCENE, "losses": [{"type": "photometric"}, {"type": "eikonal"}]}
    proc = nls("reconstruct", str(write(tmp_path, data)))
    assert proc.returncode == 2
    assert "loss 'eikonal' needs sdf" in proc.stderr and "loss types that fit here" in proc.stderr


def test_missing_required_stage(tmp_path, nls_host):
    data = {k: v for k, v in TINY_SCENE.items() if k != "field"}
    with pytest.raises(ConfigError, match="missing required stage 'field'.*dense_grid"):
        load_scene(write(tmp_path, data), nls_host)


def test_unwritable_output_folder(nls, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = nls("reconstruct", str(write(tmp_path, TINY_SCENE)), "--output", str(blocker / "runs"))
    assert proc.returncode == 2
    assert "output folder" in proc.stderr and "is not a directory" in proc.stderr


def test_dangling_symlink_output_is_named(tmp_path):
    """mkdir reports a dangling link only as "File exists"; the output, cache and file checks name the link."""
    from pipeline.runs import check_output_file, check_writable
    from pipeline.types import DataError, NLSError
    from plugins.scenes.sources import make_cache_dir

    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "gone")
    why = f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
    with pytest.raises(NLSError, match=re.escape(why)):
        check_writable(link)
    with pytest.raises(NLSError, match=re.escape(why)):
        check_output_file(link / "mesh.ply")
    with pytest.raises(DataError, match=re.escape(why)):
        make_cache_dir(link / "scenes")


def test_data_root_variable_is_expanded(tmp_path, nls_host, monkeypatch):
    monkeypatch.setenv("NLS_DATA", str(tmp_path))
    data = {**TINY_SCENE, "scene": {"type": "blender", "path": "${NLS_DATA}/nerf/lego"}}
    cfg = load_scene(write(tmp_path, data), nls_host)
    assert cfg.choice("scene").options.path == f"{tmp_path}/nerf/lego"


def test_a_data_root_that_is_not_a_folder_is_named(tmp_path, nls_host, monkeypatch):
    monkeypatch.setenv("NLS_DATA", str(tmp_path / "nodata"))
    data = {**TINY_SCENE, "scene": {"type": "blender", "path": "${NLS_DATA}/nerf/lego"}}
    with pytest.raises(ConfigError, match=f"needs the data root, but NLS_DATA={tmp_path}/nodata is not a folder"):
        load_scene(write(tmp_path, data), nls_host)


def test_an_empty_data_root_variable_is_unset_as_data_root_reads_it(tmp_path, nls_host, monkeypatch):
    """NLS_DATA= made ${NLS_DATA}/nerf/lego the path /nerf/lego (the error then listed the folders of /)."""
    import pipeline.scenes

    monkeypatch.setenv("NLS_DATA", "")
    monkeypatch.setattr(pipeline.scenes, "data_root", lambda: tmp_path)  # the default root, as data_root() finds it
    data = {**TINY_SCENE, "scene": {"type": "blender", "path": "${NLS_DATA}/nerf/lego"}}
    assert load_scene(write(tmp_path, data), nls_host).choice("scene").options.path == f"{tmp_path}/nerf/lego"
    monkeypatch.setattr(pipeline.scenes, "data_root", lambda: None)
    with pytest.raises(ConfigError, match=r"needs the data root, but NLS_DATA is empty and the default root .*shared/data beside the checkout\) does not"):
        load_scene(write(tmp_path, data), nls_host)


def test_scene_type_detected_from_path(tmp_path, nls_host):
    (tmp_path / "transforms_train.json").write_text("{}")
    data = {**TINY_SCENE, "scene": {"path": str(tmp_path)}}
    cfg = load_scene(write(tmp_path, data), nls_host)
    assert cfg.choice("scene").name == "blender"


def test_old_run_config_with_removed_option_still_loads(tmp_path, nls_host, capsys):
    from pipeline.config import load_resolved

    data = {**TINY_SCENE, "train": {**TINY_SCENE["train"], "option_from_an_old_version": True}}
    cfg = load_resolved(write(tmp_path, data, "config.yaml"), nls_host)
    assert cfg.train.steps == TINY_SCENE["train"]["steps"]
    assert "train.option_from_an_old_version" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # a scene file written by a user stays strict
        load_scene(write(tmp_path, data), nls_host)


def test_an_impossible_date_in_a_scene_file_is_a_config_error(tmp_path, nls_host):
    """PyYAML's date constructor raises ValueError, not a YAMLError: it used to escape as a traceback."""
    (tmp_path / "s.yaml").write_text("name: x\nwhen: 2020-13-45\nscene: {type: procedural}\nfield: dense_grid\n")
    with pytest.raises(ConfigError, match=r"s.yaml is not valid YAML: month must be in 1..12"):
        load_scene(tmp_path / "s.yaml", nls_host)


def test_an_unknown_override_is_refused_beside_a_stale_option(tmp_path, nls_host):
    """Reading back a run drops its stale options, but a misspelt ``--set`` key in the same block is an error."""
    from pipeline.config import load_resolved

    data = {**TINY_SCENE, "train": {**TINY_SCENE["train"], "option_from_an_old_version": True}}
    with pytest.raises(ConfigError, match="train.stpes"):
        load_resolved(write(tmp_path, data, "config.yaml"), nls_host, ["train.stpes=5"])


def test_a_loss_the_chain_cannot_feed_suggests_removing_it(nls_host):
    """The README's type switch: csg_dense's tv loss needs voxels, which a hash grid has not."""
    from tests.conftest import ROOT

    scene = ROOT / "scenes" / "csg_dense.yaml"
    with pytest.raises(ConfigError, match="loss 'tv' needs voxels.*Or remove it from losses:"):
        load_scene(scene, nls_host, ["field.type=hash_grid"])
    cfg = load_scene(scene, nls_host, ["field.type=hash_grid", "losses=[{type: photometric}]"])
    assert cfg.choice("field").name == "hash_grid" and [c.name for c in cfg.losses] == ["photometric"]


def test_eval_every_spreads_the_views_before_max_images_caps_them():
    from pipeline.evaluate import eval_indices

    assert eval_indices(200, 10, None) == list(range(0, 200, 10))
    assert eval_indices(200, 10, 5) == [0, 10, 20, 30, 40]
    assert eval_indices(3, 1, None) == [0, 1, 2] and eval_indices(3, 2) == [0, 2]
    assert eval_indices(7, 1, 10) == list(range(7))


def test_a_key_given_twice_is_refused_naming_the_file_the_key_and_both_lines(tmp_path, nls_host):
    """YAML keeps the last of two equal keys; a scene that gives `train:` twice would lose the first silently."""
    from pipeline.config import load_resolved

    base = yaml.safe_dump({k: v for k, v in TINY_SCENE.items() if k != "train"}, sort_keys=False)
    p = write(tmp_path, "train: {steps: 5}\n" + base + "train: {lr: 0.05}\n")
    last = len(p.read_text().splitlines())
    with pytest.raises(ConfigError, match=rf"^scene file {p}: key 'train' is given twice, at lines 1 and {last};"):
        load_scene(p, nls_host)
    nested = write(tmp_path, base.replace("  resolution: 32\n", "  resolution: 32\n  resolution: 64\n"),
                   "nested.yaml")
    line = nested.read_text().splitlines().index("  resolution: 64") + 1
    with pytest.raises(ConfigError, match=rf"{nested}: key 'field.resolution' is given twice, at lines {line - 1} "
                                          rf"and {line};"):
        load_scene(nested, nls_host)
    flow = write(tmp_path, base + "train: {steps: 5, steps: 6}\n", "flow.yaml")
    with pytest.raises(ConfigError, match=r"key 'train.steps' is given twice, at line \d+, columns 9 and 19"):
        load_scene(flow, nls_host)
    with pytest.raises(ConfigError, match="key 'train' is given twice"):  # a run's own config.yaml too
        load_resolved(write(tmp_path, p.read_text(), "config.yaml"), nls_host)
    merged = write(tmp_path, base + "train: &t {steps: 5, lr: 0.02}\nx: {<<: *t, steps: 7}\n", "merge.yaml")
    with pytest.raises(ConfigError, match="unknown top-level key.*'x'"):  # a merge key may be overridden: no duplicate
        load_scene(merged, nls_host)


def test_a_set_value_with_a_repeated_key_is_refused(tmp_path, nls_host):
    p = write(tmp_path, TINY_SCENE)
    with pytest.raises(ConfigError, match=r"--set train=\{steps: 5, steps: 6\}: the value gives key 'steps' twice"):
        load_scene(p, nls_host, ["train={steps: 5, steps: 6}"])
    with pytest.raises(ConfigError, match="gives key 'a' twice"):  # a str option would have taken the text
        load_scene(p, nls_host, ["output.root={a: 1, a: 2}"])


@pytest.mark.parametrize("override, key, kind", [
    ("train.steps=yes", "train.steps", "an integer"),
    ("train.steps=true", "train.steps", "an integer"),
    ("train.checkpoint_every=on", "train.checkpoint_every", "an integer"),
    ("field.resolution=true", "field.resolution", "an integer"),
    ("eval.max_images=true", "eval.max_images", "an integer"),  # Optional[int]
    ("train.lr=yes", "train.lr", "a number"),
    ("train.max_seconds=on", "train.max_seconds", "a number"),  # Optional[float]
    ("losses.0.weight=true", "losses.0.weight", "a number"),
    ("reference.psnr.value=true", "reference.psnr.value", "a number"),
])
def test_a_yaml_boolean_is_not_taken_for_a_number(tmp_path, nls_host, override, key, kind):
    """`--set train.steps=yes` used to train 1 step: pydantic turns True into 1 for an int field."""
    p = write(tmp_path, TINY_SCENE)
    with pytest.raises(ConfigError) as err:
        load_scene(p, nls_host, [override])
    assert str(err.value).startswith(f"--set {override} (on {p}): {key} = True: expected {kind}, not a boolean "
                                     f"(YAML reads yes/no/on/off/true/false as booleans)"), err.value


def test_a_boolean_in_the_file_is_refused_and_other_coercions_stay(tmp_path, nls_host):
    bad = write(tmp_path, {**TINY_SCENE, "train": {**TINY_SCENE["train"], "steps": True}})
    with pytest.raises(ConfigError, match=rf"^{bad}: train.steps = True: expected an integer, not a boolean"):
        load_scene(bad, nls_host)
    cfg = load_scene(write(tmp_path, TINY_SCENE), nls_host,
                     ["train.steps='7'", "train.lr=1", "train.pixel_jitter=yes", "evaluators.0.ssim=on"])
    assert cfg.train.steps == 7 and cfg.train.lr == 1.0 and cfg.train.pixel_jitter is True
    assert cfg.evaluators[0].options.ssim is True  # a bool option takes YAML's booleans as ever


def test_bool_for_number_looks_inside_unions_and_lists():
    from typing import Any, Literal, Optional, Union

    from pipeline.components import bool_for_number

    assert bool_for_number(int, True) == "an integer, not a boolean"
    assert bool_for_number(Optional[float], False) == "a number, not a boolean"
    assert bool_for_number(Optional[list[float]], [0.0, True, 1.0]) == "a number, not a boolean, at item 1"
    assert bool_for_number(Literal[1, 2, 4], True) == "an integer, not a boolean"
    for ann in (bool, Any, Optional[bool], Union[int, bool], Literal[True, "auto"], str):
        assert bool_for_number(ann, True) is None, ann
    assert bool_for_number(int, 1) is None and bool_for_number(list[int], [1, 2]) is None


@pytest.mark.parametrize("value", [{"x": 1}, 2024, ["a"]])
def test_description_must_be_a_string(tmp_path, nls_host, value):
    with pytest.raises(ConfigError, match=r"description = .* must be a string"):
        load_scene(write(tmp_path, {**TINY_SCENE, "description": value}), nls_host)
    assert load_scene(write(tmp_path, {**TINY_SCENE, "description": None}), nls_host).description == ""


def test_description_set_as_a_mapping_is_refused(tmp_path, nls_host):
    """`--set description.x=1` on a scene without a description used to record description: "{'x': 1}"."""
    p = write(tmp_path, TINY_SCENE)
    with pytest.raises(ConfigError, match=rf"^--set description.x=1 \(on {p}\): description = \{{'x': 1\}} must be "
                                          r"a string"):
        load_scene(p, nls_host, ["description.x=1"])
    assert load_scene(p, nls_host, ["description=a sphere"]).description == "a sphere"


def test_a_missing_required_option_is_named_without_a_value(tmp_path, nls_host):
    p = write(tmp_path, TINY_SCENE)
    with pytest.raises(ConfigError) as err:
        load_scene(p, nls_host, ["scene.type=blender"])
    assert str(err.value).startswith(f"--set scene.type=blender (on {p}): scene.path is required ("), err.value
    assert "= {}" not in str(err.value) and "Field required" not in str(err.value)


@pytest.mark.parametrize("scene", [{k: v for k, v in TINY_SCENE.items() if k != "evaluators"},
                                   {**TINY_SCENE, "evaluators": []}, {**TINY_SCENE, "evaluators": None}])
def test_an_index_into_absent_evaluators_says_to_give_the_list(tmp_path, nls_host, scene):
    p = write(tmp_path, scene)
    for sets in (["evaluators.0.type=psnr"], ["evaluators.0=psnr"]):
        with pytest.raises(ConfigError) as err:
            load_scene(p, nls_host, sets)
        msg = str(err.value)
        assert msg.startswith(f"--set {sets[0]}: evaluators.0 indexes evaluators, which is empty"), msg
        assert "--set 'evaluators=[{type: NAME, OPTION: VALUE}, ...]'" in msg and "0..-1" not in msg, msg
    cfg = load_scene(p, nls_host, ["evaluators=[{type: psnr}]", "evaluators.0.ssim=false"])
    assert [c.name for c in cfg.evaluators] == ["psnr"] and cfg.evaluators[0].options.ssim is False


@pytest.mark.parametrize("text", ["", "\n", "# just a comment\n"])
def test_an_empty_scene_file_is_called_empty(tmp_path, nls_host, text):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^scene file {p} is empty \(or holds only comments\); a scene needs"):
        load_scene(p, nls_host)


def test_a_missing_scene_path_names_the_file_key_data_root_and_near_names(tmp_path, nls_host, monkeypatch):
    from pipeline.build import check_scene_path

    (tmp_path / "data" / "nerf" / "lego").mkdir(parents=True)
    monkeypatch.setenv("NLS_DATA", str(tmp_path / "data"))
    scene = tmp_path / "lego.yaml"
    scene.write_text(yaml.safe_dump({"name": "lego", "scene": {"type": "blender", "path": "${NLS_DATA}/nerf/leog"},
                                     "field": {"type": "dense_grid"}, "renderer": {"type": "volume"},
                                     "losses": ["photometric"]}))
    with pytest.raises(ConfigError) as err:
        check_scene_path(load_scene(scene, nls_host))
    text = str(err.value)
    assert text.startswith(f"{scene}: scene.path = '{tmp_path / 'data/nerf/leog'}': no such file or folder"), text
    assert f"the data root {tmp_path / 'data'} is $NLS_DATA" in text and f"did you mean {tmp_path / 'data/nerf/lego'}?" in text
    sets = [f"scene.path={tmp_path / 'data/nerf/lego2'}"]
    with pytest.raises(ConfigError, match=r"^--set scene\.path=.*lego2 \(on .*lego\.yaml\): scene\.path = "):
        check_scene_path(load_scene(scene, nls_host, sets), sets)
    check_scene_path(load_scene(scene, nls_host, [f"scene.path={tmp_path / 'data/nerf/lego'}"]))  # exists: fine
    # an undefined variable is named (it stayed in the path as text before)
    with pytest.raises(ConfigError, match=r"scene\.path: '\$\{NLS_DAT\}/nerf/lego' uses the environment variable\(s\) "
                                          r"NLS_DAT, which are not set"):
        load_scene(scene, nls_host, ["scene.path=${NLS_DAT}/nerf/lego"])


@pytest.mark.parametrize("overrides, blamed", [
    ([], "s.yaml"),
    (["train.steps=3", "scene.path=/x"], "--set scene.path=/x (on s.yaml)"),
    (["scene={type: mesh, path: /y}", "train.steps=3"], "--set scene={type: mesh, path: /y} (on s.yaml)"),
    (["scene.extent=2"], "s.yaml"),  # another key of the block
    (["scene.pathology=1"], "s.yaml"),  # a key that only starts the same
])
def test_where_set_blames_the_last_override_of_the_key_or_its_block(overrides, blamed):
    from pipeline.config import where_set

    assert where_set("s.yaml", overrides, "scene.path") == blamed


def test_several_mistakes_in_one_block_are_listed_one_per_line_and_each_counted(tmp_path, nls_host):
    """Two mistakes in `field` (and three in `train`) were joined with '; ' onto one line and counted as
    one problem: "2 problems" for five mistakes."""
    data = {**TINY_SCENE, "field": {**TINY_SCENE["field"], "resolution": -5, "featurs": 8},
            "train": {**TINY_SCENE["train"], "lr": "fast", "steps": "lots", "batch_ray": None}}
    with pytest.raises(ConfigError) as err:
        load_scene(write(tmp_path, data), nls_host)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("scene.yaml: 5 problems:"), lines
    assert len(lines) == 6, lines
    assert lines[1].startswith("  - field.resolution = -5: Input should be greater than or equal to 8 (") \
        and lines[1].endswith(")."), lines
    assert lines[2].startswith("  - field.featurs: unknown key; valid keys here: resolution, features"), lines
    assert lines[3].startswith("  - train.steps = 'lots': "), lines
    assert lines[4].startswith("  - train.lr = 'fast': "), lines
    assert lines[5].startswith("  - train.batch_ray: unknown key; valid keys here: steps, batch_rays"), lines
    assert not any("; field." in ln or "; train." in ln for ln in lines), lines


def test_several_mistakes_in_one_block_from_the_command_line(nls, tmp_path):
    """The README walkthrough: a copy of scenes/csg_dense.yaml with three mistakes, two of them in `field`."""
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenes" / "csg_dense.yaml").read_text())
    data["field"].update(resolution=-5, featurs=8)
    data["train"]["lr"] = "fast"
    proc = nls("reconstruct", str(write(tmp_path, data, "bad.yaml")), "--steps", "5", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: {tmp_path / 'bad.yaml'}: 3 problems:", lines
    assert [ln.split(":")[0].split(" =")[0] for ln in lines[1:]] == \
        ["  - field.resolution", "  - field.featurs", "  - train.lr"], lines


def test_an_unset_variable_and_another_mistake_in_one_block_are_both_reported(tmp_path, nls_host, monkeypatch):
    monkeypatch.delenv("MYDATA", raising=False)
    data = {**TINY_SCENE, "scene": {"type": "blender", "path": "${MYDATA}/lego", "bogus": 1}}
    with pytest.raises(ConfigError) as err:
        load_scene(write(tmp_path, data), nls_host)
    lines = str(err.value).splitlines()
    assert lines[0].endswith("scene.yaml: 2 problems:"), lines
    assert lines[1] == "  - scene.path: '${MYDATA}/lego' uses the environment variable(s) MYDATA, which are not " \
                       "set (${NLS_DATA} is the data root)", lines
    assert lines[2].startswith("  - scene.bogus: unknown key; valid keys here: "), lines


@pytest.mark.parametrize("root_from_env", [True, False])
@pytest.mark.parametrize("path, name", [("${NLS_DATAX}/nerf/lego", "NLS_DATAX"),
                                        ("${NLS_DATA_DIR}/nerf/lego", "NLS_DATA_DIR"),
                                        ("$NLS_DATAX/nerf/lego", "NLS_DATAX"),
                                        ("$NLS_DATA_DIR/nerf/lego", "NLS_DATA_DIR")])
def test_a_misspelt_data_root_variable_is_named_as_unset(tmp_path, nls_host, monkeypatch, root_from_env, path, name):
    """Any ${...} with NLS_DATA in it was taken for the data root: ${NLS_DATAX} stayed in the path as text,
    and $NLS_DATAX became <root>X when the default root was used. Only NLS_DATA itself is the data root."""
    import pipeline.scenes

    for var in ("NLS_DATAX", "NLS_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    if root_from_env:
        monkeypatch.setenv("NLS_DATA", str(tmp_path))
    else:  # the default root, as data_root() finds it
        monkeypatch.delenv("NLS_DATA", raising=False)
        monkeypatch.setattr(pipeline.scenes, "data_root", lambda: tmp_path)
    unset = re.escape(f"uses the environment variable(s) {name}, which are not set")
    data = {**TINY_SCENE, "scene": {"type": "blender", "path": path}}
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}/scene\.yaml: scene\.path: .*{unset}"):
        load_scene(write(tmp_path, data), nls_host)
    good = write(tmp_path, {**TINY_SCENE, "scene": {"type": "blender", "path": "$NLS_DATA/nerf/lego"}}, "good.yaml")
    assert load_scene(good, nls_host).choice("scene").options.path == f"{tmp_path}/nerf/lego"
    with pytest.raises(ConfigError, match=rf"^--set scene\.path=.* \(on .*good\.yaml\): scene\.path: .*{unset}"):
        load_scene(good, nls_host, [f"scene.path={path}"])
    with pytest.raises(ConfigError, match=rf"scene\.path: .*{unset}"):  # also where the path picks the scene type
        load_scene(good, nls_host, [f"scene={{path: '{path}'}}"])


def test_a_bad_reference_figure_says_a_number_or_value_and_source_is_valid(tmp_path, nls_host):
    """It said "must be a mapping of options, got 'abc'", although a bare number is valid too."""
    ok = validate({**TINY_SCENE, "reference": {"psnr": {"value": 31.2, "source": "Table 1"}, "chamfer_l1": 4.5,
                                               "ssim": 1}}, nls_host, source="s.yaml")
    assert {k: (v.value, v.source) for k, v in ok.reference.items()} == \
        {"psnr": (31.2, "Table 1"), "chamfer_l1": (4.5, ""), "ssim": (1.0, "")}
    with pytest.raises(ConfigError) as err:
        validate({**TINY_SCENE, "reference": {"chamfer_l1": "abc"}}, nls_host, source="s.yaml")
    assert str(err.value) == ("s.yaml: reference.chamfer_l1 = 'abc' must be a number (the published value) or a "
                              "mapping {value: number, source: text}"), err.value
    with pytest.raises(ConfigError) as err:  # every bad figure is reported, one line each
        validate({**TINY_SCENE, "reference": {"chamfer_l1": "abc", "psnr": [31], "ssim": {"value": "x"}}},
                 nls_host, source="s.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "s.yaml: 3 problems:", lines
    assert lines[1].startswith("  - reference.chamfer_l1 = 'abc' must be a number"), lines
    assert lines[2].startswith("  - reference.psnr = [31] must be a number"), lines
    assert lines[3].startswith("  - reference.ssim.value = 'x': "), lines


def test_a_missing_default_data_root_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    """NLS_DATA unset and no shared/data beside the checkout: the error names the folder it looked for
    (a relative '../shared/data' read as relative to the current folder, which it is not)."""
    import pipeline.scenes as scenes
    from pipeline.config import expand_vars

    monkeypatch.delenv("NLS_DATA", raising=False)
    monkeypatch.setattr(scenes, "repo_root", lambda: tmp_path / "checkout")
    with pytest.raises(ConfigError) as err:
        expand_vars("${NLS_DATA}/meshes/spot.obj")
    assert f"the default root {tmp_path / 'shared' / 'data'} (shared/data beside the checkout)" in str(err.value)
    assert "NLS_DATA is not set" in str(err.value)
