"""``nls render --cameras``: cameras read from a transforms.json in the run's frame, and the ``*_cameras.json``
files ``nls render`` writes beside each split and turntable it renders."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from pipeline.camera_paths import interpolate_cameras, path_steps, read_camera_path, turn_scale, write_camera_path
from pipeline.types import Cameras, DataError
from tests.short_runs import short_run


def _cams(n: int = 3) -> Cameras:
    from scipy.spatial.transform import Rotation

    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.from_euler("xyz", np.arange(3 * n).reshape(n, 3) * 0.3).as_matrix()
    c2w[:, :3, 3] = np.arange(3 * n).reshape(n, 3) * 0.1 - 0.4
    f = torch.arange(n, dtype=torch.float32) + 40.0
    return Cameras(torch.tensor(c2w, dtype=torch.float32), f, f + 1, f / 2, f / 3, 64, 48)


def test_a_written_path_reads_back_as_the_same_cameras(tmp_path):
    cams = _cams()
    write_camera_path(tmp_path / "p.json", cams, ["a", "b", "c"])
    back, names = read_camera_path(tmp_path / "p.json", (1, 1))
    assert names == ["a", "b", "c"] and (back.width, back.height) == (64, 48)
    for key in ("c2w", "fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(back, key), getattr(cams, key), atol=1e-6), key


def test_intrinsics_come_from_the_frame_then_the_file_then_the_split(tmp_path):
    """NeRF's Blender layout (camera_angle_x at the top, no size): the split's size, fx = w / 2 / tan(angle / 2),
    the principal point at the centre; a frame's own fl_x and size win; names from file_path."""
    eye = np.eye(4).tolist()
    doc = {"camera_angle_x": 0.6911, "frames": [{"file_path": "./test/r_0", "transform_matrix": eye},
                                                {"file_path": "r_1.png", "transform_matrix": eye, "fl_x": 500.0}]}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    cams, names = read_camera_path(tmp_path / "t.json", (400, 300))
    assert names == ["r_0", "r_1"] and (cams.width, cams.height) == (400, 300)
    assert cams.fx[0].item() == pytest.approx(200 / math.tan(0.6911 / 2), rel=1e-6)
    assert cams.fx[1].item() == cams.fy[1].item() == 500.0 and (cams.cx[0].item(), cams.cy[0].item()) == (200, 150)
    doc["frames"][1]["file_path"] = "r_0"  # a repeated name: frames are named by their index instead
    (tmp_path / "t.json").write_text(json.dumps(doc))
    assert read_camera_path(tmp_path / "t.json", (400, 300))[1] == ["0000", "0001"]
    with pytest.raises(DataError, match=r"frames\[0\]: no image size; give w and h"):
        read_camera_path(tmp_path / "t.json", None)  # a run without views to take the size from


@pytest.mark.parametrize("doc, message", [
    ({"frames": []}, "a non-empty list 'frames'"),
    ({"fl_x": 50, "frames": [{"file_path": "a"}]}, r"frames\[0\] has no 'transform_matrix'"),
    ({"fl_x": 50, "frames": [{"transform_matrix": [[1, 0, 0], [0, 1, 0]]}]}, "must be a 4x4 matrix"),
    ({"fl_x": 50, "frames": [{"transform_matrix": (2 * np.eye(4)).tolist()}]}, "its last row is"),
    ({"fl_x": 50, "frames": [{"transform_matrix": np.diag([2.0, 1, 1, 1]).tolist()}]}, "is not a rotation"),
    ({"frames": [{"transform_matrix": np.eye(4).tolist()}]}, "no focal length; give fl_x"),
    ({"fl_x": "wide", "frames": [{"transform_matrix": np.eye(4).tolist()}]}, "key 'fl_x' must be a number, got 'wide'"),
    ({"fl_x": 50, "frames": [{"transform_matrix": np.eye(4).tolist(), "w": 10, "h": 10},
                             {"transform_matrix": np.eye(4).tolist()}]}, r"2 image sizes \(10x10, 64x48\)"),
    ({"camera_path": [{"camera_to_world": np.eye(4).ravel().tolist(), "fov": 50}]},
     "a nerfstudio camera path.*give --dataparser-transforms"),
])
def test_what_is_not_a_camera_path_is_a_data_error_naming_it(tmp_path, doc, message):
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        read_camera_path(tmp_path / "p.json", (64, 48))
    (tmp_path / "bad.json").write_text("{frames")
    with pytest.raises(DataError, match="bad.json: not JSON"):
        read_camera_path(tmp_path / "bad.json", (64, 48))


def _nerfstudio_files(tmp_path, cams: Cameras, rotation: np.ndarray, shift, scale: float, fov: float):
    """``cams`` as nerfstudio sees them after its dataparser's ``[rotation | shift]`` and ``scale``, written as its
    camera_path.json (vertical ``fov`` degrees, 64x48) and dataparser_transforms.json; returns both paths."""
    frames = []
    for m in cams.c2w.double().numpy():
        ns = np.eye(4)
        ns[:3, :3] = rotation @ m[:3, :3]
        ns[:3, 3] = scale * (rotation @ m[:3, 3] + shift)
        frames.append({"camera_to_world": ns.ravel().tolist(), "fov": fov, "aspect": 64 / 48})
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps({"camera_type": "perspective", "render_width": 64, "render_height": 48,
                                "seconds": 2.0, "camera_path": frames}))
    transforms = tmp_path / "dataparser_transforms.json"
    transforms.write_text(json.dumps({"transform": np.concatenate([rotation, np.reshape(shift, (3, 1))], 1).tolist(),
                                      "scale": scale}))
    return path, transforms


def test_a_nerfstudio_camera_path_reads_back_in_its_dataset_s_frame(tmp_path):
    """Cameras carried into nerfstudio's frame (turned, moved and scaled as its dataparser_transforms.json says)
    and written as its camera path come back as the same cameras; the focal length is nerfstudio's, from the
    vertical field of view and the render height, with the principal point at the centre."""
    from scipy.spatial.transform import Rotation

    cams = _cams()
    rotation = Rotation.from_euler("xyz", [20.0, -35.0, 70.0], degrees=True).as_matrix()
    path, transforms = _nerfstudio_files(tmp_path, cams, rotation, [0.3, -1.2, 0.5], 0.37, 50.0)
    back, names = read_camera_path(path, None, transforms)
    assert names == ["0000", "0001", "0002"] and (back.width, back.height) == (64, 48)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-5)
    focal = 24 / math.tan(math.radians(25.0))
    assert torch.allclose(back.fx, torch.full((3,), focal)) and torch.equal(back.fx, back.fy)
    assert (back.cx[0].item(), back.cy[0].item()) == (32.0, 24.0)
    wrong = tmp_path / "wrong.json"  # (the scale left out: the centres come back elsewhere; the test can fail)
    wrong.write_text(json.dumps({"transform": json.loads(transforms.read_text())["transform"], "scale": 1.0}))
    assert not torch.allclose(read_camera_path(path, None, wrong)[0].c2w, cams.c2w, atol=1e-3)


@pytest.mark.parametrize("change, message", [
    (lambda doc, t: t.update(scale=0), r"'scale' must be a number > 0"),
    (lambda doc, t: t.update(transform=[[1, 0, 0, 0], [0, 1, 0, 0]]), "'transform' must be a 3x4 matrix"),
    (lambda doc, t: t.update(transform=(2 * np.eye(3, 4)).tolist()), "is not a rotation"),
    (lambda doc, t: t.pop("scale"), "holds 'transform' \\(3x4\\) and 'scale'"),
    (lambda doc, t: doc.update(camera_type="fisheye"), "camera_type 'fisheye': only perspective cameras"),
    (lambda doc, t: doc["camera_path"][1].pop("fov"), r"camera_path\[1\] has no 'fov'"),
    (lambda doc, t: doc["camera_path"][0].update(fov=180), r"camera_path\[0\]: 'fov' must be a number in \(0, 180\)"),
    (lambda doc, t: doc["camera_path"][2].update(camera_to_world=[1, 2]), r"camera_path\[2\].camera_to_world must"),
])
def test_a_bad_nerfstudio_path_or_transform_is_a_data_error_naming_it(tmp_path, change, message):
    path, transforms = _nerfstudio_files(tmp_path, _cams(), np.eye(3), [0.0, 0.0, 0.0], 1.0, 40.0)
    doc, t = json.loads(path.read_text()), json.loads(transforms.read_text())
    change(doc, t)
    path.write_text(json.dumps(doc))
    transforms.write_text(json.dumps(t))
    with pytest.raises(DataError, match=message):
        read_camera_path(path, None, transforms)


def test_dataparser_transforms_with_a_transforms_json_is_refused(tmp_path):
    write_camera_path(tmp_path / "p.json", _cams(), ["a", "b", "c"])
    with pytest.raises(DataError, match="is not one .* leave it out"):
        read_camera_path(tmp_path / "p.json", None, tmp_path / "any.json")


def test_an_interpolated_path_passes_through_its_keyframes_smoothly():
    """Through 4 keyframes, 13 frames: every 4th is a keyframe (to float32); between, the rotations are rotations.
    Keyframes equally spaced on a line and turning at a steady rate about one axis give a path that does the
    same (the natural cubic spline reproduces a straight line; the rotation spline a steady turn)."""
    from scipy.spatial.transform import Rotation

    keys = _cams(4)
    path = interpolate_cameras(keys, 13, pace="keyframes")
    assert len(path) == 13 and (path.width, path.height) == (keys.width, keys.height)
    for j in range(4):
        assert torch.allclose(path.c2w[4 * j], keys.c2w[j], atol=1e-5), j
        assert torch.allclose(path.fx[4 * j], keys.fx[j]), j
    r = path.c2w[:, :3, :3].double()
    assert torch.allclose(r.transpose(1, 2) @ r, torch.eye(3, dtype=torch.float64).expand(13, 3, 3), atol=1e-5)
    steady = np.tile(np.eye(4), (3, 1, 1))
    steady[:, :3, :3] = Rotation.from_euler("z", [[0.0], [30.0], [60.0]], degrees=True).as_matrix()
    steady[:, :3, 3] = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    f = torch.tensor([50.0, 60.0, 70.0])
    line = interpolate_cameras(Cameras(torch.tensor(steady, dtype=torch.float32), f, f, f, f, 8, 8), 5, pace="keyframes")
    assert np.allclose(line.c2w[:, 0, 3].numpy(), [0, 0.5, 1, 1.5, 2], atol=1e-6)
    angles = Rotation.from_matrix(line.c2w[:, :3, :3].double().numpy()).as_euler("xyz", degrees=True)[:, 2]
    assert np.allclose(angles, [0, 15, 30, 45, 60], atol=1e-4) and np.allclose(line.fx.numpy(), [50, 55, 60, 65, 70])
    with pytest.raises(DataError, match="two or more keyframes"):
        interpolate_cameras(_cams(1), 5)


def test_a_looped_path_closes_without_a_seam():
    """Four keyframes a quarter turn apart on a circle, looped into 16 frames: every 4th is a keyframe, the step
    from the last frame back to the first is as long as the others (within 5%: the spline is periodic), and the
    camera turns a steady 22.5° a frame all the way round."""
    from scipy.spatial.transform import Rotation

    ang = np.arange(4) * 90.0
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, :3, 3] = np.stack([np.cos(np.radians(ang)), np.sin(np.radians(ang)), np.zeros(4)], 1)
    c2w[:, :3, :3] = Rotation.from_euler("z", ang[:, None], degrees=True).as_matrix()
    f = torch.full((4,), 50.0)
    keys = Cameras(torch.tensor(c2w, dtype=torch.float32), f, f, f, f, 8, 8)
    path = interpolate_cameras(keys, 16, loop=True, pace="keyframes")
    assert torch.allclose(path.c2w[::4], keys.c2w, atol=1e-5)
    p = path.c2w[:, :3, 3].numpy()
    steps = np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1)
    assert abs(steps[-1] / steps[:-1].mean() - 1) < 0.05, steps
    turn = np.diff(np.unwrap(Rotation.from_matrix(path.c2w[:, :3, :3].double().numpy()).as_euler("xyz")[:, 2]))
    assert np.allclose(np.degrees(turn), 22.5, atol=1e-3)
    # keyframes turning unevenly (0, 60, 180, 270°): the turn per frame changes no faster across the seam than
    # anywhere else (a spline fitted without wrapping round jumps there, by 4.3° a frame against at most 2°)
    c2w[:, :3, :3] = Rotation.from_euler("z", [[0.0], [60.0], [180.0], [270.0]], degrees=True).as_matrix()
    uneven = interpolate_cameras(Cameras(torch.tensor(c2w, dtype=torch.float32), f, f, f, f, 8, 8), 32, loop=True,
                                 pace="keyframes")
    a = np.unwrap(Rotation.from_matrix(uneven.c2w[:, :3, :3].double().numpy()).as_euler("xyz")[:, 2])
    steps = np.degrees(np.diff(np.append(a, a[0] + 2 * np.pi)))  # (the last: from frame 31 round to frame 0)
    change = np.abs(np.diff(np.append(steps, steps[0])))
    assert change[-2] <= change[:-2].max() + 1e-6 and change[-1] <= change[:-2].max() + 1e-6, steps
    open_path = interpolate_cameras(keys, 16, pace="keyframes")
    assert torch.allclose(open_path.c2w[-1], keys.c2w[-1], atol=1e-5)  # (not looped: it ends at the last keyframe)


def test_the_distance_pace_spaces_frames_evenly_however_the_keyframes_lie():
    """Keyframes at x = 0, 1, 3 on a line (one orientation): the distance pace puts 7 frames 0.5 apart (the natural
    spline through chord-length knots reproduces the line), where the keyframe pace puts 3 in the first unit and 3
    in the next two. A camera turning in place at 0, 30, 90 degrees turns 15 degrees a frame; keyframes round a
    circle at 0, 60, 180, 270 degrees, looped, step evenly (moving plus turning; within 3 %, against a factor
    of more than 2 by keyframes); two
    equal keyframes in a row are refused, naming them."""
    from scipy.spatial.transform import Rotation

    def cams(c2w):
        f = torch.full((len(c2w),), 50.0)
        return Cameras(torch.tensor(c2w, dtype=torch.float32), f, f, f, f, 8, 8)

    line = np.tile(np.eye(4), (3, 1, 1))
    line[:, 0, 3] = [0.0, 1.0, 3.0]
    assert np.allclose(interpolate_cameras(cams(line), 7).c2w[:, 0, 3].numpy(), np.arange(7) * 0.5, atol=1e-5)
    by_key = interpolate_cameras(cams(line), 7, pace="keyframes").c2w[:, 0, 3].numpy()
    assert (by_key[[0, 3, 6]] == [0, 1, 3]).all() and by_key[1] < 0.4
    spin = np.tile(np.eye(4), (3, 1, 1))
    spin[:, :3, :3] = Rotation.from_euler("z", [[0.0], [30.0], [90.0]], degrees=True).as_matrix()
    turned = Rotation.from_matrix(interpolate_cameras(cams(spin), 7).c2w[:, :3, :3].double().numpy())
    assert np.allclose(turned.as_euler("xyz", degrees=True)[:, 2], np.arange(7) * 15.0, atol=1e-3)
    ang = np.radians([0.0, 60.0, 180.0, 270.0])
    ring = np.tile(np.eye(4), (4, 1, 1))
    ring[:, :3, 3] = np.stack([np.cos(ang), np.sin(ang), np.zeros(4)], 1)
    ring[:, :3, :3] = Rotation.from_euler("z", ang[:, None]).as_matrix()

    def steps(pace):  # distance moved plus radius x angle turned, from each frame to the next (the last: round to the first)
        c2w = interpolate_cameras(cams(ring), 24, loop=True, pace=pace).c2w.double().numpy()
        c2w = np.concatenate([c2w, c2w[:1]])
        return path_steps(c2w[:, :3, 3], Rotation.from_matrix(c2w[:, :3, :3]), turn_scale(ring))

    assert steps("distance").max() / steps("distance").min() < 1.03
    assert steps("keyframes").max() / steps("keyframes").min() > 2
    line[1] = line[0]
    with pytest.raises(DataError, match="keyframes 0 and 1 are the same camera"):
        interpolate_cameras(cams(line), 7)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid")


def test_rendering_a_splits_written_cameras_gives_its_renders(run, tmp_path, nls):
    """`nls render` writes the test split's cameras beside its renders; `--cameras` on that file renders the same
    images and, with --depth, the same depth arrays, pixel for pixel, and no split; a turntable's cameras are
    written too."""
    import imageio.v3 as iio

    out = tmp_path / "renders"
    res = nls("render", str(run), "-o", str(out), "--spiral", "3", "--depth", "-q", check=True)
    assert "their cameras:" in res.stdout and (out / "turntable_cameras.json").is_file()
    assert len(json.loads((out / "turntable_cameras.json").read_text())["frames"]) == 3
    doc = json.loads((out / "test_cameras.json").read_text())
    names = [f["file_path"] for f in doc["frames"]]
    assert names and all((out / "test" / f"{n}.png").is_file() for n in names)
    again = tmp_path / "again"
    res = nls("render", str(run), "--cameras", str(out / "test_cameras.json"), "-o", str(again), "--depth", check=True)
    assert not (again / "test").exists(), res.stdout  # --cameras alone renders no split
    assert "with depth/opacity .npy arrays" in res.stdout
    for n in names:
        assert np.array_equal(iio.imread(again / "test_cameras" / f"{n}.png"), iio.imread(out / "test" / f"{n}.png")), n
        for key in ("depth", "opacity", "depth_median"):
            assert np.array_equal(np.load(again / "test_cameras" / f"{n}_{key}.npy"),
                                  np.load(out / "test" / f"{n}_{key}.npy")), (n, key)
    res = nls("render", str(run), "--cameras", str(out / "turntable_cameras.json"), "--interpolate", "7", "-o",
              str(again), "-q", check=True)
    assert sorted(p.name for p in (again / "turntable_cameras").glob("*.png")) == [f"{k:04d}.png" for k in range(7)]
    assert "7 frames" in res.stdout and any(again.glob("turntable_cameras.*"))  # (the video: mp4, or gif)
    thin = tmp_path / "thin"  # --every / --max-images thin a path's frames (after --interpolate), as they do a split's
    res = nls("render", str(run), "--cameras", str(out / "turntable_cameras.json"), "--interpolate", "7", "--every",
              "3", "-o", str(thin), "-q", check=True)
    assert sorted(p.name for p in (thin / "turntable_cameras").glob("*.png")) == ["0000.png", "0003.png", "0006.png"]
    assert "3 frames" in res.stdout
    assert np.array_equal(iio.imread(thin / "turntable_cameras" / "0003.png"),
                          iio.imread(again / "turntable_cameras" / "0003.png"))  # the same frame, not a new path
    nls("render", str(run), "--cameras", str(out / "turntable_cameras.json"), "--max-images", "2", "-o",
        str(tmp_path / "first"), "-q", check=True)
    assert len(list((tmp_path / "first" / "turntable_cameras").glob("*.png"))) == 2
    shutil.copyfile(out / "test_cameras.json", tmp_path / "test.json")  # named as a split: not into renders/test/
    nls("render", str(run), "--cameras", str(tmp_path / "test.json"), "-o", str(again), "-q", check=True)
    assert not (again / "test").exists() and len(list((again / "test_path").glob("*.png"))) == len(names)
    res = nls("render", str(run), "--interpolate", "7")
    assert res.returncode != 0 and "give them with --cameras" in res.stderr
    res = nls("render", str(run), "--cameras", str(out / "turntable_cameras.json"), "--pace", "keyframes")
    assert res.returncode == 2 and "--pace keyframes spaces the frames of an interpolated path" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"frames": [{"transform_matrix": np.eye(4).tolist()}]}))
    res = nls("render", str(run), "--cameras", str(bad), "-o", str(tmp_path / "x"))
    assert res.returncode != 0 and "no focal length" in res.stderr and not (tmp_path / "x").exists()


def test_nls_render_renders_a_nerfstudio_camera_path_as_the_views_it_came_from(run, tmp_path, nls):
    """The test split's cameras, carried into a nerfstudio frame and written as its camera path with the
    dataparser transform, render as the split's own views did (to a grey level: float32 round trips)."""
    import imageio.v3 as iio
    from scipy.spatial.transform import Rotation

    out = tmp_path / "renders"
    nls("render", str(run), "-o", str(out), "-q", check=True)
    cams, names = read_camera_path(out / "test_cameras.json", None)
    assert torch.allclose(cams.fx, cams.fy) and torch.allclose(cams.cx, torch.full_like(cams.cx, cams.width / 2))
    rotation = Rotation.from_euler("xyz", [10.0, 80.0, -30.0], degrees=True).as_matrix()
    fov = math.degrees(2 * math.atan(0.5 * cams.height / float(cams.fy[0])))
    path, transforms = _nerfstudio_files(tmp_path, cams, rotation, [1.0, 2.0, -0.5], 2.5, fov)
    doc = json.loads(path.read_text())
    doc.update(render_width=int(cams.width), render_height=int(cams.height))
    path.write_text(json.dumps(doc))
    res = nls("render", str(run), "--cameras", str(path), "--dataparser-transforms", str(transforms), "-o",
              str(tmp_path / "ns"), "-q", check=True)
    assert f"wrote {len(names)} frames" in res.stdout
    for k, name in enumerate(names):
        got = iio.imread(tmp_path / "ns" / "camera_path" / f"{k:04d}.png").astype(int)
        assert np.abs(got - iio.imread(out / "test" / f"{name}.png").astype(int)).max() <= 2, name
    res = nls("render", str(run), "--dataparser-transforms", str(transforms))
    assert res.returncode != 0 and "--dataparser-transforms goes with --cameras" in res.stderr
    res = nls("render", str(run), "--cameras", str(path), "-o", str(tmp_path / "x"))
    assert res.returncode != 0 and "give --dataparser-transforms" in res.stderr
