"""Warnings that concern a run: printed when they happen and kept for the run's summary.

A warning printed while scenes load or training runs scrolls away under the progress bars (and
under ``nls batch`` it lands in the scene's log only). :func:`warn` prints ``warning: MESSAGE`` on
stderr and keeps the message; ``finish_run`` writes the kept ones to ``summary.json``
(``warnings``) and repeats them after the final metrics. nls's own Python warnings
(``warnings.warn`` from ``pipeline/`` or ``plugins/``) are kept too. Plugins call it the same way::

    from pipeline.notices import warn
    warn("train.steps ends within phase 1: the grid is never trained")
"""

from __future__ import annotations

import sys

_kept: list[str] = []


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr and keep it for the run's summary, both once per message (a
    scene loaded twice by one command warns once)."""
    if message in _kept:
        return
    print(f"warning: {message}", file=sys.stderr)
    keep(message)


def keep(message: str) -> None:
    """Keep ``message`` for the run's summary without printing it (repeats are kept once)."""
    if message not in _kept:
        _kept.append(message)


def kept() -> list[str]:
    """The messages kept since the last :func:`reset`, in order."""
    return list(_kept)


def reset() -> None:
    """Forget the kept messages (a command that starts a run calls it first)."""
    _kept.clear()
