"""``nls export RUN --dataset --dataset-format neus`` (:func:`pipeline.dataset_export.write_neus_dataset`): a run's
splits as IDR / NeuS folders (the train views in the folder, the others in ``<split>/``) load back through the neus
source as the same images, alphas or ignore masks and cameras, in a normalised frame whose unit sphere holds the
scene box; the CLI trains on what it wrote as its hint says."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.dataset_export import write_neus_dataset
from pipeline.scenes.neus import load_neus
from tests.test_dataset_export import _scene


def _to_run(scene, folder) -> np.ndarray:
    """The (4, 4) similarity from ``folder``'s normalised frame to the frame it was written in (its scale_mat)."""
    return np.load(folder / "cameras_sphere.npz")["scale_mat_0"]


def _same_cameras(got, want, scale_mat) -> None:
    """``got`` (normalised frame) are ``want``'s cameras once taken through ``scale_mat``."""
    c2w = scale_mat @ got.c2w.double().numpy()
    c2w[:, :3, :3] /= np.cbrt(np.linalg.det(scale_mat[:3, :3]))
    assert np.allclose(c2w, want.c2w.double().numpy(), atol=1e-5)
    for key in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(got, key), getattr(want, key), atol=1e-4), key
    assert (got.width, got.height) == (want.width, want.height)


def test_the_written_folders_load_back_as_the_same_views(tmp_path):
    """Object masks: images to the 8-bit level, alphas to half a level, cameras through scale_mat, names and splits;
    the box's corners lie inside the unit sphere, on it at the farthest; nls_run.json has the normalised box."""
    scene = _scene(tmp_path, depths=False, masks=False)
    scene.splits["train"].names = ["r_2", "r_10", "b", "a", "r_1"]  # (not in the order of their names)
    facts = write_neus_dataset(scene, tmp_path / "out", progress=False, source={"run": "r"})
    assert facts["splits"] == {"train": 5, "test": 2} and facts["gt_mesh"] and facts["points"] == 50
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "image").iterdir()) == ["0000_r_2.png", "0001_r_10.png", "0002_b.png",
                                                                 "0003_a.png", "0004_r_1.png"]
    assert sorted(p.name for p in (out / "test" / "mask").iterdir()) == ["0000_test_00.png", "0001_test_01.png"]
    doc = json.loads((out / "nls_run.json").read_text())
    assert doc["nls_run"] == {"run": "r"} and doc["aabb_normalised"] == pytest.approx(facts["aabb"])
    S = _to_run(scene, out)
    box = scene.aabb.double().numpy().reshape(2, 3)
    corners = (np.array(np.meshgrid(*box.T, indexing="ij")).reshape(3, -1).T - S[:3, 3]) / S[0, 0]
    assert np.linalg.norm(corners, axis=1).max() == pytest.approx(1.0)
    back = load_neus(out, background=scene.background, orientation="none")
    assert back.meta["split_rule"] == "held-out views in test/"
    assert back.aabb.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    for name, split in scene.splits.items():
        got = back.splits[name]
        assert got.names == split.names
        assert (got.images - split.images).abs().max() <= 1.0 / 255 + 1e-6
        assert (got.alphas - split.alphas).abs().max() <= 0.5 / 255 + 1e-6
        _same_cameras(got.cameras, split.cameras, S)


def test_ignore_masks_come_back_with_mask_use_ignore_and_input_frame_moves_the_cameras(tmp_path):
    from scipy.spatial.transform import Rotation

    scene = _scene(tmp_path, depths=False)
    scene.splits = {k: replace(v, alphas=None) for k, v in scene.splits.items()}
    to_run = np.eye(4)
    to_run[:3, :3], to_run[:3, 3] = 0.5 * Rotation.from_euler("xyz", [10, 70, -20], degrees=True).as_matrix(), [1, 2, 3]
    write_neus_dataset(scene, tmp_path / "out", to_run=to_run, progress=False)
    back = load_neus(tmp_path / "out", mask_use="ignore", background=scene.background, orientation="none")
    frame_to_run = to_run @ _to_run(scene, tmp_path / "out")  # (normalised -> input's frame -> run's)
    for name, split in scene.splits.items():
        got = back.splits[name]
        assert torch.equal(got.valid, split.valid) and got.alphas is None
        assert (got.images - split.images).abs().max() <= 0.5 / 255 + 1e-6
        _same_cameras(got.cameras, split.cameras, frame_to_run)


def test_a_run_exported_as_neus_trains_again_as_the_hint_says(nls, tiny_scene, tmp_path):
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--steps", "3", "-q", "--output", str(tmp_path / "runs"), check=True)
    run = next((tmp_path / "runs").glob("*/*/*/summary.json")).parent
    out = tmp_path / "data"
    done = nls("export", str(run), "--dataset", "--dataset-format", "neus", "-o", str(out), "-q", check=True)
    assert f"wrote {out}: image/, mask/ and cameras_sphere.npz of 8 train, 2 test views (the train views; test/ " \
           f"holds the others), with the ground-truth mesh (in the run's frame)" in done.stdout, done.stdout
    hint = done.stdout.split("nls reconstruct ", 1)[1].split(" (the box", 1)[0]
    args = [a.strip("'") for a in hint.split()]
    assert args[0] == str(run / "config.yaml") and "scene.type=neus" in args, args
    nls("reconstruct", *args, "--steps", "2", "-q", "--output", str(tmp_path / "again"), check=True)
    rerun = next((tmp_path / "again").glob("*/*/*/summary.json")).parent
    recorded = json.loads((rerun / "scene.json").read_text())
    assert recorded["source"] == "neus" and recorded["n_images"] == {"train": 8, "test": 2}
    first = json.loads((run / "scene.json").read_text())
    S = np.load(out / "cameras_sphere.npz")["scale_mat_0"]
    box = np.asarray(recorded["aabb"]).reshape(2, 3) * S[0, 0] + S[:3, 3]  # (the run's box, through scale_mat)
    assert box.reshape(6).tolist() == pytest.approx(first["aabb"], abs=1e-5)
    import trimesh  # (the ground truth came along through scene.gt_mesh, into the folder's normalised frame)

    truth = trimesh.load(recorded["gt_mesh"], process=False)
    original = trimesh.load(first["gt_mesh"], process=False)
    assert np.allclose(truth.vertices * S[0, 0] + S[:3, 3], original.vertices, atol=1e-5)
    refused = nls("export", str(run), "--dataset-format", "neus", "-o", str(tmp_path / "x.ply"))
    assert refused.returncode == 2 and "add --dataset" in refused.stderr
