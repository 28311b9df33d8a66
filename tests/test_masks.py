"""Object masks for captures (``masks``): each image composited on the background by its mask, which becomes its
alpha; masks of photos posed by structure from motion turned, cropped and undistorted as their photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)
from tests.test_photos_scene import lego_path_views


def _half(size: int, k: int) -> np.ndarray:
    """(size, size) uint8: white on the left 12 + k columns (which cut the tiny sphere), black elsewhere."""
    m = np.zeros((size, size), np.uint8)
    m[:, :12 + k] = 255
    return m


def _write_masks(folder: Path, names: list[str], size: int, style: str) -> dict[str, np.ndarray]:
    """A mask per image in ``folder``, named by ``style`` (same, added or stem), grey, RGB or 16-bit by turns."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    masks = {}
    for k, name in enumerate(names):
        m = _half(size, k)
        file = {"same": name, "added": f"{name}.png", "stem": Path(name).stem + ".png"}[style]
        if k % 3 == 0:
            iio.imwrite(folder / file, m)
        elif k % 3 == 1:
            iio.imwrite(folder / file, np.repeat(m[..., None], 3, axis=2))
        else:
            iio.imwrite(folder / file, m.astype(np.uint16) * 257)
        masks[name] = m.astype(np.float32) / 255.0
    return masks


@pytest.mark.parametrize("style", ["same", "added", "stem"])
def test_a_capture_with_masks_is_composited_on_the_background_by_them(tmp_path, style, pycolmap):  # noqa: F811
    import imageio.v3 as iio

    from pipeline.scenes.colmap import load_colmap

    made = make_colmap(tmp_path / "cap")
    root = made["root"]
    names = sorted(p.name for p in (root / "images").iterdir())
    masks = _write_masks(root / "cut", names, 32, style)
    plain = load_colmap(root, test_every=0)
    scene = load_colmap(root, test_every=0, masks="cut", background=(0.0, 0.0, 1.0))
    train = scene.splits["train"]
    assert train.alphas is not None and scene.meta["masks"] == str((root / "cut").resolve())
    assert "masks" not in plain.meta
    for i, name in enumerate(train.names):  # (the sphere's renders are RGBA: their alpha times the mask)
        rgba = iio.imread(root / "images" / f"{name}.png").astype(np.float32) / 255.0
        a = rgba[..., 3] * masks[f"{name}.png"]
        assert np.allclose(train.alphas[i, ..., 0].numpy(), a, atol=1e-6)
        want = rgba[..., :3] * a[..., None] + np.array([0.0, 0.0, 1.0]) * (1 - a[..., None])
        assert np.allclose(train.images[i].numpy(), want, atol=1e-6)
        assert a[:, 12 + i:].max() == 0 and a[:, :12 + i].max() > 0  # the mask cut the sphere


def test_missing_or_misfit_masks_are_data_errors_and_an_unused_masks_folder_is_named(tmp_path, capsys,
                                                                                      pycolmap):  # noqa: F811
    import imageio.v3 as iio

    from pipeline.scenes.colmap import load_colmap

    root = make_colmap(tmp_path / "cap")["root"]
    names = sorted(p.name for p in (root / "images").iterdir())
    with pytest.raises(DataError, match="masks folder .*cut not found"):
        load_colmap(root, masks="cut")
    _write_masks(root / "masks", names, 32, "same")
    (root / "masks" / names[3]).unlink()
    with pytest.raises(DataError, match=rf"no mask for 1 of the 10 images: {names[3]} \(for {names[3]} it looked "
                                        rf"for {names[3]}, {names[3]}.png and {names[3]}\)"):
        load_colmap(root, masks="masks")
    iio.imwrite(root / "masks" / names[3], np.zeros((16, 32), np.uint8))
    with pytest.raises(DataError, match=rf"mask .*{names[3]} is 32x16 but its image .*{names[3]} is 32x32 \(WxH\); "
                                        r"a mask must be its image's size, or a whole multiple of it"):
        load_colmap(root, masks="masks", test_every=0)
    big = np.kron(_half(32, 3), np.ones((2, 2), np.uint8))  # a full-size mask of a half-size image (images_2)
    iio.imwrite(root / "masks" / names[3], big)
    scene = load_colmap(root, masks="masks", test_every=0)
    k = scene.splits["train"].names.index(names[3][:-4])
    alpha = iio.imread(root / "images" / names[3])[..., 3].astype(np.float32) / 255.0
    assert np.allclose(scene.splits["train"].alphas[k, ..., 0].numpy(), alpha * _half(32, 3) / 255.0, atol=1e-6)
    load_colmap(root, test_every=0)
    err = capsys.readouterr().err
    assert "holds a masks folder, which is not used; set scene.masks: masks (--set scene.masks=masks)" in err


def test_a_mask_drawn_on_the_stored_pixels_is_turned_and_cropped_as_its_photo():
    from pipeline.scenes.upright_photos import PhotoPlan, shape_mask

    shown = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10)  # as a viewer shows the photo: 10x6 (WxH)
    plan = PhotoPlan({"a.jpg": (10, 6), "b.jpg": (6, 10)}, {"a.jpg": 6}, crops={(10, 6): (6, 6), (6, 10): (6, 6)})
    assert np.array_equal(shape_mask(plan, "a.jpg", shown), shown[:, 2:8])
    stored = np.rot90(shown, 1)  # the stored pixels under orientation 6 (turned a quarter to the left)
    assert np.array_equal(shape_mask(plan, "a.jpg", np.ascontiguousarray(stored)), shown[:, 2:8])
    assert np.array_equal(shape_mask(plan, "b.jpg", shown.T.copy()), shown.T[2:8])
    with pytest.raises(DataError, match=r"the mask of b.jpg is 10x6 \(WxH\), but the photo is 6x10"):
        shape_mask(plan, "b.jpg", shown)


def masked_shoot(tmp_path: Path, monkeypatch, record) -> tuple[Path, list[str], dict[str, np.ndarray]]:
    """``(photos folder, names, masks by name)``: the tiny sphere capture's images as photos with half masks in
    ``masks/``, and structure from motion replaced by a stand-in that 'finds' the capture's model, then runs COLMAP's
    real undistortion; each call is handed to ``record(photos_dir, feature_masks)`` first. The scene cache in
    ``tmp_path``."""
    from pipeline.scenes import sfm

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    photos = tmp_path / "shoot"
    shutil.copytree(cap / "images", photos / "images")
    names = sorted(p.name for p in (photos / "images").iterdir())
    masks = _write_masks(photos / "masks", names, 32, "same")

    def posed(photos_dir: Path, out: Path, *, names, feature_masks=None, **options) -> dict:
        record(photos_dir, feature_masks)
        shutil.copytree(cap / "sparse" / "0", out / "sparse" / "0")
        return sfm.undistort_model(photos_dir, out / "sparse" / "0", out, names=names, progress=False)

    monkeypatch.setattr(sfm, "run_sfm", posed)
    return photos, names, masks


def test_photos_with_masks_get_them_undistorted_with_their_cameras(tmp_path, monkeypatch, capsys,
                                                                   pycolmap):  # noqa: F811
    """Structure from motion (a stand-in that 'finds' the capture's model, then COLMAP's real undistortion):
    the masks are undistorted with each photo's camera, cached, and composited; changing a mask makes them
    again without posing the photos again."""
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    calls: list = []
    photos, names, masks = masked_shoot(tmp_path, monkeypatch, lambda photos_dir, _: calls.append(photos_dir))
    import imageio.v3 as iio

    scene = build_photos(PhotosConfig(path=str(photos), masks="masks", test_every=0), None)()
    train = scene.splits["train"]
    assert len(calls) == 1 and train.alphas is not None and len(train) == len(names)
    from pipeline.report import capture_rows

    assert scene.meta["masks"] == str((photos / "masks").resolve())
    assert ("object masks", scene.meta["masks"]) in capture_rows(scene.meta)
    for i, name in enumerate(train.names):  # pinhole cameras: undistortion leaves the masks as they were
        alpha = iio.imread(photos / "images" / f"{name}.png")[..., 3].astype(np.float32) / 255.0
        assert np.abs(train.alphas[i, ..., 0].numpy() - alpha * masks[f"{name}.png"]).max() < 1e-6, name
    _write_masks(photos / "masks", names[:1], 32, "same")  # the same first mask ...
    iio.imwrite(photos / "masks" / names[1], np.zeros((32, 32), np.uint8))  # ... and an empty second one
    build_photos(PhotosConfig(path=str(photos), masks="masks", test_every=0), None)()  # (made)
    capsys.readouterr()
    again = build_photos(PhotosConfig(path=str(photos), masks="masks", test_every=0), None)()  # (reused)
    assert "damaged" not in capsys.readouterr().err  # the undistorted masks were cached whole
    assert len(calls) == 1  # posed once
    k = again.splits["train"].names.index(Path(names[1]).stem)
    assert float(again.splits["train"].alphas[k].max()) == 0.0


def test_masks_of_real_photos_line_up_with_them_after_sfm(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """25 views of lego (every 2nd of the first 50 of its test path) on a different smooth colour wash each (no
    features to match: a clutter SfM must not use), every other one stored sideways under EXIF orientation 6,
    with lego's alpha as masks drawn on the photos as a viewer shows them. After real structure from motion
    (SIMPLE_RADIAL: the masks go through its undistortion too), each training image composited on white by its
    mask matches that view composited on white before SfM and undistorted with the same camera: above 30 dB
    everywhere. The same masks left out give the washes back (below 15 dB)."""
    import imageio.v3 as iio

    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos
    from tests.test_upright_photos import _save

    lego, doc = lego_path_views()
    frames = doc["frames"]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    shoot = tmp_path / "shoot"
    (shoot / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    white = {}
    for k, f in enumerate(frames):
        rgba = iio.imread(lego / (f["file_path"] + ".png")).astype(np.float32) / 255.0
        h, w = rgba.shape[:2]
        ramp = np.linspace(0.0, 1.0, w)[None, :, None] * rng.uniform(-0.5, 0.5, 3) + rng.uniform(0.25, 0.75, 3)
        wash = np.broadcast_to(ramp, (h, w, 3))
        a = rgba[..., 3:]
        photo = np.round(255 * (rgba[..., :3] * a + wash * (1 - a))).astype(np.uint8)
        white[f"{k:02d}"] = np.round(255 * (rgba[..., :3] * a + (1 - a))).astype(np.uint8)
        _save(shoot / f"{k:02d}.png", photo, 6 if k % 2 else 1)
        iio.imwrite(shoot / "masks" / f"{k:02d}.png", np.round(255 * a[..., 0]).astype(np.uint8))
    scene = build_photos(PhotosConfig(path=str(shoot), masks="masks", test_every=0), None)()
    found = scene.meta["sfm"]
    assert found["registered"] == len(frames) and found["prepared"] == {"turned": 12}, found
    rec = pycolmap.Reconstruction(Path(found["capture"]) / "sparse" / "0")
    by_name = {im.name: im for im in rec.images.values()}
    options = pycolmap.UndistortCameraOptions()
    train = scene.splits["train"]
    unmasked = build_photos(PhotosConfig(path=str(shoot), test_every=0), None)().splits["train"]
    for i, name in enumerate(train.names):
        camera = rec.cameras[by_name[f"{name}.png"].camera_id]
        ref, _ = pycolmap.undistort_image(options, pycolmap.Bitmap.from_array(white[name]), camera)
        ref = np.asarray(ref.to_array()).astype(np.float32) / 255.0
        got = train.images[i].numpy()
        assert got.shape == ref.shape, (got.shape, ref.shape)
        psnr = -10 * np.log10(np.mean((got - ref) ** 2))
        bare = -10 * np.log10(np.mean((unmasked.images[i].numpy() - ref) ** 2))
        assert psnr > 30 and bare < 15, (name, psnr, bare)


def test_masks_keep_the_box_to_the_object_when_sfm_places_points_on_the_floor(tmp_path, monkeypatch,
                                                                               pycolmap):  # noqa: F811
    """25 views of lego over a tiled floor: real structure from motion places sparse points on the floor too,
    and the box they give spans far more than lego; with lego's alpha as masks those points are left out, and
    the box is lego's: its widest side, in lego's units (COLMAP's scale fixed by lego's camera centres), within
    -5% and +25% of the widest side of lego's visual hull, and less than half of the box without masks."""
    import imageio.v3 as iio

    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos
    from scripts.benchmarks.masks import over_floor

    lego, meta = lego_path_views()
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    shoot = tmp_path / "shoot"
    (shoot / "masks").mkdir(parents=True)
    for k, f in enumerate(meta["frames"]):
        rgba = iio.imread(lego / (f["file_path"] + ".png")).astype(np.float32) / 255.0
        iio.imwrite(shoot / f"{k:02d}.png", over_floor(rgba, np.asarray(f["transform_matrix"]), meta["camera_angle_x"]))
        iio.imwrite(shoot / "masks" / f"{k:02d}.png", np.round(255 * rgba[..., 3]).astype(np.uint8))
    bare = build_photos(PhotosConfig(path=str(shoot)), None)()
    masked = build_photos(PhotosConfig(path=str(shoot), masks="masks"), None)()
    points = masked.meta["sparse_points"]
    assert points["off_masks"] > 100 and bare.meta["sparse_points"]["total"] == points["total"] + points["off_masks"]

    def width(scene) -> float:  # the box's widest side in lego's units (the run's frame scales COLMAP's by s)
        box = scene.aabb.numpy().reshape(2, 3)
        return float((box[1] - box[0]).max() / scene.meta["input_frame"]["scale"])

    # lego's own poses fix COLMAP's scale: the cameras' spread in lego units against theirs in COLMAP units
    c2w = np.array([f["transform_matrix"] for f in meta["frames"]])[:, :3, 3]
    spread_lego = np.sqrt(((c2w - c2w.mean(0)) ** 2).sum(1).mean())
    from pipeline.scenes.sfm import model_centres

    _, centres = model_centres(Path(masked.meta["sfm"]["capture"]) / "sparse" / "0")
    to_lego = spread_lego / np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())
    side = _hull_side(lego)  # lego's longest side, 2.3 (its visual hull's)
    got, before = width(masked) * to_lego, width(bare) * to_lego  # (the box is the points' enlarged by 10%)
    assert 0.95 * side < got < 1.25 * side and before > 2 * got, (side, got, before)


def _hull_side(lego: Path, cell: float = 0.05) -> float:
    """The longest side of lego's visual hull, carved from the alpha of its 100 train views in cells of ``cell``
    (an upper bound of the object's, within a cell)."""
    import imageio.v3 as iio
    import json

    meta = json.loads((lego / "transforms_train.json").read_text())
    axis = np.arange(-1.5, 1.5, cell) + cell / 2
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    for f in meta["frames"]:
        alpha = iio.imread(lego / (f["file_path"] + ".png"))[..., 3]
        h, w = alpha.shape
        focal = 0.5 * w / np.tan(0.5 * meta["camera_angle_x"])
        c2w = np.asarray(f["transform_matrix"])
        q = (points - c2w[:3, 3]) @ c2w[:3, :3]  # camera coordinates, Blender axes (looking down -z)
        u, v = focal * q[:, 0] / -q[:, 2] + w / 2, -focal * q[:, 1] / -q[:, 2] + h / 2
        seen = (q[:, 2] < 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        keep = ~seen  # (a point out of this view is not carved by it)
        keep[seen] = alpha[v[seen].astype(int), u[seen].astype(int)] > 127
        points = points[keep]
    return float((points.max(0) - points.min(0)).max() + cell)


def test_a_cut_out_is_read_by_its_alpha_and_an_opaque_colour_mask_by_its_luma(tmp_path):
    import imageio.v3 as iio

    from pipeline.scenes.masks import read_mask

    photo = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = np.zeros((6, 5), np.uint8)
    alpha[1:4, 2:] = 255
    alpha[0, 0] = 128
    iio.imwrite(tmp_path / "cut.png", np.concatenate([photo, alpha[..., None]], -1))  # a background remover's
    assert np.allclose(read_mask(tmp_path / "cut.png"), alpha / 255.0)
    iio.imwrite(tmp_path / "la.png", np.stack([np.full((6, 5), 200, np.uint8), alpha], -1))
    assert np.allclose(read_mask(tmp_path / "la.png"), alpha / 255.0)
    white = np.zeros((6, 5, 4), np.uint8)
    white[..., :3] = alpha[..., None]
    white[..., 3] = 255  # opaque: its grey level is the mask
    iio.imwrite(tmp_path / "opaque.png", white)
    assert np.allclose(read_mask(tmp_path / "opaque.png"), alpha / 255.0, atol=1 / 255)
