"""Photos turned upright by their EXIF orientation and cropped to one size when portrait and landscape shots are
mixed, before structure from motion (:mod:`pipeline.scenes.upright_photos`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.types import DataError
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)
from tests.test_photos_scene import lego_path_views, on_white, rotation_errors

#: how a viewer shows stored pixels, by EXIF orientation, from the tag's definition (row 0 / column 0 of the
#: stored image are the shown image's: 3 bottom / right, 6 right side / top, 8 left side / bottom, 2 top / right)
SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, -1),
         8: lambda a: np.rot90(a, 1)}
#: the stored pixels that show as ``a`` under each orientation (the inverse of SHOWN)
STORED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 6: lambda a: np.rot90(a, 1),
          8: lambda a: np.rot90(a, -1)}


def _save(path: Path, shown: np.ndarray, orientation: int = 1, exif_ifd: dict | None = None) -> None:
    """Save ``shown`` (H, W, 3) uint8 as a viewer should show it, stored under EXIF ``orientation``; ``exif_ifd``:
    tags of the Exif sub-IFD by number (``{0xA405: 26}``)."""
    from PIL import Image

    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    for tag, value in (exif_ifd or {}).items():
        exif.get_ifd(0x8769)[int(tag)] = value
    extra = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(np.ascontiguousarray(STORED[orientation](shown))).save(path, exif=exif, **extra)


#: a phone's lens tags: 35 mm equivalent 26 mm, focal length 4.2 mm, and when the photo was taken
LENS = {0xA405: 26, 0x920A: 4.2, 0x9003: "2026:12:06 10:00:00"}


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_orientation_table_matches_the_tags_definition():
    """SHOWN, written from the tag's words, against a hand-made case: under orientation 6 the stored image's first
    row is the shown image's right column, top to bottom, and its first column the shown top row, right to left."""
    stored = np.arange(6).reshape(2, 3)  # [[0 1 2], [3 4 5]]
    shown = SHOWN[6](stored)
    assert shown.tolist() == [[3, 0], [4, 1], [5, 2]]
    assert [STORED[o](SHOWN[o](stored)).tolist() for o in SHOWN] == [stored.tolist()] * len(SHOWN)


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_a_photo_is_copied_as_a_viewer_shows_it(tmp_path, orientation):
    from pipeline.scenes.upright_photos import plan_photos, write_copies

    shown = _pattern(6, 10)
    _save(tmp_path / "a.png", shown, orientation)
    _save(tmp_path / "b.png", _pattern(6, 10, 1))
    plan = plan_photos(tmp_path, ["a.png", "b.png"])
    assert plan.turned == {"a.png": orientation} and plan.sizes == {"a.png": (10, 6), "b.png": (10, 6)}
    assert not plan.crops
    write_copies(tmp_path, ["a.png", "b.png"], tmp_path / "out", plan, progress=False)
    from PIL import Image

    with Image.open(tmp_path / "out" / "a.png") as im:
        assert np.array_equal(np.asarray(im), shown) and 0x0112 not in im.getexif()
    assert not plan_photos(tmp_path, ["a.png", "b.png"], upright=False).turned  # as stored (sizes may differ)


def test_photos_without_tags_of_one_size_need_no_copies(tmp_path):
    from pipeline.scenes.upright_photos import plan_photos

    for k in range(3):
        _save(tmp_path / f"{k}.jpg", _pattern(6, 8, k))
    plan = plan_photos(tmp_path, ["0.jpg", "1.jpg", "2.jpg"])
    assert not plan.needed and plan.facts() == {}


def test_portrait_and_landscape_shots_are_cropped_to_their_centred_square(tmp_path):
    """A phone's portrait shots stored sideways (orientation 6), one turned by the phone itself, among landscape
    ones: upright they are 6x10 and 10x6, so each is cropped to its centred 6x6; the pixels are the shown
    photo's centre."""
    from PIL import Image

    from pipeline.scenes.upright_photos import plan_photos, write_copies

    land, tall, turned = _pattern(6, 10, 0), _pattern(10, 6, 1), _pattern(10, 6, 2)
    _save(tmp_path / "a.png", land)
    _save(tmp_path / "b.png", tall, 6)
    _save(tmp_path / "c.png", turned)
    names = ["a.png", "b.png", "c.png"]
    plan = plan_photos(tmp_path, names)
    assert plan.crops == {(10, 6): (6, 6), (6, 10): (6, 6)} and plan.turned == {"b.png": 6}
    assert plan.facts() == {"turned": 1, "crop": [6, 6]} and plan.cameras() == [names]  # one camera
    write_copies(tmp_path, names, tmp_path / "out", plan, progress=False)
    got = {n: np.asarray(Image.open(tmp_path / "out" / n)) for n in names}
    assert np.array_equal(got["a.png"], land[:, 2:8]) and np.array_equal(got["b.png"], tall[2:8])
    assert np.array_equal(got["c.png"], turned[2:8])
    with pytest.raises(DataError, match=r"not all one size: 2 are 6x10 \(WxH\), and a.png \(10x6\) is not; set "
                                        r"mixed_orientation: crop to crop every such photo to its centred square"):
        plan_photos(tmp_path, names, mixed_orientation="error")


def test_photos_of_several_sizes_are_a_camera_each_or_refused_by_name(tmp_path):
    """Photos of 10x6 and 8x6 (two cameras) are grouped by size, a camera for each, the groups in the order of
    their first photo; with ``mixed_sizes: error`` they are refused, naming the odd one. A pair held two ways
    among them is cropped as before, and the crop's size joins a group of that size."""
    from pipeline.scenes.upright_photos import plan_photos

    for k, (h, w) in enumerate([(6, 8), (6, 10), (6, 10)]):
        _save(tmp_path / f"{k}.png", _pattern(h, w, k))
    names = ["0.png", "1.png", "2.png"]
    plan = plan_photos(tmp_path, names)
    assert plan.cameras() == [["0.png"], ["1.png", "2.png"]] and not plan.needed  # (no copies: SfM reads them)
    assert plan.facts() == {"cameras": [[8, 6, None, 1], [10, 6, None, 2]]}
    with pytest.raises(DataError, match=r"not all one size: 2 are 10x6 \(WxH\), and 0.png \(8x6\) is not; set "
                                        r"mixed_sizes: cameras to pose each size with a camera of its own, or crop "
                                        r"or scale them to one size, or leave them out"):
        plan_photos(tmp_path, names, mixed_sizes="error")
    _save(tmp_path / "3.png", _pattern(10, 6, 3))  # a portrait shot of the 10x6 camera: 10x6 and 6x10 -> 6x6
    _save(tmp_path / "4.png", _pattern(6, 6, 4))  # a third camera, square, of that size
    plan = plan_photos(tmp_path, [*names, "3.png", "4.png"])
    assert plan.crops == {(10, 6): (6, 6), (6, 10): (6, 6)}
    assert plan.cameras() == [["0.png"], ["1.png", "2.png", "3.png", "4.png"]]
    assert plan.facts() == {"crop": [6, 6], "cameras": [[8, 6, None, 1], [6, 6, None, 4]]}


def test_a_crop_keeps_the_focal_length_in_pixels_its_exif_tags_imply(tmp_path):
    """The 35 mm equivalent scales with the diagonal and the lens's focal length with the longer side, so both
    give the uncropped photo's focal length in pixels; the other tags stay."""
    from PIL import Image

    from pipeline.scenes.upright_photos import plan_photos, write_copies

    _save(tmp_path / "a.jpg", _pattern(300, 400), 1, LENS)
    _save(tmp_path / "b.jpg", _pattern(400, 300, 1), 6, LENS)
    plan = plan_photos(tmp_path, ["a.jpg", "b.jpg"])
    write_copies(tmp_path, ["a.jpg", "b.jpg"], tmp_path / "out", plan, progress=False)
    for name in ("a.jpg", "b.jpg"):
        with Image.open(tmp_path / "out" / name) as im:
            sub = im.getexif().get_ifd(0x8769)
            assert im.size == (300, 300) and 0x0112 not in im.getexif()
            assert sub[0xA405] == round(26 * 500 / 300 / 2 ** 0.5) == 31
            assert float(sub[0x920A]) == pytest.approx(4.2 * 400 / 300) and sub[0x9003] == LENS[0x9003]


def test_colmap_takes_the_same_first_focal_length_from_a_cropped_copy(tmp_path, pycolmap):  # noqa: F811
    """COLMAP's own focal length prior from the EXIF tags, on the photo upright and on its cropped copy: the same
    within the rounding of the 35 mm tag (an integer)."""
    from pipeline.scenes.upright_photos import plan_photos, write_copies

    (tmp_path / "one").mkdir()
    _save(tmp_path / "one" / "a.jpg", _pattern(400, 300), 6, LENS)
    _save(tmp_path / "b.jpg", _pattern(300, 400), 1, LENS)
    _save(tmp_path / "c.jpg", _pattern(400, 300, 1), 1, LENS)
    plan = plan_photos(tmp_path, ["b.jpg", "c.jpg"])
    write_copies(tmp_path, ["b.jpg", "c.jpg"], tmp_path / "two", plan, progress=False)
    focal = {}
    for folder in ("one", "two"):
        db = tmp_path / f"{folder}.db"
        pycolmap.extract_features(db, tmp_path / folder, camera_mode=pycolmap.CameraMode.PER_IMAGE)
        with pycolmap.Database.open(db) as base:
            focal[folder] = [(c.width, c.height, c.params[0]) for c in base.read_all_cameras()]
    [(w, h, f)] = focal["one"]
    assert (w, h) == (400, 300)  # COLMAP reads the pixels as stored
    assert [c[:2] for c in focal["two"]] == [(300, 300)] * 2
    assert all(abs(c[2] / f - 1) < 0.02 for c in focal["two"]), (f, focal["two"])


def test_photos_are_posed_from_upright_copies_that_are_deleted_after(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """The photos source hands SfM upright copies (a stand-in SfM here) in the cache entry, deletes them once the
    capture is undistorted, and says what it did in scene.json and the report; ``upright: false`` poses the
    pixels as stored, in another cache entry."""
    import imageio.v3 as iio

    from pipeline.report import capture_rows
    from pipeline.scenes import sfm
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos
    from tests.test_photos_scene import _fake_sfm

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    cap = make_colmap(tmp_path / "cap")["root"]
    photos = tmp_path / "shoot"
    shutil.copytree(cap / "images", photos)
    shown = iio.imread(photos / "001.png")
    _save(photos / "001.png", shown, 3)  # stored upside down, tagged to be shown upright
    seen: list = []
    fake = _fake_sfm(cap, [])

    def run(folder: Path, out: Path, *, names, **options) -> dict:
        seen.append((folder, iio.imread(folder / "001.png")))
        return fake(folder, out, names=names, **options)

    monkeypatch.setattr(sfm, "run_sfm", run)
    scene = build_photos(PhotosConfig(path=str(photos)), None)()
    [(folder, pixels)] = seen
    assert np.array_equal(pixels, shown) and folder.parent.parent == tmp_path / "cache" / "scenes"
    assert not folder.exists() and not (Path(scene.meta["sfm"]["capture"]) / "upright").exists()
    assert scene.meta["sfm"]["prepared"] == {"turned": 1}
    assert "1 turned upright by their EXIF orientation" in capture_rows(json.loads(json.dumps(scene.meta)))[0][1]
    build_photos(PhotosConfig(path=str(photos), upright=False), None)()
    assert len(seen) == 2 and seen[1][0] == photos and np.array_equal(seen[1][1], shown[::-1, ::-1])


def test_a_kept_model_of_the_photos_as_stored_is_refused_with_the_way_to_load_it(tmp_path, pycolmap):  # noqa: F811
    from pipeline.scenes.upright_photos import PhotoPlan, check_model_sizes

    made = make_colmap(tmp_path / "cap")
    model = made["root"] / "sparse" / "0"
    names = sorted(p.name for p in (made["root"] / "images").iterdir())
    from PIL import Image

    with Image.open(made["root"] / "images" / names[0]) as im:
        w, h = im.size
    check_model_sizes(model, PhotoPlan({n: (w, h) for n in names}))  # as made: passes
    with pytest.raises(DataError, match=rf"camera for \d+.png is {w}x{h}, but the photo is {h - 2}x{h - 2} .* set "
                                        r"upright: false \(and mixed_orientation: error\) to load it"):
        check_model_sizes(model, PhotoPlan({n: (w, h) for n in names}, crops={(w, h): (h - 2, h - 2)}))


def test_phone_photos_held_both_ways_are_posed_upright_by_real_sfm(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """25 views of lego (every 2nd of the first 50 of its test path), cropped from S x S to landscape shots of
    S x 3S/4 and portrait ones of 3S/4 x S by turns; each portrait shot is stored sideways with orientation 6 or 8,
    as a phone stores it, so every file is S x 3S/4. Upright and cropped to 3S/4 square, every view is registered
    with one camera, each rotation is within half a degree of lego's, and every camera of the loaded scene is upright
    (its up within 60 degrees of the scene's). Posed as stored (``upright: false``), that last check fails: the
    portrait shots' cameras lie on their side, and the scene's up found from all of them is off too."""
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    lego, doc = lego_path_views()
    frames = doc["frames"]
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "phone"
    photos.mkdir()
    for k, f in enumerate(frames):
        view = on_white(lego / (f["file_path"] + ".png"))
        side = len(view)
        if k % 2 == 0:
            _save(photos / f"{k:02d}.jpg", view[side // 8:side - side // 8])
        else:
            _save(photos / f"{k:02d}.jpg", view[:, side // 8:side - side // 8], 6 if k % 4 == 1 else 8)
    scene = build_photos(PhotosConfig(path=str(photos), camera_model="SIMPLE_PINHOLE"), None)()
    sideways = build_photos(PhotosConfig(path=str(photos), camera_model="SIMPLE_PINHOLE", upright=False), None)()
    found = scene.meta["sfm"]
    short = side - 2 * (side // 8)
    assert found["registered"] == len(frames) and found["prepared"] == {"turned": 12, "crop": [short, short]}, found
    rec = pycolmap.Reconstruction(Path(found["capture"]) / "capture" / "sparse")
    assert len(rec.cameras) == 1 and [(c.width, c.height) for c in rec.cameras.values()] == [(short, short)]
    errors = rotation_errors(rec, frames)
    assert max(errors) < 0.5, errors
    ups = np.concatenate([s.cameras.c2w[:, 2, 1].numpy() for s in scene.splits.values()])  # z of each camera's up
    assert len(ups) == len(frames) and ups.min() > 0.5, ups
    assert sideways.meta["sfm"]["registered"] == len(frames)
    ups = np.concatenate([s.cameras.c2w[:, 2, 1].numpy() for s in sideways.splits.values()])
    assert ups.min() < 0.5, ups  # the same check fails: some cameras lie on their side or worse


def _heic(path: Path, shown: np.ndarray) -> None:
    """Save ``shown`` (H, W, 3) uint8 as a HEIC photo (pillow-heif; quality 95)."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed (the heic extra, also in "
                                                            "the test extra): HEIC photos cannot be written")
    pillow_heif.register_heif_opener()
    from PIL import Image

    Image.fromarray(shown).save(path, quality=95)


def test_heic_photos_are_posed_from_jpeg_copies_named_by_their_stem(tmp_path):
    from PIL import Image

    from pipeline.scenes.upright_photos import plan_photos, write_copies

    shown = np.kron(_pattern(6, 8), np.ones((4, 4, 1), np.uint8))  # blocks of 4 px: little lost to either codec
    _heic(tmp_path / "IMG_1.HEIC", shown)
    _save(tmp_path / "IMG_2.jpg", np.kron(_pattern(6, 8, 1), np.ones((4, 4, 1), np.uint8)))
    names = ["IMG_1.HEIC", "IMG_2.jpg"]
    plan = plan_photos(tmp_path, names)
    assert plan.renamed == {"IMG_1.HEIC": "IMG_1.jpg"} and plan.posed_names(names) == ["IMG_1.jpg", "IMG_2.jpg"]
    assert plan.facts() == {"converted": 1} and plan.sizes["IMG_1.HEIC"] == (32, 24)
    write_copies(tmp_path, names, tmp_path / "out", plan, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["IMG_1.jpg", "IMG_2.jpg"]
    with Image.open(tmp_path / "out" / "IMG_1.jpg") as im:
        assert im.format == "JPEG" and np.abs(np.asarray(im).astype(int) - shown).mean() < 4
    _save(tmp_path / "IMG_1.jpg", shown)
    with pytest.raises(DataError, match="IMG_1.jpg and IMG_1.HEIC would both be posed as IMG_1.jpg"):
        plan_photos(tmp_path, ["IMG_1.HEIC", "IMG_1.jpg"])


def test_a_heic_turned_by_its_heif_transform_is_turned_once(tmp_path):
    """A phone's portrait HEIC stores landscape pixels and an ``irot`` transform (iOS writes the EXIF orientation
    too). pillow-heif writes one so when given EXIF orientation 6, and on reading applies it and reports the
    EXIF orientation as 1: the photo is planned at its shown size, not turned again, and its copy is the shown
    photo (turned a quarter to the right from the stored pixels)."""
    from PIL import Image

    from pipeline.scenes.upright_photos import plan_photos, write_copies

    _heic(tmp_path / "probe.heic", np.zeros((8, 8, 3), np.uint8))  # (skips without pillow-heif)
    stored = np.kron(_pattern(6, 8), np.ones((4, 4, 1), np.uint8))  # 32x24 (WxH), landscape as the sensor
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "IMG_1.HEIC", exif=exif.tobytes(), quality=95)
    assert b"irot" in (tmp_path / "IMG_1.HEIC").read_bytes()
    plan = plan_photos(tmp_path, ["IMG_1.HEIC"])
    assert plan.sizes == {"IMG_1.HEIC": (24, 32)} and not plan.turned  # (shown: portrait; no EXIF turn left)
    write_copies(tmp_path, ["IMG_1.HEIC"], tmp_path / "out", plan, progress=False)
    shown = np.rot90(stored, -1)  # orientation 6: the stored pixels turned a quarter clockwise
    with Image.open(tmp_path / "out" / "IMG_1.jpg") as im:
        assert im.size == (24, 32) and np.abs(np.asarray(im).astype(int) - shown).mean() < 4


def test_heic_without_pillow_heif_is_a_data_error_naming_the_extra(tmp_path, monkeypatch):
    import sys

    from pipeline.scenes.upright_photos import plan_photos

    (tmp_path / "a.heic").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    with pytest.raises(DataError, match=r"a.heic: reading HEIC/HEIF photos needs pillow-heif, which is not installed; "
                                        r"pip install 'neural-level-sets\[heic\]'"):
        plan_photos(tmp_path, ["a.heic"])


def test_heic_photos_of_lego_are_posed_by_real_sfm(tmp_path, monkeypatch, pycolmap):  # noqa: F811
    """25 views of lego saved as HEIC (as an iPhone saves them): all registered, under their stems."""
    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos

    lego, doc = lego_path_views()
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "phone").mkdir()
    for k, f in enumerate(doc["frames"]):
        _heic(tmp_path / "phone" / f"{k:02d}.heic", on_white(lego / (f["file_path"] + ".png")))
    scene = build_photos(PhotosConfig(path=str(tmp_path / "phone"), camera_model="SIMPLE_PINHOLE"), None)()
    found = scene.meta["sfm"]
    assert found["registered"] == 25 and found["prepared"] == {"converted": 25} and not found["unregistered"], found
    assert sorted(n for s in scene.splits.values() for n in s.names) == [f"{k:02d}" for k in range(25)]
    from pipeline.report import capture_rows

    assert "25 HEIC posed from JPEG copies" in capture_rows(json.loads(json.dumps(scene.meta)))[0][1]


def test_photos_that_are_not_images_are_named_in_one_error(tmp_path):
    """An empty file and a text file among the photos: one DataError names both, before anything runs."""
    from pipeline.scenes.upright_photos import plan_photos

    for k in range(3):
        _save(tmp_path / f"{k}.png", _pattern(6, 10, k))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a photo")
    names = ["0.png", "1.png", "2.png", "empty.jpg", "notes.jpg"]
    with pytest.raises(DataError, match=r"2 of the 5 photos cannot be read as images \(empty, damaged or not a "
                                        r"photo\): empty.jpg \(UnidentifiedImageError: .*\); notes.jpg .*remove "
                                        r"them from the folder or replace them"):
        plan_photos(tmp_path, names)


def test_a_few_small_photos_that_would_shrink_the_rest_are_named(tmp_path, capsys):
    """Three photos of 20x12 and one of 4x3: fitted to 4x3, the three would keep a fifth of their width, so a
    warning names the small one and says what to do; with the sizes the other way round (one large, three
    small) only the fitting is said."""
    from pipeline.scenes.upright_photos import plan_photos
    from plugins.scenes.sources import _warn_sizes

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for k, (h, w) in enumerate([(12, 20), (12, 20), (12, 20), (3, 4)]):
        _save(tmp_path / "a" / f"{k}.png", _pattern(h, w, k))
    _warn_sizes(tmp_path / "a", plan_photos(tmp_path / "a", [f"{k}.png" for k in range(4)]), "photos", True)
    err = capsys.readouterr().err
    assert "photos of 2 sizes (3 of 20x12, 1 of 4x3): each size is posed with a camera of its own" in err
    assert ("the 1 smallest of the photos (3.png) set the size the photos are fitted to, about 4x3 (known after "
            "undistortion): 3 of the 4 lose more than "
            "half their width and height; remove the small ones from the folder") in err, err
    for k, (h, w) in enumerate([(12, 20), (3, 4), (3, 4), (3, 4)]):
        _save(tmp_path / "b" / f"{k}.png", _pattern(h, w, k))
    _warn_sizes(tmp_path / "b", plan_photos(tmp_path / "b", [f"{k}.png" for k in range(4)]), "photos", False)
    err = capsys.readouterr().err
    assert "photos of 2 sizes (1 of 20x12, 3 of 4x3): each is posed with its own camera" in err
    assert "set the size" not in err


def test_a_photo_without_focal_tags_takes_the_one_lens_of_its_size(tmp_path, capsys):
    """Photos of one size, all tagged with one lens but two that lost their EXIF in an edit, and a photo of another
    size without tags: the two share the tagged photos' camera (said in a warning and in the facts); the other
    size has no tagged photo to go by and keeps its own camera."""
    from pipeline.scenes.upright_photos import plan_photos
    from plugins.scenes.sources import _warn_sizes

    for k, ifd in enumerate([{0x920A: 6.86, 0xA405: 24}, {}, {0x920A: 6.86, 0xA405: 24}, {}]):
        _save(tmp_path / f"{k}.jpg", _pattern(6, 10, k), exif_ifd=ifd)
    _save(tmp_path / "4.jpg", _pattern(8, 10, 4))
    plan = plan_photos(tmp_path, [f"{k}.jpg" for k in range(5)])
    assert plan.assumed == ["1.jpg", "3.jpg"] and plan.lenses["3.jpg"] == "6.9 mm (24 mm equiv.)"
    assert plan.cameras() == [["0.jpg", "1.jpg", "2.jpg", "3.jpg"], ["4.jpg"]]
    assert plan.facts()["lens_assumed"] == 2
    _warn_sizes(tmp_path, plan, "photos", True)
    assert "2 of the photos have no EXIF focal length (1.jpg, 3.jpg); each is posed with the camera of the other " \
           "photos of its size" in capsys.readouterr().err


def test_lenses_are_told_apart_by_focal_length_and_its_35mm_equivalent(tmp_path):
    """A phone's main lens (6.9 mm, 24 mm equivalent), its 2x digital zoom (the same lens, 48 mm equivalent) and
    a photo without focal tags, all of one size: three cameras, in the order of their first photo."""
    from pipeline.scenes.upright_photos import plan_photos

    tags = [{0x920A: 6.86, 0xA405: 24}, {0x920A: 6.86, 0xA405: 48}, {0x920A: 6.86, 0xA405: 24}, {}]
    for k, ifd in enumerate(tags):
        _save(tmp_path / f"{k}.jpg", _pattern(6, 10, k), exif_ifd=ifd)
    plan = plan_photos(tmp_path, [f"{k}.jpg" for k in range(4)])
    assert plan.lenses == {"0.jpg": "6.9 mm (24 mm equiv.)", "1.jpg": "6.9 mm (48 mm equiv.)",
                           "2.jpg": "6.9 mm (24 mm equiv.)"}
    assert plan.cameras() == [["0.jpg", "2.jpg"], ["1.jpg"], ["3.jpg"]] and plan.size_count() == 1
    assert plan.facts() == {"cameras": [[10, 6, "6.9 mm (24 mm equiv.)", 2], [10, 6, "6.9 mm (48 mm equiv.)", 1],
                                        [10, 6, None, 1]]}


def test_photos_of_several_exposures_are_read_from_exif_and_warned_about(tmp_path, capsys):
    """Exposure time x ISO / f-number^2 by each photo's EXIF tags: photos that let in 8x the light of others are
    warned about with both photos' settings, and the SfM cache key (facts) does not change; a spread within
    EXPOSURE_SPREAD, or a photo without tags, gives no warning."""
    from PIL.TiffImagePlugin import IFDRational

    from pipeline.scenes.upright_photos import plan_photos
    from plugins.scenes.sources import warn_exposure_spread

    settings = [(IFDRational(1, 60), IFDRational(18, 10), 100), (IFDRational(1, 120), IFDRational(18, 10), 100),
                (IFDRational(1, 30), IFDRational(18, 10), 200)]
    for k, (t, f, iso) in enumerate(settings):
        _save(tmp_path / f"{k}.jpg", _pattern(6, 10, k), exif_ifd={0x829A: t, 0x829D: f, 0x8827: iso})
    _save(tmp_path / "3.jpg", _pattern(6, 10, 3))
    plan = plan_photos(tmp_path, [f"{k}.jpg" for k in range(4)])
    assert sorted(plan.exposures) == ["0.jpg", "1.jpg", "2.jpg"]
    assert plan.exposures["1.jpg"][1] == "1/120 s, f/1.8, ISO 100"
    ratio, dark, bright = plan.exposure_spread()
    assert (dark, bright) == ("1.jpg", "2.jpg") and ratio == pytest.approx(8.0)
    assert plan.facts() == {}
    warn_exposure_spread(tmp_path, plan, "photos")
    err = capsys.readouterr().err
    assert "2.jpg (1/30 s, f/1.8, ISO 200) let in 8.0x the light of 1.jpg (1/120 s, f/1.8, ISO 100)" in err
    assert "train.exposure=gain" in err
    close = plan_photos(tmp_path, ["0.jpg", "3.jpg"])  # one photo with tags: nothing to compare
    assert close.exposure_spread() is None
    _save(tmp_path / "4.jpg", _pattern(6, 10, 4), exif_ifd={0x829A: IFDRational(1, 80), 0x8827: 100})
    _save(tmp_path / "5.jpg", _pattern(6, 10, 5), exif_ifd={0x829A: IFDRational(1, 100), 0x8827: 100})
    near = plan_photos(tmp_path, ["4.jpg", "5.jpg"])  # no f-number (a phone): time x ISO alone; 1.25x
    assert near.exposure_spread()[0] == pytest.approx(1.25)
    warn_exposure_spread(tmp_path, near, "photos")
    assert "exposures" not in capsys.readouterr().err
