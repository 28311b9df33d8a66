"""``nls plugins`` (list the plugins and their components) and ``nls new-plugin`` (write a plugin package)."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.run_loading import host_for
from pipeline.types import NLSError


def cmd_plugins(args) -> int:
    """Run ``nls plugins``: list the plugins and their components (``NAME``: one component or plugin, with
    its options; ``--config``: the keys of the scene file's ``train:``, ``eval:``, ``output:`` and
    ``reference:`` blocks); exit code 0."""
    from pipeline.plugins_list import print_config, print_name, print_plugins

    if args.config:
        extra = _given(args, "name", "all", "hook")
        if extra:
            raise NLSError(f"--config lists the scene file's train:, eval:, output: and reference: keys on its own; "
                           f"give it without {', '.join(extra)} (NAME, --all and --hook are for the plugins' components)")
        return print_config(as_json=args.json)
    if args.name is not None:
        if args.hook is not None:
            raise NLSError(f"nls plugins {args.name}: NAME shows that one component or plugin; give it without "
                           f"--hook (which filters the whole listing)")
        return print_name(host_for(args), args.name, as_json=args.json)
    return print_plugins(host_for(args), as_json=args.json, show_all=args.all, hook=args.hook)


def _given(args, *names: str) -> list[str]:
    """Those of the ``nls plugins`` arguments ``names`` (``name``, ``all``, ``hook``) that ``args`` sets,
    as the command line spells them: ``NAME 'x'``, ``--all``, ``--hook``."""
    spelt = {"name": f"NAME {args.name!r}", "all": "--all", "hook": "--hook"}
    return [spelt[n] for n in names if getattr(args, n) not in (None, False)]


def cmd_new_plugin(args) -> int:
    """Run ``nls new-plugin``: write a plugin package; exit code 0."""
    from pipeline.scaffold import new_plugin, next_steps

    path = new_plugin(args.name, Path(args.dir))
    print(next_steps(args.name, path))
    return 0
