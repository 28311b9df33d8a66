"""What the benchmarks share: the data they need or a skip, one ``nls reconstruct`` in a subprocess, and the run
folder it made. (``bench.py`` lists no module whose name starts with ``_``.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]


def shared_data(bench: str, *parts: str) -> tuple[Optional[Path], Optional[dict]]:
    """``(folder, None)``: the shared data set ``parts`` (``"nerf", "lego"``) under the data root; or ``(None,
    {"skipped": why})`` after printing that the ``bench`` benchmark is skipped and why."""
    from pipeline.scenes import data_path

    folder, why = data_path(*parts)
    if folder is None:
        print(f"{bench} benchmark skipped: {why}")
        return None, {"skipped": why}
    return Path(folder), None


def reconstruct(what: str, target: str, runs: Path, *args: str, sets: Sequence[str] = ()) -> tuple[Path, float]:
    """Run ``python -m pipeline.cli reconstruct TARGET --output RUNS -q ARGS --set S ...`` in the repository;
    returns ``(the newest run folder with a summary.json under RUNS, wall seconds)``. A failed run is a
    SystemExit naming ``what``, after the tail of its output."""
    cmd = [sys.executable, "-m", "pipeline.cli", "reconstruct", target, "--output", str(runs), "-q", *args]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{what}: nls reconstruct failed with exit code {proc.returncode}")
    run = sorted(runs.glob("*/*/*/summary.json"), key=lambda p: p.stat().st_mtime)[-1].parent
    return run, time.perf_counter() - t0


def sweep_arguments(ap, bench: str) -> None:
    """The options of a sweep over one rendered scene (the ``exposure`` and ``poses`` benchmarks): ``--scene``
    (default ``scenes/csg_dense.yaml``), ``--steps`` (600), ``--set`` for every run, and ``--out``
    (``outputs/bench/BENCH.json``)."""
    ap.add_argument("--scene", default="scenes/csg_dense.yaml", help="a scene file of a rendered scene "
                    "(procedural or mesh source)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="--set for every run")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / f"{bench}.json"))


def cell(value, spec: str) -> str:
    """``value`` formatted by ``spec`` (e.g. ``"7.2f"``) for a table, or ``-`` at that width when it is missing
    or not finite."""
    import math

    if isinstance(value, (int, float)) and math.isfinite(value):
        return format(value, spec)
    width = spec[:len(spec) - len(spec.lstrip("0123456789"))]  # (the spec's width, if it gives one)
    return format("-", f"{width}s")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A benchmark's figures as a rich table on the terminal: ``columns`` (headings), ``rows`` (their cells, as
    text: :func:`cell` formats a number)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def write_result(result: dict, out: str) -> None:
    """Write ``result`` as JSON to ``out`` (its folder made) and say so."""
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")

