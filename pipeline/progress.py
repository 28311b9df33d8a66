"""Progress reporting: a rich bar with ETA on a terminal, sparse plain lines otherwise."""

from __future__ import annotations

import sys
import time


class StepProgress:
    """``with StepProgress(total, start, label) as bar: bar.advance(step, text)``."""

    def __init__(self, total: int, start: int = 0, label: str = "", *, enabled: bool = True,
                 plain_every_s: float = 10.0):
        self.total, self.start, self.label = total, start, label
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._first: tuple[int, float] | None = None  # (step, time) of the first advance
        self._progress = None

    def __enter__(self) -> "StepProgress":
        if self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = stderr_progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                             transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.start, info="")
        return self

    def advance(self, step: int, info: str = "") -> None:
        """Show ``step`` and ``info``: on the bar on a terminal, else as a stderr line at most every
        ``plain_every_s`` seconds and at the last step; nothing when disabled."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        if now - self._last_plain >= self.plain_every_s or step == self.total:
            self._last_plain = now
            print(f"{self.label} {step}/{self.total}  {info}  {self._eta(step, now)}", file=sys.stderr, flush=True)

    def _eta(self, step: int, now: float) -> str:
        """'eta Ns' from the rate since the first advance (the first step carries start-up costs
        such as allocation and kernel compilation, so it is left out); 'done' at the end."""
        if step >= self.total:
            return "done"
        s0, t0 = self._first
        if step <= s0 or now <= t0:
            return "eta –"
        return f"eta {(self.total - step) * (now - t0) / (step - s0):.0f}s"

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def stderr_progress(*columns, transient: bool = True):
    """A ``rich.progress.Progress`` (default columns when none are given) drawn on stderr, the stream
    whose TTY test decides whether a bar is shown: on stdout it vanished under ``nls ... > log`` and
    its last frame landed in the log."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, transient=transient, console=Console(stderr=True))
