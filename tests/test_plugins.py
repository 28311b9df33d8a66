"""The plugin host: built-ins, entry points, --plugins-dir, env switches, duplicates, cheap imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.hookspecs import hookimpl
from pipeline.plugins import DEFAULT_PLUGINS, PluginHost
from pipeline.testing import plugin_host
from pipeline.types import NLSError
from tests.conftest import ROOT, cli_in_fresh_python


class DupPlugin:
    @hookimpl
    def nls_register_fields(self, register):
        register("dense_grid", lambda cfg, ctx: None, produces={"density"})


class BadHookPlugin:
    @hookimpl
    def nls_register_feilds(self, register):  # typo: no such hook
        pass


def test_builtins_are_registered_from_the_tuple(nls_host):
    names = {p.name for p in nls_host.plugins()}
    assert {n for n, _ in DEFAULT_PLUGINS} <= names
    stages = {c.stage for c in nls_host.components()}
    assert {"scene", "field", "density", "renderer", "extractor", "loss", "evaluator"} <= stages


def test_duplicate_component_names_both_plugins():
    host = plugin_host(("dup", DupPlugin()))
    with pytest.raises(NLSError, match="'dense_grid' is registered twice: by plugin 'ngp' and by plugin 'dup'"):
        host.components()


def test_unknown_hook_is_caught_by_check_pending():
    with pytest.raises(NLSError, match="nls_register_feilds"):
        plugin_host(("bad", BadHookPlugin()))


def test_each_host_is_fresh():
    a = plugin_host(("dup2", DupPlugin()), builtins=False)
    b = plugin_host(builtins=False)
    assert [c.name for c in a.components("field")] == ["dense_grid"]
    assert b.components("field") == []


def test_plugins_dir_loads_one_off_files(tmp_path, nls):
    (tmp_path / "myfield.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        __version__ = "9.9"
        @hookimpl
        def nls_register_fields(register):
            register("my_field", "builtins:print", produces={"sdf"}, description="demo")
    '''))
    proc = nls("plugins", "--json", "--plugins-dir", str(tmp_path), check=True)
    data = {p["name"]: p for p in json.loads(proc.stdout)}
    assert data["myfield"]["version"] == "9.9"
    assert data["myfield"]["components"][0]["name"] == "my_field"


@pytest.mark.parametrize("form", ["DIR after", "=DIR", "abbreviated", "before the subcommand"])
def test_plugins_dir_is_honoured_in_every_argparse_form(tmp_path, capsys, form):
    """``--plugins-dir=DIR`` and ``--plugins-d DIR`` load the folder too, and the folder given before the
    subcommand reaches the command's arguments (which print follow-ups and pass it to batch children)."""
    from pipeline.cli import main

    (tmp_path / "formfield.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_fields(register):
            register("form_field", "builtins:print", produces={"sdf"}, description="demo")
    '''))
    d = str(tmp_path)
    argv = {"DIR after": ["plugins", "--json", "--plugins-dir", d], "=DIR": ["plugins", "--json", f"--plugins-dir={d}"],
            "abbreviated": ["plugins", "--json", "--plugins-d", d],
            "before the subcommand": ["--plugins-dir", d, "plugins", "--json"]}[form]
    assert main(argv) == 0
    assert "formfield" in {p["name"] for p in json.loads(capsys.readouterr().out)}


def test_a_plugins_dir_before_the_subcommand_reaches_its_arguments(tmp_path, monkeypatch):
    """argparse lets the subcommand's default overwrite a top-level ``--plugins-dir``; ``main`` restores it,
    so commands that pass the folders on (``batch`` to its children, printed follow-ups) see them."""
    from pipeline import cli

    seen = []
    (tmp_path / "noop.py").write_text("")  # a folder without a plugin file is refused
    monkeypatch.setattr(cli, "cmd_plugins", lambda args: seen.append(args.plugins_dir) or 0)
    assert cli.main(["--plugins-dir", str(tmp_path), "plugins"]) == 0
    assert seen == [[str(tmp_path)]]


def test_plugins_json_lists_every_builtin_and_component(nls):
    data = json.loads(nls("plugins", "--json", "--all", check=True).stdout)
    by_name = {p["name"]: p for p in data}
    for name, _ in DEFAULT_PLUGINS:
        assert name in by_name and by_name[name]["components"], name
    comps = {c["name"]: c for p in data for c in p["components"]}
    assert comps["dense_grid"]["options"]["resolution"]["default"] == 96
    assert comps["marching_cubes"]["consumes"] == [["sdf"], ["occupancy"], ["density"]]
    indented = [n for n, c in comps.items() if "\n " in c["description"]]
    assert not indented, f"descriptions keep their docstring indentation: {indented}"


def test_hook_filter(nls):
    data = json.loads(nls("plugins", "--json", "--hook", "nls_scene_type_for_path", check=True).stdout)
    assert [p["name"] for p in data] == ["scenes"]


def test_trace_prints_hook_calls(nls):
    proc = nls("plugins", "--json", env={"NLS_TRACE_PLUGINS": "1"}, check=True)
    assert "nls_register_fields" in proc.stderr


def test_load_plugins_empty_loads_no_third_party(monkeypatch):
    monkeypatch.setenv("NLS_LOAD_PLUGINS", "")
    host = PluginHost.create()
    assert all(p.source == "builtin" for p in host.plugins())


def test_load_plugins_names_an_uninstalled_plugin(nls):
    res = nls("plugins", env={"NLS_LOAD_PLUGINS": "bogus_plugin"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "'bogus_plugin', which is not an installed nls plugin" in res.stderr, res.stderr


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json", "--all"], ["reconstruct", "--help"]])
def test_cli_does_not_import_torch(args):
    _, _, heavy = cli_in_fresh_python(args)
    assert heavy == [], f"nls {' '.join(args)} imported {','.join(heavy)}"


def test_plugin_can_add_a_subcommand(tmp_path, nls):
    (tmp_path / "hello.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_add_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("who")
            p.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)
    '''))
    proc = nls("--plugins-dir", str(tmp_path), "hello", "world", check=True)
    assert proc.stdout.strip() == "hello world"


def test_plugins_all_shows_real_defaults_and_full_type_names(capsys, monkeypatch):
    """Nested config blocks show their defaults (not PydanticUndefined); Optional[int] survives rich."""
    from pipeline.plugins_list import plugins_data, print_plugins

    host = PluginHost.create()
    text = json.dumps(plugins_data(host, show_all=True), default=str)
    assert "PydanticUndefined" not in text
    rs = next(c for p in plugins_data(host, show_all=True) for c in p["components"] if c["name"] == "voxel_occupancy")
    assert rs["options"]["dense_grid"]["default"]["resolution"] == 96
    monkeypatch.setenv("COLUMNS", "300")
    print_plugins(host, show_all=True)
    out = capsys.readouterr().out
    assert "Optional[int] = None" in out and "PydanticUndefined" not in out


def test_plugins_unknown_hook_lists_the_valid_ones():
    from pipeline.plugins_list import plugins_data

    with pytest.raises(NLSError, match="--hook 'bogus': no such hook. Valid hooks: .*nls_register_losses"):
        plugins_data(PluginHost.create(), hook="bogus")
    assert plugins_data(PluginHost.create(), hook="nls_register_losses")  # a real hook still filters


def test_plugin_tables_show_every_name_whole_when_piped(nls):
    """Piped output is 80 columns wide: component and option names must not be cut to '…'."""
    data = json.loads(nls("plugins", "--json", "--all", check=True).stdout)
    for args in ([], ["--all"]):
        text = nls("plugins", *args, env={"COLUMNS": "80"}, check=True).stdout
        words = set(text.split())
        assert "…" not in text
        for p in data:
            for c in p["components"]:
                assert c["name"] in words, (args, c["name"])
                for opt in (c.get("options") or {}) if args else ():
                    assert f"{opt}:" in words, (c["name"], opt)  # listed as "name: type = default"


def test_piped_plugin_tables_keep_what_consumes_and_produces_whole(nls):
    """Piped with COLUMNS unset, the tables are 120 columns wide (rich's 80 folded 'phi_grid+shapes')."""
    import os

    from pipeline.plugins_list import PIPED_WIDTH

    data = json.loads(nls("plugins", "--json", check=True).stdout)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "plugins"], capture_output=True, text=True,
                          env=env, check=True).stdout
    words = set(text.split())
    for p in data:
        for c in p["components"]:
            for alt in c["consumes"]:
                assert "+".join(alt) in words, (c["name"], alt)
    assert max(len(line) for line in text.splitlines()) <= PIPED_WIDTH


def test_hook_filter_takes_the_name_without_its_prefix(nls):
    full = json.loads(nls("plugins", "--json", "--hook", "nls_register_losses", check=True).stdout)
    short = json.loads(nls("plugins", "--json", "--hook", "register_losses", check=True).stdout)
    plural = json.loads(nls("plugins", "--json", "--hook", "losses", check=True).stdout)
    stage = json.loads(nls("plugins", "--json", "--hook", "loss", check=True).stdout)  # as the tables say
    assert short == full == plural == stage and full
    assert {c["stage"] for p in full for c in p["components"]} == {"loss"}  # only that stage's components
    empty = nls("plugins", "--hook", "")
    assert empty.returncode == 2 and "no such hook" in empty.stderr


@pytest.mark.parametrize("args", ["--all --json", "--all", "--config"])
def test_output_into_a_closed_pipe_stops_quietly(args):
    """`nls plugins --all [--json] | head -c 10`: no BrokenPipeError traceback, and the exit status
    of a closed pipe (141) for print() and rich tables alike (rich's own choice would be 1). The pipe's
    reading end is closed before nls starts, so its first write meets the closed pipe whatever the
    output's size (a `| head` reader may let all of it into the pipe's 64 KiB buffer first)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "plugins", *args.split()], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=ROOT, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, (proc.returncode, proc.stderr)


def test_every_built_in_option_has_help():
    """`nls plugins --all` shows each option's description; none of the built-ins may leave it empty."""
    from pipeline.plugins_list import plugins_data
    from pipeline.testing import plugin_host

    empty = [f"{c['name']}.{k}" for p in plugins_data(plugin_host(), show_all=True) for c in p["components"]
             for k, o in c["options"].items() if not o.get("help")]
    assert not empty, f"options without a description: {empty}"


BROKEN_LOSSES = '''
import torch
from pipeline.hookspecs import hookimpl

class Vector(torch.nn.Module):
    def forward(self, batch, out, system):
        return out["rgb"]  # (R, 3): not reduced

def raising_factory(cfg, ctx):
    raise ValueError("boom in factory")

@hookimpl
def nls_register_losses(register):
    register("boom", raising_factory, consumes=[{"rgb"}], description="factory raises")
    register("gone", "nonexistent_module_xyz:thing", consumes=[{"rgb"}], description="no such module")
    register("vec", lambda cfg, ctx: Vector(), consumes=[{"rgb"}], description="returns a vector")
'''


@pytest.mark.parametrize("loss, needle", [
    ("boom", "loss 'boom' of plugin brokenloss failed while being built: ValueError: boom in factory"),
    ("gone", "the factory of loss 'gone' of plugin brokenloss 'nonexistent_module_xyz:thing' cannot be loaded: "
             "ModuleNotFoundError"),
    ("vec", "returned shape (256, 3); a loss returns one scalar tensor"),
])
def test_a_broken_plugin_component_is_named_without_a_traceback(tiny_scene, tmp_path, nls, loss, needle):
    """A plugin's own exception (factory, missing module, a loss of the wrong shape) is one error
    line naming the plugin and component, exit 1; NLS_TRACE_PLUGINS=1 gives the traceback."""
    (tmp_path / "brokenloss.py").write_text(BROKEN_LOSSES)
    args = ["reconstruct", str(tiny_scene()), "--plugins-dir", str(tmp_path), "-q", "-o", str(tmp_path / "runs"),
            "--set", f"losses=[{{type: photometric}}, {{type: {loss}}}]", "--steps", "2"]
    res = nls(*args)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert needle in res.stderr, res.stderr
    if loss != "vec":  # an exception of the plugin's own: tracing lets it through
        traced = nls(*args, env={"NLS_TRACE_PLUGINS": "1"})
        assert traced.returncode != 0 and "Traceback" in traced.stderr


NAN_EVALUATOR = '''
from pipeline.hookspecs import hookimpl

@hookimpl
def nls_register_evaluators(register):
    register("nan_eval", lambda cfg, ctx: (lambda c: {"good": 1.5, "bad": float("nan"), "label": "text",
                                                      "odd": complex(1, 2)}),
             description="one NaN")
    register("list_eval", lambda cfg, ctx: (lambda c: [1.0]), description="not a mapping")
'''


def test_evaluator_results_are_checked(tiny_scene, tmp_path, nls):
    """NaN is recorded as null (summary.json stays strict JSON, with a warning); an evaluator that
    returns no mapping is a plugin error naming it."""
    (tmp_path / "naneval.py").write_text(NAN_EVALUATOR)
    base = ["reconstruct", str(tiny_scene()), "--plugins-dir", str(tmp_path), "-q", "--steps", "2"]
    res = nls(*base, "-o", str(tmp_path / "a"), "--set", "evaluators=[{type: nan_eval}]", check=True)
    assert "evaluator nan_eval: bad = nan is not finite; recorded as null" in res.stderr, res.stderr
    text = next((tmp_path / "a").rglob("summary.json")).read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["evaluators"]["nan_eval"] == {"good": 1.5, "bad": None, "label": "text", "odd": "(1+2j)"}
    assert "evaluator nan_eval: odd is a complex, not a number, text, list or mapping; recorded as its text" \
        in res.stderr, res.stderr
    assert summary["metrics"] == {"good": 1.5}
    res = nls(*base, "-o", str(tmp_path / "b"), "--set", "evaluators=[{type: list_eval}]")
    assert res.returncode == 1 and "evaluator 'list_eval' of plugin naneval returned list" in res.stderr, res.stderr


def test_a_scene_source_returning_something_else_is_a_plugin_error():
    import types

    from pipeline.build import load_scene_data
    from pipeline.types import PluginError

    choice = types.SimpleNamespace(name="odd", component=types.SimpleNamespace(plugin="oddplug"),
                                   build=lambda ctx: (lambda: {"images": []}))
    cfg = types.SimpleNamespace(stages={"scene": choice})
    with pytest.raises(PluginError, match="scene source 'odd' returned dict, not SceneData .plugin 'oddplug'"):
        load_scene_data(cfg, "cpu")


def test_a_plugins_dir_file_with_postponed_annotations_and_a_dataclass_loads(tmp_path):
    """The file runs as a registered module, so a dataclass and a config annotated Literal under
    ``from __future__ import annotations`` resolve (one crashed at import, the other at validation)."""
    from pipeline.config import validate
    from pipeline.plugins import PluginHost
    from pipeline.testing import TINY_SCENE

    (tmp_path / "futureplug.py").write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass
        from typing import Literal, Optional
        from pipeline.components import ComponentConfig
        from pipeline.hookspecs import hookimpl

        @dataclass
        class Knobs:
            scale: Optional[float] = None

        class OpConfig(ComponentConfig):
            mode: Literal["a", "b"] = "a"

        @hookimpl
        def nls_register_losses(register):
            register("future_op", "builtins:print", config=OpConfig, description="demo")
    '''))
    host = PluginHost.create(plugins_dirs=[tmp_path], entry_points_=False)
    data = {**TINY_SCENE, "losses": [{"type": "photometric"}, {"type": "future_op", "mode": "b"}]}
    cfg = validate(data, host)
    assert cfg.losses[1].options.mode == "b"


def test_a_hook_with_a_misnamed_argument_is_a_clear_error(tmp_path):
    from pipeline.plugins import PluginHost

    (tmp_path / "badargs.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(reg):
            pass
    '''))
    from pipeline.types import PluginError

    with pytest.raises(PluginError, match=r"plugin 'badargs' .* does not match nls's hooks") as err:
        PluginHost.create(plugins_dirs=[tmp_path], entry_points_=False)
    assert err.value.exit_code == 1  # the plugin's mistake, as a failing import or hook is


def test_a_plugin_subcommand_named_like_a_builtin_is_a_clear_error(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "clash.py").write_text(textwrap.dedent('''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_add_commands(subparsers):
            subparsers.add_parser("eval")
    '''))
    assert main(["--plugins-dir", str(tmp_path), "plugins"]) == 2
    assert "plugin 'clash' adds a subcommand nls already has" in capsys.readouterr().err
