"""Signal handlers installed for the span of a block."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def handlers_installed(handlers: dict[int, Callable]) -> Iterator[None]:
    """Inside the block, ``signal.signal(sig, handler)`` for each item of ``handlers``; the previous
    handlers are restored after it. Outside the main thread signals stay as they are (Python only
    lets the main thread install handlers)."""
    old = {}
    for sig, handler in handlers.items():
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the ``finally`` and ``except``
    clauses run (a half-made run folder is removed, a JIT build releases its lock) where SIGTERM's default
    would end the process on the spot."""
    with handlers_installed({signal.SIGTERM: _interrupt}):
        yield
