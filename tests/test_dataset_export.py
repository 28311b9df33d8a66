"""``nls export RUN --dataset -o DIR`` (:mod:`pipeline.dataset_export`): a run's splits written as an instant-ngp /
nerfstudio folder load back through the blender source as the same images, alphas, ignore masks, depth maps,
cameras, splits, box and ground-truth mesh; in the input's frame the cameras map back through the similarity; the
CLI trains on what it wrote and refuses what does not apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.dataset_export import check_dataset_folder, straight_colour, write_dataset
from pipeline.types import Cameras, NLSError, PosedImages, SceneData


def _scene(tmp_path: Path, depths: bool = True, masks: bool = True) -> SceneData:
    """Two splits of random RGBA views (composited on grey) with ignore masks, depth maps (0 on some pixels) and
    cameras of varied intrinsics looking at the origin, a box, near/far and a ground-truth sphere."""
    import trimesh

    from pipeline.scenes.mesh_render import look_at

    rng = np.random.default_rng(0)
    background = (0.5, 0.5, 0.5)
    splits = {}
    for name, n, size in (("train", 5, (24, 20)), ("test", 2, (24, 20))):
        w, h = size
        ang = rng.uniform(0, 2 * np.pi, n)
        eyes = np.stack([2 * np.cos(ang), 2 * np.sin(ang), rng.uniform(-0.5, 1.0, n)], 1)
        c2w = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32)
        cams = Cameras(c2w, torch.tensor(rng.uniform(20, 30, n), dtype=torch.float32),
                       torch.tensor(rng.uniform(20, 30, n), dtype=torch.float32),
                       torch.tensor(rng.uniform(10, 14, n), dtype=torch.float32),
                       torch.tensor(rng.uniform(8, 12, n), dtype=torch.float32), w, h)
        colour = rng.random((n, h, w, 3))
        alpha = rng.random((n, h, w, 1))
        alpha[:, :3] = 0.0  # (fully transparent rows)
        images = colour * alpha + np.asarray(background) * (1 - alpha)
        valid = torch.from_numpy(rng.random((n, h, w)) > 0.2) if masks else None
        z = (rng.random((n, h, w)) * 3 + 0.5) * (rng.random((n, h, w)) > 0.3) * (alpha[..., 0] >= 0.5)
        z = torch.from_numpy(z).float() if depths else None  # (none where transparent, as the sources load them)
        splits[name] = PosedImages(torch.from_numpy(images).float(), cams, torch.from_numpy(alpha).float(),
                                   [f"{name}_{k:02d}" for k in range(n)], valid, z)
    gt = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=2, radius=0.4).export(gt)
    points = rng.uniform(-0.35, 0.35, (50, 3)).astype(np.float32)
    return SceneData(splits, torch.tensor([-0.6, -0.5, -0.4, 0.6, 0.5, 0.4]), background, 0.3, 5.0, gt_mesh=gt,
                     points=points, point_colors=rng.integers(0, 256, (50, 3)).astype(np.uint8))


def test_straight_colour_composites_back_to_the_image_within_half_a_grey_level():
    rng = np.random.default_rng(1)
    colour, alpha = rng.random((3, 8, 8, 3)), rng.random((3, 8, 8, 1))
    alpha[0, 0, 0] = 0.0
    for background in ((1.0, 1.0, 1.0), (0.2, 0.5, 0.9)):
        images = colour * alpha + np.asarray(background) * (1 - alpha)
        stored = np.round(straight_colour(images, alpha, background) * 255) / 255
        again = stored[..., :3] * stored[..., 3:] + np.asarray(background) * (1 - stored[..., 3:])
        assert np.abs(again - images).max() <= 1.0 / 255 + 1e-9
        assert np.abs(stored[..., :3] - colour)[alpha[..., 0] > 0.5].max() <= 0.5 / 255 / 0.5 + 1e-9


def test_the_written_folder_loads_back_as_the_same_scene(tmp_path):
    """Images (to the 8-bit level), alphas, ignore masks, depths, cameras, names, splits, box, near/far and the
    ground-truth mesh come back through the blender source; nerfstudio's split lists name every split's files."""
    from pipeline.scenes.blender import load_blender

    scene = _scene(tmp_path)
    facts = write_dataset(scene, tmp_path / "out", progress=False)
    assert facts == {"splits": {"train": 5, "test": 2}, "masks": True, "depths": True, "gt_mesh": True,
                     "points": 50, "size": [[24, 20], [24, 20]]}
    assert not list(tmp_path.glob(".out.partial"))
    doc = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert doc["test_filenames"] == doc["val_filenames"] == ["images/test/test_00.png", "images/test/test_01.png"]
    assert len(doc["train_filenames"]) == 5 and doc["depth_unit_scale_factor"] == 1e-3
    back = load_blender(tmp_path / "out", splits=("train", "test"), background=scene.background)
    assert back.aabb.tolist() == pytest.approx(scene.aabb.tolist()) and (back.near, back.far) == (0.3, 5.0)
    assert back.gt_mesh is not None and back.gt_mesh.name == "gt_mesh.ply"
    assert np.allclose(back.points, scene.points, atol=1e-7) and np.array_equal(back.point_colors, scene.point_colors)
    assert back.meta["sparse_points"]["in_box"] == 50 and doc["ply_file_path"] == "sparse_pc.ply"
    for name, split in scene.splits.items():
        got = back.splits[name]
        assert got.names == split.names
        assert (got.images - split.images).abs().max() <= 1.0 / 255 + 1e-6
        assert (got.alphas - split.alphas).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(got.valid, split.valid)
        assert torch.allclose(got.depths, split.depths, rtol=1e-6, atol=0) and torch.equal(got.depths > 0,
                                                                                          split.depths > 0)
        for key in ("c2w", "fx", "fy", "cx", "cy"):
            assert torch.allclose(getattr(got.cameras, key), getattr(split.cameras, key), atol=1e-5), key
        assert (got.cameras.width, got.cameras.height) == (split.cameras.width, split.cameras.height)


def test_splits_without_masks_or_depths_get_full_masks_and_empty_depths(tmp_path):
    """nerfstudio wants every frame's mask and depth or none: a split without them gets masks that keep every pixel
    and depth maps of zeros (no depth); a scene without any writes neither."""
    from dataclasses import replace

    from pipeline.scenes.blender import load_blender

    scene = _scene(tmp_path)
    test = replace(scene.splits["test"], valid=None, depths=None)
    write_dataset(replace(scene, splits={**scene.splits, "test": test}), tmp_path / "out", progress=False)
    back = load_blender(tmp_path / "out", splits=("test",), background=scene.background).splits["test"]
    assert bool(back.valid.all()) and not bool((back.depths > 0).any())
    bare = _scene(tmp_path, depths=False, masks=False)
    facts = write_dataset(bare, tmp_path / "bare", progress=False)
    assert not facts["masks"] and not facts["depths"]
    frame = json.loads((tmp_path / "bare" / "transforms.json").read_text())["frames"][0]
    assert "mask_path" not in frame and "depth_file_path" not in frame
    uncoloured = write_dataset(replace(bare, point_colors=None), tmp_path / "uncoloured", progress=False)
    assert uncoloured["points"] == 0 and not (tmp_path / "uncoloured" / "sparse_pc.ply").exists()  # (splatfacto
    # seeds Gaussians with the file's colours, and would find none)


def test_nerfstudio_s_ply_file_path_gives_the_points_in_the_box_with_their_colours(tmp_path):
    """A transforms.json's ply_file_path (ns-process-data's sparse_pc.ply) becomes the scene's points, those in the
    box, with their colours; a missing file is named."""
    import trimesh

    from pipeline.scenes.blender import load_blender
    from pipeline.types import DataError

    write_dataset(_scene(tmp_path, depths=False, masks=False), tmp_path / "out", progress=False)
    points = np.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.3], [2.0, 0.0, 0.0], [0.0, -0.6, 0.0]])
    colours = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120]], np.uint8)
    trimesh.PointCloud(points, colors=colours).export(tmp_path / "out" / "sparse_pc.ply")
    scene = load_blender(tmp_path / "out", splits=("train",))
    assert np.allclose(scene.points, points[:2]) and np.array_equal(scene.point_colors, colours[:2])
    assert scene.meta["sparse_points"] == {"file": str((tmp_path / "out" / "sparse_pc.ply").resolve()), "total": 4,
                                           "in_box": 2}
    (tmp_path / "out" / "sparse_pc.ply").unlink()
    with pytest.raises(DataError, match=r"point cloud not found: .*sparse_pc.ply \('ply_file_path'\)"):
        load_blender(tmp_path / "out", splits=("train",))


def test_the_input_frame_takes_the_cameras_depths_and_box_through_the_similarity(tmp_path):
    """With ``to_run`` (p_run = s R p_in + t), the written cameras are the input frame's: mapped back through the
    similarity they are the run's cameras; depths and near/far are divided by s, and the mesh moves with them."""
    import trimesh
    from scipy.spatial.transform import Rotation

    from pipeline.scenes.blender import load_blender

    scene = _scene(tmp_path)
    s, rot, t = 2.5, Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix(), np.array([0.3, -1.0, 2.0])
    to_run = np.eye(4)
    to_run[:3, :3], to_run[:3, 3] = s * rot, t
    write_dataset(scene, tmp_path / "out", to_run=to_run, progress=False)
    back = load_blender(tmp_path / "out", splits=("train",), background=scene.background)
    got, want = back.splits["train"], scene.splits["train"]
    c2w = got.cameras.c2w.double().numpy()
    mapped = to_run @ c2w
    mapped[:, :3, :3] /= s
    assert np.allclose(mapped, want.cameras.c2w.double().numpy(), atol=1e-5)
    assert torch.allclose(got.depths * s, want.depths, rtol=1e-5)
    assert (back.near, back.far) == pytest.approx((0.3 / s, 5.0 / s))
    assert np.allclose(back.points @ (s * rot).T + t, scene.points, atol=1e-5)
    mesh = trimesh.load(back.gt_mesh, process=False)
    assert np.allclose(np.linalg.norm(mesh.vertices @ (s * rot).T + t, axis=1), 0.4, atol=1e-5)  # (on the sphere)


def test_the_output_folder_must_be_new_or_empty(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(NLSError, match="is a folder with files in it; give a new folder"):
        check_dataset_folder(tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NLSError, match="is a file"):
        check_dataset_folder(tmp_path / "file")
    with pytest.raises(NLSError, match="does not exist"):
        check_dataset_folder(tmp_path / "no" / "such")
    (tmp_path / "empty").mkdir()
    assert check_dataset_folder(tmp_path / "empty") == tmp_path / "empty"


def test_nls_export_dataset_and_a_run_trained_on_it(nls, tiny_scene, tmp_path):
    """A run of the tiny procedural scene exported with --dataset trains again through the blender source, as the
    command's hint says; its ground-truth mesh comes along. Mesh options are refused with --dataset."""
    scene = tiny_scene()
    nls("reconstruct", str(scene), "--steps", "3", "-q", "--set", "train.refine_poses=true", "--set",
        "train.pose_lr=0.01", "--output", str(tmp_path / "runs"), check=True)
    run = next((tmp_path / "runs").glob("*/*/*/summary.json")).parent
    out = tmp_path / "data"
    done = nls("export", str(run), "--dataset", "-o", str(out), "-q", check=True)
    assert f"wrote {out}: transforms.json and the images of 8 train, 2 test views, with the ground-truth mesh" \
        in done.stdout and "--set scene.type=blender" in done.stdout
    doc = json.loads((out / "transforms.json").read_text())
    assert doc["nls_run"] == {"run": str(run.resolve()), "step": 3, "scene": "tiny", "method": "dense_grid",
                              "frame": "run"}
    written = {fr["file_path"]: fr for fr in doc["frames"]}
    refined = json.loads((run / "poses.json").read_text())["cameras"]
    assert refined[0]["rotation_deg"] > 0.01  # (so the given poses would differ)
    for cam in refined:  # the training cameras as refined
        assert np.allclose(written[f"images/train/{cam['name']}.png"]["transform_matrix"], cam["c2w"], atol=1e-6)
    assert f"nls reconstruct {run / 'config.yaml'} --set scene.type=blender --set scene.path={out}" in done.stdout
    again = nls("reconstruct", str(run / "config.yaml"), "--set", "scene.type=blender", "--set", f"scene.path={out}",
                "--steps", "2", "-q", "--output", str(tmp_path / "again"), check=True)
    rerun = next((tmp_path / "again").glob("*/*/*/summary.json")).parent
    recorded = json.loads((rerun / "scene.json").read_text())
    assert recorded["n_images"] == {"train": 8, "test": 2} and recorded["split_rule"] == "per-frame 'split' keys"
    assert recorded["gt_mesh"] == str(out / "gt_mesh.ply"), again.stdout
    first = json.loads((run / "scene.json").read_text())
    assert recorded["aabb"] == pytest.approx(first["aabb"])
    assert recorded["gt_mesh_sha256"] == first["gt_mesh_sha256"]  # (the mesh copied as it was)
    table = json.loads(nls("compare", str(run), str(rerun), "--json", check=True).stdout)
    said = " ".join(table["warnings"])
    assert f"is on the views of {run.resolve()}" in said and "the scene settings differ" not in said, said
    assert "psnr" in table["best"]  # (one set of views: the metrics are compared)
    refused = nls("export", str(run), "--dataset", "--faces", "100", "-o", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--dataset writes the run's images and cameras, which --faces" in refused.stderr
    full = nls("export", str(run), "--dataset", "-o", str(out))
    assert full.returncode == 2 and "is a folder with files in it" in full.stderr


def test_a_nerfstudio_path_on_the_exported_dataset_renders_on_the_run(nls, tiny_scene, tmp_path):
    """A run in a normalised frame (the mesh source: a box normalised from its file), exported in its own frame and
    in the input's: a nerfstudio camera path through each dataset's frame (its dataparser transform) renders on the
    run as the run's own test views, with --dataset-frame run or input; without it the path is refused, naming the
    option."""
    import imageio.v3 as iio
    import trimesh
    from scipy.spatial.transform import Rotation

    from pipeline.camera_paths import read_camera_path
    from tests.test_camera_paths import _nerfstudio_files

    box = trimesh.creation.box(extents=[2.0, 1.0, 1.5])
    box.apply_translation([3.0, -1.0, 0.5])
    box.export(tmp_path / "box.ply")
    scene = tiny_scene(scene={"type": "mesh", "path": str(tmp_path / "box.ply"), "n_train": 6, "n_test": 2,
                              "image_size": 32, "supersample": 1})
    nls("reconstruct", str(scene), "--steps", "60", "-q", "--output", str(tmp_path / "runs"), check=True)
    run = next((tmp_path / "runs").glob("*/*/*/summary.json")).parent  # (60 steps: a box to see in the renders)
    out = tmp_path / "renders"
    nls("render", str(run), "-o", str(out), "-q", check=True)
    _, names = read_camera_path(out / "test_cameras.json", None)
    rotation = Rotation.from_euler("xyz", [10.0, 80.0, -30.0], degrees=True).as_matrix()
    for frame in ("run", "input"):
        data = tmp_path / f"data_{frame}"
        nls("export", str(run), "--dataset", "--frame", frame, "-o", str(data), "-q", check=True)
        doc = json.loads((data / "transforms.json").read_text())
        test = [fr for fr in doc["frames"] if fr["split"] == "test"]
        cams = Cameras(torch.tensor([fr["transform_matrix"] for fr in test], dtype=torch.float64),
                       *(torch.tensor([fr[k] for fr in test], dtype=torch.float64) for k in ("fl_x", "fl_y", "cx", "cy")),
                       test[0]["w"], test[0]["h"])
        fov = float(np.degrees(2 * np.arctan(0.5 * cams.height / float(cams.fy[0]))))
        (tmp_path / frame).mkdir()
        path, transforms = _nerfstudio_files(tmp_path / frame, cams, rotation, [1.0, 2.0, -0.5], 0.7, fov)
        ns = json.loads(path.read_text())
        ns.update(render_width=int(cams.width), render_height=int(cams.height))
        path.write_text(json.dumps(ns))
        refused = nls("render", str(run), "--cameras", str(path), "--dataparser-transforms", str(transforms))
        assert refused.returncode == 2 and "add --dataset-frame run (or input" in refused.stderr
        nls("render", str(run), "--cameras", str(path), "--dataparser-transforms", str(transforms),
            "--dataset-frame", frame, "-o", str(tmp_path / f"ns_{frame}"), "-q", check=True)
        for k, name in enumerate(names):
            got = iio.imread(tmp_path / f"ns_{frame}" / "camera_path" / f"{k:04d}.png").astype(int)
            assert np.abs(got - iio.imread(out / "test" / f"{name}.png").astype(int)).max() <= 2, (frame, name)
    wrong = nls("render", str(run), "--cameras", str(tmp_path / "input" / "camera_path.json"), "--dataparser-transforms",
                str(tmp_path / "input" / "dataparser_transforms.json"), "--dataset-frame", "run",
                "-o", str(tmp_path / "wrong"), "-q", check=True)
    assert wrong.returncode == 0
    got = iio.imread(tmp_path / "wrong" / "camera_path" / "0000.png").astype(int)
    assert np.abs(got - iio.imread(out / "test" / f"{names[0]}.png").astype(int)).max() > 20  # (so this can fail)


def test_nls_eval_renders_scores_another_method_s_images_as_the_run_s(nls, tiny_scene, tmp_path):
    """nls eval RUN --renders DIR scores the images under DIR named as the eval views with the run's psnr evaluator:
    the run's own renders (as PNGs) score the run's PSNR to the 8-bit level; the exported dataset's test images, the
    ground truth itself, score infinite PSNR (SSIM 1); a render of another size, a missing view and a name two files
    share are named."""
    import shutil

    import imageio.v3 as iio

    scene = tiny_scene(evaluators=[{"type": "psnr"}, {"type": "chamfer"}], eval={"max_images": 2})
    nls("reconstruct", str(scene), "--steps", "20", "-q", "--output", str(tmp_path / "runs"), check=True)
    run = next((tmp_path / "runs").glob("*/*/*/summary.json")).parent
    own = json.loads((run / "summary.json").read_text())["metrics"]
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("r_0", "r_1"):  # (the prediction alone, as another method would write it)
        shutil.copy(run / "renders" / "test" / f"{name}.png", mine / f"{name}.png")
    done = nls("eval", str(run), "--renders", str(mine), "-q", check=True)
    assert "scoring the images only (psnr); chamfer" in done.stderr
    scored = json.loads((run / "eval_mine.json").read_text())
    assert scored["renders_from"] == str(mine.resolve()) and set(scored["evaluators"]) == {"psnr"}
    assert scored["metrics"]["psnr"] == pytest.approx(own["psnr"], abs=0.05)
    assert scored["metrics"]["ssim"] == pytest.approx(own["ssim"], abs=0.01)
    table = json.loads(nls("compare", str(run), str(run / "eval_mine.json"), "--json", check=True).stdout)
    assert [r["label"] for r in table["runs"]] == ["dense_grid", "renders:mine"]
    assert table["runs"][1]["status"] == "scored" and table["table"]["psnr"]["renders:mine"] == scored["metrics"]["psnr"]
    assert table["table"]["psnr"]["dense_grid"] == own["psnr"] and "chamfer only in dense_grid" in " ".join(
        table["warnings"])
    assert "the scene settings differ" not in " ".join(table["warnings"])  # (one scene, one eval setting)
    bad = nls("compare", str(run), str(run / "summary.json"))
    assert bad.returncode == 2 and "summary.json: nls compare takes run folders, or the JSON of nls eval" in bad.stderr
    nls("export", str(run), "--dataset", "-o", str(tmp_path / "data"), "-q", check=True)
    nls("eval", str(run), "--renders", str(tmp_path / "data" / "images" / "test"), "-o", str(tmp_path / "gt.json"),
        "-q", check=True)
    truth = json.loads((tmp_path / "gt.json").read_text())["evaluators"]["psnr"]
    assert truth["psnr"] is None and truth["ssim"] == pytest.approx(1.0)  # (infinite PSNR: JSON's null)
    iio.imwrite(mine / "r_1.png", np.zeros((16, 16, 3), np.uint8))
    small = nls("eval", str(run), "--renders", str(mine), "-o", str(tmp_path / "x.json"))
    assert small.returncode == 2 and "r_1.png is 16 x 16 and its view 32 x 32" in small.stderr
    (mine / "r_1.png").unlink()
    missing = nls("eval", str(run), "--renders", str(mine), "-o", str(tmp_path / "x.json"))
    assert missing.returncode == 2 and "no render of 1 of the 2 views scored (r_1)" in missing.stderr
    (mine / "a").mkdir()
    (mine / "b").mkdir()
    shutil.copy(mine / "r_0.png", mine / "a" / "r_1.png")
    shutil.copy(mine / "r_0.png", mine / "b" / "r_1.png")
    shared = nls("eval", str(run), "--renders", str(mine), "-o", str(tmp_path / "x.json"))
    assert shared.returncode == 2 and "2 files are named 'r_1'" in shared.stderr
    nowhere = nls("eval", str(run), "--renders", str(tmp_path / "none"))
    assert nowhere.returncode == 2 and "--renders" in nowhere.stderr and "does not exist" in nowhere.stderr
