"""The ``colmap`` scene source: a COLMAP model written from a rendered scene whose poses are known, with a
random similarity applied and OpenCV camera axes, loads back to the same cameras, rays and images up to one
similarity (which its meta records); bad inputs are DataErrors that say what is wrong."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.types import DataError

NO_PYCOLMAP = "pycolmap cannot be imported (pip install 'neural-level-sets[colmap]')"
#: the tiny sphere scene of pipeline.testing.TINY_SCENE (shared through the scene cache): 8 + 2 views, 32 px
SOURCE = {"shape": "sphere", "n_train": 8, "n_test": 2, "image_size": 32, "supersample": 1, "gt_resolution": 64}
#: the similarity from the rendered scene's world to the COLMAP world: p_colmap = SIGMA * Q p + SHIFT
SIGMA, SHIFT = 3.7, np.array([4.0, -2.5, 1.25])
FLIP = np.diag([1.0, -1.0, -1.0])  # OpenGL <-> OpenCV camera axes


@pytest.fixture
def pycolmap():
    try:  # (pytest.importorskip skips a broken install, an ImportError, only from pytest 8.2 on)
        import pycolmap
    except ImportError as exc:
        pytest.skip(f"{NO_PYCOLMAP}: {exc}")
    return pycolmap


def _quat_wxyz(rot: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rot).as_quat()
    return np.array([w, x, y, z])


def _q() -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec([0.7, -1.9, 0.4]).as_matrix()


def _source_folder() -> Path:
    """The rendered tiny sphere scene's Blender folder (rendered once into the scene cache)."""
    from plugins.scenes.config import ProceduralConfig
    from plugins.scenes.sources import AFTER_RENDERING, build_procedural, cache_entry

    cfg = ProceduralConfig(**SOURCE)
    build_procedural(cfg, None)()
    return cache_entry("procedural", cfg.model_dump(exclude=AFTER_RENDERING))


def truth() -> dict:
    """The source views in a fixed order: file, camera-to-world (float64, OpenGL axes), focal; the frame
    index k is the COLMAP image's name ``{k:03d}.png``."""
    src = _source_folder()
    frames = []
    for split in ("train", "test"):
        doc = json.loads((src / f"transforms_{split}.json").read_text())
        f = 0.5 * SOURCE["image_size"] / np.tan(0.5 * doc["camera_angle_x"])
        frames += [(src / (fr["file_path"] + ".png"), np.array(fr["transform_matrix"]), f) for fr in doc["frames"]]
    return {"folder": src, "frames": frames}


def _fmt(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def make_colmap(root: Path, *, model_dir: str = "sparse/0", cameras: str | None = None, images_dir: str = "images",
                quat=None, camera_of=None, extra_points: bool = True) -> dict:
    """Write the tiny sphere scene as a COLMAP text capture under ``root``: images ``{k:03d}.png``, one
    PINHOLE camera per even frame and one SIMPLE_PINHOLE (another principal point) per odd one, unless
    ``cameras`` (the cameras.txt text) and ``camera_of(k)`` say otherwise; ``quat(k, q)`` may replace a
    pose's quaternion (QW, QX, QY, QZ). Points: the sphere's surface and far 'background' points."""
    t = truth()
    n, size = len(t["frames"]), SOURCE["image_size"]
    f = t["frames"][0][2]
    model = root / model_dir
    model.mkdir(parents=True, exist_ok=True)
    (root / images_dir).mkdir(parents=True, exist_ok=True)
    if cameras is None:
        cameras = (f"1 PINHOLE {size} {size} {_fmt([f, f, 16, 16])}\n"
                   f"2 SIMPLE_PINHOLE {size} {size} {_fmt([f, 15.75, 16.5])}\n")
    camera_of = camera_of or (lambda k: 1 + k % 2)
    (model / "cameras.txt").write_text("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + cameras)
    Q, lines, intr = _q(), [], []
    for k, (png, c2w, _) in enumerate(t["frames"]):
        shutil.copyfile(png, root / images_dir / f"{k:03d}.png")
        rot_c2w = Q @ c2w[:3, :3] @ FLIP  # the camera in the COLMAP world, OpenCV axes
        origin = SIGMA * Q @ c2w[:3, 3] + SHIFT
        R = rot_c2w.T
        q = _quat_wxyz(R)
        q = q if quat is None else quat(k, q)
        lines += [f"{k + 1} {_fmt(q)} {_fmt(-R @ origin)} {camera_of(k)} {k:03d}.png", ""]
        intr.append((f, f, 16.0, 16.0) if camera_of(k) == 1 else (f, f, 15.75, 16.5))
    (model / "images.txt").write_text("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n# POINTS2D[]\n"
                                      + "\n".join(lines) + "\n")
    rng = np.random.default_rng(3)
    d = rng.normal(size=(400, 3))
    pts = 0.4 * d / np.linalg.norm(d, axis=1, keepdims=True)  # the sphere of radius 0.4
    if extra_points:  # a far 'background' beyond the ring of cameras (at radius 2)
        pts = np.concatenate([pts, 9.0 * d[:60] / np.linalg.norm(d[:60], axis=1, keepdims=True)])
    colmap_pts = SIGMA * pts @ Q.T + SHIFT
    (model / "points3D.txt").write_text("".join(f"{i + 1} {_fmt(p)} {' '.join(map(str, _colour(i)))} 0.5\n"  # no track
                                                for i, p in enumerate(colmap_pts)))
    return {**t, "root": root, "model": model, "intr": np.array(intr), "n": n}


def _colour(i: int) -> tuple[int, int, int]:
    """The colour :func:`make_colmap` gives its ``i``-th sparse point (i < 768: each its own)."""
    return i % 256, 100 * (i // 256) + 3, (13 * i + 5) % 256


def G() -> np.ndarray:
    """4x4: the rendered scene's world -> the COLMAP world."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = SIGMA * _q(), SHIFT
    return m


def _similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` with ``b ~ s R a + t`` in least squares (Umeyama), ``a``, ``b`` (N, 3)."""
    ma, mb = a.mean(0), b.mean(0)
    A, B = a - ma, b - mb
    U, S, Vt = np.linalg.svd(B.T @ A / len(a))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (A ** 2).sum(1).mean())
    return s, R, mb - s * R @ ma


def _by_name(scene) -> dict:
    """``{name: (split, index)}`` of a scene's images."""
    return {n: (s, i) for s, p in scene.splits.items() for i, n in enumerate(p.names)}


def test_a_known_capture_loads_up_to_one_similarity_and_meta_maps_it_back(tmp_path, pycolmap):
    from pipeline.rays import pixel_rays
    from pipeline.scenes.blender import load_blender
    from pipeline.scenes.colmap import load_colmap
    from pipeline.types import Cameras

    cap = make_colmap(tmp_path / "cap")
    scene = load_colmap(cap["root"])
    names = [f"{k:03d}" for k in range(cap["n"])]
    # splits: sorted by name, every 8th from the first is test
    assert scene.splits["test"].names == [names[0], names[8]]
    assert scene.splits["train"].names == [n for i, n in enumerate(names) if i % 8]
    where = _by_name(scene)

    def gather(fn):
        return np.stack([fn(scene.splits[s], i) for s, i in (where[n] for n in names)])

    c2w = gather(lambda p, i: p.cameras.c2w[i].double().numpy())
    intr = gather(lambda p, i: np.array([float(getattr(p.cameras, k)[i]) for k in ("fx", "fy", "cx", "cy")]))
    assert np.array_equal(intr, cap["intr"].astype(np.float32).astype(np.float64))  # per image, exact
    true = np.stack([fr[1] for fr in cap["frames"]])

    # one similarity maps every true pose onto the loaded one (camera centres and camera axes)
    s, R, t = _similarity(true[:, :3, 3], c2w[:, :3, 3])
    assert np.abs(s * true[:, :3, 3] @ R.T + t - c2w[:, :3, 3]).max() < 2e-6 * max(1.0, np.abs(c2w[:, :3, 3]).max())
    assert np.abs(R @ true[:, :3, :3] - c2w[:, :3, :3]).max() < 2e-6
    # and it is the recorded one: to_run (COLMAP -> normalised) after G (source -> COLMAP)
    frame = scene.meta["input_frame"]
    M = np.array(frame["to_run"]) @ G()
    assert np.allclose(M[:3, :3], s * R, atol=1e-7) and np.allclose(M[:3, 3], t, atol=1e-6)
    assert np.isclose(frame["scale"] * SIGMA, s) and np.allclose(np.array(frame["rotation"]) @ _q(), R, atol=1e-7)
    # the vertical rule: the source's cameras have no roll, so its +Z is found again exactly, whatever the
    # tilt of the COLMAP world (a yaw about +Z is left); the box: the sphere fills the cube, the far points are out
    assert np.abs(M[:3, :3] @ [0, 0, 1.0] - [0, 0, frame["scale"] * SIGMA]).max() < 1e-12
    assert scene.meta["normalisation"]["orientation"] == "vertical"
    assert torch.equal(scene.aabb, torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
    assert 0.8 < s * 0.4 < 1.0 and scene.meta["normalisation"]["points_used"] == 400
    # the sparse points in the box are the scene's points, in the run's frame: the sphere's 400, not the far 60
    assert scene.points.shape == (400, 3) and scene.meta["sparse_points"] == {"total": 460, "in_box": 400}
    assert np.abs(np.linalg.norm(scene.points - t, axis=1) - s * 0.4).max() < 1e-5
    # each with its own colour: the point of that colour's index (the sphere's points, as make_colmap draws them)
    index = scene.point_colors[:, 0].astype(int) + 256 * ((scene.point_colors[:, 1].astype(int) - 3) // 100)
    d = np.random.default_rng(3).normal(size=(400, 3))
    assert scene.point_colors.dtype == np.uint8 and sorted(index) == list(range(400))
    assert np.abs(s * (0.4 * d / np.linalg.norm(d, axis=1, keepdims=True))[index] @ R.T + t - scene.points).max() < 1e-5
    o = np.abs(c2w[:, :3, 3])  # near/far: the nearest camera's distance to the box, the farthest corner's
    assert np.isclose(scene.near, np.linalg.norm(np.maximum(o - 1, 0), axis=1).min(), rtol=1e-5)
    assert np.isclose(scene.far, np.linalg.norm(o + 1, axis=1).max(), rtol=1e-5)

    # rays through the same pixels are the same rays: mapped back, they hit the same points
    src = load_blender(cap["folder"], splits=("train", "test"))
    true_cams = Cameras(torch.tensor(true), *(torch.tensor(cap["intr"][:, j]) for j in range(4)), 32, 32)
    got_cams = Cameras(torch.tensor(c2w), *(torch.tensor(intr[:, j]) for j in range(4)), 32, 32)
    rng = np.random.default_rng(0)
    idx = torch.tensor(rng.integers(0, cap["n"], 500))
    u, v = (torch.tensor(rng.uniform(0, 32, 500)) for _ in range(2))
    o0, d0 = pixel_rays(true_cams, idx, u, v)
    o1, d1 = pixel_rays(got_cams, idx, u, v)
    back = np.linalg.inv(M)
    assert np.abs(o1.numpy() @ back[:3, :3].T + back[:3, 3] - o0.numpy()).max() < 1e-5
    assert np.abs(d1.numpy() @ R - d0.numpy()).max() < 1e-6
    # images: bit-identical to the source's, composited on the same background
    src_where = {}
    for split, p in src.splits.items():
        for i, n in enumerate(p.names):
            src_where[(split, n)] = (split, i)
    for k, (png, _, _) in enumerate(cap["frames"]):
        s_split, s_i = src_where[(png.parent.name, png.stem)]
        c_split, c_i = where[names[k]]
        assert torch.equal(scene.splits[c_split].images[c_i], src.splits[s_split].images[s_i])
        assert torch.equal(scene.splits[c_split].alphas[c_i], src.splits[s_split].alphas[s_i])
    assert scene.meta["source"] == "colmap" and scene.meta["world_up"] == "+z"
    assert scene.meta["camera_models"] == ["PINHOLE", "SIMPLE_PINHOLE"]


def test_the_binary_model_loads_to_the_same_scene(tmp_path, pycolmap):
    from pipeline.scenes.colmap import load_colmap

    cap = make_colmap(tmp_path / "txt")
    rec = pycolmap.Reconstruction()
    rec.read_text(str(cap["model"]))
    binary = tmp_path / "bin"
    (binary / "sparse").mkdir(parents=True)  # sparse/ without 0/
    rec.write_binary(str(binary / "sparse"))
    shutil.copytree(cap["root"] / "images", binary / "images")
    a, b = load_colmap(cap["root"]), load_colmap(binary)
    assert b.meta["sparse"].endswith("bin/sparse")
    assert a.splits.keys() == b.splits.keys() and torch.equal(a.aabb, b.aabb) and (a.near, a.far) == (b.near, b.far)
    for name in a.splits:
        pa, pb = a.splits[name], b.splits[name]
        assert pa.names == pb.names and torch.equal(pa.images, pb.images)
        for key in ("c2w", "fx", "fy", "cx", "cy"):
            assert torch.equal(getattr(pa.cameras, key), getattr(pb.cameras, key)), key
    assert a.meta["input_frame"]["to_run"] == b.meta["input_frame"]["to_run"]


def test_splits_follow_test_every_and_max_images(tmp_path, pycolmap):
    from pipeline.scenes.colmap import load_colmap

    root = make_colmap(tmp_path / "cap")["root"]
    every3 = load_colmap(root, test_every=3)
    assert every3.splits["test"].names == ["000", "003", "006", "009"] and len(every3.splits["train"]) == 6
    assert every3.meta["split_rule"].startswith("images sorted by name, every 3th")
    none = load_colmap(root, test_every=0)
    assert list(none.splits) == ["train"] and len(none.splits["train"]) == 10
    assert none.meta["splits_missing"] == ["test"]
    few = load_colmap(root, max_images=3, splits=["train"])
    assert list(few.splits) == ["train"] and few.splits["train"].names == ["001", "002", "003"]
    with pytest.raises(DataError, match="a COLMAP capture has the splits train, test"):
        load_colmap(root, splits=["val"])


def test_the_box_centre_and_scale_can_be_given(tmp_path, pycolmap):
    from pipeline.scenes.colmap import load_colmap

    root = make_colmap(tmp_path / "cap")["root"]
    auto = load_colmap(root, splits=["train"])
    boxed = load_colmap(root, splits=["train"], aabb=[-0.5, -0.5, -0.25, 0.5, 0.5, 0.75])
    assert torch.equal(boxed.aabb, torch.tensor([-0.5, -0.5, -0.25, 0.5, 0.5, 0.75]))
    assert boxed.near > auto.near and boxed.meta["normalisation"]["aabb_from"] == "the aabb option"
    assert torch.equal(boxed.splits["train"].cameras.c2w, auto.splits["train"].cameras.c2w)
    given = load_colmap(root, splits=["train"], center=SHIFT.tolist(), scale=0.5)  # the sphere's centre
    T = np.array(given.meta["input_frame"]["to_run"])
    assert np.allclose(T @ [*SHIFT, 1.0], [0, 0, 0, 1], atol=1e-12) and given.meta["input_frame"]["scale"] == 0.5
    radius = np.linalg.norm(given.splits["train"].cameras.c2w[:, :3, 3].double().numpy(), axis=1)
    assert np.allclose(radius, 0.5 * SIGMA * 2.0, rtol=1e-6)  # the source's cameras are 2 from the sphere's centre


def test_a_downscaled_image_folder_scales_the_intrinsics_and_a_foreign_one_is_refused(tmp_path, pycolmap):
    from PIL import Image

    from pipeline.scenes.colmap import load_colmap

    cap = make_colmap(tmp_path / "cap")
    root = cap["root"]
    (root / "images_2").mkdir()
    for p in sorted((root / "images").iterdir()):
        Image.open(p).resize((16, 16), Image.BOX).save(root / "images_2" / p.name)
    full, half = load_colmap(root, splits=["train"]), load_colmap(root, images="images_2", splits=["train"])
    assert half.splits["train"].images.shape[1:3] == (16, 16) and half.meta["image_size"]["train"] == [16, 16]
    for key in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(half.splits["train"].cameras, key),
                              getattr(full.splits["train"].cameras, key) / 2)
    assert torch.equal(half.splits["train"].cameras.c2w, full.splits["train"].cameras.c2w)
    down = load_colmap(root, downscale=2, splits=["train"])  # the loader's own area filter on top
    assert torch.allclose(down.splits["train"].cameras.fx, half.splits["train"].cameras.fx)

    (root / "images_wide").mkdir()
    for p in sorted((root / "images").iterdir()):
        Image.open(p).resize((32, 16)).save(root / "images_wide" / p.name)
    with pytest.raises(DataError, match=r"001.png is 32x16 \(WxH\) but its camera 2 in .*cameras.txt is 32x32"):
        load_colmap(root, images="images_wide")


def test_lens_distortion_is_warned_about_and_fisheye_models_are_refused(tmp_path, capsys, pycolmap):
    from pipeline.scenes.colmap import load_colmap

    f = truth()["frames"][0][2]
    zero = make_colmap(tmp_path / "zero", cameras=f"1 SIMPLE_RADIAL 32 32 {_fmt([f, 16, 16, 0])}\n",
                       camera_of=lambda k: 1)
    load_colmap(zero["root"])
    assert "lens distortion" not in capsys.readouterr().err  # a distortion model with zero distortion is a pinhole
    opencv = make_colmap(tmp_path / "opencv", cameras=f"1 OPENCV 32 32 {_fmt([f, f, 16, 16, 0.01, 0, 0, 0.002])}\n",
                         camera_of=lambda k: 1)
    scene = load_colmap(opencv["root"])
    err = capsys.readouterr().err
    assert "lens distortion (camera 1 OPENCV k1, p2) is not modelled" in err and "image_undistorter" in err
    assert torch.allclose(scene.splits["train"].cameras.fx, torch.tensor(f, dtype=torch.float32))
    fisheye = make_colmap(tmp_path / "fish", cameras=f"1 PINHOLE 32 32 {_fmt([f, f, 16, 16])}\n"
                          f"3 OPENCV_FISHEYE 32 32 {_fmt([f, f, 16, 16, 0.1, 0, 0, 0])}\n",
                          camera_of=lambda k: 3 if k == 4 else 1)
    with pytest.raises(DataError, match=r"cameras.txt: camera 3 has the model OPENCV_FISHEYE, .*valid models: "
                                        r"SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL"):
        load_colmap(fisheye["root"])


def _error(root: Path, **kw) -> str:
    from pipeline.scenes.colmap import load_colmap

    with pytest.raises(DataError) as exc:
        load_colmap(root, **kw)
    return str(exc.value)


def test_bad_captures_are_data_errors_that_say_what_is_wrong(tmp_path, pycolmap):
    root = make_colmap(tmp_path / "cap")["root"]
    model = root / "sparse" / "0"

    bare = tmp_path / "bare"
    (bare / "images").mkdir(parents=True)
    msg = _error(bare)
    assert "no COLMAP sparse model" in msg and "sparse/0" in msg and "cameras, images, points3D" in msg
    (bare / "sparse" / "0").mkdir(parents=True)
    (bare / "sparse" / "0" / "cameras.txt").write_text("")
    assert "has only cameras.txt" in _error(bare)
    assert "no image folder 'images_4'" in _error(root, images="images_4")
    assert "it has images: name one with the images option" in _error(root, images="x")

    (root / "images" / "003.png").unlink()
    (root / "images" / "005.png").rename(root / "images" / "005.jpg")
    msg = _error(root)
    assert "images.txt: 2 of its 10 posed images are not in the images folder" in msg and "'003.png'" in msg
    shutil.copyfile(root / "images" / "000.png", root / "images" / "003.png")
    assert "the folder has 005.jpg (another extension" in _error(root)
    (root / "images" / "005.jpg").rename(root / "images" / "005.png")

    good = (model / "images.txt").read_text()
    (model / "images.txt").write_text(good.replace(" 1 000.png", " 7 000.png"))
    msg = _error(root)
    assert "an image refers to camera id 7" in msg and "cameras.txt does not hold" in msg and "camera ids 1, 2" in msg

    for q, what in (("0.5 0.5 0.0 0.0", "quaternion of norm 0.707107, not 1"), ("0 0 0 0", "quaternion of norm 0,")):
        lines = good.splitlines()
        fields = lines[2].split()
        lines[2] = " ".join([fields[0], q, *fields[5:]])
        (model / "images.txt").write_text("\n".join(lines) + "\n")
        msg = _error(root)
        assert "image 1 '000.png': its rotation (QW, QX, QY, QZ" in msg and what in msg, msg
    (model / "images.txt").write_text(good)

    (model / "cameras.txt").write_text("1 PINHOLE 32 32 not numbers\n")
    assert "cannot read the COLMAP model" in _error(root)
    for name in ("cameras", "images", "points3D"):
        (model / f"{name}.txt").write_text("")
    assert "the COLMAP model is empty (0 cameras in cameras.txt, 0 images in images.txt)" in _error(root)


def test_without_pycolmap_loading_says_how_to_install_it(tmp_path, monkeypatch):
    from pipeline.scenes.colmap import load_colmap

    root = tmp_path / "cap"
    for name in ("cameras", "images", "points3D"):
        (root / "sparse" / "0").mkdir(parents=True, exist_ok=True)
        (root / "sparse" / "0" / f"{name}.bin").write_bytes(b"")
    (root / "images").mkdir()
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap now raises ImportError
    with pytest.raises(DataError, match=r"needs pycolmap, which is not installed .*pip install "
                                        r"'neural-level-sets\[colmap\]'"):
        load_colmap(root)


def test_a_colmap_folder_is_detected_as_a_colmap_scene(tmp_path):
    from pipeline.testing import plugin_host
    from tests.test_blender import make_blender

    host = plugin_host()
    for model, ext in (("sparse/0", ".txt"), ("sparse", ".bin")):
        root = tmp_path / model.replace("/", "_") / "cap"
        (root / model).mkdir(parents=True)
        (root / model / f"cameras{ext}").write_text("")
        assert host.scene_type_for_path(root) == "colmap"
    assert host.scene_type_for_path(make_blender(tmp_path / "blender")) == "blender"
    assert host.scene_type_for_path(tmp_path) is None


def test_nls_reconstruct_runs_on_a_colmap_capture_and_exports_in_its_coordinates(tmp_path, pycolmap):
    import trimesh

    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls

    cap = make_colmap(tmp_path / "cap")
    scene = {**TINY_SCENE, "name": "colmap_tiny", "scene": {"path": str(cap["root"])},  # the type is detected
             "evaluators": [{"type": "psnr", "ssim": False}]}
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    run_nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", check=True)
    run = next((tmp_path / "runs").glob("colmap_tiny/*/*/summary.json")).parent
    recorded = json.loads((run / "scene.json").read_text())
    assert recorded["source"] == "colmap" and recorded["splits"] == {"train": 8, "test": 2}
    summary = json.loads((run / "summary.json").read_text())
    assert "psnr" in json.dumps(summary)
    out = tmp_path / "mesh.ply"
    proc = run_nls("export", str(run), "-o", str(out), "--frame", "input", "--resolution", "32")
    if proc.returncode != 0:  # a few steps may leave no surface at the default level: take the one it suggests
        import re

        level = re.search(r"e\.g\. ([-+0-9.e]+)", proc.stderr)
        assert level, proc.stderr
        proc = run_nls("export", str(run), "-o", str(out), "--frame", "input", "--resolution", "32",
                       "--level", level[1], check=True)
    assert "turned back" in proc.stdout  # the run's frame was rotated, not only scaled and moved
    T = np.array(recorded["input_frame"]["to_run"])
    vertices = trimesh.load(out).vertices  # in COLMAP coordinates, about SHIFT (x = 4): all outside the run's box
    assert len(vertices) and (vertices[:, 0] > 1.0).all()
    assert np.abs(vertices @ T[:3, :3].T + T[:3, 3]).max() <= 1.0 + 1e-4  # to_run takes them into the run's box
    # its data exported in COLMAP's coordinates: the cameras are the model's poses, the points its points3D
    run_nls("export", str(run), "--dataset", "--frame", "input", "-o", str(tmp_path / "data"), "-q", check=True)
    doc = json.loads((tmp_path / "data" / "transforms.json").read_text())
    frames = truth()["frames"]
    for fr in doc["frames"]:
        k = int(Path(fr["file_path"]).stem)
        want = G() @ frames[k][1]
        want[:3, :3] /= SIGMA
        assert np.abs(np.array(fr["transform_matrix"]) - want).max() < 1e-4, fr["file_path"]
    cloud = trimesh.load(tmp_path / "data" / "sparse_pc.ply")
    assert len(cloud.vertices) == 400 and doc["ply_file_path"] == "sparse_pc.ply"  # (the sphere's, in the box)
    assert np.abs(np.linalg.norm(cloud.vertices - SHIFT, axis=1) - SIGMA * 0.4).max() < 1e-4
    index = cloud.colors[:, 0].astype(int) + 256 * ((cloud.colors[:, 1].astype(int) - 3) // 100)
    d = np.random.default_rng(3).normal(size=(400, 3))
    assert np.abs((SIGMA * (0.4 * d / np.linalg.norm(d, axis=1, keepdims=True)) @ _q().T + SHIFT)[index]
                  - cloud.vertices).max() < 1e-4  # (each point with its own colour)
    # the model changes under the run (here its points, so its box): the cameras no longer match the field
    points = cap["model"] / "points3D.txt"
    points.write_text("".join(line for k, line in enumerate(points.read_text().splitlines(True)) if k % 2))
    proc = run_nls("eval", str(run))
    assert proc.returncode != 0 and "the scene's cameras are not the ones" in proc.stderr, proc.stderr[-2000:]
    assert "changed since the run was made" in proc.stderr and "make a new run" in proc.stderr


def _look_at(origin: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> np.ndarray:
    """4x4 camera-to-world, OpenCV axes (x right, y down, z forward), looking from ``origin`` at ``target``
    with the world's +Z up, turned by ``roll_deg`` about the viewing axis."""
    z = (target - origin) / np.linalg.norm(target - origin)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    a = np.radians(roll_deg)
    x, y = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, origin
    return m


def test_the_up_direction_is_found_from_the_cameras_x_axes_or_their_mean_up_or_given():
    """Cameras looking inward from uneven azimuths (a third of the ring), at several elevations and without
    roll: their x axes are all horizontal, so the vertical rule finds +Z exactly, in a tilted world too,
    while their mean up leans towards the object; a forward-facing rig (parallel x axes) keeps its up."""
    from pipeline.scenes.colmap import colmap_normalisation, scene_up

    rng = np.random.default_rng(5)
    az, el = rng.uniform(0, 2 * np.pi / 3, 24), rng.uniform(0.2, 1.0, 24)
    ring = np.stack([_look_at(4 * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)]),
                              np.zeros(3)) for a, e in zip(az, el)])
    tilt = np.eye(4)
    tilt[:3, :3] = _q()
    world = tilt @ ring  # the same cameras in a tilted COLMAP world
    up, how = scene_up(world, "vertical")
    assert how == "vertical" and np.abs(up - _q() @ [0, 0, 1.0]).max() < 1e-12
    mean_up, how = scene_up(world, "up")
    lean = np.degrees(np.arccos(mean_up @ _q() @ [0, 0, 1.0]))
    assert how == "up" and lean > 10, lean  # the mean up leans towards the object
    assert scene_up(world, "none") == (pytest.approx([0, 0, 1.0]), "none")
    T, _, rec = colmap_normalisation(world, np.zeros((0, 3)))
    assert np.abs(T[:3, :3] @ up / rec["scale"] - [0, 0, 1]).max() < 1e-12 and rec["orientation"] == "vertical"
    T, _, rec = colmap_normalisation(world, np.zeros((0, 3)), up=[0, 2.0, 0])
    assert np.abs(T[:3, :3] @ [0, 1.0, 0] / rec["scale"] - [0, 0, 1]).max() < 1e-12 and rec["orientation"] == "the up option"
    # with 3 degrees of roll the x axes leave the horizontal plane, and the vertical rule errs by about as much
    rolled = tilt @ np.stack([_look_at(m[:3, 3], np.zeros(3), roll_deg=rng.uniform(-3, 3)) for m in ring])
    err = np.degrees(np.arccos(min(1.0, scene_up(rolled, "vertical")[0] @ _q() @ [0, 0, 1.0])))
    assert 0 < err < 3, err
    # a forward-facing rig: every x axis the same, so only the plane normal to it is known: the mean up stays
    rig = tilt @ np.stack([_look_at(np.array([x, -5.0, 1.0]), np.array([x, 0.0, 1.0]), roll_deg=10) for x in range(5)])
    up, how = scene_up(rig, "vertical")
    assert how.startswith("vertical (x axes parallel") and np.abs(up - (-rig[0, :3, 1])).max() < 1e-12


def test_without_sparse_points_the_box_is_the_ball_every_camera_sees_whole():
    """No points: the box is the cube about the cameras' focus whose half side (before the 10% margin) is the
    radius of the largest ball about it inside every camera's inscribed view cone, min_i d_i sin(a_i)."""
    from pipeline.scenes.colmap import BOX_MARGIN, colmap_normalisation, view_half_angle

    assert view_half_angle(100.0, 100.0, 50.0, 40.0, 100.0, 100.0) == pytest.approx(np.arctan(0.4))
    rng = np.random.default_rng(2)
    dist = rng.uniform(3.0, 5.0, 16)
    az, el = rng.uniform(0, 2 * np.pi, 16), rng.uniform(-0.3, 0.9, 16)
    centre = np.array([1.0, -2.0, 0.5])
    ring = np.stack([_look_at(centre + d * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)]),
                              centre) for d, a, e in zip(dist, az, el)])
    angles = rng.uniform(0.25, 0.45, 16)
    T, box, rec = colmap_normalisation(ring, np.zeros((0, 3)), half_angles=angles)
    s = rec["scale"]
    half = np.min(dist * np.sin(angles)) * (1 + BOX_MARGIN)
    assert rec["aabb_from"] == "cameras" and rec["box_rule"] == "the ball every camera sees whole"
    assert np.allclose(box, [-1, -1, -1, 1, 1, 1]) and s == pytest.approx(1 / half)
    assert np.allclose(T @ [*centre, 1.0], [0, 0, 0, 1], atol=1e-9)  # centred on the focus
    # the ball fits every view: its edge is seen at most a_i off each optical axis
    for m, a in zip(ring, angles):
        assert np.arcsin(min(1.0, half / (1 + BOX_MARGIN) / np.linalg.norm(m[:3, 3] - centre))) <= a + 1e-12
    _, _, old = colmap_normalisation(ring, np.zeros((0, 3)))  # no intrinsics: half the median distance
    assert old["box_rule"] == "half the cameras' median distance"
