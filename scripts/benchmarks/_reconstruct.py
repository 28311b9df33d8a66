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
