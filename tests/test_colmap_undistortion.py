"""A COLMAP capture whose cameras have lens distortion (plugins/scenes/undistortion.py): the ``colmap`` source
undistorts it once, cached, into pinhole images whose rays find the true photo's colours; ``undistort: false``,
a downscaled image folder and a pinhole model keep the old reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_colmap_scene import _fmt, make_colmap, pycolmap, truth  # noqa: F401  (pycolmap: the fixture)

#: lego's camera with OPENCV distortion: barrel (k1 < 0), about 6 px at the corners of a 400x400 view, and a little
#: tangential
DISTORTION = [-0.08, 0.01, 0.001, -0.0005]


def _load(root: Path, **options):
    from plugins.scenes.config import ColmapConfig
    from plugins.scenes.sources import build_colmap

    return build_colmap(ColmapConfig(path=str(root), test_every=0, downscale=1, **options), None)()


def _distort(photo: np.ndarray, f: float, colmap, distortion=DISTORTION) -> np.ndarray:
    """A 400x400 pinhole ``photo`` (H, W, C, focal ``f``) as lego's camera with ``distortion`` (OPENCV k1, k2, p1,
    p2) sees it (:func:`plugins.scenes.undistortion.distorted_view`; ``colmap``, the pycolmap fixture, is only
    required)."""
    from plugins.scenes.undistortion import distorted_view

    return distorted_view(photo, "OPENCV", [f, f, 200.0, 200.0, *distortion])


def _distorted_lego(root: Path, frames: list, lego: Path, f: float, colmap) -> None:
    """A COLMAP text capture of lego's ``frames`` at their true poses through one OPENCV camera (focal ``f``,
    :data:`DISTORTION`), each image the RGBA photo as that camera sees it (:func:`_distort`), alpha and all."""
    import imageio.v3 as iio

    from tests.test_camera_fits import write_lego_capture

    write_lego_capture(root, frames, lego, f"1 OPENCV 400 400 {_fmt([f, f, 200.0, 200.0, *DISTORTION])}\n",
                       lambda k, path: _distort(iio.imread(path), f, colmap), lambda k: 1)


def _lego_views(n: int, tmp_path: Path, monkeypatch) -> tuple[Path, list, float]:
    """Lego's folder, the first ``n`` frames of its test path and its focal length in pixels (skips without lego);
    the scene cache in ``tmp_path``, so every undistortion is made anew."""
    from tests.test_photos_scene import lego_path_views

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    lego, doc = lego_path_views()
    return lego, doc["frames"][:n], 200.0 / np.tan(0.5 * doc["camera_angle_x"])


def _distorted_transforms(root: Path, frames: list, lego: Path, f: float, colmap) -> None:
    """An instant-ngp / nerfstudio folder of lego's ``frames`` (RGBA, alpha distorted with the colour) through the
    same OPENCV camera, given by ``transforms.json``'s ``fl_x ... k1, k2, p1, p2``; the last frame is test."""
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True)
    out = []
    for k, frame in enumerate(frames):
        rgba = iio.imread(lego / (frame["file_path"] + ".png")).astype(np.float64)
        iio.imwrite(root / "images" / f"frame_{k:05d}.png", _distort(rgba, f, colmap))
        out.append({"file_path": f"images/frame_{k:05d}.png", "transform_matrix": frame["transform_matrix"]})
    k1, k2, p1, p2 = DISTORTION
    doc = {"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": 200.0, "cy": 200.0, "w": 400, "h": 400,
           "k1": k1, "k2": k2, "p1": p1, "p2": p2, "aabb_scale": 2, "scale": 0.33, "offset": [0.5, 0.5, 0.5],
           "frames": out, "test_filenames": [out[-1]["file_path"]],
           "train_filenames": [fr["file_path"] for fr in out[:-1]]}
    (root / "transforms.json").write_text(json.dumps(doc))


def _ray_scores(scene, lego: Path, frames: list, f: float, split: str = "train") -> list[float]:
    """Each image of ``split``: each loaded pixel's ray (the project's own ray generation from the loaded camera)
    projected through lego's true pinhole camera into the photo (on white) of its frame (named by index or by
    ``frame_NNNNN``), the colour there (bilinear) against the loaded pixel's, as PSNR (dB)."""
    from scipy.ndimage import map_coordinates

    from pipeline.rays import pixel_rays
    from tests.test_photos_scene import on_white

    images = scene.splits[split]
    w, h = images.cameras.width, images.cameras.height
    v, u = np.mgrid[0:h, 0:w] + 0.5
    out = []
    for i, name in enumerate(images.names):
        k = int(name.rsplit("_", 1)[-1])
        photo = on_white(lego / (frames[k]["file_path"] + ".png")).astype(np.float64) / 255
        idx = torch.full((u.size,), i, dtype=torch.long)
        _, d = pixel_rays(images.cameras, idx, torch.from_numpy(u.ravel()), torch.from_numpy(v.ravel()))
        d_cam = d.double().numpy() @ images.cameras.c2w[i, :3, :3].double().numpy()  # (R^T d, OpenGL axes)
        x, y = f * d_cam[:, 0] / -d_cam[:, 2] + 200.0, f * -d_cam[:, 1] / -d_cam[:, 2] + 200.0
        want = np.stack([map_coordinates(photo[..., c], [y - 0.5, x - 0.5], order=1, mode="nearest")
                         for c in range(3)], -1)
        err = np.mean((want - images.images[i].double().numpy().reshape(-1, 3)) ** 2)
        out.append(float(10 * np.log10(1.0 / max(err, 1e-12))))
    return out


def test_a_distorted_capture_loads_undistorted_with_rays_on_the_photos_pixels(tmp_path, capsys, monkeypatch,
                                                                             pycolmap):  # noqa: F811
    """Lego's views (RGBA) through an OPENCV camera with barrel distortion: the colmap source undistorts them (once:
    the second load takes the cache) into pinhole images, alpha included. Truth is the original photo on white:
    each loaded pixel's ray (the project's own ray generation from the loaded camera) is projected through lego's
    true pinhole camera into the photo, and the colour there matches the loaded pixel's at over 37 dB on every
    view (measured 38.8-39.6 dB when written; 40.1-40.9 dB from views composited on white before they were
    distorted); read as its pinhole part (undistort: false, the reading before), the same views score below
    32 dB (measured 29.6-29.9 dB), and the loader warns that the distortion is not modelled."""
    lego, frames, f = _lego_views(6, tmp_path, monkeypatch)
    root = tmp_path / "cap"
    _distorted_lego(root, frames, lego, f, pycolmap)

    scene = _load(root)
    err = capsys.readouterr().err
    assert "undistorting the 6 images of" in err and "camera 1 OPENCV k1, k2, p1, p2" in err
    assert scene.splits["train"].alphas is not None  # COLMAP's undistortion keeps colour only: alpha is added back
    assert "not modelled" not in err
    undistorted = _ray_scores(scene, lego, frames, f)
    with capsys.disabled():
        print("undistorted:", [round(s, 2) for s in undistorted])
    assert min(undistorted) > 37, undistorted
    assert scene.meta["undistorted"]["distorted"] == "camera 1 OPENCV k1, k2, p1, p2"
    assert scene.meta["root"] == str(root.resolve()) and scene.meta["sparse"] == str((root / "sparse/0").resolve())
    assert scene.meta["input_frame"]["file"] == scene.meta["sparse"]
    assert Path(scene.meta["undistorted"]["capture"]).is_dir()
    again = _load(root)  # the cache: no second undistortion, the same images
    assert "undistorting" not in capsys.readouterr().err
    assert torch.equal(again.splits["train"].images, scene.splits["train"].images)
    pinhole = _ray_scores(_load(root, undistort=False), lego, frames, f)
    with capsys.disabled():
        print("pinhole part:", [round(s, 2) for s in pinhole])
    assert max(pinhole) < 32 and "lens distortion (camera 1 OPENCV" in capsys.readouterr().err, pinhole


def test_the_undistortion_plumbing_without_data(tmp_path, capsys, monkeypatch, pycolmap):  # noqa: F811
    """The tiny sphere capture through an OPENCV camera (so no data is needed): loaded undistorted, its cameras are
    pinhole ones and its masks are undistorted with it; two cameras of their own distortion load together; a model with zero distortion and a downscaled image folder
    load as before (the second with a warning saying to load the full-size images); a fisheye model, refused when
    read as its pinhole part, loads undistorted."""
    import imageio.v3 as iio

    f = truth()["frames"][0][2]  # (the tiny sphere scene renders into the shared cache first)
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    opencv = make_colmap(tmp_path / "opencv", cameras=f"1 OPENCV 32 32 {_fmt([f, f, 16, 16, -0.05, 0, 0, 0])}\n",
                         camera_of=lambda k: 1)["root"]
    (opencv / "masks").mkdir()
    for path in sorted((opencv / "images").iterdir()):
        grey = (iio.imread(path)[..., :3].mean(-1) < 250).astype(np.uint8) * 255  # the sphere on white
        iio.imwrite(opencv / "masks" / path.name, grey)
    scene = _load(opencv, masks="masks")
    err = capsys.readouterr().err
    assert "undistorting the 10 images" in err and "not modelled" not in err
    record = json.loads((Path(scene.meta["undistorted"]["capture"]) / "meta.json").read_text())
    assert record["distorted"] == "camera 1 OPENCV k1" and scene.meta["masks"] == str((opencv / "masks").resolve())
    train = scene.splits["train"]
    assert train.alphas is not None and train.alphas.shape[:3] == train.images.shape[:3]
    assert Path(scene.meta["undistorted_masks"]).is_dir()

    two = make_colmap(tmp_path / "two", cameras=f"1 OPENCV 32 32 {_fmt([f, f, 16, 16, -0.05, 0, 0, 0])}\n"
                      f"2 OPENCV 32 32 {_fmt([f, f, 16, 16, 0.08, 0, 0, 0])}\n", camera_of=lambda k: 1 + k % 2)["root"]
    both = _load(two)  # two cameras, each undistorted with its own distortion; RGBA, so alpha is added back
    assert both.meta["undistorted"]["distorted"] == "camera 1 OPENCV k1; camera 2 OPENCV k1"
    assert len(both.splits["train"]) == 10 and both.splits["train"].alphas is not None
    capsys.readouterr()

    zero = make_colmap(tmp_path / "zero", cameras=f"1 OPENCV 32 32 {_fmt([f, f, 16, 16, 0, 0, 0, 0])}\n",
                       camera_of=lambda k: 1)["root"]
    assert "undistorted" not in _load(zero).meta and "undistorting" not in capsys.readouterr().err

    (opencv / "images_2").mkdir()
    for path in sorted((opencv / "images").iterdir()):
        iio.imwrite(opencv / "images_2" / path.name, iio.imread(path)[::2, ::2])
    half = _load(opencv, images="images_2")
    err = capsys.readouterr().err
    assert "undistorted" not in half.meta and "set scene.images: images" in err and "not modelled" in err

    fisheye = make_colmap(tmp_path / "fish", cameras=f"1 OPENCV_FISHEYE 32 32 {_fmt([f, f, 16, 16, 0.05, 0, 0, 0])}\n",
                          camera_of=lambda k: 1)["root"]
    from pipeline.types import DataError

    with pytest.raises(DataError, match="OPENCV_FISHEYE, whose rays are not a pinhole camera's"):
        _load(fisheye, undistort=False)
    fish = _load(fisheye)
    assert fish.meta["undistorted"]["distorted"] == "camera 1 OPENCV_FISHEYE" and len(fish.splits["train"]) > 0


def test_a_distorted_transforms_json_loads_undistorted_with_rays_on_the_photos_pixels(tmp_path, capsys, monkeypatch,
                                                                                      pycolmap):  # noqa: F811
    """The same views as an instant-ngp / nerfstudio folder (RGBA, transforms.json with fl_x ... k1, k2, p1, p2 and
    nerfstudio's *_filenames splits): the blender source undistorts each frame, alpha too, into a cached folder,
    and each loaded pixel's ray finds the photo's colour at over 37 dB (measured 38.8-39.6 dB on the four train
    views, 39.4 on the test one), against under 32 dB as pinhole cameras (measured 29.8-29.9 dB; undistort: false,
    the reading before, with its warning); the splits and the views' names are the file's own."""
    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender
    lego, frames, f = _lego_views(5, tmp_path, monkeypatch)
    root = tmp_path / "ngp"
    _distorted_transforms(root, frames, lego, f, pycolmap)

    def load(**options):
        return build_blender(BlenderConfig(path=str(root), **options), None)()

    scene = load()
    err = capsys.readouterr().err
    assert "undistorting the 5 frames of" in err and "OPENCV -0.08, 0.01, 0.001, -0.0005" in err
    assert "not modelled" not in err
    assert scene.splits["test"].names == ["frame_00004"] and len(scene.splits["train"]) == 4
    assert scene.meta["split_rule"] == "top-level *_filenames lists" and scene.meta["root"] == str(root.resolve())
    assert scene.splits["train"].alphas is not None
    undistorted = _ray_scores(scene, lego, frames, f) + _ray_scores(scene, lego, frames, f, "test")
    with capsys.disabled():
        print("undistorted:", [round(s, 2) for s in undistorted])
    assert min(undistorted) > 37, undistorted
    again = load()
    assert "undistorting" not in capsys.readouterr().err
    assert torch.equal(again.splits["train"].images, scene.splits["train"].images)
    pinhole = _ray_scores(load(undistort=False), lego, frames, f)
    with capsys.disabled():
        print("pinhole:", [round(s, 2) for s in pinhole])
    assert max(pinhole) < 32 and "lens distortion (k1, k2, p1, p2) is not modelled" in capsys.readouterr().err


def test_frames_whose_distortions_undistort_to_several_sizes_are_fitted_to_one(tmp_path, capsys, monkeypatch,
                                                                               pycolmap):  # noqa: F811
    """The lego folder with every other frame through a stronger barrel distortion of its own (per-frame k1, k2,
    p1, p2, as phone apps write them): the two cameras undistort to different sizes, so each undistorted frame is
    fitted to the smaller (with a warning), its mask (the frame's alpha) with it, and each loaded pixel's ray still
    finds the photo's colour (over 35 dB; measured 39.1-43.4 dB)."""
    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender

    lego, frames, f = _lego_views(5, tmp_path, monkeypatch)
    root = tmp_path / "ngp"
    _distorted_transforms(root, frames, lego, f, pycolmap)
    import imageio.v3 as iio

    strong = [-0.2, 0.03, 0.0, 0.0]
    doc = json.loads((root / "transforms.json").read_text())
    for k in (1, 3):
        rgba = iio.imread(lego / (frames[k]["file_path"] + ".png")).astype(np.float64)
        iio.imwrite(root / "images" / f"frame_{k:05d}.png", _distort(rgba, f, pycolmap, strong))
        doc["frames"][k].update(zip(("k1", "k2", "p1", "p2"), strong))
    (root / "masks").mkdir()
    for k, frame in enumerate(doc["frames"]):  # (each frame's own alpha as its mask: fitted alike, they agree)
        iio.imwrite(root / "masks" / f"{k}.png", iio.imread(root / frame["file_path"])[..., 3])
        frame["mask_path"] = f"masks/{k}.png"
    (root / "transforms.json").write_text(json.dumps(doc))
    scene = build_blender(BlenderConfig(path=str(root)), None)()
    err = capsys.readouterr().err
    assert "distorted cameras undistort to images of 2 sizes, and a split loads at one" in err, err
    scores = _ray_scores(scene, lego, frames, f) + _ray_scores(scene, lego, frames, f, "test")
    with capsys.disabled():
        print("fitted:", [round(v, 2) for v in scores])
    assert min(scores) > 35, scores
    written = json.loads((Path(scene.meta["undistorted"]["capture"]) / "transforms.json").read_text())
    assert len({(fr["w"], fr["h"]) for fr in written["frames"]}) == 1
    for split in scene.splits.values():
        agree = (split.valid == (split.alphas[..., 0] >= 0.5)).float().mean()
        assert float(agree) > 0.99 and not bool(split.valid.all())


def test_the_transforms_undistortion_plumbing_without_data(tmp_path, capsys, monkeypatch, pycolmap):  # noqa: F811
    """The tiny sphere's views as a transforms.json (so no data is needed): zero distortion loads as it is; k1
    loads undistorted with pinhole intrinsics per frame and the frames' own split keys, and the same camera given
    for images twice the stored size undistorts them the same; nerfstudio's OPENCV_FISHEYE model loads
    undistorted too."""
    import shutil

    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender

    t = truth()
    f = t["frames"][0][2]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))

    def folder(name: str, **camera) -> Path:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        frames = []
        for k, (png, c2w, _) in enumerate(t["frames"]):
            shutil.copyfile(png, root / "images" / f"{k:03d}.png")
            frames.append({"file_path": f"images/{k:03d}", "transform_matrix": c2w.tolist(),
                           "split": "test" if k >= 8 else "train"})
        doc = {"fl_x": f, "fl_y": f, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32, **camera, "frames": frames}
        (root / "transforms.json").write_text(json.dumps(doc))
        return root

    def load(root: Path):
        return build_blender(BlenderConfig(path=str(root)), None)()

    zero = load(folder("zero", k1=0.0, k2=0.0, p1=0.0, p2=0.0))
    assert "undistorted" not in zero.meta and "undistorting" not in capsys.readouterr().err
    radial = load(folder("radial", k1=-0.05))
    assert "undistorting the 10 frames" in capsys.readouterr().err
    assert radial.meta["undistorted"]["distorted"] == "OPENCV -0.05, 0, 0, 0"
    assert radial.meta["split_rule"] == "per-frame 'split' keys" and radial.splits["test"].names == ["008", "009"]
    train = radial.splits["train"]
    assert train.alphas is not None
    written = json.loads((Path(radial.meta["undistorted"]["capture"]) / "transforms.json").read_text())
    assert "k1" not in written and all({"fl_x", "cx", "w", "split"} <= set(fr) for fr in written["frames"])
    assert all("k1" not in fr for fr in written["frames"])
    # the same camera given for images twice the size (w, h 64): scaled to the stored 32 px, the same undistortion
    scaled = load(folder("scaled", k1=-0.05, fl_x=2 * f, fl_y=2 * f, cx=32.0, cy=32.0, w=64, h=64))
    assert torch.equal(scaled.splits["train"].images, train.images)
    fish = load(folder("fish", camera_model="OPENCV_FISHEYE", k1=0.05, k2=0.0, k3=0.0, k4=0.0))
    import trimesh  # nerfstudio's ply_file_path, relative to the folder, is found from the undistorted copy too

    pc = folder("points", k1=-0.05, ply_file_path="sparse_pc.ply")
    trimesh.PointCloud([[0.0, 0.0, 0.0], [0.1, 0.2, 0.0]], colors=[[255, 0, 0], [0, 255, 0]]).export(pc / "sparse_pc.ply")
    points = load(pc)
    assert "undistorted" in points.meta and points.points.shape == (2, 3)
    assert points.point_colors.tolist() == [[255, 0, 0], [0, 255, 0]]
    assert fish.meta["undistorted"]["distorted"] == "OPENCV_FISHEYE 0.05, 0, 0, 0" and len(fish.splits["train"]) == 8


def _sphere_z(c2w: np.ndarray, xy: np.ndarray, radius: float = 0.4) -> np.ndarray:
    """(P,) z-depth of the tiny sphere (the origin's ball of ``radius``) along the rays of normalised OpenCV
    image coordinates ``xy`` (P, 2) of the camera ``c2w`` (4, 4, OpenGL axes); 0 where a ray misses it."""
    d = np.concatenate([xy, np.ones((len(xy), 1))], -1) @ (c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])).T  # (z = 1)
    o = c2w[:3, 3]
    a, b, c = (d * d).sum(-1), 2 * d @ o, o @ o - radius ** 2
    disc = b * b - 4 * a * c
    return np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)


def _assert_depths_of_the_pixels_rays_pass_through(train, distorted: list, fitted: bool = False) -> None:
    """Each loaded pixel of ``train`` (the tiny sphere's views, undistorted from the cameras ``distorted``, one per
    view) holds the depth of the distorted pixel its ray passes through: a value the sphere's exact depth takes within
    that pixel (sampled 5x5), and not the depth of its own ray (so a half-pixel error fails it). ``fitted``: the
    undistorted views were fitted to one size (:func:`fits_to_one_size`), so a loaded pixel holds the mean of such
    depths of the undistorted pixels whose centres fall in it, which lies within their range."""
    import pycolmap

    from pipeline.scenes.camera_fit import fits_to_one_size

    pinholes = [pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), c) for c in distorted]
    fits = fits_to_one_size({i: (p.width, p.height) for i, p in enumerate(pinholes)}) if fitted else {}
    cams = train.cameras
    offsets = np.stack(np.meshgrid(np.linspace(0, 1, 5), np.linspace(0, 1, 5)), -1).reshape(-1, 1, 2)
    for i in range(len(train)):
        c2w, pinhole, fit = cams.c2w[i].double().numpy(), pinholes[i], fits.get(i)
        v, u = np.mgrid[0:pinhole.height, 0:pinhole.width] + 0.5  # the undistorted pixels' centres
        centres = np.stack([u.ravel(), v.ravel()], -1)
        rays = np.concatenate([pinhole.cam_from_img(centres), np.ones((len(centres), 1))], -1)
        corner = np.floor(distorted[i].img_from_cam(rays))
        within = np.stack([_sphere_z(c2w, distorted[i].cam_from_img(corner + o)) for o in offsets])  # (25, P)
        col, row = np.floor(fit.point(centres) if fit else centres).astype(np.int64).T  # the loaded pixel of each
        inside = (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)
        cell = (row * cams.width + col)[inside]
        lo, hi = np.full(cams.width * cams.height, np.inf), np.full(cams.width * cams.height, -np.inf)
        np.minimum.at(lo, cell, within.min(0)[inside])
        np.maximum.at(hi, cell, within.max(0)[inside])
        covered = lo > 0  # (every sample of every contributing pixel on the sphere)
        if train.alphas is not None:  # (the loader drops depths where the image is transparent)
            covered &= train.alphas[i, ..., 0].numpy().ravel() >= 0.5
        z = train.depths[i].numpy().ravel().astype(np.float64)
        assert covered.sum() > 150 and (z[covered] > 0).all()
        assert (z[covered] >= lo[covered] - 1e-4).all() and (z[covered] <= hi[covered] + 1e-4).all()
        fv, fu = np.mgrid[0:cams.height, 0:cams.width] + 0.5
        xy = np.stack([(fu.ravel() - float(cams.cx[i])) / float(cams.fx[i]),
                       (fv.ravel() - float(cams.cy[i])) / float(cams.fy[i])], -1)
        assert not np.allclose(z[covered], _sphere_z(c2w, xy)[covered], atol=1e-3)  # (so this can fail)


def test_a_distorted_transforms_json_undistorts_its_mask_paths_with_the_frames(tmp_path, monkeypatch, capsys,
                                                                              pycolmap):  # noqa: F811
    """nerfstudio's ``mask_path`` of distorted frames are undistorted with them: the tiny sphere's alpha given as
    each frame's mask, the ignore masks loaded are the undistorted alpha's pixels >= 0.5; the masks are in the cache
    key, so a changed mask is undistorted anew. Their ``depth_file_path`` maps too: the sphere's exact z-depth
    through each distorted pixel, in millimetres, loads as depths that put each undistorted pixel's ray on the
    sphere."""
    import imageio.v3 as iio

    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender

    t = truth()
    f = t["frames"][0][2]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "masked"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    distorted = pycolmap.Camera(model="OPENCV", width=32, height=32, params=[f, f, 16.0, 16.0, -0.05, 0, 0, 0])
    frames = []
    for k, (png, c2w, _) in enumerate(t["frames"]):
        rgba = iio.imread(png)
        iio.imwrite(root / "images" / f"{k:03d}.png", rgba)
        iio.imwrite(root / "masks" / f"{k:03d}.png", rgba[..., 3])
        v, u = np.mgrid[0:32, 0:32] + 0.5
        xy = distorted.cam_from_img(np.stack([u.ravel(), v.ravel()], -1))
        np.save(root / "masks" / f"{k:03d}.npy", 1000 * _sphere_z(c2w, xy).reshape(32, 32))
        frames.append({"file_path": f"images/{k:03d}.png", "transform_matrix": c2w.tolist(),
                       "mask_path": f"masks/{k:03d}.png", "depth_file_path": f"masks/{k:03d}.npy",
                       "split": "test" if k >= 8 else "train"})
    doc = {"fl_x": f, "fl_y": f, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32, "k1": -0.05, "frames": frames,
           "depth_unit_scale_factor": 0.001}
    (root / "transforms.json").write_text(json.dumps(doc))

    def load():
        return build_blender(BlenderConfig(path=str(root)), None)()

    scene = load()
    train = scene.splits["train"]
    assert scene.meta["mask_use"] == "ignore" and "undistorted" in scene.meta
    _assert_depths_of_the_pixels_rays_pass_through(train, [distorted] * len(train))
    assert torch.equal(train.valid, train.alphas[..., 0] >= 0.5)
    plain = build_blender(BlenderConfig(path=str(root), undistort=False), None)().splits["train"]
    assert not torch.equal(plain.valid, train.valid)  # (undistortion moved them)
    assert not torch.equal(plain.depths, train.depths)  # (and the depths)
    iio.imwrite(root / "masks" / "000.png", np.full((32, 32), 255, np.uint8))
    assert load().splits["train"].valid[0].all()
    del frames[0]["depth_file_path"]
    (root / "transforms.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert load().splits["train"].depths is None
    assert "not every distorted frame gives a depth map file (depth_file_path)" in capsys.readouterr().err


def test_the_floating_point_undistortion_is_colmap_s(pycolmap):  # noqa: F811
    """The undistortion of images of more than 8 bits (:func:`_undistort_deep`) samples where pycolmap's does: on an
    8-bit image through a strong OPENCV camera it gives pycolmap's undistorted image to the grey level."""
    from plugins.scenes.undistortion import _undistort_deep

    h, w = 60, 80
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 3) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
    for k in ([-0.2, 0.03, 0.001, 0.0], [0.3, 0.0, 0.0, 0.0]):
        camera = pycolmap.Camera(model="OPENCV", width=w, height=h, params=[70, 70, 40, 30, *k], camera_id=1)
        options = pycolmap.UndistortCameraOptions()
        pinhole = pycolmap.undistort_camera(options, camera)
        bitmap, _ = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(image), camera)
        want = np.asarray(bitmap.to_array()).reshape(bitmap.height, bitmap.width, 3).astype(np.float64)
        got = _undistort_deep(camera, pinhole, image)
        assert got.shape == want.shape and np.abs(np.round(got) - want).max() == 0
        shifted = _undistort_deep(camera, pinhole, np.roll(image, 1, axis=1))  # (so this can fail)
        assert np.abs(np.round(shifted) - want).max() > 50


def test_16_bit_distorted_frames_are_undistorted_at_16_bits(tmp_path, monkeypatch, capsys, pycolmap):  # noqa: F811
    """16-bit RGBA PNG frames of a distorted transforms.json are undistorted in floating point into 16-bit TIFFs that
    the loader reads with all their bits: the loaded frames are the 16-bit undistortion to float32 round-off, and
    hold values between 8-bit levels. Frames of two distortions (fitted to one size) keep 16 bits too."""
    from pipeline.scenes.blender import _pixels
    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender
    from plugins.scenes.undistortion import _undistort_deep
    from tests.test_image_camera_input import write_png16

    t = truth()
    f = t["frames"][0][2]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)

    def folder(name: str, per_frame_k1=None) -> tuple[Path, list]:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        frames, wide = [], []
        for k, (png, c2w, _) in enumerate(t["frames"]):
            import imageio.v3 as iio

            rgba = iio.imread(png).astype(np.uint16) * 257
            rgba[..., :3] = np.clip(rgba[..., :3].astype(np.int64) + rng.integers(-120, 120, rgba[..., :3].shape),
                                    0, 65535)  # (low bytes that matter)
            write_png16(root / "images" / f"{k:03d}.png", rgba)
            wide.append(rgba)
            frame = {"file_path": f"images/{k:03d}.png", "transform_matrix": c2w.tolist(),
                     "split": "test" if k >= 8 else "train"}
            if per_frame_k1 is not None:
                frame.update({"fl_x": f, "fl_y": f, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32,
                              "k1": per_frame_k1(k)})
            frames.append(frame)
        camera = {} if per_frame_k1 else {"fl_x": f, "fl_y": f, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32, "k1": -0.05}
        (root / "transforms.json").write_text(json.dumps({**camera, "frames": frames}))
        return root, wide

    root, wide = folder("deep")
    scene = build_blender(BlenderConfig(path=str(root)), None)()
    capture = Path(scene.meta["undistorted"]["capture"])
    written = json.loads((capture / "transforms.json").read_text())["frames"]
    assert all(fr["file_path"].endswith(".tiff") for fr in written)
    train = scene.splits["train"]
    camera = pycolmap.Camera(model="OPENCV", width=32, height=32, params=[f, f, 16.0, 16.0, -0.05, 0, 0, 0])
    pinhole = pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), camera)
    for i in range(len(train)):
        want = np.round(_undistort_deep(camera, pinhole, wide[i])) / 65535  # (H, W, 4)
        stored = _pixels(capture / written[i]["file_path"])
        assert stored.dtype == np.uint16 and stored.shape == want.shape
        alpha = want[..., 3:]
        np.testing.assert_allclose(train.alphas[i].numpy(), alpha, rtol=0, atol=1e-7)
        np.testing.assert_allclose(train.images[i].numpy(), want[..., :3] * alpha + (1 - alpha), rtol=0, atol=3e-7)
    between = np.abs(train.images.numpy() * 255 - np.round(train.images.numpy() * 255))
    assert between.max() > 0.25  # (8-bit frames would sit on the 8-bit levels)
    assert "16-bit" not in capsys.readouterr().err

    mixed, _ = folder("mixed", per_frame_k1=lambda k: -0.05 if k % 2 else 0.2)
    scene = build_blender(BlenderConfig(path=str(mixed)), None)()
    assert "undistort to images of 2 sizes" in capsys.readouterr().err
    images = scene.splits["train"].images.numpy()
    assert np.abs(images * 255 - np.round(images * 255)).max() > 0.25


@pytest.mark.parametrize("k1_odd", [0.1, 0.2])
def test_depth_maps_of_frames_of_several_undistorted_sizes_are_fitted_with_them(tmp_path, monkeypatch, capsys,
                                                                                pycolmap, k1_odd):  # noqa: F811
    """The tiny sphere's views with every other frame through another distortion, each with the sphere's exact depth
    map (mm): they undistort to 31 and 30 px (k1 0.1: fitted by a crop) or 31 and 29 px (k1 0.2: resampled), and the
    loaded depths are fitted with the images: after a crop each pixel holds the depth of the distorted pixel its ray
    passes through, after resampling the mean of those of the undistorted pixels whose centres fall in it."""
    import imageio.v3 as iio

    from plugins.scenes.config import BlenderConfig
    from plugins.scenes.sources import build_blender

    t = truth()
    f = t["frames"][0][2]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "sizes"
    (root / "images").mkdir(parents=True)
    cameras, frames = [], []
    for k, (png, c2w, _) in enumerate(t["frames"]):
        k1 = k1_odd if k % 2 else -0.05
        cameras.append(pycolmap.Camera(model="OPENCV", width=32, height=32, params=[f, f, 16.0, 16.0, k1, 0, 0, 0]))
        iio.imwrite(root / "images" / f"{k:03d}.png", iio.imread(png))
        v, u = np.mgrid[0:32, 0:32] + 0.5
        xy = cameras[-1].cam_from_img(np.stack([u.ravel(), v.ravel()], -1))
        np.save(root / "images" / f"{k:03d}.npy", 1000 * _sphere_z(c2w, xy).reshape(32, 32))
        frames.append({"file_path": f"images/{k:03d}.png", "transform_matrix": c2w.tolist(),
                       "depth_file_path": f"images/{k:03d}.npy", "split": "test" if k >= 8 else "train",
                       "fl_x": f, "fl_y": f, "cx": 16.0, "cy": 16.0, "w": 32, "h": 32, "k1": k1})
    (root / "transforms.json").write_text(json.dumps({"frames": frames, "depth_unit_scale_factor": 0.001}))
    train = build_blender(BlenderConfig(path=str(root)), None)().splits["train"]
    sizes = {(c.width, c.height) for c in (pycolmap.undistort_camera(pycolmap.UndistortCameraOptions(), c)
                                           for c in cameras)}
    assert len(sizes) == 2 and "undistort to images of 2 sizes" in capsys.readouterr().err
    assert (train.cameras.width, train.cameras.height) == min(sizes)
    _assert_depths_of_the_pixels_rays_pass_through(train, cameras[:len(train)], fitted=True)
