"""The rich console that nls prints its tables with.

rich ends the process with exit status 1 when the reader of a pipe goes away
(``nls plugins --all | head``). Here that raises :class:`BrokenPipeError` instead, which
``pipeline.cli.main`` turns into a quiet exit with status 141, the same as plain ``print`` output
and Unix tools give. Print tables through :func:`stdout_console`, which also sets the width of piped
output (it imports rich).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

#: columns of a table printed into a pipe or file when ``COLUMNS`` is unset (rich would take 80,
#: folding names and descriptions mid-word)
PIPED_WIDTH = 200


class StdoutConsole(Console):
    """``rich.console.Console`` whose closed pipe raises :class:`BrokenPipeError` (its width off a
    terminal is :func:`stdout_console`'s to set)."""

    def on_broken_pipe(self) -> None:
        """Go quiet and raise :class:`BrokenPipeError` instead of rich's exit with status 1."""
        self.quiet = True
        raise BrokenPipeError


def piped_width(default: int = PIPED_WIDTH) -> int:
    """Columns of output that is not a terminal: ``COLUMNS`` when it is a positive number, else ``default``."""
    cols = os.environ.get("COLUMNS", "").strip()
    return int(cols) if cols.isdigit() and int(cols) > 0 else default


@contextmanager
def stdout_console(piped_default: int = PIPED_WIDTH) -> Iterator["StdoutConsole"]:
    """A :class:`StdoutConsole`. On a terminal it is rich's own; into a pipe or file it is
    :func:`piped_width` (``piped_default``) columns wide and writes its lines, as it prints them, without
    the trailing spaces rich pads table cells with."""
    con = StdoutConsole()
    if con.is_terminal:
        yield con
        return
    con.width = piped_width(piped_default)
    con.file = out = _StrippedLines()
    yield con
    out.close()


class _StrippedLines:
    """A text stream for rich that passes each whole line on to ``sys.stdout`` (looked up at each
    write, as rich does) without its trailing spaces; a closed pipe raises BrokenPipeError in rich's
    write, which :class:`StdoutConsole` passes on."""

    def __init__(self) -> None:
        self._part = ""  # the text after the last newline written

    def write(self, text: str) -> int:
        *lines, self._part = (self._part + text).split("\n")
        if lines:
            sys.stdout.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """Write what is left of an unfinished last line and flush."""
        part, self._part = self._part.rstrip(" "), ""
        if part:
            sys.stdout.write(part)
        self.flush()
