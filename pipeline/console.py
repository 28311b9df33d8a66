"""The rich console that nls prints its tables with.

rich ends the process with exit status 1 when the reader of a pipe goes away
(``nls plugins --all | head``). Here that raises :class:`BrokenPipeError` instead, which
``pipeline.cli.main`` turns into a quiet exit with status 141, the same as plain ``print`` output
and Unix tools give. Import it where a table is printed (it imports rich).
"""

from __future__ import annotations

import os

from rich.console import Console

#: columns of a table printed into a pipe or file when ``COLUMNS`` is unset (rich would take 80,
#: folding names and descriptions mid-word)
PIPED_WIDTH = 200


class StdoutConsole(Console):
    """``rich.console.Console`` whose closed pipe raises :class:`BrokenPipeError`, and which is
    :data:`PIPED_WIDTH` wide off a terminal unless ``COLUMNS`` (or ``width=``) says otherwise."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if "width" not in kwargs and not self.is_terminal and not os.environ.get("COLUMNS"):
            self.width = PIPED_WIDTH

    def on_broken_pipe(self) -> None:
        """Go quiet and raise :class:`BrokenPipeError` instead of rich's exit with status 1."""
        self.quiet = True
        raise BrokenPipeError
