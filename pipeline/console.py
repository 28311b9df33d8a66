"""The rich console that nls prints its tables with.

rich ends the process with exit status 1 when the reader of a pipe goes away
(``nls plugins --all | head``). Here that raises :class:`BrokenPipeError` instead, which
``pipeline.cli.main`` turns into a quiet exit with status 141, the same as plain ``print`` output
and Unix tools give. Import it where a table is printed (it imports rich).
"""

from __future__ import annotations

from rich.console import Console


class StdoutConsole(Console):
    """``rich.console.Console`` whose closed pipe raises :class:`BrokenPipeError`."""

    def on_broken_pipe(self) -> None:
        """Go quiet and raise :class:`BrokenPipeError` instead of rich's exit with status 1."""
        self.quiet = True
        raise BrokenPipeError
