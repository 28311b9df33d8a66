"""The plugin host: a fresh pluggy manager per call, with a typed facade.

Built-in plugins are registered from :data:`DEFAULT_PLUGINS`; third-party plugins
come from the ``nls`` entry-point group; one-off plugin files from ``--plugins-dir``.

Environment switches:

* ``NLS_LOAD_PLUGINS`` — comma-separated entry-point names to load (``""`` loads no
  third-party plugin; unset loads all installed ones). Built-ins are always loaded.
* ``NLS_TRACE_PLUGINS=1`` — print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable, Optional

import pluggy

from pipeline import __version__, hookspecs
from pipeline.components import STAGES, Component, Registrar, describe
from pipeline.types import ConfigError, NLSError, PluginError, plugin_errors

#: (plugin name, module) of every built-in plugin, in no meaningful order.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("ngp", "plugins.ngp.plugin"),
    ("scenes", "plugins.scenes.plugin"),
    ("lipschitz", "plugins.lipschitz.plugin"),
    ("sample_network", "plugins.sample_network.plugin"),
    ("rs_sdf", "plugins.rs_sdf.plugin"),
    ("shapes", "plugins.shapes.plugin"),
    ("hypernet", "plugins.hypernet.plugin"),
    ("deep_level_sets", "plugins.deep_level_sets.plugin"),
)

ENTRY_POINT_GROUP = "nls"


@dataclass
class PluginInfo:
    """One loaded plugin: name, version, where it came from and the hooks it implements (sorted)."""

    name: str
    version: str
    source: str  # "builtin", "entry point of <dist>", a --plugins-dir file path or "registered in-process"
    hooks: list[str]


class PluginHost:
    """Typed facade over a pluggy manager. Create one per command or test; no globals."""

    def __init__(self, pm: pluggy.PluginManager, infos: list[PluginInfo]):
        self.pm = pm
        self._infos = {i.name: i for i in infos}
        self._components: Optional[dict[str, dict[str, Component]]] = None

    # -- construction -----------------------------------------------------------------
    @classmethod
    def create(cls, *, plugins_dirs: Iterable[Path] = (), builtins: bool = True,
               entry_points_: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> "PluginHost":
        """Build a manager with built-ins, entry-point plugins, plugin-dir files and ``extra``."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        infos: list[PluginInfo] = []

        def add(name: str, plugin: Any, version: str, source: str) -> None:
            if pm.has_plugin(name):
                prev = next(i for i in infos if i.name == name)
                raise NLSError(f"two plugins are named {name!r}: one from {prev.source}, one from {source}; "
                               f"{_same_name_remedy(prev.source, source)}")
            try:
                pm.register(plugin, name=name)
            except pluggy.PluginValidationError as exc:  # e.g. a hook implementation's argument misnamed
                raise PluginError(f"plugin {name!r} ({source}) does not match nls's hooks: {exc}.{_spec_hint(exc)} "
                                  f"Each hook's arguments are in pipeline/hookspecs.py") from exc
            except ValueError as exc:  # pluggy: the same module registered under two names
                prev = pm.get_name(plugin) if pm.is_registered(plugin) else "?"
                raise NLSError(f"plugin {name!r} ({source}) is the module already loaded as plugin {prev!r}: "
                               f"{exc}. Point the entry point at a module of its own") from exc
            infos.append(PluginInfo(name, version, source, []))
            if source != "builtin":
                _warn_unmarked_hooks(name, plugin)

        if builtins:
            for name, module in DEFAULT_PLUGINS:
                add(name, importlib.import_module(module), __version__, "builtin")
        if entry_points_:
            wanted = os.environ.get("NLS_LOAD_PLUGINS")
            names = None if wanted is None else {w.strip() for w in wanted.split(",") if w.strip()}
            installed = list(entry_points(group=ENTRY_POINT_GROUP))
            unknown = sorted((names or set()) - {ep.name for ep in installed})
            if unknown:
                have = ", ".join(sorted(ep.name for ep in installed)) or "none"
                raise NLSError(f"NLS_LOAD_PLUGINS={wanted!r} names {', '.join(map(repr, unknown))}, which "
                               f"{'is' if len(unknown) == 1 else 'are'} not an installed nls plugin "
                               f"(installed entry points of group {ENTRY_POINT_GROUP!r}: {have}). Built-ins "
                               f"always load and are not named here.")
            for ep in installed:
                if names is not None and ep.name not in names:
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:  # named with its distribution, so it can be fixed or uninstalled
                    dist = f"the distribution {ep.dist.name!r}" if ep.dist else "its distribution"
                    raise PluginError(f"plugin {ep.name!r} (entry point {ep.value} of {dist}) failed to import: "
                                      f"{type(exc).__name__}: {exc}. Fix it, uninstall {dist} (pip uninstall), "
                                      f"or leave it out with NLS_LOAD_PLUGINS.") from exc
                dist = ep.dist.name if ep.dist else "?"
                ver = ep.dist.version if ep.dist else "?"
                add(ep.name, obj, ver, f"entry point of {dist}")
        for d in plugins_dirs:
            for name, module, path in _load_dir(Path(d)):
                add(name, module, getattr(module, "__version__", "0"), str(path))
        for name, obj in extra:
            add(name, obj, getattr(obj, "__version__", "0"), "registered in-process")
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            import difflib

            unknown = re.search(r"unknown hook '(\w+)'", str(exc))
            close = difflib.get_close_matches(unknown.group(1), hook_names(), n=1) if unknown else []
            hint = f" Did you mean {close[0]}?" if close else ""
            raise PluginError(f"a plugin implements a hook nls does not define: {exc}.{hint} "
                              f"Valid hooks: {', '.join(sorted(hook_names()))}") from exc
        if os.environ.get("NLS_TRACE_PLUGINS", "") not in ("", "0"):
            pm.trace.root.setwriter(lambda s: sys.stderr.write(s))
            pm.enable_tracing()
        host = cls(pm, infos)
        for info in infos:
            plugin = pm.get_plugin(info.name)
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        return host

    # -- components --------------------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, Component]]:
        if self._components is not None:
            return self._components
        table: dict[str, dict[str, Component]] = {s: {} for s in STAGES}
        for stage, hook_name in hookspecs.REGISTER_HOOKS.items():
            for plugin_name in self._implementers(hook_name):
                reg = Registrar(plugin_name, stage)
                self._call_register(hook_name, plugin_name, reg)
                for comp in reg.collected:
                    prev = table[stage].get(comp.name)
                    if prev is not None:
                        raise NLSError(self._clash_message(stage, prev, comp))
                    table[stage][comp.name] = comp
        self._components = table
        return table

    def _clash_message(self, stage: str, prev: Component, comp: Component) -> str:
        """Why ``comp`` cannot be registered: ``prev`` has its stage and name; the remedy fits where the
        plugins came from (a --plugins-dir file is not an installed plugin NLS_LOAD_PLUGINS could drop)."""
        head = f"{stage} component {comp.name!r} is registered twice"
        if prev.plugin == comp.plugin:
            return f"{head} by plugin {comp.plugin!r} ({self._source(comp.plugin)}); register each name once"

        def remedy(plugin: str) -> str:
            source = self._source(plugin)
            if source == "builtin":
                return f"{plugin!r} is built in"
            if source.startswith("entry point"):
                return f"{plugin!r} is installed ({source}): uninstall it or leave it out with NLS_LOAD_PLUGINS"
            if source == "registered in-process":
                return f"{plugin!r} is registered in-process: rename the component there"
            return f"{plugin!r} comes from {source}: rename the component there, or remove the file"

        return (f"{head}: by plugin {prev.plugin!r} and by plugin {comp.plugin!r}. "
                f"{'; '.join(remedy(p) for p in (prev.plugin, comp.plugin))}.")

    def _source(self, plugin: str) -> str:
        """Where ``plugin`` came from, as :class:`PluginInfo` records it ('builtin', 'entry point of ...',
        or a file path)."""
        info = self._infos.get(plugin)
        return info.source if info else "?"

    def _implementers(self, hook_name: str) -> list[str]:
        """The names of the plugins implementing ``hook_name``, each once, in pluggy's call order (one
        plugin may implement a hook twice, through ``@hookimpl(specname=...)``)."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return list(dict.fromkeys(impl.plugin_name for impl in impls))

    def _call_register(self, hook_name: str, plugin_name: str, reg: Registrar) -> None:
        """Call every implementation of ``hook_name`` by plugin ``plugin_name`` once, with ``reg``, so
        each component is attributed to its plugin; going through a hook caller keeps NLS_TRACE_PLUGINS
        working. An exception of the plugin's own becomes a PluginError naming it and the hook."""
        others = [p for n, p in self.pm.list_name_plugin() if n != plugin_name]
        info = self._infos.get(plugin_name)
        where = f"plugin {plugin_name!r} ({info.source if info else '?'}): its {hook_name} hook failed"
        with plugin_errors(where):
            self.pm.subset_hook_caller(hook_name, remove_plugins=others)(register=reg)

    def components(self, stage: Optional[str] = None) -> list[Component]:
        """The components of ``stage`` (of every stage, in :data:`STAGES` order, when None),
        sorted by name within a stage."""
        table = self._collect()
        stages = [stage] if stage else list(STAGES)
        return [c for s in stages for c in sorted(table[s].values(), key=lambda c: c.name)]

    def component(self, stage: str, name: str, *, where: str = "") -> Component:
        """Look up a component; unknown names list what is available and which plugin gives it."""
        table = self._collect()
        if name in table[stage]:
            return table[stage][name]
        others = [s for s in STAGES if name in table[s]]
        hint = f" ({name!r} exists, but as a {others[0]} component)" if others else ""
        raise ConfigError(
            f"{where}unknown {stage} type {name!r}{hint}. Available {stage} types: "
            f"{describe(self.components(stage))}. Install or enable the plugin that provides it "
            f"(see `nls plugins`).")

    # -- other hooks -------------------------------------------------------------------
    def add_commands(self, subparsers) -> None:
        """Let every plugin add its subcommands to ``subparsers`` (``nls_add_commands``), one plugin at a
        time, so that a subcommand name that is taken is an NLSError naming the plugin."""
        import argparse

        for impl in self.pm.hook.nls_add_commands.get_hookimpls():
            before = set(subparsers.choices)
            try:
                impl.function(subparsers=subparsers)
            except argparse.ArgumentError as exc:
                raise NLSError(f"plugin {impl.plugin_name!r} adds a subcommand nls already has ({exc}); "
                               f"rename it, or exclude the plugin with NLS_LOAD_PLUGINS") from None
            for name in set(subparsers.choices) - before:
                _as_nls_command(subparsers.choices[name], name, impl.plugin_name)

    def scene_type_for_path(self, path: Path) -> Optional[str]:
        """The scene-source type that the first plugin recognising ``path`` names, or None
        (``nls_scene_type_for_path``)."""
        return self.pm.hook.nls_scene_type_for_path(path=Path(path))

    def plugins(self) -> list[PluginInfo]:
        """The loaded plugins, sorted by name."""
        return sorted(self._infos.values(), key=lambda i: i.name)

    def versions(self) -> dict[str, str]:
        """``{plugin name: version}`` of every loaded plugin."""
        return {i.name: i.version for i in self.plugins()}


def _warn_unmarked_hooks(name: str, plugin: Any) -> None:
    """Warn about functions of ``plugin`` named like an nls hook but not marked ``@hookimpl``: pluggy
    ignores them, so the plugin would load and register nothing without a word."""
    from pipeline.notices import warn

    marker = f"{hookspecs.PROJECT}_impl"
    unmarked = [h for h in hook_names() if callable(getattr(plugin, h, None)) and
                not hasattr(getattr(plugin, h), marker)]
    if unmarked:
        warn(f"plugin {name!r}: {', '.join(unmarked)} {'is' if len(unmarked) == 1 else 'are'} not marked "
             f"@hookimpl, so nls does not call {'it' if len(unmarked) == 1 else 'them'}; add "
             f"`from pipeline.hookspecs import hookimpl` and decorate {'it' if len(unmarked) == 1 else 'them'}")


def _spec_hint(exc: Exception) -> str:
    """' nls calls it as nls_register_losses(register).' for the hook named in pluggy's validation error
    ``exc``; '' when it names none."""
    import inspect

    found = re.search(r"for hook '(\w+)'", str(exc))
    spec = getattr(hookspecs, found.group(1), None) if found else None
    return f" nls calls it as {spec.__name__}{inspect.signature(spec)}." if spec is not None else ""


def _as_nls_command(parser, name: str, plugin: str) -> None:
    """Make a plugin's subcommand behave as the built-in ones: it takes ``--plugins-dir`` after its name,
    and an exception of its own ``func`` is one error line naming the plugin (a PluginError), not a traceback."""
    import argparse
    import functools

    from pipeline.types import plugin_errors

    try:
        parser.add_argument("--plugins-dir", action="append", metavar="DIR",
                            help="load every .py file in DIR as a plugin (repeatable)")
    except argparse.ArgumentError:
        pass  # the plugin declared it itself
    func = parser.get_default("func")
    if callable(func) and not getattr(func, "nls_command", False):
        @functools.wraps(func)
        def run(args):
            with plugin_errors(f"command {name!r} of plugin {plugin} failed"):
                return func(args)

        run.nls_command = True
        parser.set_defaults(func=run)


def hook_names() -> list[str]:
    """The names of every hook specification (``nls_*``), sorted."""
    return [n for n in dir(hookspecs) if n.startswith("nls_")]


def _same_name_remedy(first: str, second: str) -> str:
    """How to resolve two plugins of one name coming from ``first`` and ``second`` (PluginInfo sources)."""
    if first.startswith("entry point") and not second.startswith(("entry point", "builtin", "registered")):
        # e.g. `nls new-plugin` package installed with pip install -e and given with --plugins-dir too
        return ("load it one way: drop that --plugins-dir, or leave the installed one out with NLS_LOAD_PLUGINS "
                "(NLS_LOAD_PLUGINS= loads no installed plugin)")
    return "rename one of them"


def _plugin_files(d: Path) -> list[Path]:
    """The files of folder ``d`` that ``--plugins-dir`` loads as plugins: ``*.py`` not starting with ``_``."""
    return [p for p in sorted(d.glob("*.py")) if not p.name.startswith("_")]


def plugin_name_of_file(path: Path) -> str:
    """The plugin name of a ``--plugins-dir`` file: its stem, except that the ``plugin.py`` of a package
    folder (one with ``__init__.py``) is named after the folder, less an ``nls_`` prefix: the
    ``nls_my_method/plugin.py`` that ``nls new-plugin my_method`` writes is plugin ``my_method``, the name
    its entry point gives it once installed."""
    folder = path.parent
    if path.name != "plugin.py" or not (folder / "__init__.py").is_file():
        return path.stem
    return folder.name[len("nls_"):] if folder.name.startswith("nls_") and len(folder.name) > 4 else folder.name


def _no_plugin_files(d: Path) -> str:
    """Why ``--plugins-dir d`` loads nothing, and which folder to give instead when a subfolder holds
    plugin files (the package folder of a project made by ``nls new-plugin``)."""
    root = d.resolve()
    helpers = sorted(p.name for p in root.glob("_*.py"))
    what = (f"no plugin file in it ({', '.join(helpers)} {'is a helper' if len(helpers) == 1 else 'are helpers'}: "
            f"files named _*.py are not loaded as plugins)" if helpers else
            "no plugin file in it (nls loads the .py files directly in that folder whose names do not start with _)")

    def shown(sub: Path) -> Path:  # as the user wrote d: relative stays relative
        return d / sub.relative_to(root)

    def visible(sub: Path) -> bool:
        rel = sub.relative_to(root).parts
        return not any(part.startswith((".", "_")) or part in ("tests", "test", "build", "dist") for part in rel)

    found = [p.parent for pattern in ("*/plugin.py", "*/*/plugin.py") for p in sorted(root.glob(pattern))
             if visible(p.parent)]
    if not found:
        found = [sub for sub in sorted(root.iterdir()) if sub.is_dir() and visible(sub) and _plugin_files(sub)]
    hint = ""
    if found:
        shown_found = [shown(f) for f in found[:3]]
        hint = (f". Its subfolder {shown_found[0]} holds plugin files: pass --plugins-dir {shown_found[0]}"
                if len(found) == 1 else
                ". Subfolders hold plugin files: pass " + " ".join(f"--plugins-dir {f}" for f in shown_found)
                + (f" (and {len(found) - 3} more)" if len(found) > 3 else ""))
    if (root / "pyproject.toml").is_file():
        hint += (f"{', or' if hint else '. It holds a pyproject.toml:'} install the package with "
                 f"`pip install -e {d}` (installed plugins load without --plugins-dir)")
    return f"--plugins-dir {d}: {what}{hint or '. Give the folder that holds your plugin .py files'}."


def _load_dir(d: Path) -> list[tuple[str, Any, Path]]:
    """Import the plugin files of folder ``d``: (name, module, absolute path) each. The path is absolute
    because it is recorded (``plugins.json``) and shown from other working directories. A folder without
    plugin files is an NLSError that names the subfolder to give instead, when one holds plugin files."""
    if not d.is_dir():
        raise NLSError(f"--plugins-dir {d}: not a directory. Give a folder holding plugin .py files.")
    files = _plugin_files(d.resolve())
    if not files:
        raise NLSError(_no_plugin_files(d))
    out = []
    if str(d.resolve()) not in sys.path:  # plugin files import their helpers (_helpers.py) as sibling modules
        sys.path.append(str(d.resolve()))  # appended: a file cannot shadow an installed module
    for path in files:
        name = plugin_name_of_file(path)
        mod_name = f"nls_local_plugins.{name}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        # in sys.modules while it runs, as an import would put it: dataclasses and pydantic resolve the
        # file's (postponed) annotations through it, and "nls_local_plugins.<name>:attr" factories load
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise PluginError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc
        out.append((name, module, path))
    return out
