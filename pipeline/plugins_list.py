"""``nls plugins``: plugins, versions, hooks and the components each provides, one component or plugin
(``nls plugins NAME``), and (``--config``) the scene file's ``train:``, ``eval:``, ``output:`` and
``reference:`` blocks (no torch import)."""

from __future__ import annotations

import json
import textwrap
from typing import Optional, get_args

#: columns of the listing printed into a pipe or file when ``COLUMNS`` is unset (its tables are narrower
#: than compare's, and its help text wraps)
PIPED_WIDTH = 120

#: the scene file's blocks ``--config`` lists, as ``(key, name of its model in pipeline.config)``; the
#: ``reference:`` block holds one ReferenceValue per metric name
CONFIG_BLOCKS = (("train", "TrainConfig"), ("eval", "EvalConfig"), ("output", "OutputConfig"),
                 ("reference", "ReferenceValue"))


def plugins_data(host, show_all: bool = False, hook: Optional[str] = None) -> list[dict]:
    """Plugins with their components (and, with ``show_all``, each component's options).

    ``hook`` keeps the plugins implementing it (the full name, or without ``nls_``, or a stage
    as the tables name it, ``loss``, or as the hook does, ``losses``); for a register hook only
    that stage's components are listed. Raises NLSError for a ``hook`` that no hook
    specification has, listing the valid ones.
    """
    from pipeline.hookspecs import REGISTER_HOOKS
    from pipeline.plugins import hook_names
    from pipeline.types import NLSError

    if hook is not None and not hook.startswith("nls_"):
        hook = next((h for h in (REGISTER_HOOKS.get(hook), f"nls_{hook}", f"nls_register_{hook}")
                     if h in hook_names()), hook)
    if hook is not None and hook not in hook_names():
        raise NLSError(f"--hook {hook!r}: no such hook. Valid hooks: {', '.join(hook_names())} "
                       f"(or a stage: {', '.join(REGISTER_HOOKS)})")
    stage = next((s for s, h in REGISTER_HOOKS.items() if h == hook), None)
    comps = host.components(stage)
    return [_plugin_data(info, comps, show_all) for info in host.plugins() if not hook or hook in info.hooks]


def name_data(host, name: str) -> dict[str, list[dict]]:
    """What ``nls plugins NAME`` shows: ``{"components": [...], "plugins": [...]}``, the entries of
    :func:`plugins_data` (``show_all=True``) named ``name``, components of every stage first. Raises
    NLSError for a name that is neither, suggesting close matches and listing the valid names."""
    from pipeline.types import NLSError

    comps, infos = host.components(), host.plugins()
    found = {"components": [_component_data(c, True) for c in comps if c.name == name],
             "plugins": [_plugin_data(i, comps, True) for i in infos if i.name == name]}
    if not any(found.values()):
        raise NLSError(unknown_name(name, [c.name for c in comps], [i.name for i in infos]))
    return found


def unknown_name(name: str, components: list[str], plugins: list[str]) -> str:
    """The error for ``nls plugins NAME`` with an unknown ``name``: close matches, then the valid names."""
    import difflib

    components = sorted(set(components))
    close = difflib.get_close_matches(name, sorted(set(components) | set(plugins)), n=3)
    hint = f"; did you mean {_or_list([repr(n) for n in close])}?" if close else "."
    return (f"nls plugins: no component or plugin {name!r}{hint} Components: {', '.join(components)}. "
            f"Plugins: {', '.join(plugins)}.")


def _or_list(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _plugin_data(info, comps: list, show_all: bool) -> dict:
    """One plugin's entry of :func:`plugins_data`, with those of ``comps`` that it registers."""
    return {"name": info.name, "version": info.version, "source": info.source, "hooks": info.hooks,
            "components": [_component_data(c, show_all) for c in comps if c.plugin == info.name]}


def _component_data(c, show_all: bool) -> dict:
    """One component's entry of :func:`plugins_data` (with ``show_all``, its ``options``)."""
    d = c.as_dict()
    if show_all:
        d["options"] = options_data(c.config_class())
    return d


def options_data(cls) -> dict[str, dict]:
    """A pydantic model's fields as ``{name: {"default", "type", "help"}}``, as ``--all`` lists them."""
    return {name: {"default": _default(f), "type": _type_name(f.annotation), "help": f.description or ""}
            for name, f in cls.model_fields.items()}


def config_data() -> dict[str, dict]:
    """The scene file's ``train:``, ``eval:``, ``output:`` and ``reference:`` blocks: for each, the model that
    checks it (``class``, in pipeline/config.py), its ``description`` and its
    ``options`` as :func:`options_data` gives them."""
    import pipeline.config as config

    out = {}
    for key, name in CONFIG_BLOCKS:
        cls = getattr(config, name)
        out[key] = {"class": name, "description": first_paragraph(cls.__doc__).replace("``", "`"),
                    "options": options_data(cls)}
    return out


def _default(f):
    """A field's default for display; nested config blocks (default factories) as their own defaults."""
    if f.is_required():
        return "(required)"
    v = f.get_default(call_default_factory=True)
    if hasattr(v, "model_dump"):
        return v.model_dump()
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v)


def _type_name(t) -> str:
    """``int``, ``Optional[int]``, ``list[float]``: generic aliases keep their arguments."""
    if get_args(t):
        return str(t).replace("typing.", "")
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def first_paragraph(text: Optional[str]) -> str:
    """The first paragraph of a docstring, on one line ('' for none)."""
    return " ".join((text or "").strip().split("\n\n")[0].split())


def print_options(con, c: dict, title: Optional[str] = None) -> None:
    """One component's options (or, with ``title``, rich markup, those of ``c["options"]`` under that
    title), as ``--help`` lists them: ``name: type = default``, then the help indented below it, wrapped
    to the console's width."""
    from rich.markup import escape

    width = max(40, con.width - 1)
    con.print(title or f"[bold]{c['stage']} {escape(c['name'])}[/bold] options:", highlight=False)
    for name, o in c["options"].items():  # long defaults (nested blocks) wrap under the name
        default = "''" if o["default"] == "" else o["default"]  # an empty text default is shown, not left blank
        head = textwrap.fill(f"{name}: {o['type']} = {default}", width=width, initial_indent="  ",
                             subsequent_indent=" " * 8, break_on_hyphens=False, break_long_words=False)
        con.print(escape(head), highlight=False, soft_wrap=True)
        if o["help"]:
            text = textwrap.fill(o["help"], width=width, initial_indent=" " * 6,
                                 subsequent_indent=" " * 6, break_on_hyphens=False)
            con.print(escape(text), highlight=False, soft_wrap=True)
    con.print()


def print_plugins(host, *, as_json: bool = False, show_all: bool = False, hook: Optional[str] = None) -> int:
    """Print :func:`plugins_data` as JSON (``as_json``), else as one rich table per plugin with its
    hooks (and, with ``show_all``, each component's options); returns 0."""
    data = plugins_data(host, show_all, hook)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from pipeline.console import stdout_console

    with stdout_console(PIPED_WIDTH) as con:
        _print_tables(con, data, show_all)
    return 0


def _print_tables(con, data: list[dict], show_all: bool, shown: frozenset = frozenset()) -> None:
    """:func:`print_plugins`'s tables (and, with ``show_all``, options) on ``con``; the options of the
    components in ``shown`` ((stage, name) pairs printed above) are not repeated."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    for p in data:
        table = Table(title=f"{p['name']} {p['version']}  ({p['source']})", title_justify="left",
                      show_lines=False, expand=False, box=box.SIMPLE_HEAD)
        rows = [(c, _consumes(c)) for c in p["components"]]
        # names are never cut to "…" on a narrow terminal or COLUMNS: the columns that
        # hold them are as wide as their longest entry, and the description wraps instead
        table.add_column("stage", no_wrap=True)
        table.add_column("component", min_width=max((len(c["name"]) for c, _ in rows), default=0), no_wrap=True)
        for col in ("consumes", "produces", "description"):
            table.add_column(col, overflow="fold")
        for c, consumes in rows:
            # escape(): type names such as Optional[int] must not be read as rich markup
            table.add_row(c["stage"], c["name"], consumes, _produces(c),
                          escape(first_paragraph(c["description"])))
        con.print(table)
        con.print(textwrap.fill(f"hooks: {', '.join(p['hooks'])}", width=max(40, con.width - 1), initial_indent="  ",
                                subsequent_indent=" " * 9, break_on_hyphens=False) + "\n",
                  highlight=False, soft_wrap=True)
        for c, _ in rows if show_all else ():
            if (c["stage"], c["name"]) in shown:
                con.print(f"[bold]{c['stage']} {escape(c['name'])}[/bold] options: shown above\n", highlight=False)
            else:
                if c.get("metrics"):
                    print_metric_notes(con, c)
                if c.get("options"):
                    print_options(con, c)


def _consumes(c: dict) -> str:
    """A component's ``consumes`` alternatives as the tables show them: ``sdf | occupancy``, ``a+b``."""
    return " | ".join("+".join(a) for a in c["consumes"]) or "-"


def _produces(c: dict) -> str:
    """A component's ``produces`` as the tables show them: ``depth, normals``."""
    return ", ".join(c["produces"]) or "-"


def print_name(host, name: str, *, as_json: bool = False) -> int:
    """Print :func:`name_data`, as JSON (``as_json``), else each component named ``name`` (stage, plugin,
    consumes, produces, whole description, options) and each plugin named ``name`` (its table and its
    components' options), each under a heading; returns 0."""
    data = name_data(host, name)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.markup import escape

    from pipeline.console import stdout_console

    with stdout_console(PIPED_WIDTH) as con:
        for c in data["components"]:
            _print_component(con, c)
        shown = {(c["stage"], c["name"]) for c in data["components"]}  # a plugin named as its component
        for p in data["plugins"]:
            con.print(f"[bold]plugin {escape(p['name'])}[/bold]\n", highlight=False)
            _print_tables(con, [p], show_all=True, shown=shown)
    return 0


def _print_component(con, c: dict) -> None:
    """One component as ``nls plugins NAME`` shows it: heading, facts, whole description, options."""
    from rich.markup import escape

    con.print(f"[bold]component {escape(c['name'])}[/bold]\n", highlight=False)
    facts = (("stage", c["stage"]), ("plugin", c["plugin"]), ("consumes", _consumes(c)),
             ("produces", _produces(c)), ("config", c["config"]))
    for key, value in facts:
        con.print(escape(f"  {key + ':':<10}{value}"), highlight=False, soft_wrap=True)
    con.print()
    if c["description"]:
        con.print(escape(wrap_paragraphs(c["description"], max(40, con.width - 1), "  ")) + "\n",
                  highlight=False, soft_wrap=True)
    if c.get("metrics"):
        print_metric_notes(con, c)
    if c["options"]:
        print_options(con, c)
    else:
        con.print(f"[bold]{c['stage']} {escape(c['name'])}[/bold] has no options.\n", highlight=False)


def print_metric_notes(con, c: dict) -> None:
    """An evaluator's metrics (``c["metrics"]``: {name: note}), a line each with its note wrapped below, and
    ↑ / ↓ where higher or lower is better."""
    from rich.markup import escape

    from pipeline.metric_notes import direction_mark

    width = max(40, con.width - 1)
    con.print(f"[bold]{c['stage']} {escape(c['name'])}[/bold] reports:", highlight=False)
    for name, note in c["metrics"].items():
        mark = direction_mark(name.rstrip("@"), {k.rstrip("@"): v for k, v in (c.get("better") or {}).items()})
        shown = f"{name}τ" if name.endswith("@") else name
        con.print(escape(f"  {shown}" + (f"  {mark}" if mark else "")), highlight=False, soft_wrap=True)
        con.print(escape(textwrap.fill(note.replace("{at}", "τ"), width=width, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6, break_on_hyphens=False)),
                  highlight=False, soft_wrap=True)
    con.print()


def wrap_paragraphs(text: str, width: int, indent: str = "") -> str:
    """``text`` with each paragraph refilled to ``width`` (indented by ``indent``); a paragraph with
    indented or bulleted lines (a list, a code block) keeps its lines, only indented."""
    out = []
    for para in text.strip().split("\n\n"):
        lines = para.splitlines()
        if any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in lines):
            out.append("\n".join(indent + line for line in lines))
        else:
            out.append(textwrap.fill(" ".join(para.split()), width=width, initial_indent=indent,
                                     subsequent_indent=indent, break_on_hyphens=False))
    return "\n\n".join(out)


def print_config(*, as_json: bool = False) -> int:
    """Print :func:`config_data`, the keys of the ``train:``, ``eval:``, ``output:`` and ``reference:``
    blocks with their types, defaults and help, as JSON (``as_json``) or as ``--all`` lists component
    options; returns 0."""
    data = config_data()
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.markup import escape

    from pipeline.console import stdout_console

    with stdout_console(PIPED_WIDTH) as con:
        con.print(textwrap.fill("The scene file's train:, eval:, output: and reference: blocks (models in "
                                "pipeline/config.py). Set a key in the scene file or with --set, e.g. "
                                "--set train.steps=500.",
                                width=max(40, con.width - 1)) + "\n", highlight=False, soft_wrap=True)
        for key, block in data.items():
            print_options(con, block, title=f"[bold]{key}:[/bold] options ({block['class']}): "
                                            f"{escape(block['description'])}")
    return 0
