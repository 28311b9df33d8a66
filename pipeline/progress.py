"""Progress reporting: a rich bar with ETA on a terminal, sparse plain lines otherwise."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from typing import Callable, Iterator, Optional

#: ``(done, total)``: how many of the current image's pixels a renderer has finished
PixelListener = Callable[[int, int], None]
_PIXEL_LISTENER: contextvars.ContextVar[Optional[PixelListener]] = contextvars.ContextVar(
    "nls_pixel_listener", default=None)


class StepProgress:
    """``with StepProgress(total, start, label) as bar: bar.advance(step, text)``."""

    def __init__(self, total: int, start: int = 0, label: str = "", *, enabled: bool = True,
                 plain_every_s: float = 10.0):
        self.total, self.start, self.label = total, start, label
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.plain_every_s = plain_every_s
        self._last_plain = 0.0
        self._ended = False  # the plain line of the last step is printed
        self._first: tuple[float, float] | None = None  # (step, time) of the first advance
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

    def advance(self, step: float, info: str = "") -> None:
        """Show ``step`` (fractional within a step, e.g. 1.37 images, refines the ETA) and ``info``: on the
        bar on a terminal, else as a stderr line (whole steps shown) at most every ``plain_every_s`` seconds
        and once at the last step; nothing when disabled."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
            return
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        end = step >= self.total
        if (end and not self._ended) or (not end and now - self._last_plain >= self.plain_every_s):
            self._last_plain, self._ended = now, end
            print(f"{self.label} {math.floor(step)}/{self.total}  {info}  {self._eta(step, now)}",
                  file=sys.stderr, flush=True)

    def _eta(self, step: float, now: float) -> str:
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


def report_pixels(done: int, total: int) -> None:
    """A renderer's note that ``done`` of the ``total`` pixels (or rays) of the image it renders are
    finished; a no-op unless a :func:`listen_pixels` block listens."""
    listener = _PIXEL_LISTENER.get()
    if listener is not None:
        listener(done, total)


@contextlib.contextmanager
def listen_pixels(listener: PixelListener) -> Iterator[None]:
    """Within the block (this thread or task), :func:`report_pixels` calls ``listener(done, total)``."""
    token = _PIXEL_LISTENER.set(listener)
    try:
        yield
    finally:
        _PIXEL_LISTENER.reset(token)


@contextlib.contextmanager
def image_progress(bar: StepProgress, finished: int, noun: str = "image") -> Iterator[None]:
    """While the image after ``finished`` of ``bar.total`` renders: its pixel reports move ``bar`` to
    ``finished + fraction`` (never backwards) with the info 'image k/n: p% of pixels'."""
    seen = 0.0

    def on_pixels(done: int, total: int) -> None:
        nonlocal seen
        seen = max(seen, min(1.0, done / total) if total > 0 else 1.0)
        bar.advance(finished + seen, f"{noun} {finished + 1}/{bar.total}: {math.floor(100 * seen)}% of pixels")

    with listen_pixels(on_pixels):
        yield


def stderr_progress(*columns, transient: bool = True):
    """A ``rich.progress.Progress`` (default columns when none are given) drawn on stderr, the stream
    whose TTY test decides whether a bar is shown: on stdout it vanished under ``nls ... > log`` and
    its last frame landed in the log."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, transient=transient, console=Console(stderr=True))
