"""Every registered field runs a few steps on a tiny scene, with a chain built for what it produces."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pipeline.build import build_system, load_scene_data
from pipeline.config import validate
from pipeline.runs import RunDir
from pipeline.testing import TINY_SCENE, plugin_host
from pipeline.train import Trainer

HOST = plugin_host()
DENSITY_FOR = {"sdf": "laplace", "occupancy": "occupancy_scale"}
SMALL = {"hash_grid": {"n_levels": 4, "log2_hashmap_size": 12, "max_resolution": 64, "hidden": 16}}


def chain_for(field_name: str) -> dict:
    comp = HOST.component("field", field_name)
    data = copy.deepcopy(TINY_SCENE)
    data["field"] = {"type": field_name, **SMALL.get(field_name, {})}
    if "density" not in comp.produces:
        q = next(q for q in ("sdf", "occupancy") if q in comp.produces)
        data["density"] = {"type": DENSITY_FOR[q]}
    if "voxels" in comp.produces:
        data["losses"] = [{"type": "photometric"}, {"type": "tv", "block": 8}]
    if "sdf" in comp.produces:
        data["losses"] = [{"type": "photometric"}, {"type": "eikonal", "n_points": 256}]
    return data


def train_chain(data: dict, field_name: str, tmp_path: Path, device: torch.device) -> Trainer:
    """Train the chain ``data`` to its step budget on ``device``; checks that every logged loss is finite
    and some parameter moved. Returns the trainer (its system, run folder and metrics)."""
    cfg = validate(data, HOST, source=f"smoke:{field_name}")
    scene = load_scene_data(cfg, device)
    system = build_system(cfg, scene, device)
    before = [p.detach().clone() for p in system.parameters()]
    trainer = Trainer(cfg, system, scene, RunDir.create(tmp_path, "smoke", field_name), device, progress=False)
    res = trainer.fit()
    assert res.step == cfg.train.steps
    changed = any(not torch.equal(a, b) for a, b in zip(before, system.parameters()))
    assert changed, "no parameter moved"
    rows = trainer.run.read_metrics()
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    return trainer


@pytest.mark.parametrize("field_name", [c.name for c in HOST.components("field")])
def test_every_field_trains_a_few_steps(field_name, tmp_path):
    if not HOST.component("field", field_name).fits({"images", "gt_mesh"}):
        pytest.skip(f"{field_name} needs {HOST.component('field', field_name).consumes_text()}, not a posed-image "
                    f"scene; its scene files run below and its plugin's tests train it")
    train_chain(chain_for(field_name), field_name, tmp_path, torch.device("cpu"))


# -- every shipped scene file runs end to end for a few steps, shrunk --------------------------

SCENES = sorted((Path(__file__).resolve().parents[1] / "scenes").glob("*.yaml"))
SHRINK_SCENE = {
    "blender": {"max_images": 2, "downscale": 8},
    "procedural": {"n_train": 4, "n_test": 1, "image_size": 24, "supersample": 1, "gt_resolution": 48},
    "mesh": {"n_train": 4, "n_test": 1, "image_size": 24, "supersample": 1},
    "geometry": {"n_points": 2000},
    "scan": {"n_points": 2000},
    "shape_families": {"per_family": 2, "families": ["chair", "table"], "views": 8, "render_size": 64,
                       "fine_resolution": 64, "image_size": 32},
    "r2n2": {"image_size": 32},
}


def shrink(data: dict) -> dict:
    data = copy.deepcopy(data)
    scene = data["scene"]
    scene.update(SHRINK_SCENE.get(scene.get("type"), {}))
    data["train"] = {**data.get("train", {}), "steps": 3, "checkpoint_every": 2, "log_every": 1,
                     "batch_rays": 128, "max_seconds": None}
    if data.get("extractor"):
        data["extractor"]["resolution"] = 24
    for block in (data.get("losses") or []) + (data.get("evaluators") or []):
        for key, value in list(block.items()):  # sample counts, image sizes and grids of method components
            if isinstance(value, int) and not isinstance(value, bool) and \
                    (key.startswith(("n_", "batch")) or key.endswith(("_points", "_size", "_samples", "_resolution"))):
                block[key] = min(value, 16 if key.endswith("_size") else 24 if key.endswith("_resolution") else 512)
    data["eval"] = {**(data.get("eval") or {}), "max_images": 1, "chamfer_samples": 500}
    return data


def test_every_scene_file_says_what_it_is():
    """Every shipped scene carries a one-line ``description`` (the report and config.yaml show it)."""
    import yaml

    missing = [p.name for p in SCENES if not str(yaml.safe_load(p.read_text()).get("description") or "").strip()]
    assert SCENES and not missing, f"scenes without a description: {missing}"


@pytest.mark.parametrize("scene_file", SCENES, ids=[p.stem for p in SCENES])
def test_every_scene_file_runs(scene_file, tmp_path, nls):
    import yaml

    from pipeline.config import expand_vars

    data = yaml.safe_load(scene_file.read_text())
    path = data["scene"].get("path")
    if path:
        try:
            resolved = Path(expand_vars(path))
        except Exception as exc:  # no data root
            pytest.skip(f"{scene_file.name}: {exc}")
        if not resolved.exists():
            pytest.skip(f"{scene_file.name}: input data {resolved} is not available")
    p = tmp_path / scene_file.name
    p.write_text(yaml.safe_dump(shrink(data)))
    proc = nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").glob("*/*/*"))
    assert (run / "summary.json").exists()
