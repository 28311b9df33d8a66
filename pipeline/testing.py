"""Fixtures and helpers for plugin authors (and nls's own tests).

    from pipeline.testing import plugin_host

    def test_my_plugin():
        host = plugin_host(("mine", my_plugin_module))
        assert host.component("loss", "my_loss").plugin == "mine"

As pytest fixtures (add ``pytest_plugins = ["pipeline.testing"]`` to your conftest.py):
``nls_host`` (a fresh host with the built-ins) and ``register_plugin`` (a function that
returns a fresh host with extra in-process plugins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pytest

from pipeline.plugins import PluginHost

#: A tiny, fast procedural scene config for smoke tests (seconds on CPU).
TINY_SCENE: dict = {
    "name": "tiny",
    "scene": {"type": "procedural", "shape": "sphere", "n_train": 8, "n_test": 2, "image_size": 32,
              "supersample": 1, "gt_resolution": 64},
    "field": {"type": "dense_grid", "resolution": 32, "features": 4},
    "renderer": {"type": "volume", "samples_per_ray": 64, "grid_resolution": 16},
    "extractor": {"type": "marching_cubes", "resolution": 48},
    "losses": [{"type": "photometric"}],
    "evaluators": [{"type": "psnr", "ssim": False}],
    "train": {"steps": 6, "batch_rays": 256, "checkpoint_every": 3, "log_every": 1, "grid_warmup": 2,
              "grid_update_every": 2},
    "eval": {"max_images": 1},
}


def plugin_host(*extra: tuple[str, Any], builtins: bool = True, plugins_dirs: Iterable[Path] = ()) -> PluginHost:
    """A fresh host (no entry-point plugins) with the built-ins and ``extra`` (name, plugin) pairs."""
    return PluginHost.create(builtins=builtins, entry_points_=False, extra=extra, plugins_dirs=plugins_dirs)


@pytest.fixture
def nls_host() -> PluginHost:
    return plugin_host()


@pytest.fixture
def register_plugin():
    """Fixture: ``make(*(name, plugin))``, which returns a fresh :func:`plugin_host` with those plugins."""
    def make(*extra: tuple[str, Any]) -> PluginHost:
        return plugin_host(*extra)
    return make


def assert_metrics_noted(record: dict) -> None:
    """Assert that a run's summary.json (or eval.json) ``record`` holds a note for every metric it reports:
    each evaluator that ran declared, with ``metrics=`` when it registered, what its metrics measure."""
    missing = sorted(set(record.get("metrics") or {}) - set(record.get("metric_notes") or {}))
    assert not missing, f"metrics without a note (register the evaluator with metrics={{name: note}}): {missing}"
