"""The ``neus`` scene source (:mod:`pipeline.scenes.neus`): IDR / NeuS camera folders (``image/``, ``mask/``,
``cameras_sphere.npz``) load in their normalised frame with the cameras they were written with, a world point
projects where the format's own projection puts it, masks pair with images by sorted order, and what cannot be
read is an error naming the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.scenes.neus import decompose_projection, load_neus
from pipeline.types import DataError

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _similarity(rng, scale: float = 3.7) -> np.ndarray:
    """A (4, 4) normalised-to-world similarity with a rotation, a scale and a shift."""
    S = np.eye(4)
    S[:3, :3] = scale * _rotation(rng)
    S[:3, 3] = rng.normal(size=3) * 10
    return S


def _cameras(rng, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` cameras in the normalised frame, 2.5 units from the origin and looking at it: OpenCV K (integer pixel
    centres; fx != fy, off-centre principal point) and OpenGL camera-to-world."""
    from pipeline.scenes.mesh_render import look_at

    Ks, c2w = [], []
    for _ in range(n):
        d = rng.normal(size=3)
        c2w.append(look_at(2.5 * d / np.linalg.norm(d)))
        Ks.append(np.array([[rng.uniform(20, 30), 0, rng.uniform(10, 13)],
                            [0, rng.uniform(20, 30), rng.uniform(8, 11)], [0, 0, 1.0]]))
    return Ks, c2w


def _write_neus(root: Path, Ks, c2w_gl, S, size=(24, 20), masks: bool = True, rng=None, skew: float = 0.0,
                camera_file: str = "cameras_sphere.npz") -> tuple[np.ndarray, np.ndarray]:
    """A NeuS folder of random RGB images (``image/000000.png``...) and binary masks (``mask/000.png``..., IDR's
    names), whose ``world_mat_i`` is ``lambda_i K_i [R_i | t_i]`` in world coordinates (``lambda_i`` of both signs)
    and ``scale_mat_i`` is ``S``; returns the images and masks as written ((N, H, W, 3) and (N, H, W) in [0, 1])."""
    from pipeline.scenes.neus import write_neus_folder

    rng = rng or np.random.default_rng(0)
    w, h = size
    images = rng.integers(0, 256, (len(Ks), h, w, 3)).astype(np.uint8)
    keep = rng.random((len(Ks), h, w)) > 0.3
    world_mats = []
    for i, (K, m) in enumerate(zip(Ks, c2w_gl)):
        world_c2w = S @ m @ GL_TO_CV  # (OpenCV camera axes, world frame: the rotation part scaled by S's scale)
        world_c2w[:3, :3] /= np.cbrt(np.linalg.det(S[:3, :3]))
        K_skew = K.copy()
        K_skew[0, 1] = skew
        P = np.eye(4)
        P[:3, :4] = (-1.7 if i % 2 else 0.9) * K_skew @ np.linalg.inv(world_c2w)[:3, :4]
        world_mats.append(P)
    write_neus_folder(root, images, np.stack(world_mats), S, masks=(keep * 255).astype(np.uint8) if masks else None,
                      camera_file=camera_file, mask_names=[f"{i:03d}.png" for i in range(len(Ks))])
    return images / 255.0, keep.astype(np.float64)


def test_decompose_projection_recovers_intrinsics_and_pose_whatever_the_scale_s_sign():
    rng = np.random.default_rng(3)
    for lam in (1.0, -2.5, 1e-3, -1e4):
        K = np.array([[800.0, 0.7, 320.0], [0, 760.0, 250.0], [0, 0, 1.0]])
        R, t = _rotation(rng), rng.normal(size=3)
        K_got, c2w = decompose_projection(lam * K @ np.concatenate([R, t[:, None]], 1))
        assert np.allclose(K_got, K, rtol=1e-10, atol=1e-8)
        assert np.allclose(c2w[:3, :3], R.T, atol=1e-10) and np.allclose(c2w[:3, 3], -R.T @ t, atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        decompose_projection(np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1]]))
    with pytest.raises(ValueError, match="not finite"):
        decompose_projection(np.full((3, 4), np.nan))


def test_the_folder_loads_in_its_normalised_frame_with_the_cameras_it_was_written_with(tmp_path):
    """Cameras (pose, focal lengths, principal point moved by half a pixel) to 1e-5, images composited on the
    background by masks paired by sorted order, every 4th image test, and input_frame.to_run = scale_mat^-1."""
    rng = np.random.default_rng(0)
    Ks, c2w = _cameras(rng, 9)
    S = _similarity(rng)
    images, keep = _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng)
    scene = load_neus(tmp_path / "scan", test_every=4, background=(0.0, 0.0, 1.0))
    assert {k: v.names for k, v in scene.splits.items()} == {
        "train": ["000001", "000002", "000003", "000005", "000006", "000007"], "test": ["000000", "000004", "000008"]}
    for split in scene.splits.values():
        for j, name in enumerate(split.names):
            i = int(name)
            cams = split.cameras
            assert np.allclose(cams.c2w[j].numpy(), c2w[i], atol=1e-5)
            assert cams.fx[j].item() == pytest.approx(Ks[i][0, 0], rel=1e-6)
            assert cams.fy[j].item() == pytest.approx(Ks[i][1, 1], rel=1e-6)
            assert cams.cx[j].item() == pytest.approx(Ks[i][0, 2] + 0.5, rel=1e-6)
            assert cams.cy[j].item() == pytest.approx(Ks[i][1, 2] + 0.5, rel=1e-6)
            want = images[i] * keep[i][..., None] + np.array([0.0, 0.0, 1.0]) * (1 - keep[i][..., None])
            assert np.abs(split.images[j].numpy() - want).max() < 1e-6
            assert torch.equal(split.alphas[j, ..., 0] > 0.5, torch.from_numpy(keep[i] > 0.5))
    assert np.allclose(np.asarray(scene.meta["input_frame"]["to_run"]), np.linalg.inv(S), atol=1e-9)
    assert scene.meta["input_frame"]["scale"] == pytest.approx(1 / 3.7)
    assert scene.aabb.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0] and 0 < scene.near < 1.5 < 3.5 < scene.far
    assert scene.meta["source"] == "neus" and scene.meta["mask_use"] == "object"


def test_a_world_point_is_on_the_ray_of_the_pixel_the_format_s_projection_gives(tmp_path):
    """The format's convention, independent of how the test writes its files: ``world_mat @ X`` gives pixel
    coordinates whose integers are pixel centres (NeuS casts its rays through ``K^-1 (u, v, 1)`` for integer
    indices); the loaded camera's ray through that point (+0.5 in nls's convention) meets ``scale_mat^-1 X``."""
    from pipeline.rays import pixel_rays

    rng = np.random.default_rng(1)
    Ks, c2w = _cameras(rng, 3)
    S = _similarity(rng, 0.25)
    _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng, masks=False)
    archive = np.load(tmp_path / "scan" / "cameras_sphere.npz")
    scene = load_neus(tmp_path / "scan", test_every=0)
    cams = scene.splits["train"].cameras
    for i in range(3):
        x_norm = rng.uniform(-0.5, 0.5, 3)
        X = S @ np.append(x_norm, 1.0)
        p = archive[f"world_mat_{i}"][:3] @ X
        u, v = p[0] / p[2], p[1] / p[2]
        o, d = pixel_rays(cams, torch.tensor([i]), torch.tensor([u + 0.5]), torch.tensor([v + 0.5]))
        o, d = o[0].double().numpy(), d[0].double().numpy()
        off = (x_norm - o) - np.dot(x_norm - o, d) * d
        assert np.linalg.norm(off) < 1e-5 and np.dot(x_norm - o, d) > 0


def test_the_cameras_up_is_turned_to_z_and_input_frame_follows(tmp_path):
    """Cameras held upright about a tilted up ``u`` of the normalised frame load turned so ``u`` is +Z (their x axes
    horizontal, their mean up along +Z), the turn in ``to_run``; ``orientation: none`` keeps the frame."""
    from pipeline.scenes.mesh_render import look_at

    rng = np.random.default_rng(7)
    u = np.array([0.3, -0.8, 0.5])
    u /= np.linalg.norm(u)
    Ks, _ = _cameras(rng, 6)
    eyes = rng.normal(size=(6, 3))
    c2w = [look_at(2.5 * e / np.linalg.norm(e), up=u) for e in eyes]
    S = _similarity(rng)
    _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng, masks=False)
    turned = load_neus(tmp_path / "scan", test_every=0)
    kept = load_neus(tmp_path / "scan", test_every=0, orientation="none")
    got = turned.splits["train"].cameras.c2w.double().numpy()
    assert np.abs(got[:, 2, 0]).max() < 1e-5 and (got[:, 2, 1] > 0).all()  # (x axes horizontal, y axes upward)
    R = np.asarray(turned.meta["input_frame"]["to_run"]) @ S  # (the turn: to_run is turn @ scale_mat^-1)
    assert np.allclose(R[:3, :3] @ u, [0, 0, 1], atol=1e-6) and np.allclose(R[:3, 3], 0, atol=1e-9)
    assert np.allclose(got, R @ kept.splits["train"].cameras.c2w.double().numpy(), atol=1e-5)
    assert turned.meta["world_up"] == "+z" and turned.meta["orientation"]["method"] == "vertical"


def test_ignore_masks_and_no_masks(tmp_path, capsys):
    rng = np.random.default_rng(2)
    Ks, c2w = _cameras(rng, 3)
    _, keep = _write_neus(tmp_path / "scan", Ks, c2w, np.eye(4), rng=rng)
    scene = load_neus(tmp_path / "scan", test_every=0, mask_use="ignore")
    assert torch.equal(scene.splits["train"].valid, torch.from_numpy(keep > 0.5))
    assert scene.splits["train"].alphas is None and 0 < scene.meta["pixels_kept"]["train"] < 1
    off = load_neus(tmp_path / "scan", test_every=0, mask_use="off")
    assert off.splits["train"].valid is None and off.splits["train"].alphas is None and "masks" not in off.meta
    _write_neus(tmp_path / "bare", Ks, c2w, np.eye(4), rng=rng, masks=False, camera_file="cameras.npz")
    bare = load_neus(tmp_path / "bare", test_every=0)  # (IDR's cameras.npz; the default mask folder is absent)
    assert "no object masks (mask/ or masks/): the images' background is trained" in capsys.readouterr().err
    assert bare.splits["train"].alphas is None and bare.meta["cameras"].endswith("cameras.npz")
    with pytest.raises(DataError, match="scene.masks masks: no folder"):
        load_neus(tmp_path / "bare", masks="masks")
    (tmp_path / "scan" / "image").rename(tmp_path / "scan" / "images")  # (as some conversions name them)
    (tmp_path / "scan" / "mask").rename(tmp_path / "scan" / "masks")
    again = load_neus(tmp_path / "scan", test_every=0, mask_use="ignore")
    assert torch.equal(again.splits["train"].valid, scene.splits["train"].valid) and again.meta["images"] == "images"


def test_a_ground_truth_mesh_in_the_scan_s_coordinates_is_moved_into_the_run_s_frame(tmp_path):
    """``gt_mesh`` (scene.gt_mesh) given in world coordinates: cached in the run's frame through to_run (a sphere of
    radius 0.5 about the normalised origin, written through scale_mat), with the file's sha256; a file without
    faces or a missing one is an error naming the option."""
    import trimesh

    from plugins.scenes.config import NeusConfig
    from plugins.scenes.sources import build_neus

    rng = np.random.default_rng(8)
    Ks, c2w = _cameras(rng, 3)
    S = _similarity(rng, 40.0)
    _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng, masks=False)
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    world = sphere.copy()
    world.apply_transform(S)
    world.export(tmp_path / "scan" / "scan_mesh.ply")
    cfg = NeusConfig(path=str(tmp_path / "scan"), test_every=0, gt_mesh="scan_mesh.ply")
    scene = build_neus(cfg, None)()
    moved = trimesh.load(scene.gt_mesh, process=False)
    assert np.allclose(np.linalg.norm(moved.vertices, axis=1), 0.5, atol=1e-6) and len(moved.faces) == len(sphere.faces)
    assert scene.meta["gt_mesh_input"]["file"].endswith("scan_mesh.ply")
    again = build_neus(cfg, None)()  # (the cached copy)
    assert again.gt_mesh == scene.gt_mesh
    trimesh.PointCloud(world.vertices).export(tmp_path / "scan" / "points.ply")
    with pytest.raises(DataError, match="scene.gt_mesh .*points.ply"):
        build_neus(NeusConfig(path=str(tmp_path / "scan"), test_every=0, gt_mesh="points.ply"), None)()
    with pytest.raises(DataError, match="scene.gt_mesh nothing.ply: no file"):
        build_neus(NeusConfig(path=str(tmp_path / "scan"), test_every=0, gt_mesh="nothing.ply"), None)()


def test_skew_and_more_cameras_than_images_are_warned_about(tmp_path, capsys):
    rng = np.random.default_rng(4)
    Ks, c2w = _cameras(rng, 3)
    _write_neus(tmp_path / "scan", Ks, c2w, np.eye(4), rng=rng, masks=False, skew=0.01)
    load_neus(tmp_path / "scan", test_every=0)
    err = capsys.readouterr().err
    assert "skew" in err and "0.20 px" in err and "cameras for" not in err  # (0.01 x 20 rows)
    (tmp_path / "scan" / "image" / "000001.png").unlink()  # (an image taken out: the last one gets camera 1)
    load_neus(tmp_path / "scan", test_every=0)
    assert "3 cameras for 2 images; cameras pair with the images by sorted order" in capsys.readouterr().err


@pytest.mark.parametrize("fault, message", [
    ("no_world_mat", "no 'world_mat_2'"),
    ("scale_differs", "'scale_mat_1' differs from 'scale_mat_0'"),
    ("not_similarity", "'scale_mat_0' is not a similarity"),
    ("singular", "'world_mat_1' times 'scale_mat_1': its 3x3 part is singular"),
    ("bad_shape", "'world_mat_0' is \\(2, 2\\)"),
    ("mask_count", "2 masks for the 3 images"),
    ("no_archive", "no camera archive \\(cameras_sphere.npz or cameras.npz"),
    ("not_npz", "not a NumPy .npz archive"),
    ("no_images", "no image folder \\(image/ or images/"),
])
def test_faults_name_the_file_and_key(tmp_path, fault, message):
    rng = np.random.default_rng(5)
    Ks, c2w = _cameras(rng, 3)
    root = tmp_path / "scan"
    _write_neus(root, Ks, c2w, np.eye(4), rng=rng)
    path = root / "cameras_sphere.npz"
    arrays = dict(np.load(path))
    if fault == "no_world_mat":
        del arrays["world_mat_2"]
    elif fault == "scale_differs":
        arrays["scale_mat_1"] = np.diag([2.0, 2.0, 2.0, 1.0])
    elif fault == "not_similarity":
        arrays = {k: (np.diag([1.0, 2.0, 1.0, 1.0]) if k.startswith("scale") else v) for k, v in arrays.items()}
    elif fault == "singular":
        arrays["world_mat_1"][:3, :3] = 0.0
    elif fault == "bad_shape":
        arrays["world_mat_0"] = np.eye(2)
    elif fault == "mask_count":
        (root / "mask" / "002.png").unlink()
    elif fault == "no_archive":
        path.unlink()
        arrays = None
    elif fault == "no_images":
        (root / "image").rename(root / "pictures")
    elif fault == "not_npz":
        path.write_text("not an archive")
        arrays = None
    if arrays is not None:
        np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_neus(root, test_every=0)
    if fault not in ("mask_count", "no_archive", "no_images"):
        assert str(path) in str(info.value)


def test_nls_reconstruct_finds_the_folder_and_export_frame_input_gives_world_cameras(nls, tiny_scene, tmp_path):
    """``--data`` on an IDR / NeuS folder is detected as the neus source; ``nls export --dataset --frame input``
    writes the cameras back in the scan's world coordinates (the similarity's scale taken out of the rotation)."""
    rng = np.random.default_rng(6)
    Ks, c2w = _cameras(rng, 4)
    S = _similarity(rng, 2.0)
    _write_neus(tmp_path / "scan", Ks, c2w, S, size=(32, 32), rng=rng)
    out = tmp_path / "runs"
    proc = nls("reconstruct", str(tiny_scene()), "--data", str(tmp_path / "scan"), "--set", "scene.test_every=2",
               "--output", str(out), "--no-eval", "-q")
    assert proc.returncode == 0, proc.stderr
    run = next(p.parent for p in out.rglob("scene.json"))
    facts = json.loads((run / "scene.json").read_text())
    assert facts["source"] == "neus" and facts["n_images"] == {"train": 2, "test": 2}
    scored = nls("eval", str(run), "--set", "evaluators=[{type: psnr, object: true}]", "-o",
                 str(tmp_path / "object.json"), "-q")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "object.json").read_text())["metrics"]
    assert np.isfinite(metrics["psnr_object"]) and metrics["psnr_object"] != metrics["psnr"]  # (IDR's masked PSNR)
    proc = nls("export", str(run), "--dataset", "--frame", "input", "-o", str(tmp_path / "world"), "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "world" / "transforms.json").read_text())
    for frame in doc["frames"]:
        i = int(Path(frame["file_path"]).stem)
        want = S @ c2w[i]
        want[:3, :3] /= 2.0
        assert np.allclose(np.asarray(frame["transform_matrix"]), want, atol=1e-4), frame["file_path"]


def test_nls_export_dataset_converts_a_folder_without_a_run(nls, tmp_path):
    """``nls export FOLDER --dataset`` on data (no run): the NeuS folder as the neus source loads it, written as a
    transforms.json whose cameras are the loaded ones; ``--frame input`` gives them in the scan's world coordinates."""
    rng = np.random.default_rng(9)
    Ks, c2w = _cameras(rng, 4)
    S = _similarity(rng, 2.0)
    _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng)
    done = nls("export", str(tmp_path / "scan"), "--dataset", "-o", str(tmp_path / "ns"), "-q", check=True)
    assert "(in the scene's frame)" in done.stdout and "nls reconstruct SCENE.yaml --set scene.type=blender" \
        in done.stdout
    loaded = load_neus(tmp_path / "scan")
    doc = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    assert doc["nls_run"]["from"] == str((tmp_path / "scan").resolve()) and "run" not in doc["nls_run"]
    frames = {Path(f["file_path"]).stem: f for f in doc["frames"]}
    for split in loaded.splits.values():
        for i, name in enumerate(split.names):
            assert np.allclose(frames[name]["transform_matrix"], split.cameras.c2w[i].numpy(), atol=1e-6)
            assert frames[name]["fl_x"] == pytest.approx(float(split.cameras.fx[i]))
    nls("export", str(tmp_path / "scan"), "--dataset", "--frame", "input", "-o", str(tmp_path / "world"), "-q",
        check=True)
    doc = json.loads((tmp_path / "world" / "transforms.json").read_text())
    for frame in doc["frames"]:
        want = S @ c2w[int(Path(frame["file_path"]).stem)]
        want[:3, :3] /= 2.0
        assert np.allclose(frame["transform_matrix"], want, atol=1e-4)


def test_points_beside_the_cameras_are_moved_into_the_box_with_their_colours(tmp_path):
    """sparse_pc.ply in world coordinates: its points inside the box, moved by to_run, become the scene's points
    with their colours; a named file that is missing is an error naming the option."""
    import trimesh

    rng = np.random.default_rng(12)
    Ks, c2w = _cameras(rng, 3)
    S = _similarity(rng, 40.0)
    _write_neus(tmp_path / "scan", Ks, c2w, S, rng=rng, masks=False)
    normalised = np.concatenate([rng.uniform(-0.9, 0.9, (50, 3)), [[3.0, 0.0, 0.0]]])  # (the last outside the box)
    world = normalised @ S[:3, :3].T + S[:3, 3]
    colours = rng.integers(0, 256, (51, 3)).astype(np.uint8)
    trimesh.PointCloud(world, colors=colours).export(tmp_path / "scan" / "sparse_pc.ply")
    scene = load_neus(tmp_path / "scan", test_every=0, orientation="none")
    assert scene.points.shape == (50, 3) and np.array_equal(scene.point_colors, colours[:50])
    assert np.allclose(scene.points, normalised[:50], atol=1e-5)
    assert scene.meta["sparse_points"]["total"] == 51 and scene.meta["sparse_points"]["in_box"] == 50
    with pytest.raises(DataError, match="scene.points other.ply: no file"):
        load_neus(tmp_path / "scan", test_every=0, points="other.ply")
