"""Camera pose refinement (pipeline/pose_refinement.py, train.refine_poses) against exact references."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline.pose_refinement import (PoseRefinement, perturb_poses, pose_accuracy, pose_errors, refined_scene,
                                      remove_common_motion, rotation_matrices, view_errors)
from pipeline.types import Cameras


def _ring(n: int = 6) -> Cameras:
    """``n`` cameras on a ring of radius 2 around the origin, each looking at it (Blender axes: -z forward)."""
    c2w = torch.zeros(n, 4, 4, dtype=torch.float64)
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = torch.tensor([2 * math.cos(a), 2 * math.sin(a), 0.5], dtype=torch.float64)
        back = eye / eye.norm()  # the camera's +z points away from the origin
        right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), back)
        right = right / right.norm()
        up = torch.linalg.cross(back, right)
        c2w[i, :3, :3] = torch.stack([right, up, back], 1)
        c2w[i, :3, 3] = eye
        c2w[i, 3, 3] = 1
    f = torch.full((n,), 50.0, dtype=torch.float64)
    return Cameras(c2w, f, f, torch.full((n,), 20.0, dtype=torch.float64), torch.full((n,), 15.0, dtype=torch.float64),
                   40, 30)


def _randomised(n: int = 6, seed: int = 0, scale: float = 0.05, centres=None) -> PoseRefinement:
    module = PoseRefinement(n, centres=centres).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return module


def _all_rays(cams: Cameras):
    from pipeline.rays import pixel_rays

    n = len(cams)
    v, u = torch.meshgrid(torch.arange(cams.height), torch.arange(cams.width), indexing="ij")
    idx = torch.arange(n).repeat_interleave(u.numel())
    uu, vv = u.flatten().repeat(n).double() + 0.5, v.flatten().repeat(n).double() + 0.5
    return idx, *pixel_rays(cams, idx, uu, vv)


def test_starts_as_the_identity():
    idx, o, d = _all_rays(_ring())
    o2, d2 = PoseRefinement(6).double()(o, d, idx)
    assert torch.equal(o2, o) and torch.equal(d2, d)


def test_rotation_matrices_are_scipys_rotation_vectors():
    from scipy.spatial.transform import Rotation

    w = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w[0] = 0  # the identity, exactly
    w[1] = torch.tensor([1e-9, 0, 0])
    ref = torch.from_numpy(Rotation.from_rotvec(w.numpy()).as_matrix())
    assert torch.allclose(rotation_matrices(w), ref, atol=1e-12)
    assert torch.equal(rotation_matrices(w[:1]), torch.eye(3, dtype=torch.float64)[None])


def _apparent_motion(refined: torch.Tensor, given: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Where each given camera ``(N, 4, 4)`` sees ``point (3,)`` in the image its refined pose sees it in, minus
    the point: how far the scene seems to move in camera i, ``(N, 3)``, world units."""
    local = torch.einsum("nji,nj->ni", refined[:, :3, :3], point - refined[:, :3, 3])
    return torch.einsum("nij,nj->ni", given[:, :3, :3], local) + given[:, :3, 3] - point


def test_the_common_motion_is_removed():
    """The common motion the field could follow is pinned: mean(w) = 0, mean(v) = 0 and sum(v . (t - mean t)) = 0
    for v = s - w x t; a small rotation, translation and scaling of all cameras is removed exactly (first order);
    the removal is idempotent."""
    centres = _ring().c2w[:, :3, 3]
    w, s = (t.detach() for t in _randomised(centres=centres).corrections())
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(w.mean(0), zero, atol=1e-15)
    v = s - torch.linalg.cross(w, centres)
    assert torch.allclose(v.mean(0), zero, atol=1e-15)
    assert abs(float((v * (centres - centres.mean(0))).sum())) < 1e-15
    assert float(w.abs().max()) > 0.01  # the cameras do differ
    again = remove_common_motion(w, s, centres)
    assert torch.allclose(again[0], w, atol=1e-15) and torch.allclose(again[1], s, atol=1e-15)
    spin, move = torch.tensor([0.01, -0.02, 0.03], dtype=torch.float64), torch.tensor([0.1, 0.0, -0.05],
                                                                                     dtype=torch.float64)
    common = torch.linalg.cross(spin.expand(6, 3), centres) + move + 0.02 * centres
    rigid = remove_common_motion(spin.expand(6, 3), common, centres)
    assert float(rigid[0].abs().max()) < 1e-15 and float(rigid[1].abs().max()) < 1e-15


def test_cameras_at_one_place_leave_the_scale_free():
    """Centres that coincide (or none given) have no scale to fit: the removal stays finite and takes off the
    rotation and translation only."""
    w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.01
    s = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.01
    for centres in (torch.full((4, 3), 0.3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)):
        w2, s2 = remove_common_motion(w, s, centres)
        assert torch.isfinite(s2).all()
        assert torch.allclose(w2, w - w.mean(0), atol=1e-15)
        assert torch.allclose(s2 - torch.linalg.cross(w2, centres), (s - torch.linalg.cross(w, centres))
                              - (s - torch.linalg.cross(w, centres)).mean(0), atol=1e-15)


def test_pitching_every_camera_does_not_move_the_scene():
    """Every camera of a ring pitched by the same angle about its own horizontal axis: the rotations' mean is zero,
    so the plain mean (stop 50's gauge, kept when no centres are given) keeps it and the origin seems to move
    ~ radius * angle alike in all views; the common-motion gauge takes that apparent motion out."""
    cams = _ring()
    pitch = cams.c2w[:, :3, 0] * 0.01  # (N, 3) each camera's right axis, 0.01 rad
    origin = torch.zeros(3, dtype=torch.float64)
    for centres, moved in ((None, True), (cams.c2w[:, :3, 3], False)):
        module = PoseRefinement(6, centres=centres).double()
        with torch.no_grad():
            module.rotation.copy_(pitch)
        mean = _apparent_motion(module.refined(cams).c2w, cams.c2w, origin).mean(0).norm()
        assert (float(mean) > 0.015) if moved else (float(mean) < 1e-4), (centres is None, float(mean))


def test_refined_cameras_cast_the_refined_rays():
    """Per ray (training) and per camera (rendering the training views afterwards) are one correction: the
    pixel rays of refined() are forward() of the original pixel rays."""
    cams = _ring()
    module = _randomised()
    idx, o, d = _all_rays(cams)
    o2, d2 = module(o, d, idx)
    _, o3, d3 = _all_rays(module.refined(cams))
    assert torch.allclose(o2, o3, atol=1e-12) and torch.allclose(d2, d3, atol=1e-12)
    assert torch.allclose(d2.norm(dim=-1), torch.ones(len(d2), dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(d2, d, atol=1e-3)


def test_perturbation_is_undone_by_its_inverse_correction():
    """perturb_poses moves every camera by at most the stated angle and shift (centred); the correction
    (-w, -s) it documents gives back the true poses, and pose_errors/view_errors read it."""
    cams = _ring(8)
    noisy, w, s = perturb_poses(cams, 3.0, 0.05, seed=4)
    rot, dist = pose_errors(noisy.c2w, cams.c2w)
    assert torch.allclose(rot, torch.rad2deg(w.norm(dim=-1)), atol=1e-9)  # a rotation about each camera's centre
    assert float(rot.max()) <= 2 * 3.0 and float(rot.mean()) > 0.3  # centring can add the mean's angle
    assert torch.allclose(dist, s.norm(dim=-1), atol=1e-12)
    again = remove_common_motion(w, s, cams.c2w[:, :3, 3])  # no common motion left
    assert torch.allclose(again[0], w, atol=1e-15) and torch.allclose(again[1], s, atol=1e-15)
    module = PoseRefinement(8, centred=False).double()
    with torch.no_grad():
        module.rotation.copy_(-w)
        module.shift.copy_(-s)
    back = module.refined(noisy).c2w
    assert torch.allclose(back, cams.c2w, atol=1e-12)
    points = torch.randn(50, 3, dtype=torch.float64) * 0.3
    assert float(view_errors(back, cams.c2w, points).max()) < 1e-9
    assert float(view_errors(noisy.c2w, cams.c2w, points).mean()) > 0.1
    again, _, _ = perturb_poses(cams, 3.0, 0.05, seed=4)
    assert torch.equal(again.c2w, noisy.c2w)


def test_view_error_is_the_reprojection_angle():
    """A camera turned by 1 degree about its vertical axis sees every point 1 degree off; a shift along the
    line to a point leaves that point's direction as it was."""
    cams = _ring(1)
    c2w = cams.c2w.clone()
    up = c2w[0, :3, 1]
    c2w[0, :3, :3] = rotation_matrices((up * math.radians(1.0))[None])[0] @ c2w[0, :3, :3]
    point = torch.zeros(1, 3, dtype=torch.float64)
    assert abs(float(view_errors(c2w, cams.c2w, point)[0]) - 1.0) < 1e-9
    moved = cams.c2w.clone()
    moved[0, :3, 3] *= 0.9  # towards the origin
    assert float(view_errors(moved, cams.c2w, point)[0]) < 1e-9


def test_gradients_reach_the_pose_from_a_rendered_pixel():
    """A pixel of a training view rendered through the shared volume renderer back-propagates into that view's
    correction, and only that view's."""
    from pipeline.rendering import render_rays

    cams = _ring(3)
    module = PoseRefinement(3, centres=cams.c2w[:, :3, 3]).double()
    idx, o, d = _all_rays(cams)
    keep = idx == 1
    o, d, idx = o[keep][::37], d[keep][::37], idx[keep][::37]
    o2, d2 = module(o, d, idx)

    def radiance(x, dirs):  # a soft ball of radius 0.4, coloured by position
        sigma = 40 * torch.sigmoid((0.4 - x.norm(dim=-1)) * 30)
        return torch.sigmoid(x * 3), sigma

    out = render_rays(o2, d2, radiance, aabb=[-1, -1, -1, 1, 1, 1], step_size=0.01, backend="torch")
    (out["rgb"].sum() + out["opacity"].sum()).backward()
    grad, grad_s = module.rotation.grad, module.shift.grad
    # removing the common motion spreads view 1's gradient over all corrections, none along a common motion
    assert float(grad.abs().max()) > 0 and float(grad_s.abs().max()) > 0
    spin, move = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), torch.tensor([1.0, 2.0, -1.0],
                                                                                  dtype=torch.float64)
    along = (grad * spin).sum() + (grad_s * (torch.linalg.cross(spin.expand(3, 3), cams.c2w[:, :3, 3]) + move)).sum()
    assert abs(float(along)) < 1e-9 * float(grad.abs().max() + grad_s.abs().max())


def test_refined_scene_replaces_only_the_training_cameras():
    from types import SimpleNamespace

    from pipeline.types import PosedImages, SceneData

    cams = _ring(4)
    images = torch.zeros(4, 30, 40, 3)
    scene = SceneData(splits={"train": PosedImages(images, cams), "test": PosedImages(images, cams)},
                      aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    module = _randomised(4)
    seen = refined_scene(scene, SimpleNamespace(poses=module))
    assert torch.equal(seen.splits["train"].cameras.c2w, module.refined(cams).c2w)
    assert seen.splits["test"].cameras is cams and scene.splits["train"].cameras is cams  # the scene is kept
    assert refined_scene(scene, SimpleNamespace(poses=None)) is scene


def _noisy_tiny(tiny_scene, **train):
    return tiny_scene(train={"steps": 300, "batch_rays": 1024, "checkpoint_every": 150, "log_every": 25,
                             "grid_warmup": 20, "lr": 0.02, "refine_poses": True, "pose_lr": 0.003, **train},
                      scene={"type": "procedural", "shape": "csg", "n_train": 8, "n_test": 2, "image_size": 32,
                             "supersample": 1, "gt_resolution": 64, "pose_noise_deg": 3.0, "pose_noise_shift": 0.03})


def test_run_refines_the_poses_towards_the_true_ones(nls, tiny_scene, tmp_path):
    """A tiny run on cameras of simulated pose error: poses.json holds one refined pose per training camera,
    and they see the object closer to where the true cameras do than the noisy ones they started from; the
    run renders its training views through them, and render/eval open it."""
    out = tmp_path / "out"
    nls("reconstruct", str(_noisy_tiny(tiny_scene)), "--output", str(out), "-q", check=True)
    (run,) = list(out.glob("*/*/*"))
    record = json.loads((run / "poses.json").read_text())
    assert record["step"] == 300 and len(record["cameras"]) == 8
    said = " ".join(json.loads((run / "summary.json").read_text()).get("warnings", []))
    assert "eval.align_poses: 100 fits each view's pose" in said  # its test PSNR is of poses as given
    accuracy = pose_accuracy(json.loads((run / "scene.json").read_text()), [c["c2w"] for c in record["cameras"]])
    before, after = accuracy["view_deg"]
    assert after < 0.6 * before, accuracy  # 1.151 -> 0.457 degrees when written
    import argparse

    from pipeline.commands.run_loading import open_run

    ld = open_run(argparse.Namespace(run_dir=str(run), host=None, plugins_dir=None, device="cpu", quiet=True))
    refined = torch.tensor([c["c2w"] for c in record["cameras"]])
    assert torch.allclose(ld.scene.splits["train"].cameras.c2w, refined, atol=1e-6)  # what render and eval see
    assert not torch.allclose(ld.scene.splits["train"].cameras.c2w, torch.tensor(
        json.loads((run / "scene.json").read_text())["noisy_poses"]), atol=1e-4)
    nls("render", str(run), "--split", "train", "--max-images", "1", "-q", check=True)
    nls("eval", str(run), "-q", "--set", "eval.align_poses=4", "--set", "eval.align_rays=64", check=True)
    aligned = json.loads((run / "eval_renders" / "test" / "pose_alignment.json").read_text())
    assert aligned["steps"] == 4 and list(aligned["views"]) == ["r_0"]  # tiny scores 1 test view
    assert aligned["views"]["r_0"]["rotation_deg"] > 0
    nls("report", str(run), "--no-model", "-q", check=True)
    html = (run / "report.html").read_text()
    assert "Poses of the training cameras" in html and "view error" in html and "common motion" in html


def test_resume_continues_the_poses_bit_for_bit(nls, tiny_scene, tmp_path):
    """The corrections are part of the checkpoint: a run resumed from its mid-run checkpoint ends with the
    same corrections (and poses.json) as the run that was never stopped."""
    from pipeline.runs import RunDir
    from tests.short_runs import resumed_from_the_middle

    scene = _noisy_tiny(tiny_scene, steps=20, batch_rays=256, checkpoint_every=10, log_every=5, grid_warmup=4)
    original, copy = resumed_from_the_middle(nls, scene, tmp_path, 20)
    a, b = (RunDir.open(r).load_checkpoint()["model"] for r in (original, copy))
    assert torch.equal(a["poses.rotation"], b["poses.rotation"]) and torch.equal(a["poses.shift"], b["poses.shift"])
    assert float(a["poses.rotation"].abs().max()) > 0  # it did learn something
    assert (original / "poses.json").read_text() == (copy / "poses.json").read_text()


@pytest.mark.parametrize("key", ["pose_noise_deg", "pose_noise_shift"])
def test_pose_noise_moves_only_the_training_cameras(key):
    """scene.pose_noise_*: the training cameras move and the true ones are recorded; the test cameras and the
    images stay as rendered (the render cache is shared with the scene without noise)."""
    from pipeline.testing import TINY_SCENE
    from plugins.scenes.config import ProceduralConfig
    from plugins.scenes.sources import build_procedural

    options = {k: v for k, v in TINY_SCENE["scene"].items() if k != "type"}
    exact = build_procedural(ProceduralConfig(**options), None)()
    noisy = build_procedural(ProceduralConfig(**{**options, key: 2.0 if key.endswith("deg") else 0.05}), None)()
    assert torch.equal(noisy.splits["test"].cameras.c2w, exact.splits["test"].cameras.c2w)
    assert torch.equal(noisy.splits["train"].images, exact.splits["train"].images)
    assert not torch.allclose(noisy.splits["train"].cameras.c2w, exact.splits["train"].cameras.c2w, atol=1e-4)
    assert torch.allclose(torch.tensor(noisy.meta["true_poses"]), exact.splits["train"].cameras.c2w, atol=1e-6)
    assert "true_poses" not in exact.meta


def test_pose_noise_on_a_folder_of_images(tmp_path):
    """The blender source takes scene.pose_noise_* too (lego with known poses): its training cameras move by
    the seeded noise, the true ones are recorded, the test cameras and the images stay as they are."""
    from tests.test_blender import make_blender
    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender

    root = make_blender(tmp_path / "b", n=5)

    def load(**noise):
        return build_blender(BlenderConfig(path=str(root), **noise), None)()

    exact, noisy = load(), load(pose_noise_deg=2.0, pose_noise_shift=0.05)
    assert torch.equal(noisy.splits["test"].cameras.c2w, exact.splits["test"].cameras.c2w)
    assert torch.equal(noisy.splits["train"].images, exact.splits["train"].images)
    assert torch.allclose(torch.tensor(noisy.meta["true_poses"]), exact.splits["train"].cameras.c2w, atol=1e-6)
    r, t = pose_errors(noisy.splits["train"].cameras.c2w.double(), exact.splits["train"].cameras.c2w.double())
    assert 0.1 < float(r.mean()) < 2.0 and 0.001 < float(t.mean()) < 0.05 * 3 ** 0.5
    again = load(pose_noise_deg=2.0, pose_noise_shift=0.05)
    assert torch.equal(again.splits["train"].cameras.c2w, noisy.splits["train"].cameras.c2w)
    other = load(pose_noise_deg=2.0, pose_noise_shift=0.05, pose_noise_seed=1)
    assert not torch.allclose(other.splits["train"].cameras.c2w, noisy.splits["train"].cameras.c2w, atol=1e-4)
    assert "true_poses" not in exact.meta


def test_the_benchmarks_render_shift_finds_a_known_shift(tmp_path):
    """scripts/benchmarks/poses.py's drift measure reads a side-by-side whose photo is its prediction moved by
    (2.5, -1.25) pixels (smooth random texture, shifted exactly in Fourier space) as a shift of that length, and an
    unshifted one as none."""
    import imageio.v3 as iio
    import numpy as np
    from scipy import ndimage

    from scripts.benchmarks.poses import render_shift

    n = 64
    texture = np.fft.fft2(np.random.default_rng(0).random((n, n)))
    texture = ndimage.fourier_gaussian(texture, 2.0)

    def pattern(dy: float, dx: float) -> np.ndarray:
        g = np.fft.ifft2(ndimage.fourier_shift(texture, (dy, dx))).real
        g = (g - g.min()) / (g.max() - g.min())
        return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, -1)

    folder = tmp_path / "renders" / "test"
    folder.mkdir(parents=True)
    depth = np.zeros((n, n, 3), np.uint8)
    iio.imwrite(folder / "a_pred_gt_depth.png", np.concatenate([pattern(0, 0), pattern(2.5, -1.25), depth], 1))
    assert abs(render_shift(tmp_path) - float(np.hypot(2.5, 1.25))) < 0.05
    iio.imwrite(folder / "a_pred_gt_depth.png", np.concatenate([pattern(0, 0), pattern(0, 0), depth], 1))
    assert render_shift(tmp_path) < 0.02
    assert render_shift(tmp_path, "train") is None
