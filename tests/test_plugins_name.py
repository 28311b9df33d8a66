"""`nls plugins NAME`: one component (stage, plugin, whole description, every option) or one plugin (its
table and options), as text or JSON; an unknown NAME suggests close matches; a misspelt component
option's error names `nls plugins COMPONENT`."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_scene
from pipeline.plugins_list import plugins_data
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.types import ConfigError


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    """A wide console, so that option lines are not wrapped."""
    monkeypatch.setenv("COLUMNS", "300")


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``nls plugins ARGS`` in this process: (exit code, stdout, stderr)."""
    rc = main(["plugins", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def component(name: str) -> dict:
    """The entry of ``plugins_data(show_all=True)`` for the component ``name`` (built-ins only)."""
    return next(c for p in plugins_data(plugin_host(), show_all=True) for c in p["components"] if c["name"] == name)


def words(text: str) -> str:
    return " ".join(text.split())


def test_a_component_shows_its_stage_plugin_and_every_option(capsys):
    from plugins.ngp.config import MarchingCubesConfig

    rc, out, _ = run(capsys, "marching_cubes")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "component marching_cubes"
    assert "  stage:    extractor" in lines and "  plugin:   ngp" in lines, out
    assert "  consumes: sdf | occupancy | density" in lines, out
    assert "extractor marching_cubes options:" in lines, out
    for name in MarchingCubesConfig.model_fields:
        assert any(line.startswith(f"  {name}: ") for line in lines), name
    assert "plugin ngp" not in lines  # one component, not its plugin's table


def test_a_component_shows_its_whole_description(capsys):
    paragraphs = component("geometry")["description"].split("\n\n")
    assert len(paragraphs) > 1, "pick a component whose docstring has several paragraphs"
    _, out, _ = run(capsys, "geometry")
    for para in paragraphs:
        assert words(para) in words(out), para


def test_a_component_as_json_is_its_plugins_data_entry(capsys):
    rc, out, _ = run(capsys, "marching_cubes", "--json")
    assert rc == 0
    assert json.loads(out) == {"components": [json.loads(json.dumps(component("marching_cubes"), default=str))],
                               "plugins": []}


def test_a_plugin_shows_its_table_and_its_components_options(capsys):
    data = next(p for p in plugins_data(plugin_host(), show_all=True) if p["name"] == "ngp")
    rc, out, _ = run(capsys, "ngp")
    assert rc == 0 and out.startswith("plugin ngp\n")
    assert not [line for line in out.splitlines() if line.startswith("component ")], out
    for c in data["components"]:
        assert f"{c['stage']} {c['name']} options:" in out, c["name"]
    rc, out, _ = run(capsys, "ngp", "--json")
    assert json.loads(out) == {"components": [], "plugins": [json.loads(json.dumps(data, default=str))]}


def test_a_name_of_both_a_plugin_and_a_component_shows_both(capsys):
    _, out, _ = run(capsys, "hypernet")
    lines = out.splitlines()
    assert "component hypernet" in lines and "plugin hypernet" in lines, out
    data = json.loads(run(capsys, "hypernet", "--json")[1])
    assert [c["name"] for c in data["components"]] == ["hypernet"]
    assert [p["name"] for p in data["plugins"]] == ["hypernet"]


def test_a_plugin_named_as_its_component_lists_that_components_options_once(capsys):
    """`nls plugins deep_level_sets` printed the field's options twice: under the component and again
    under the plugin; the plugin part now points up to them and lists only its other components'."""
    out = run(capsys, "deep_level_sets")[1]
    assert out.count("\n  width: int = 64\n") == 1, out  # the field's first option
    lines = out.splitlines()
    assert lines.count("field deep_level_sets options:") == 1 and "field deep_level_sets options: shown above" in lines
    assert out.count("loss level_set_eikonal options:") == 1  # the plugin's other components keep theirs


def test_an_unknown_name_suggests_close_ones_and_lists_the_valid_ones(capsys):
    rc, out, err = run(capsys, "marching_cube")
    assert rc == 2 and out == ""
    assert err.startswith("error: nls plugins: no component or plugin 'marching_cube'; did you mean "
                          "'marching_cubes'"), err
    assert "Components: " in err and "hash_grid" in err and "Plugins: " in err and "rs_sdf" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("extra, needle", [(["--config"], "give it without NAME 'ngp'"),
                                           (["--hook", "loss"], "give it without --hook")])
def test_a_name_with_config_or_hook_is_refused(capsys, extra, needle):
    rc, out, err = run(capsys, "ngp", *extra)
    assert rc == 2 and out == "" and needle in err, err


def test_a_misspelt_component_option_names_nls_plugins_component(tmp_path, nls_host):
    scene = tmp_path / "scene.yaml"
    scene.write_text(yaml.safe_dump({**TINY_SCENE, "extractor": {"type": "marching_cubes", "resolutoin": 8}}))
    with pytest.raises(ConfigError) as err:
        load_scene(scene, nls_host)
    assert "extractor.resolutoin: unknown key" in str(err.value)
    assert "(each with its type and help: `nls plugins marching_cubes`)" in str(err.value), err.value


def test_a_component_loads_no_heavy_module():
    from tests.conftest import cli_in_fresh_python

    rc, out, heavy = cli_in_fresh_python(["plugins", "marching_cubes"])
    assert (rc, "component marching_cubes" in out, heavy) == (0, True, [])
