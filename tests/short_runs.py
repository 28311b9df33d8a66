"""Short real runs shared by the report, compare and viewer tests (made once per pytest session),
and the headless-browser lookup of the browser tests.

``short_run(tmp_path_factory, "dense_grid")`` trains the tiny sphere scene for 100 steps
(~10 s on 2 cores), long enough for a mesh at the default density level;
``killed_run(...)`` is a copy of it as a SIGKILL between checkpoints leaves it: no
summary.json, renders or mesh, the newest checkpoint gone, metrics logged past the last
checkpoint.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")

FIELDS = {
    "dense_grid": {"type": "dense_grid", "resolution": 32, "features": 4},
    "hash_grid": {"type": "hash_grid", "n_levels": 4, "log2_hashmap_size": 12, "max_resolution": 64,
                  "backend": "torch"},
}


def short_scene(method: str) -> dict:
    from pipeline.testing import TINY_SCENE

    d = copy.deepcopy(TINY_SCENE)
    d["method"] = method
    d["field"] = dict(FIELDS[method])
    d["evaluators"] = [{"type": "psnr"}, {"type": "chamfer", "floor": False}]
    # the pure-torch hash encoding costs ~3x the dense grid per ray on CPU: fewer rays per step
    d["train"].update(steps=100, batch_rays=512 if method == "hash_grid" else 1024, checkpoint_every=50,
                      log_every=5, grid_warmup=20)
    d["eval"]["chamfer_samples"] = 5000
    return d


def _root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "short_runs"


def short_run(tmp_path_factory, method: str = "dense_grid") -> Path:
    """Path of a finished 100-step run of ``method`` on the tiny sphere scene."""
    from tests.conftest import run_nls

    root = _root(tmp_path_factory)
    found = sorted((root / "runs" / "tiny" / method).glob("*/summary.json"))
    if found:
        return found[-1].parent
    root.mkdir(parents=True, exist_ok=True)
    scene = root / f"{method}.yaml"
    scene.write_text(yaml.safe_dump(short_scene(method)))
    run_nls("reconstruct", str(scene), "--output", str(root / "runs"), "-q", check=True)
    return sorted((root / "runs" / "tiny" / method).glob("*/summary.json"))[-1].parent


def killed_run(tmp_path_factory) -> Path:
    """A copy of the dense run as a kill at step ~100 leaves it (last checkpoint: step 50)."""
    dst = _root(tmp_path_factory) / "killed" / "tiny" / "dense_grid" / "killed"
    if dst.exists():
        return dst
    src = short_run(tmp_path_factory, "dense_grid")
    shutil.copytree(src, dst)
    for p in ("summary.json", "report.html"):
        (dst / p).unlink(missing_ok=True)
    shutil.rmtree(dst / "renders")
    shutil.rmtree(dst / "meshes")
    (dst / "renders").mkdir()
    (dst / "meshes").mkdir()
    ckpts = sorted((dst / "checkpoints").glob("ckpt_*.pt"))
    for p in ckpts[1:]:
        p.unlink()
        p.with_suffix(".pt.sha256").unlink(missing_ok=True)
    return dst


def browser_or_skip(need_viser: bool = True) -> str:
    """Path of a Chromium binary, or skip with the reason (also without playwright / viser)."""
    exe = next((shutil.which(n) for n in CHROMIUM_CANDIDATES if shutil.which(n)), None)
    if exe is None:
        pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium); scripts/test.sh installs it "
                    "when it can")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")
    if need_viser:
        pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    return exe


def resumed_from_the_middle(nls, scene: Path, tmp_path: Path, last_step: int) -> tuple[Path, Path]:
    """Train ``scene`` (one thread, no evaluation) to ``last_step``, copy its run folder, remove the copy's
    checkpoint of ``last_step`` and resume the copy from the one before: ``(original, copy)``, for tests that a
    part of the system is checkpointed so that the resumed run ends bit for bit as the original."""
    one = {"NLS_THREADS": "1"}
    nls("reconstruct", str(scene), "--output", str(tmp_path / "runs"), "-q", "--no-eval", check=True, env=one)
    (original,) = list((tmp_path / "runs").glob("*/*/*"))
    resumed = tmp_path / "copy"
    shutil.copytree(original, resumed)
    for p in resumed.glob(f"checkpoints/ckpt_{last_step:08d}.pt*"):
        p.unlink()
    nls("resume", str(resumed), "-q", "--no-eval", check=True, env=one)
    return original, resumed

