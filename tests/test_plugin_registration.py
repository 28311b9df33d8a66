"""A plugin author's mistakes at registration time are one clear error naming the plugin, never a traceback."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

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
    from pipeline.cli import _missing_plugins_hint

    _write(tmp_path / "work" / "pdir", "relwalk.py", '''
        from pipeline.hookspecs import hookimpl
        @hookimpl
        def nls_register_losses(register):
            register("relwalk_loss", "torch.nn:Identity")
    ''')
    monkeypatch.chdir(tmp_path / "work")
    host = plugin_host(builtins=False, plugins_dirs=[Path("pdir")])
    recorded = {"plugins": [vars(p) for p in host.plugins()]}  # as cli.py writes plugins.json
    source = Path(recorded["plugins"][0]["source"])
    assert source.is_absolute() and source == (tmp_path / "work" / "pdir" / "relwalk.py").resolve()
    monkeypatch.chdir(tmp_path)  # the run opened from another working directory
    hint = _missing_plugins_hint(_Run(json.loads(json.dumps(recorded))), plugin_host(builtins=False))
    assert f"pass --plugins-dir {source.parent}." in hint and source.parent.is_dir()


def test_an_old_relative_source_in_plugins_json_still_gives_a_hint():
    from pipeline.cli import _missing_plugins_hint

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
