"""Every registered field runs a few steps on a tiny scene, with a chain built for what it produces."""

from __future__ import annotations

import copy

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


@pytest.mark.parametrize("field_name", [c.name for c in HOST.components("field")])
def test_every_field_trains_a_few_steps(field_name, tmp_path):
    cfg = validate(chain_for(field_name), HOST, source=f"smoke:{field_name}")
    dev = torch.device("cpu")
    scene = load_scene_data(cfg, dev)
    system = build_system(cfg, scene, dev)
    before = [p.detach().clone() for p in system.parameters()]
    trainer = Trainer(cfg, system, scene, RunDir.create(tmp_path, "smoke", field_name), dev, progress=False)
    res = trainer.fit()
    assert res.step == cfg.train.steps
    changed = any(not torch.equal(a, b) for a, b in zip(before, system.parameters()))
    assert changed, "no parameter moved"
    rows = trainer.run.read_metrics()
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
