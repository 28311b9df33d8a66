"""The ``photos`` scene source: a folder of photos without poses, posed by structure from motion (pycolmap), cached
by the photos' contents, and loaded as a COLMAP capture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)


def _photos(folder: Path, n: int, suffix: str = ".jpg") -> Path:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        iio.imwrite(folder / f"{k:03d}{suffix}", np.full((8, 8, 3), 10 * k, np.uint8))
    return folder


def test_a_folder_of_photos_is_detected_after_captures_and_blender_folders(tmp_path):
    from pipeline.testing import plugin_host

    host = plugin_host()
    assert host.scene_type_for_path(_photos(tmp_path / "three", 3)) == "photos"
    assert host.scene_type_for_path(_photos(tmp_path / "nested" / "images", 4, ".PNG").parent) == "photos"
    assert host.scene_type_for_path(_photos(tmp_path / "two", 2)) is None  # too few to pose
    cap = make_colmap(tmp_path / "cap")["root"]  # photos in images/ beside a model: a capture
    assert host.scene_type_for_path(cap) == "colmap"


def _fake_sfm(cap: Path, calls: list):
    """A stand-in for run_sfm that 'finds' the tiny sphere capture's model: it copies ``cap`` in as the undistorted
    capture, as the real one writes it, and says that it ran."""
    def run(photos: Path, out: Path, *, names, **options) -> dict:
        calls.append(options)
        shutil.copytree(cap / "images", out / "capture" / "images")
        shutil.copytree(cap / "sparse" / "0", out / "capture" / "sparse")
        return {"photos": len(names), "registered": len(names) - 1, "unregistered": [names[-1]], "models": 1,
                "points": 460, "mean_reprojection_error": 0.5, "seconds": {}, **options}
    return run


def test_photos_are_posed_once_and_loaded_as_a_capture(tmp_path, monkeypatch, capsys, pycolmap):  # noqa: F811
    """The plumbing around SfM (a stand-in here; the next test runs the real one): the capture it makes loads
    as the colmap source loads one, with the SfM facts in meta; a second load reuses the cache; a changed
    photo runs SfM again; unregistered photos are named in a warning."""
    from pipeline.scenes import sfm
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    photos = tmp_path / "shoot"
    shutil.copytree(cap / "images", photos)  # the capture's 10 images, no model
    calls: list = []
    monkeypatch.setattr(sfm, "run_sfm", _fake_sfm(cap, calls))
    cfg = PhotosConfig(path=str(photos), matcher="sequential")
    scene = build_photos(cfg, None)()
    assert len(calls) == 1 and calls[0]["matcher"] == "sequential" and calls[0]["camera_model"] == "SIMPLE_RADIAL"
    assert scene.meta["source"] == "photos" and scene.meta["photos"] == str(photos.resolve())
    assert scene.meta["sfm"]["registered"] == 9 and scene.points is not None and len(scene.points) == 400
    assert set(scene.splits) == {"train", "test"} and len(scene.splits["test"]) == 2  # every 8th by name
    assert "left 1 of 10 photos out of its model" in capsys.readouterr().err
    build_photos(cfg, None)()
    assert len(calls) == 1  # cached
    (photos / "000.png").write_bytes((photos / "001.png").read_bytes())
    build_photos(cfg, None)()
    assert len(calls) == 2  # the photos changed: posed again


def test_too_few_photos_no_folder_or_photos_of_two_sizes_are_data_errors(tmp_path):
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    with pytest.raises(DataError, match="2 photo"):
        build_photos(PhotosConfig(path=str(_photos(tmp_path / "two", 2))), None)()
    with pytest.raises(DataError, match="is not a folder"):
        build_photos(PhotosConfig(path=str(tmp_path / "missing")), None)()
    import imageio.v3 as iio

    mixed = _photos(tmp_path / "mixed", 4)
    iio.imwrite(mixed / "003.jpg", np.zeros((8, 6, 3), np.uint8))  # a portrait shot among landscape ones
    with pytest.raises(DataError, match=r"not all one size: 3 are 8x8 \(WxH\), and 003.jpg \(6x8\) is not"):
        build_photos(PhotosConfig(path=str(mixed), mixed_sizes="error"), None)()


def test_structure_from_motion_poses_real_photos_as_they_were_taken(tmp_path, capsys, pycolmap):  # noqa: F811
    """pycolmap's SIFT, matching and mapping on 25 views of lego (every 2nd of the first 50 of its test path,
    3.6 degrees apart, composited on white): every view is registered, and after the similarity that maps lego's camera centres onto the found
    ones, each camera's rotation is within half a degree of lego's."""
    import imageio.v3 as iio

    from pipeline.scenes.sfm import run_sfm

    lego, doc = lego_path_views()
    frames = doc["frames"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for k, f in enumerate(frames):
        iio.imwrite(photos / f"{k:02d}.png", on_white(lego / (f["file_path"] + ".png")))
    out = tmp_path / "sfm"
    out.mkdir()
    found = run_sfm(photos, out, names=sorted(p.name for p in photos.iterdir()), camera_model="SIMPLE_PINHOLE")
    assert found["registered"] == len(frames) and not found["unregistered"], found
    err = capsys.readouterr().err  # each step said, and the mapping's count of registered photos
    assert "structure from motion: matching (exhaustive, 300 pairs)" in err
    assert "structure from motion: mapping 25/25" in err and "photos placed" in err, err
    assert "the largest of 1 model(s) holds 25 of the 25 photos" in err
    assert not (out / "database.db").exists()  # features and matches are not kept
    errors = rotation_errors(pycolmap.Reconstruction(out / "capture" / "sparse"), frames)
    assert max(errors) < 0.5, errors


def lego_path_views() -> tuple[Path, dict]:
    """(lego's folder, its transforms_test.json) with ``frames`` cut to every 2nd of the first 50 views of its test
    path (3.6 degrees apart), for real structure from motion; skips the test when lego is absent."""
    from pipeline.scenes import data_path

    lego, why = data_path("nerf", "lego")
    if lego is None:
        pytest.skip(why)
    doc = json.loads((lego / "transforms_test.json").read_text())
    return lego, {**doc, "frames": doc["frames"][:50:2]}


def on_white(path: Path) -> np.ndarray:
    """(H, W, 3) uint8: the RGBA image at ``path`` composited on white."""
    import imageio.v3 as iio

    rgba = iio.imread(path).astype(np.float32) / 255.0
    return np.round(255 * (rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:])).astype(np.uint8)


def rotation_errors(rec, frames: list[dict]) -> list[float]:
    """Degrees between each camera of the pycolmap reconstruction ``rec`` (images named by their index in
    ``frames``, NeRF frames with ``transform_matrix``) and its true rotation, after the rotation between the two
    worlds that fits every camera best (the chordal mean)."""
    from scipy.spatial.transform import Rotation

    true, got = [], []
    for im in rec.images.values():
        c2w = np.asarray(frames[int(Path(im.name).stem)]["transform_matrix"])
        w2c = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        true.append(c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0]))  # OpenCV camera axes in lego's world
        got.append(np.asarray(w2c.rotation.matrix()).T)
    u, _, vt = np.linalg.svd(sum(g @ t.T for t, g in zip(true, got)))
    world = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    return [float(np.degrees(Rotation.from_matrix((world @ t).T @ g).magnitude())) for t, g in zip(true, got)]


def test_an_interrupt_cancels_the_running_pycolmap_step(pycolmap):  # noqa: F811
    """Ctrl-C while a pycolmap step runs (here a stand-in that works until its token is cancelled, as pycolmap's
    steps do): the token is cancelled, the step ends, and the KeyboardInterrupt goes on up."""
    import _thread
    import threading
    import time

    from pipeline.scenes.sfm import run_cancellable

    seen: dict = {}

    def step(x, *, cancellation_token):
        seen["token"] = cancellation_token
        while not cancellation_token.is_cancelled:  # a property
            time.sleep(0.01)
        seen["stopped"] = True
        raise InterruptedError("Operation cancelled")

    assert run_cancellable(pycolmap, lambda x, *, cancellation_token: x + 1, 41) == 42
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_cancellable(pycolmap, step, 1)
    finally:
        timer.cancel()
    assert seen["stopped"] and seen["token"].is_cancelled


def test_a_run_whose_photos_were_posed_again_differently_is_refused():
    """SfM does not repeat itself exactly: when its cache is gone and the poses found again differ, loading the
    run (resume, eval, render, export) stops with the reason instead of rendering with cameras it was not
    trained with; the same poses pass."""
    from types import SimpleNamespace

    from pipeline.commands.run_loading import _check_cameras_frame
    from pipeline.types import NLSError

    T = np.eye(4).tolist()
    recorded = {"input_frame": {"to_run": T}, "sfm": {"capture": "/cache/scenes/sfm-1"}}
    run = SimpleNamespace(path=Path("runs/shoot"))
    _check_cameras_frame(run, SimpleNamespace(splits={"train": 1}, meta={"input_frame": {"to_run": T}}), recorded)
    moved = (np.eye(4) * 1.01).tolist()
    with pytest.raises(NLSError, match="structure from motion ran again on the photos"):
        _check_cameras_frame(run, SimpleNamespace(splits={"train": 1}, meta={"input_frame": {"to_run": moved}}),
                             recorded)


def test_the_report_overview_says_how_the_photos_were_posed():
    from pipeline.report import capture_rows

    scene = {"sfm": {"photos": 12, "registered": 11, "mean_reprojection_error": 0.447, "seconds": {"a": 1.2, "b": 2.0},
                     "unregistered": ["r_3.png"]}, "sparse_points": {"total": 900, "in_box": 850}}
    assert capture_rows(scene) == [
        ("structure from motion", "11 of 12 photos registered, mean reprojection error 0.45 px, 3 s; left out: r_3.png"),
        ("sparse points", "850 of 900 inside the scene box")]
    assert capture_rows({"sfm": {"photos": "many"}, "sparse_points": []}) == [] and capture_rows({}) == []


def test_a_run_keeps_its_sfm_model_and_reloads_without_the_cache(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """The SfM model is kept in the run folder (kept/model); with the cache gone, eval rebuilds the capture by
    undistorting that model (exactly the same cameras) instead of running SfM, which would not repeat."""
    from pipeline.cli import main
    from pipeline.scenes import sfm

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    photos = tmp_path / "shoot"
    shutil.copytree(cap / "images", photos)

    def posed(photos_dir: Path, out: Path, *, names, **options) -> dict:  # SfM 'finds' the capture's model
        shutil.copytree(cap / "sparse" / "0", out / "sparse" / "0")
        return sfm.undistort_model(photos_dir, out / "sparse" / "0", out, names=names, progress=False)

    monkeypatch.setattr(sfm, "run_sfm", posed)
    runs = tmp_path / "runs"
    assert main(["reconstruct", str(photos), "--steps", "2", "--no-eval", "-q", "--output", str(runs)]) == 0
    [run] = runs.glob("shoot/*/*")
    assert sorted(p.name for p in (run / "kept" / "model").iterdir()) == ["cameras.txt", "images.txt", "points3D.txt"]
    [entry] = (tmp_path / "cache" / "scenes").glob("sfm-*")
    shutil.rmtree(entry)

    def again(*args, **kwargs):
        raise AssertionError("structure from motion ran again")

    monkeypatch.setattr(sfm, "run_sfm", again)
    assert main(["eval", str(run), "-q"]) == 0  # the cameras match scene.json's, or loading would refuse
    assert entry.is_dir()  # made again, from the kept model


def test_photos_of_several_cameras_come_out_of_undistortion_at_one_size(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """``single_camera: false``: 25 views of lego, each with a SIMPLE_RADIAL camera of its own, come out of
    COLMAP's undistortion a few pixels apart in size (each camera's distortion sets its own), and a split loads
    at one size. Each is cropped to the smallest, centred, with its principal point and keypoints moved alike:
    the scene loads, and the sparse points reproject onto their keypoints in the cropped capture within a pixel
    on average (shifted by the crop, they would miss by its offset)."""
    import imageio.v3 as iio

    from pipeline.scenes.sfm import undistorted_fits
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    lego, doc = lego_path_views()
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p").mkdir()
    for k, f in enumerate(doc["frames"]):
        iio.imwrite(tmp_path / "p" / f"{k:02d}.png", on_white(lego / (f["file_path"] + ".png")))
    scene = build_photos(PhotosConfig(path=str(tmp_path / "p"), single_camera=False), None)()
    entry = Path(scene.meta["sfm"]["capture"])
    fits = undistorted_fits(pycolmap, pycolmap.Reconstruction(entry / "sparse" / "0"))
    assert len(fits) == 25 and len({f.size for f in fits.values()}) == 1
    assert {f.scale for f in fits.values()} == {1.0} and max(f.box[0] for f in fits.values()) > 0  # cropped alone
    w, h = next(iter(fits.values())).size
    assert {(s.cameras.width, s.cameras.height) for s in scene.splits.values()} == {(w, h)}
    rec = pycolmap.Reconstruction(entry / "capture" / "sparse")
    errors = [np.linalg.norm(np.asarray(im.project_point(rec.points3D[p.point3D_id].xyz)) - p.xy)
              for im in rec.images.values() for p in im.points2D if p.has_point3D()]
    assert np.mean(errors) < 1.0, np.mean(errors)


def test_photos_of_two_cameras_of_other_sizes_are_posed_and_fitted_to_one_size(tmp_path, monkeypatch, capsys,
                                                                              pycolmap):  # noqa: F811
    """25 views of lego from two "cameras": every other view whole (400x400), the rest its centred 360x270 (a
    narrower lens of the same focal length in pixels, 555.6), each with its object mask cut alike. Posed with a
    camera per size, every view is registered and each camera's rotation is within half a degree of lego's;
    the undistorted photos are fitted to the smallest width and height (about 360x270): the whole views scaled
    by about 0.9 (the fit's scale), so their focal length in pixels is that scale x 555.6 and the others'
    unchanged, each within 4% (SfM's own focal lengths came out 1.3-2.2% short in four runs, on both cameras
    alike), and their ratio within 0.5% of the scale (0.01-0.05% in those runs; unscaled, 11% off);
    the sparse points reproject onto their fitted keypoints within a pixel on average; and the masks, fitted
    alike, cover lego's pixels in the fitted photos (intersection over union at least 0.9)."""
    import imageio.v3 as iio

    from pipeline.report import capture_rows
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    lego, doc = lego_path_views()
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p" / "masks").mkdir(parents=True)
    for k, f in enumerate(doc["frames"]):
        rgba = iio.imread(lego / (f["file_path"] + ".png"))
        photo, mask = on_white(lego / (f["file_path"] + ".png")), rgba[..., 3]
        if k % 2:
            photo, mask = photo[65:335, 20:380], mask[65:335, 20:380]
        iio.imwrite(tmp_path / "p" / f"{k:02d}.png", photo)
        iio.imwrite(tmp_path / "p" / "masks" / f"{k:02d}.png", mask)
    scene = build_photos(PhotosConfig(path=str(tmp_path / "p"), masks="masks", test_every=0), None)()
    err = capsys.readouterr().err
    assert "photos of 2 sizes (13 of 400x400, 12 of 360x270): each size is posed with a camera of its own" in err
    sfm = scene.meta["sfm"]
    assert sfm["registered"] == 25 and sfm["cameras"] == 2 and sfm["prepared"] == {
        "cameras": [[400, 400, None, 13], [360, 270, None, 12]]}, sfm
    assert sfm["fitted"]["cameras"] == 2 and sfm["fitted"]["scaled"] == 1, sfm
    w, h = sfm["fitted"]["size"]
    assert abs(w - 360) <= 6 and abs(h - 270) <= 6, (w, h)
    rows = dict(capture_rows(json.loads(json.dumps(scene.meta))))
    assert f"a camera for each size and lens (13 of 400x400, 12 of 360x270); undistorted photos of 2 cameras " \
           f"fitted to {w}x{h} (1 scaled)" in rows["structure from motion"], rows

    rec = pycolmap.Reconstruction(Path(sfm["capture"]) / "capture" / "sparse")
    errors = rotation_errors(rec, doc["frames"])
    assert max(errors) < 0.5, errors
    focal = 0.5 * 400 / np.tan(0.5 * doc["camera_angle_x"])
    from pipeline.scenes.sfm import undistorted_fits

    model = pycolmap.Reconstruction(Path(sfm["capture"]) / "sparse" / "0")
    fits = undistorted_fits(pycolmap, model)
    scale = fits[model.images[next(i for i, im in model.images.items() if im.name == "00.png")].camera_id].scale
    assert abs(scale - 0.9) < 0.02, scale  # (from each camera's undistorted size, a few pixels from its photos')
    found = {0: set(), 1: set()}  # the focal lengths of the whole views' camera and of the cut ones'
    for im in rec.images.values():
        cam = rec.cameras[im.camera_id]
        assert (cam.width, cam.height) == (w, h)
        found[int(Path(im.name).stem) % 2].add(float(cam.params[0]))
    (whole,), (cut,) = found[0], found[1]  # (one camera each)
    assert abs(whole / (focal * scale) - 1) < 0.04 and abs(cut / focal - 1) < 0.04, (whole, cut, focal, scale)
    assert abs(whole / cut / scale - 1) < 0.005, (whole, cut, scale)  # (SfM's focal error is shared)
    reprojected = [np.linalg.norm(np.asarray(im.project_point(rec.points3D[p.point3D_id].xyz)) - p.xy)
                   for im in rec.images.values() for p in im.points2D if p.has_point3D()]
    assert np.mean(reprojected) < 1.0, np.mean(reprojected)

    train = scene.splits["train"]
    ious = []
    for image, alpha in zip(train.images.numpy(), train.alphas.numpy()):
        lego_pixels = np.abs(image - 1.0).max(-1) > 0.1  # (on white: lego's pixels are those that are not)
        on = alpha[..., 0] > 0.5
        ious.append((on & lego_pixels).sum() / (on | lego_pixels).sum())
    assert min(ious) >= 0.9, ious


def test_photos_of_two_lenses_of_one_size_are_posed_with_a_camera_each(tmp_path, monkeypatch, capsys,
                                                                       pycolmap):  # noqa: F811
    """A phone's main and telephoto lenses: 25 views of lego at 400x400, every other one its centred 300x300
    scaled up to 400x400 (a focal length 4/3 as long), the EXIF focal lengths 26 and 34.7 mm. By their EXIF
    tags they get a camera each: all 25 are registered, each camera's rotation within half a degree of lego's,
    and each focal length within 1% of the truth (555.6 and 740.7 px). One shared camera (measured once, not
    asserted: SfM's result varies) made 849 px of both and rotations up to 3.5 degrees off."""
    from PIL import Image

    from pipeline.report import capture_rows
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    lego, doc = lego_path_views()
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p").mkdir()
    for k, f in enumerate(doc["frames"]):
        photo, mm = Image.fromarray(on_white(lego / (f["file_path"] + ".png"))), 26.0
        if k % 2:
            photo, mm = photo.crop((50, 50, 350, 350)).resize((400, 400), Image.Resampling.LANCZOS), 34.7
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x920A] = mm  # FocalLength, in the Exif sub-IFD
        photo.save(tmp_path / "p" / f"{k:02d}.jpg", quality=95, exif=exif)
    scene = build_photos(PhotosConfig(path=str(tmp_path / "p"), test_every=0), None)()
    assert ("photos taken with 2 lenses or sizes by their EXIF focal length (13 at 26 mm, 12 at 34.7 mm): each is "
            "posed with a camera of its own") in capsys.readouterr().err
    sfm = scene.meta["sfm"]
    assert sfm["registered"] == 25 and sfm["cameras"] == 2, sfm
    assert sfm["prepared"] == {"cameras": [[400, 400, "26 mm", 13], [400, 400, "34.7 mm", 12]]}, sfm
    rows = dict(capture_rows(json.loads(json.dumps(scene.meta))))
    assert "a camera for each size and lens (13 of 400x400 at 26 mm, 12 of 400x400 at 34.7 mm)" in rows[
        "structure from motion"], rows
    rec = pycolmap.Reconstruction(Path(sfm["capture"]) / "capture" / "sparse")
    errors = rotation_errors(rec, doc["frames"])
    assert max(errors) < 0.5, errors
    focal = 0.5 * 400 / np.tan(0.5 * doc["camera_angle_x"])
    for im in rec.images.values():
        want = focal * (4 / 3 if int(Path(im.name).stem) % 2 else 1.0)
        assert abs(rec.cameras[im.camera_id].params[0] / want - 1) < 0.01, (im.name, want)
