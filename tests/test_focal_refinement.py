"""Focal-length refinement (pipeline/focal_refinement.py, train.refine_focal) against exact references: the rays
through the refined focal length, the field's frame that goes with it (a dolly zoom), the simulated focal error and
a run that learns the focal length back."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.focal_refinement import FocalRefinement, zoom_centre
from pipeline.pose_refinement import PoseRefinement, pose_accuracy, refined_scene
from pipeline.rays import pixel_rays
from pipeline.system import FieldChain
from pipeline.types import Cameras
from tests.test_pose_refinement import _all_rays, _ring


def _focal(cams, k: float) -> FocalRefinement:
    module = FocalRefinement(cams, torch.zeros(3, dtype=torch.float64)).double()
    with torch.no_grad():
        module.log_scale.fill_(torch.log(torch.tensor(k, dtype=torch.float64)))
    return module


def test_the_rays_are_those_of_the_refocused_cameras():
    """The training rays through a focal factor k (with a pose correction after it) are, to round-off, the rays
    pixel_rays casts from the cameras refined() gives: fx and fy times k, the poses corrected."""
    cams = _ring(6)
    focal = _focal(cams, 1.05)
    module = PoseRefinement(6, centres=cams.c2w[:, :3, 3], focal=focal).double()
    with torch.no_grad():
        module.rotation.normal_(0, 0.02)
        module.shift.normal_(0, 0.02)
    idx, o, d = _all_rays(cams)
    o2, d2 = module(o, d, idx)
    refined = module.refined(cams)
    assert torch.allclose(refined.fx, cams.fx * 1.05) and torch.allclose(refined.fy, cams.fy * 1.05)
    _, o3, d3 = _all_rays(refined)
    assert torch.allclose(o2, o3, atol=1e-12) and torch.allclose(d2, d3, atol=1e-12)
    held_out = module.refocused(cams)  # held-out views: the focal length, not the poses
    assert torch.equal(held_out.c2w, cams.c2w) and torch.allclose(held_out.fx, cams.fx * 1.05)


def test_the_field_frame_makes_the_correction_a_dolly_zoom():
    """A camera looking at the centre c: a pixel's ray through the focal length k fx meets the plane through
    c facing the camera at a point that the field's frame (c + k (x - c)) takes exactly to where the pixel's ray
    through fx meets it, so the field's image of that plane does not change with k."""
    cams = _ring(1)
    c = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    focal = FocalRefinement(cams, c).double()
    with torch.no_grad():
        focal.log_scale.fill_(0.07)
    axis = -cams.c2w[0, :3, 2]  # the camera looks down its -z, at c (the origin)
    centre = cams.c2w[0, :3, 3]
    assert torch.allclose(torch.linalg.cross(axis, c - centre), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    u, v = torch.tensor([3.5, 20.0, 37.5], dtype=torch.float64), torch.tensor([2.5, 15.0, 27.5], dtype=torch.float64)
    cam = torch.zeros(3, dtype=torch.long)
    o, d = pixel_rays(cams, cam, u, v)
    d_k = focal(d, cam)

    def on_plane(direction):
        return o + ((c - centre) @ axis / (direction @ axis))[:, None] * direction

    seen, _ = focal.to_field(on_plane(d_k))
    assert torch.allclose(seen, on_plane(d), atol=1e-12)
    assert not torch.allclose(on_plane(d_k), on_plane(d), atol=1e-3)  # the ray itself did move


class Ball(torch.nn.Module):
    """An SDF ball of radius 0.5 at the origin, density 10 inside, colour its position + 0.5."""

    def forward(self, x, d=None):
        out = {"sdf": x.norm(dim=-1) - 0.5, "density": 10.0 * (x.norm(dim=-1) < 0.5).to(x.dtype)}
        if d is not None:
            out["rgb"] = (x + 0.5).clamp(0, 1)
        return out


def test_the_chain_gives_the_field_in_its_frame_with_world_lengths():
    """With a frame set, the chain at world points x is the field at c + k (x - c), its SDF divided by k (a
    distance in the world's units) and its density multiplied by k; the colour is the field's there."""
    cams = _ring(2)
    focal = FocalRefinement(cams, torch.tensor([0.1, -0.2, 0.3]))
    with torch.no_grad():
        focal.log_scale.fill_(0.1)
    k = float(torch.exp(torch.tensor(0.1)))
    chain = FieldChain(Ball())
    x = torch.randn(50, 3) * 0.6
    plain = chain(x, torch.ones(50, 3))
    chain.set_frame(focal.to_field)
    framed = chain(x, torch.ones(50, 3))
    moved = torch.tensor([0.1, -0.2, 0.3]) + k * (x - torch.tensor([0.1, -0.2, 0.3]))
    truth = Ball()(moved, torch.ones(50, 3))
    assert torch.allclose(framed["sdf"], truth["sdf"] / k, atol=1e-6)
    assert torch.allclose(framed["density"], truth["density"] * k) and torch.allclose(framed["rgb"], truth["rgb"])
    about_origin = FocalRefinement(cams, torch.zeros(3))
    with torch.no_grad():
        about_origin.log_scale.fill_(0.1)
    chain.set_frame(about_origin.to_field)  # about the ball's centre: a ball of radius 0.5 / k, its exact SDF
    assert torch.allclose(chain(x, None)["sdf"], x.norm(dim=-1) - 0.5 / k, atol=1e-6)
    chain.set_frame(None)
    assert torch.equal(chain(x, None)["sdf"], plain["sdf"])


def test_the_zoom_centre_is_the_point_the_cameras_look_at():
    """Cameras round a point look at it: zoom_centre finds it (not the box's centre); parallel axes (a
    forward-facing capture) or a point outside the box give the box's centre."""
    cams = _ring(8)
    target = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    c2w = cams.c2w.clone()
    c2w[:, :3, 3] += target
    moved = Cameras(c2w, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    box = torch.tensor([-1.0, -1.0, -0.5, 1.0, 1.0, 1.5], dtype=torch.float64)
    assert torch.allclose(zoom_centre(moved, box), target, atol=1e-9)
    small = torch.tensor([-0.05, -0.05, -0.05, 0.05, 0.05, 0.05], dtype=torch.float64)
    assert torch.allclose(zoom_centre(moved, small), torch.zeros(3, dtype=torch.float64))
    parallel = c2w.clone()
    parallel[:, :3, :3] = c2w[0, :3, :3]  # every camera turned as the first: a forward-facing rig
    facing = Cameras(parallel, cams.fx, cams.fy, cams.cx, cams.cy, cams.width, cams.height)
    assert torch.allclose(zoom_centre(facing, box), torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))


def test_the_centre_is_saved_with_the_factor():
    """The centre is part of the module's state, so a run opens in the frame it was trained in; a state from
    before it was saved loads and keeps the centre built from the scene."""
    cams = _ring(3)
    trained = FocalRefinement(cams, torch.tensor([0.1, 0.2, 0.3]))
    state = trained.state_dict()
    assert set(state) == {"log_scale", "centre"}
    opened = FocalRefinement(cams, torch.zeros(3))
    opened.load_state_dict(state)
    assert torch.equal(opened.centre, torch.tensor([0.1, 0.2, 0.3]))
    older = FocalRefinement(cams, torch.tensor([0.0, 0.0, 0.5]))
    older.load_state_dict({"log_scale": torch.tensor([0.04])})  # strict: only the centre may be missing
    assert torch.equal(older.centre, torch.tensor([0.0, 0.0, 0.5]))
    assert torch.equal(older.log_scale.data, torch.tensor([0.04]))
    with pytest.raises(RuntimeError, match="log_scale"):
        older.load_state_dict({"centre": torch.zeros(3)})


def test_opening_a_focal_run_without_its_training_cameras_is_refused(tiny_scene, nls_host):
    """The field of a run that learned its focal length lives in a frame built with the training cameras: a scene
    opened without them (a plugin source, scene.splits) is a ConfigError saying so, not renders in the wrong
    frame."""
    from pipeline.build import build_system
    from pipeline.config import load_scene
    from pipeline.types import ConfigError, PosedImages, SceneData

    cfg = load_scene(tiny_scene(train={"refine_focal": True}), nls_host)
    cams = _ring(2)
    test_only = SceneData(splits={"test": PosedImages(torch.zeros(2, 30, 40, 3), cams)},
                          aabb=torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="keep train in scene.splits"):
        build_system(cfg, test_only, "cpu", losses=False)


def test_focal_noise_scales_every_split_and_is_recorded():
    """scene.focal_noise: every split's fx and fy times 1 + noise, the images as rendered, the training cameras'
    true fx recorded; pose_accuracy reports the focal error given and refined."""
    from pipeline.testing import TINY_SCENE
    from plugins.scenes.config import ProceduralConfig
    from plugins.scenes.sources import build_procedural

    options = {k: v for k, v in TINY_SCENE["scene"].items() if k != "type"}
    exact = build_procedural(ProceduralConfig(**options), None)()
    off = build_procedural(ProceduralConfig(**{**options, "focal_noise": -0.04}), None)()
    for name, split in exact.splits.items():
        assert torch.allclose(off.splits[name].cameras.fx, split.cameras.fx * 0.96)
        assert torch.allclose(off.splits[name].cameras.fy, split.cameras.fy * 0.96)
        assert torch.equal(off.splits[name].cameras.c2w, split.cameras.c2w)
        assert torch.equal(off.splits[name].images, split.images)
    assert off.meta["focal_noise"] == -0.04 and "true_fx" not in exact.meta
    truth = torch.tensor(off.meta["true_fx"])
    accuracy = pose_accuracy(off.meta, None, (truth * 1.01).tolist())
    assert abs(accuracy["focal_pct"][0] - 4.0) < 1e-4 and abs(accuracy["focal_pct"][1] - 1.0) < 1e-4


def test_refined_scene_refocuses_every_split():
    from types import SimpleNamespace

    from pipeline.types import PosedImages, SceneData

    cams = _ring(4)
    focal = _focal(cams, 0.97)
    module = PoseRefinement(4, centres=cams.c2w[:, :3, 3], focal=focal, pose=False).double()
    assert not module.rotation.requires_grad and [g["name"] for g in module.param_groups(0.01)[1:]] == ["focal"]
    split = PosedImages(images=torch.zeros(4, 30, 40, 3), cameras=cams, names=[str(i) for i in range(4)])
    scene = SceneData(splits={"train": split, "test": split}, aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    seen = refined_scene(scene, SimpleNamespace(poses=module))
    for name in ("train", "test"):
        assert torch.allclose(seen.splits[name].cameras.fx, cams.fx * 0.97)
        assert torch.allclose(seen.splits[name].cameras.c2w, cams.c2w)


def test_a_run_refining_its_focal_length_records_and_uses_it(nls, tiny_scene, tmp_path):
    """A short run with train.refine_focal on a scene whose focal length is 5 % too long: poses.json and the metrics
    hold the learned factor, each camera's fx is the given one times it, the poses stay as given, and render, eval
    (whose held-out views take the factor too) and report open the run. Whether the factor is right is the slow
    test's and the poses benchmark's question: so short a run on so small a scene does not settle it."""
    scene = tiny_scene(train={"steps": 30, "batch_rays": 512, "checkpoint_every": 15, "log_every": 5,
                              "grid_warmup": 4, "refine_focal": True},
                       scene={"type": "procedural", "shape": "csg", "n_train": 8, "n_test": 2, "image_size": 32,
                              "supersample": 1, "gt_resolution": 64, "focal_noise": 0.05})
    out = tmp_path / "out"
    nls("reconstruct", str(scene), "--output", str(out), "-q", check=True)
    (run,) = list(out.glob("*/*/*"))
    record = json.loads((run / "poses.json").read_text())
    k = record["focal"]["scale"]
    assert k != 1.0 and record["rotation_deg"]["max"] == 0 and record["shift"]["max"] == 0
    assert record["poses"] is False
    given = torch.tensor(json.loads((run / "scene.json").read_text())["true_fx"]) * 1.05
    assert torch.allclose(torch.tensor([c["fx"] for c in record["cameras"]]), given * k, rtol=1e-5)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs(logged[-1]["focal_scale"] - k) < 1e-6 and logged[-1]["lr/focal"] > 0
    import argparse

    from pipeline.commands.run_loading import open_run

    ld = open_run(argparse.Namespace(run_dir=str(run), host=None, plugins_dir=None, device="cpu", quiet=True))
    assert torch.allclose(ld.scene.splits["test"].cameras.fx, given[:1].expand(2) * k, rtol=1e-5)
    nls("render", str(run), "--max-images", "1", "-q", check=True)
    nls("report", str(run), "--no-model", "-q", check=True)
    html = (run / "report.html").read_text()
    assert "times the given one (train.refine_focal)" in html and "the focal length alone refined" in html
    assert "common motion" not in html and "rotation about the camera" not in html


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.05, -0.05])
def test_the_default_scene_learns_its_focal_length_back(nls, tmp_path, noise):
    """The default csg scene (600 steps) with a focal length 5 % too long or too short: refined, it ends within
    0.5 % (measured 0.20 % and 0.19 %; learned as NeRF-- learns it, without the dolly zoom, the +5 % case ended at
    4.7 % and the -5 % case drifted to 8.7 %)."""
    out = tmp_path / "out"
    nls("reconstruct", "scenes/csg_dense.yaml", "--steps", "600", "--output", str(out), "-q", "--no-eval",
        "--set", f"scene.focal_noise={noise}", "--set", "train.refine_focal=true", check=True)
    (run,) = list(out.glob("*/*/*"))
    record = json.loads((run / "poses.json").read_text())
    before, after = pose_accuracy(json.loads((run / "scene.json").read_text()), None,
                                  [c["fx"] for c in record["cameras"]])["focal_pct"]
    print(f"focal error {before:.2f} % -> {after:.2f} %")
    assert abs(before - 5.0) < 1e-6 and after < 0.5, (before, after, record["focal"])
