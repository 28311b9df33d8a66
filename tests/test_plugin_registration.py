"""A plugin author's mistakes at registration time are one clear error naming the plugin, never a traceback."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, model_validator

from pipeline.components import ComponentConfig, Registrar
from pipeline.hookspecs import hookimpl
from pipeline.plugins_list import plugins_data
from pipeline.testing import plugin_host
from pipeline.types import PluginError
from tests.conftest import ROOT


@dataclass
class DataclassConfig:
    """Not a ComponentConfig: a dataclass."""

    weight: float = 1.0


class PlainModel(BaseModel):
    """Not a ComponentConfig: a plain pydantic model."""

    weight: float = 1.0


class MissingDependency:
    @hookimpl
    def nls_register_losses(self, register):
        import my_missing_dependency_xyz  # noqa: F401


class RaisesInHook:
    @hookimpl
    def nls_register_fields(self, register):
        raise RuntimeError("boom while registering")


class BadName:
    @hookimpl
    def nls_register_losses(self, register):
        register("my loss", "torch.nn:Identity")


class LazyDataclassConfig:
    @hookimpl
    def nls_register_losses(self, register):
        register("lazy_dc", "torch.nn:Identity", config=f"{__name__}:DataclassConfig")


class TwoImpls:
    """Two implementations of one hook, the second through pluggy's ``specname``."""

    def __init__(self):
        self.calls: list[str] = []

    @hookimpl
    def nls_register_losses(self, register):
        self.calls.append("a")
        register("two_a", "torch.nn:Identity")

    @hookimpl(specname="nls_register_losses")
    def more_losses(self, register):
        self.calls.append("b")
        register("two_b", "torch.nn:Identity")


def _write(folder: Path, name: str, body: str) -> Path:
    """Write plugin file ``folder/name`` (dedented) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(body))
    return folder


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """``nls argv`` in-process: (exit code, stderr)."""
    from pipeline.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err


# -- 1. exceptions inside a register hook, or at import of a --plugins-dir file --------------------------
def test_an_import_error_inside_a_register_hook_is_a_plugin_error_naming_it():
    host = plugin_host(("needsdep", MissingDependency()), builtins=False)
    with pytest.raises(PluginError, match=r"plugin 'needsdep' \(registered in-process\): its nls_register_losses "
                                          r"hook failed: ModuleNotFoundError: No module named "
                                          r"'my_missing_dependency_xyz'"):
        host.components()


def test_any_exception_inside_a_register_hook_is_a_plugin_error():
    host = plugin_host(("boomreg", RaisesInHook()), builtins=False)
    with pytest.raises(PluginError, match="plugin 'boomreg'.*nls_register_fields hook failed: RuntimeError: boom"):
        host.components()


def test_nls_trace_plugins_lets_the_hook_traceback_through(monkeypatch):
    monkeypatch.setenv("NLS_TRACE_PLUGINS", "1")
    host = plugin_host(("needsdep2", MissingDependency()), builtins=False)
    with pytest.raises(ModuleNotFoundError):
        host.components()


def test_nls_plugins_prints_one_line_naming_the_plugin_file_and_missing_module(tmp_path, capsys):
    d = _write(tmp_path / "pd", "hookdep.py", '''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            from my_missing_dependency_xyz import thing
    ''')
    rc, err = _cli(["plugins", "--plugins-dir", str(d)], capsys)
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()]
    assert f"plugin 'hookdep' ({d.resolve() / 'hookdep.py'})" in err and "'my_missing_dependency_xyz'" in err


def test_a_plugins_dir_file_failing_to_import_is_one_line(tmp_path, capsys):
    d = _write(tmp_path / "pd", "topdep.py", "import my_missing_dependency_xyz\n")
    rc, err = _cli(["plugins", "--plugins-dir", str(d)], capsys)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1  # as a failing hook
    assert "topdep.py failed to import" in err and "'my_missing_dependency_xyz'" in err


# -- 2. an invalid component name ---------------------------------------------------------------------
def test_an_invalid_component_name_is_a_plugin_error():
    with pytest.raises(PluginError, match=r"plugin 'bn': loss component name 'my loss' must be letters, digits, "
                                          r"_ or - \(e.g. 'my_loss'\)"):
        Registrar("bn", "loss")("my loss", "torch.nn:Identity")


def test_a_hook_registering_an_invalid_name_is_a_plugin_error():
    host = plugin_host(("badname", BadName()), builtins=False)
    with pytest.raises(PluginError, match="plugin 'badname': loss component name 'my loss'"):
        host.components()


# -- 3. config= that is not a ComponentConfig ----------------------------------------------------------
@pytest.mark.parametrize("config", [DataclassConfig, PlainModel, None, 3])
def test_a_config_that_is_not_a_component_config_is_refused_at_registration(config):
    with pytest.raises(PluginError, match=r"loss 'nc_loss' of plugin nc: config=.* must be a subclass of "
                                          r"pipeline.components.ComponentConfig"):
        Registrar("nc", "loss")("nc_loss", "torch.nn:Identity", config=config)


def test_component_config_subclasses_and_lazy_strings_are_accepted():
    class Good(ComponentConfig):
        weight: float = 1.0

    reg = Registrar("ok", "loss")
    reg("good", "torch.nn:Identity", config=Good)
    reg("lazy", "torch.nn:Identity", config="pipeline.components:ComponentConfig")
    reg("default", "torch.nn:Identity")
    assert [c.config_class() for c in reg.collected] == [Good, ComponentConfig, ComponentConfig]


def test_a_lazy_config_string_is_checked_when_loaded():
    host = plugin_host(("lazydc", LazyDataclassConfig()), builtins=False)
    comp = host.component("loss", "lazy_dc")  # registering a "module:attr" string imports nothing
    with pytest.raises(PluginError, match=r"loss 'lazy_dc' of plugin lazydc: config=.*:DataclassConfig must be "
                                          r"a subclass of pipeline.components.ComponentConfig \(a pydantic model"):
        comp.config_class()
    with pytest.raises(PluginError, match="loss 'lazy_dc' of plugin lazydc"):  # nls plugins --all
        plugins_data(host, show_all=True)


def test_every_builtin_config_is_a_component_config(nls_host):
    for comp in nls_host.components():
        assert issubclass(comp.config_class(), ComponentConfig), comp


# -- 4. two implementations of one hook in one plugin ---------------------------------------------------
def test_each_implementation_of_a_hook_is_called_once():
    plugin = TwoImpls()
    host = plugin_host(("two", plugin), builtins=False)
    assert sorted(c.name for c in host.components("loss")) == ["two_a", "two_b"]
    assert sorted(plugin.calls) == ["a", "b"]
    assert {c.plugin for c in host.components("loss")} == {"two"}


def test_two_implementations_in_a_plugins_dir_file(tmp_path, capsys):
    d = _write(tmp_path / "pd", "dupimpl.py", '''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            register("dupimpl_a", "torch.nn:Identity")
        @hookimpl(specname="nls_register_losses")
        def more_losses(register):
            register("dupimpl_b", "torch.nn:Identity")
    ''')
    rc, _ = _cli(["plugins", "--json", "--plugins-dir", str(d)], capsys)
    assert rc == 0


# -- 5. plugins.json records a --plugins-dir file by its absolute path ------------------------------------
def test_a_relative_plugins_dir_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    from pipeline.commands.run_loading import _missing_plugins_hint

    _write(tmp_path / "work" / "pdir", "relwalk.py", '''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            register("relwalk_loss", "torch.nn:Identity")
    ''')
    monkeypatch.chdir(tmp_path / "work")
    host = plugin_host(builtins=False, plugins_dirs=[Path("pdir")])
    recorded = {"plugins": [vars(p) for p in host.plugins()]}  # as nls reconstruct writes plugins.json
    source = Path(recorded["plugins"][0]["source"])
    assert source.is_absolute() and source == (tmp_path / "work" / "pdir" / "relwalk.py").resolve()
    monkeypatch.chdir(tmp_path)  # the run opened from another working directory
    hint = _missing_plugins_hint(_Run(json.loads(json.dumps(recorded))), plugin_host(builtins=False))
    assert f"pass --plugins-dir {source.parent}." in hint and source.parent.is_dir()


def test_an_old_relative_source_in_plugins_json_still_gives_a_hint():
    from pipeline.commands.run_loading import _missing_plugins_hint

    old = {"plugins": [{"name": "walk", "version": "0", "source": "pdir/walk.py", "hooks": []}]}
    hint = _missing_plugins_hint(_Run(old), plugin_host(builtins=False))
    assert "walk (from pdir/walk.py): pass --plugins-dir pdir" in hint


class _Run:
    """A run folder holding only ``plugins.json``."""

    def __init__(self, plugins_json: dict):
        self._data = plugins_json

    def read_json(self, name: str) -> dict:
        """``plugins.json``'s data; None for any other record."""
        return self._data if name == "plugins.json" else None


# -- 6. the scaffold depends on nls's own distribution, not PyPI's unrelated "nls" ---------------------------
def test_the_scaffold_depends_on_nls_by_its_distribution_name(tmp_path):
    from pipeline.scaffold import new_plugin

    root = new_plugin("depcheck", tmp_path)
    text = (root / "pyproject.toml").read_text()
    deps = {re.split(r"[\s\[<>=!~;]", d)[0].lower() for d in tomllib.loads(text)["project"]["dependencies"]}
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert ours != "nls" and deps == {ours}
    assert "install it from its repository" in text and "unrelated" in text
    readme = (root / "README.md").read_text()
    assert "installed from its repository" in readme and ours in readme and "unrelated" in readme


# -- 7. config classes, produces/consumes, clashes, hooks and subcommands (the plugin-author audit) --------
class NegativeDefault(ComponentConfig):
    weight: float = Field(-1.0, ge=0, description="a default its own bound refuses")


class UnserialisableDefault(ComponentConfig):
    thing: object = Field(default_factory=object)


class NanDefault(ComponentConfig):
    scale: float = float("nan")


class CrossChecked(ComponentConfig):
    """A required option and a model validator relating it to another: valid, the scene file gives ``low``."""

    low: int
    high: int = 2

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError("low must be below high")
        return self


class TypeOption(ComponentConfig):
    type: str = "mine"


class RequiredOption(ComponentConfig):
    path: str  # no default: the scene file gives it
    scale: float = 2.0


@pytest.mark.parametrize("config, needle", [
    (NegativeDefault, "the default of option 'weight' of its config class NegativeDefault, -1.0, is not a valid "
                      "value of that option (Input should be greater than or equal to 0)"),
    (UnserialisableDefault, "the default of option 'thing' of its config class UnserialisableDefault, <object"),
    (NanDefault, "the default of option 'scale' of its config class NanDefault is nan; options refuse nan"),
    (TypeOption, "has an option named 'type', which is reserved"),
])
def test_a_config_class_with_a_bad_default_or_a_type_option_is_refused(config, needle):
    """They used to train, then fail to reopen (eval, resume) or corrupt config.yaml. An option named type is
    refused at registration; defaults when a scene uses the component (config_class, before training), so
    start-up does not validate every component's defaults."""
    reg = Registrar("p", "loss")
    with pytest.raises(PluginError, match=re.escape("loss 'cc' of plugin p: ") + ".*" + re.escape(needle)):
        reg("cc", "torch.nn:Identity", config=config)
        reg.collected[-1].config_class()


def test_an_option_without_a_default_is_left_to_the_scene_file():
    Registrar("p", "loss")("req", "torch.nn:Identity", config=RequiredOption)
    Registrar("p", "loss")("cross", "torch.nn:Identity", config=CrossChecked)


def test_a_string_produces_or_consumes_is_one_quantity_and_a_set_of_alternatives_is_refused():
    reg = Registrar("p", "field")
    reg("s", "torch.nn:Identity", produces="sdf", consumes="points")
    assert reg.collected[0].produces == {"sdf"} and reg.collected[0].consumes == (frozenset({"points"}),)
    reg("one", "torch.nn:Identity", consumes={"points"})  # a one-element set is one alternative
    assert reg.collected[1].consumes == (frozenset({"points"}),)
    with pytest.raises(PluginError, match=r"field 'both' of plugin p: consumes=.* is ambiguous; .*"
                                          r"needs points\+render, consumes=\['points', 'render'\] needs any one"):
        reg("both", "torch.nn:Identity", consumes={"render", "points"})


class SameNameTwice:
    @hookimpl
    def nls_register_losses(self, register):
        register("twice", "torch.nn:Identity")
        register("twice", "torch.nn:Identity")


def test_a_plugin_registering_one_name_twice_is_told_so_without_other_plugins_remedies():
    host = plugin_host(("twice_plugin", SameNameTwice()), builtins=False)
    with pytest.raises(Exception, match="loss component 'twice' is registered twice by plugin 'twice_plugin' "
                                        r"\(registered in-process\); register each name once"):
        host.components()


def test_a_clash_with_a_plugins_dir_file_names_the_file_not_nls_load_plugins(tmp_path):
    d = _write(tmp_path / "pd", "clash.py", '''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            register("photometric", "torch.nn:Identity")
    ''')
    with pytest.raises(Exception) as err:
        plugin_host(plugins_dirs=[d]).components()
    text = str(err.value)
    assert "'ngp' is built in" in text and f"'clash' comes from {d.resolve() / 'clash.py'}" in text
    assert "NLS_LOAD_PLUGINS" not in text


@pytest.mark.parametrize("hook, needle", [
    ("nls_register_losses(reg)", "nls calls it as nls_register_losses(register)."),  # a misnamed argument
    ("nls_register_loss(register)", "Did you mean nls_register_losses?"),  # a misspelt hook
])
def test_a_hook_nls_cannot_call_is_a_plugin_error_with_a_hint(tmp_path, capsys, hook, needle):
    d = _write(tmp_path / "pd", "badhook.py", f"""
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def {hook}:
            pass
    """)
    rc, err = _cli(["plugins", "--plugins-dir", str(d)], capsys)
    assert rc == 1 and needle in err and "Traceback" not in err, err


def test_a_hook_without_hookimpl_is_warned_about(tmp_path, capsys):
    d = _write(tmp_path / "pd", "unmarked.py", '''
        def nls_register_losses(register):
            register("never", "torch.nn:Identity")
    ''')
    rc, err = _cli(["plugins", "--plugins-dir", str(d)], capsys)
    assert rc == 0 and "warning: plugin 'unmarked': nls_register_losses is not marked @hookimpl" in err, err


def test_a_plugin_file_imports_its_helper_and_a_plugin_command_fails_in_one_line(tmp_path, capsys):
    d = _write(tmp_path / "pd", "_cmd_helpers.py", '''
        def greet(name):
            raise ValueError(f"no greeting for {name}")
    ''')
    _write(d, "greeter.py", '''
        from pipeline.hookspecs import hookimpl
        from _cmd_helpers import greet
        @hookimpl
        def nls_add_commands(subparsers):
            p = subparsers.add_parser("greet", help="greet someone")
            p.add_argument("who")
            p.set_defaults(func=lambda args: greet(args.who))
    ''')
    rc, err = _cli(["greet", "world", "--plugins-dir", str(d)], capsys)  # --plugins-dir after the command
    assert rc == 1 and "Traceback" not in err, err
    assert "command 'greet' of plugin greeter failed: ValueError: no greeting for world" in err, err
