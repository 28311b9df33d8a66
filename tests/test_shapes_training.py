"""Training through the pipeline's Trainer: a decoder overfits one R2N2 object; averaging the embeddings
of more views does not lower the IoU on the training object."""

from __future__ import annotations

import pytest
import torch

from pipeline.build import build_system, load_scene_data
from pipeline.config import validate
from pipeline.runs import RunDir
from pipeline.scenes import data_path
from pipeline.testing import plugin_host
from pipeline.train import Trainer, seed_everything
from plugins.shapes.evaluate import evaluate_shapes

R2N2, WHY = data_path("shapenet_r2n2")
ENCODER = {"width": 8, "blocks": 3, "fc_layers": 2, "norm": "batch"}


def scene_dict(field: dict, losses: list, steps: int, lr: float, objects=("bench",), batch: int = 4,
               n_points: int = 1024) -> dict:
    return {"name": "overfit", "scene": {"type": "r2n2", "path": str(R2N2), "objects": list(objects),
                                         "image_size": 32, "n_points": n_points},
            "field": field, "losses": losses,
            "train": {"steps": steps, "batch_items": batch, "lr": lr, "lr_final_factor": 0.3, "log_every": 10,
                      "checkpoint_every": 1000, "threads": 2}}


def train(data: dict, tmp_path):
    cfg = validate(data, plugin_host(), source="test")
    seed_everything(0)
    dev = torch.device("cpu")
    scene = load_scene_data(cfg, dev)
    system = build_system(cfg, scene, dev)
    Trainer(cfg, system, scene, RunDir.create(tmp_path, "t", "t"), dev, progress=False).fit()
    return scene, system.chain.field


@pytest.fixture(scope="module")
def level_set_model(tmp_path_factory):
    if R2N2 is None:
        pytest.skip(f"R2N2 data not available: {WHY}")
    field = {"type": "deep_level_sets", **ENCODER, "channels": 32, "epsilon_anneal_steps": 80}
    losses = [{"type": "level_set_occupancy"}, {"type": "level_set_surface", "weight": 0.1},
              {"type": "level_set_eikonal", "weight": 0.01}]
    return train(scene_dict(field, losses, 100, 3e-3, batch=8), tmp_path_factory.mktemp("dls"))


def test_deep_level_sets_overfits_one_r2n2_object(level_set_model):
    scene, field = level_set_model
    res = evaluate_shapes(field, scene.datasets["train"], chamfer=False)
    assert res["iou"] >= 0.9, res["per_object"]


def test_averaging_more_views_does_not_lower_training_iou(level_set_model):
    """Section 5.2 / Fig. 7 of Littwin & Wolf: mean embedding of k views. On the training object the IoU
    with k = 2, 4, 8 averaged views is at least the single-view IoU (0.005 tolerance for grid ties)."""
    scene, field = level_set_model
    ds = scene.datasets["train"]
    ious = {k: evaluate_shapes(field, ds, views=k, chamfer=False)["iou"] for k in (1, 2, 4, 8)}
    for k in (2, 4, 8):
        assert ious[k] >= ious[1] - 0.005, ious


@pytest.mark.slow
def test_hypernet_overfits_one_r2n2_object(tmp_path):
    if R2N2 is None:
        pytest.skip(f"R2N2 data not available: {WHY}")
    field = {"type": "hypernet", **ENCODER}
    # 4096 labelled points per item: with 1024 the same run stalls at IoU 0.895 (0.871 after 3000 steps),
    # with 4096 it reaches 0.92 (measured 2026-11-23)
    scene, f = train(scene_dict(field, [{"type": "point_occupancy_ce"}], 1500, 3e-3, n_points=4096), tmp_path)
    res = evaluate_shapes(f, scene.datasets["train"], chamfer=False)
    assert res["iou"] >= 0.9, res["per_object"]
