"""Progress bars: drawn on stderr, where the terminal test looks."""

from __future__ import annotations

import sys


def test_progress_bars_draw_on_stderr_only(monkeypatch, capsys):
    """The bar is shown when stderr is a terminal, so it is drawn there: on stdout it vanished under
    ``nls ... > log`` and its last frame landed in the log."""
    from pipeline.progress import StepProgress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with StepProgress(5, 0, "training") as bar:
        for step in range(1, 6):
            bar.advance(step, "loss 0.1")
    out, err = capsys.readouterr()
    assert out == "" and "training" in err
