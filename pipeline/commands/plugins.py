"""``nls plugins`` (list the plugins and their components) and ``nls new-plugin`` (write a plugin package)."""

from __future__ import annotations

from pathlib import Path

from pipeline.commands.run_loading import host_for
from pipeline.types import NLSError


def cmd_plugins(args) -> int:
    """Run ``nls plugins``: list the plugins and their components (``--config``: the keys of the scene
    file's ``train:``, ``eval:``, ``output:`` and ``reference:`` blocks); exit code 0."""
    from pipeline.plugins_list import print_config, print_plugins

    if args.config:
        if args.all or args.hook is not None:
            raise NLSError("--config lists the scene file's train:, eval:, output: and reference: keys on its own; give it "
                           "without --all and --hook (which list the plugins' components)")
        return print_config(as_json=args.json)
    return print_plugins(host_for(args), as_json=args.json, show_all=args.all, hook=args.hook)


def cmd_new_plugin(args) -> int:
    """Run ``nls new-plugin``: write a plugin package; exit code 0."""
    from pipeline.scaffold import new_plugin, next_steps

    path = new_plugin(args.name, Path(args.dir))
    print(next_steps(args.name, path))
    return 0
