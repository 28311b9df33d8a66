"""Ignore masks (``PosedImages.valid``): pixels left out of training and scoring, from nerfstudio's per-frame
``mask_path`` (the blender source, ``scene.mask_use``) or a capture's masks with ``mask_use: ignore``."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.types import Cameras, DataError, PosedImages, SceneData
from tests.test_colmap_scene import make_colmap, pycolmap  # noqa: F401  (pycolmap: the fixture)


def _split(valid: np.ndarray) -> PosedImages:
    """A split of ``len(valid)`` random (H, W) images with the ignore masks ``valid`` (N, H, W) bool."""
    n, h, w = valid.shape
    gen = torch.Generator().manual_seed(1)
    cams = Cameras(torch.eye(4).repeat(n, 1, 1), torch.full((n,), 20.0), torch.full((n,), 20.0),
                   torch.full((n,), w / 2), torch.full((n,), h / 2), w, h)
    return PosedImages(torch.rand(n, h, w, 3, generator=gen), cams, valid=torch.from_numpy(valid))


def _sampler(split: PosedImages, jitter: bool = False):
    from pipeline.train import RaySampler

    scene = SceneData(splits={"train": split}, aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    return RaySampler(scene, torch.device("cpu"), seed=3, jitter=jitter)


def test_the_sampler_draws_only_the_pixels_that_count_and_each_alike():
    valid = np.ones((3, 12, 10), bool)
    valid[0, :, :7] = False  # 30 % of view 0 kept
    valid[1] = False  # nothing of view 1
    valid[2, 4:8, 2:6] = False
    split = _split(valid)
    split.images[torch.from_numpy(~valid)] = -1.0  # (a colour no kept pixel has)
    sampler = _sampler(split, jitter=True)
    counts = np.zeros(valid.shape)
    for _ in range(30):
        i, v, u = (t.numpy() for t in sampler._pixels(4096, sampler.valid, sampler.kept))
        assert len(i) == 4096
        np.add.at(counts, (i, v, u), 1)
    assert counts[~valid].sum() == 0  # never a pixel left out
    kept = counts[valid]
    expected = kept.sum() / valid.sum()
    # uniform over the kept pixels: chi-square of k - 1 degrees of freedom, well inside its 0.1 % tail
    chi2 = float(((kept - expected) ** 2 / expected).sum())
    assert chi2 < valid.sum() + 4 * np.sqrt(2 * valid.sum())
    batch = sampler.sample(2048)
    assert (batch["rgb"] >= 0).all() and batch["origins"].shape == (2048, 3)  # the rays' colours are kept pixels'


def test_the_sampler_without_masks_draws_as_it_did():
    """Without ignore masks the draws are those of the plain sampler (image, row, column from one generator in
    turn), so runs without masks train as before."""
    split = _split(np.ones((2, 6, 5), bool))
    split.valid = None
    batch = _sampler(split).sample(50)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 2, (50,), generator=gen)
    v, u = torch.randint(0, 6, (50,), generator=gen), torch.randint(0, 5, (50,), generator=gen)
    assert torch.equal(batch["image_index"], idx)
    assert torch.equal(batch["rgb"], split.images[idx, v, u])


def test_training_images_masked_out_entirely_are_refused():
    from pipeline.types import NLSError

    with pytest.raises(NLSError, match="leave no pixel to train on"):
        _sampler(_split(np.zeros((2, 4, 4), bool)))


def write_nerfstudio_folder(root: Path, n: int, size: int, extra, **top) -> None:
    """A nerfstudio-style transforms.json folder of ``n`` random RGB frames (``size`` px, ``images/frame_NNNNN.png``)
    at z = 4 looking down -z, the first held out as test; ``extra(k, name)`` writes frame k's other files and
    returns its other keys; ``top``: more top-level keys."""
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n):
        name = f"frame_{k:05d}"
        iio.imwrite(root / "images" / f"{name}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        c2w = np.eye(4)
        c2w[2, 3] = 4.0
        frames.append({"file_path": f"images/{name}.png", "transform_matrix": c2w.tolist(), **extra(k, name)})
    doc = {"fl_x": 20.0, "fl_y": 20.0, "cx": size / 2, "cy": size / 2, "w": size, "h": size, "frames": frames,
           "train_filenames": [f["file_path"] for f in frames[1:]], "test_filenames": [frames[0]["file_path"]],
           **top}
    (root / "transforms.json").write_text(json.dumps(doc))


def _nerfstudio_folder(root: Path, n: int = 4, size: int = 16) -> dict[str, np.ndarray]:
    """:func:`write_nerfstudio_folder` with a ``mask_path`` each: black on a block that moves from frame to frame.
    Returns each frame's mask (H, W) uint8 by name."""
    import imageio.v3 as iio

    (root / "masks").mkdir(parents=True)
    written = {}

    def mask(k: int, name: str) -> dict:
        m = np.full((size, size), 255, np.uint8)
        m[2 + k: 8 + k, 3:9] = 0
        iio.imwrite(root / "masks" / f"{name}.png", m)
        written[name] = m
        return {"mask_path": f"masks/{name}.png"}

    write_nerfstudio_folder(root, n, size, mask)
    return written


def test_a_nerfstudio_mask_path_is_an_ignore_mask_by_default_or_an_object_mask_or_unused(tmp_path):
    import imageio.v3 as iio

    from pipeline.scenes.blender import load_blender

    masks = _nerfstudio_folder(tmp_path / "ns")
    scene = load_blender(tmp_path / "ns", splits=("train", "test"))
    train = scene.splits["train"]
    assert train.alphas is None and train.valid is not None
    for i, name in enumerate(train.names):
        assert np.array_equal(train.valid[i].numpy(), masks[name] >= 128)
        stored = iio.imread(tmp_path / "ns" / "images" / f"{name}.png").astype(np.float32) / 255
        assert np.allclose(train.images[i].numpy(), stored)  # the pixels as they are: only left out
    kept = float(np.mean([masks[n] >= 128 for n in train.names]))
    assert scene.meta["mask_use"] == "ignore" and scene.meta["pixels_kept"]["train"] == pytest.approx(kept, abs=1e-4)
    assert scene.meta["masks"] == f"the frames' mask_path in {(tmp_path / 'ns' / 'transforms.json').resolve()}"
    from pipeline.report import capture_rows

    assert ("ignore masks", f"{scene.meta['masks']}; pixels kept: train {100 * kept:.1f} %, test "
            f"{100 * scene.meta['pixels_kept']['test']:.1f} %") in capture_rows(scene.meta)

    obj = load_blender(tmp_path / "ns", splits=("train",), masks="object", background=(0.0, 0.0, 0.0))
    a = obj.splits["train"].alphas[..., 0].numpy()
    assert obj.splits["train"].valid is None and obj.meta["mask_use"] == "object" and "pixels_kept" not in obj.meta
    assert np.allclose(a, np.stack([masks[n] / 255.0 for n in obj.splits["train"].names]))
    assert obj.splits["train"].images.numpy()[a == 0].max() == 0  # composited on black

    off = load_blender(tmp_path / "ns", splits=("train",), masks="off")
    assert off.splits["train"].valid is None and off.splits["train"].alphas is None and "masks" not in off.meta

    half = load_blender(tmp_path / "ns", splits=("train",), downscale=2).splits["train"]
    blocks = np.stack([(masks[n] >= 128).reshape(8, 2, 8, 2).mean((1, 3)) >= 0.5 for n in half.names])
    assert np.array_equal(half.valid.numpy(), blocks)
    assert np.array_equal(half.valid_of(0), blocks[0])
    assert np.array_equal(train.valid_of(2, 2), blocks[2])  # (full-size masks, downscaled as the loader does)


def test_bad_mask_paths_are_data_errors_naming_the_frame_and_file(tmp_path):
    import imageio.v3 as iio

    from pipeline.scenes.blender import load_blender

    root = tmp_path / "ns"
    _nerfstudio_folder(root)
    doc = json.loads((root / "transforms.json").read_text())
    del doc["frames"][2]["mask_path"]
    (root / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"3 of its 4 frames give a 'mask_path' but frames\[2\] does not"):
        load_blender(root, splits=("train",))
    assert load_blender(root, splits=("train",), masks="off").splits["train"].valid is None

    doc["frames"][2]["mask_path"] = "masks/gone.png"
    (root / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"frames\[2\]: mask file not found: .*gone.png"):
        load_blender(root, splits=("train",))

    doc["frames"][2]["mask_path"] = "masks/frame_00002.png"
    (root / "transforms.json").write_text(json.dumps(doc))
    for k in range(4):
        iio.imwrite(root / "masks" / f"frame_{k:05d}.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match="ignore masks leave no pixel to train on or score"):
        load_blender(root, splits=("train",))
    with pytest.raises(DataError, match="masks='maybe'; give one of ignore, object, off"):
        load_blender(root, masks="maybe")


def test_mask_use_off_unquoted_in_yaml_reads_as_off():
    from plugins.scenes.config import BlenderConfig, ColmapConfig

    given = yaml.safe_load("path: x\nmask_use: off\n")
    assert given["mask_use"] is False  # (YAML 1.1's off)
    assert BlenderConfig(**given).mask_use == "off"
    assert BlenderConfig(path="x").mask_use == "ignore" and ColmapConfig(path="x").mask_use == "object"
    with pytest.raises(ValueError):
        ColmapConfig(path="x", mask_use="off")


def test_masked_scores_count_only_the_kept_pixels():
    from pipeline.metrics import color_corrected, psnr, ssim

    rng = np.random.default_rng(2)
    gt = rng.random((30, 40, 3))
    pred = np.clip(gt + 0.02 * rng.standard_normal(gt.shape), 0, 1)
    keep = np.ones((30, 40), bool)
    keep[5:15, 10:30] = False
    spoiled = pred.copy()
    spoiled[~keep] = 1.0 - gt[~keep]  # what the mask leaves out is far off
    assert psnr(spoiled, gt, keep) == pytest.approx(psnr(pred[keep], gt[keep]))
    assert psnr(spoiled, gt) < psnr(spoiled, gt, keep) - 5
    assert ssim(pred, gt, mask=np.ones_like(keep)) == pytest.approx(ssim(pred, gt), abs=1e-12)
    assert ssim(spoiled, gt, mask=keep) > ssim(spoiled, gt) + 0.1
    darker = 0.8 * gt
    darker[~keep] = 1.0  # a gain fitted over every pixel is pulled by these; over the kept ones it is 1 / 0.8
    assert psnr(color_corrected(darker, gt, "gain", keep), gt, keep) > 60
    assert psnr(color_corrected(darker, gt, "gain"), gt, keep) < 40
    with pytest.raises(Exception, match="the mask keeps no pixel"):
        psnr(pred, gt, np.zeros_like(keep))


def test_image_metrics_score_each_view_over_its_kept_pixels_and_skip_views_with_none():
    from plugins.ngp.config import PSNRConfig
    from plugins.ngp.evaluate import ImageMetrics

    rng = np.random.default_rng(4)
    gt = [rng.random((16, 16, 3)) for _ in range(3)]
    keep = [np.ones((16, 16), bool), np.zeros((16, 16), bool), np.ones((16, 16), bool)]
    keep[0][:8] = False
    pred = [g.copy() for g in gt]
    pred[0][:8] = 0.0  # wrong only where view 0's mask leaves it out
    pred[1][:] = 0.0
    pred[2] = np.clip(gt[2] + 0.1, 0, 1)
    ctx = types.SimpleNamespace(renders=lambda: list(zip(pred, gt)), masks=lambda: keep)
    out = ImageMetrics(PSNRConfig(ssim=False))(ctx)
    from pipeline.metrics import psnr

    assert out["n_images"] == 2 and out["n_images_masked_out"] == 1
    assert np.isinf(out["psnr"])  # view 0 is exact over the pixels its mask keeps
    keep[0][:] = True
    keep[0][0, 0] = False
    pred[0] = np.clip(gt[0] - 0.05, 0, 1)
    out = ImageMetrics(PSNRConfig(ssim=False))(ctx)
    assert out["psnr"] == pytest.approx((psnr(pred[0], gt[0], keep[0]) + psnr(pred[2], gt[2])) / 2)


def test_object_scores_count_only_the_object_s_pixels_within_the_ignore_masks():
    """``psnr: {object: true}``: psnr_object / ssim_object over the pixels whose ground-truth alpha is at least 0.5
    and that the ignore mask keeps (EvalContext.object_masks), beside the whole-image figures; a view without such
    pixels is left out, and a split without alpha is an error."""
    import torch

    from pipeline.evaluate import EvalContext
    from pipeline.metrics import psnr, ssim
    from pipeline.types import Cameras, NLSError, PosedImages
    from plugins.ngp.config import PSNRConfig
    from plugins.ngp.evaluate import ImageMetrics

    rng = np.random.default_rng(5)
    gt = rng.random((3, 24, 24, 3))
    alpha = np.zeros((3, 24, 24, 1))
    alpha[0, 6:18, 6:18] = 1.0
    alpha[1, 4:20, 2:12] = 0.7
    valid = np.ones((3, 24, 24), bool)
    valid[1, :, 8:] = False  # (view 1: its object half ignored)
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    pred[alpha[..., 0] < 0.5] = 0.0  # (wrong everywhere off the object)
    cams = Cameras(torch.eye(4).repeat(3, 1, 1), *(torch.full((3,), 20.0),) * 2, *(torch.full((3,), 12.0),) * 2, 24, 24)
    split = PosedImages(torch.from_numpy(gt).float(), cams, torch.from_numpy(alpha).float(), ["a", "b", "c"],
                        torch.from_numpy(valid))
    cfg = types.SimpleNamespace(eval=types.SimpleNamespace(split="test", every=1, max_images=None))
    ctx = EvalContext(cfg=cfg, scene=types.SimpleNamespace(splits={"test": split}), system=None, run=None,
                      device="cpu")
    ctx._renders = list(zip(pred, gt))
    out = ImageMetrics(PSNRConfig(object=True))(ctx)
    on = [(alpha[i, ..., 0] >= 0.5) & valid[i] for i in range(2)]
    assert out["psnr_object"] == pytest.approx(sum(psnr(pred[i], gt[i], on[i]) for i in range(2)) / 2)
    assert out["ssim_object"] == pytest.approx(sum(ssim(pred[i], gt[i], mask=on[i]) for i in range(2)) / 2)
    assert out["psnr_object"] > 25 > out["psnr"] and out["n_images"] == 3  # (view 2 has no object: left out there)
    ctx.scene.splits["test"] = PosedImages(split.images, cams, None, split.names)
    with pytest.raises(NLSError, match="the 'test' split has no alpha"):
        ImageMetrics(PSNRConfig(object=True))(ctx)
    assert "psnr_object" not in ImageMetrics(PSNRConfig())(ctx)


def test_a_colmap_capture_with_ignore_masks_keeps_its_pixels_and_leaves_the_masked_out(tmp_path,
                                                                                       pycolmap):  # noqa: F811
    from pipeline.scenes.colmap import load_colmap
    from tests.test_masks import _write_masks

    made = make_colmap(tmp_path / "cap")
    root = made["root"]
    names = sorted(p.name for p in (root / "images").iterdir())
    masks = _write_masks(root / "cut", names, 32, "same")
    plain = load_colmap(root, test_every=0)
    scene = load_colmap(root, test_every=0, masks="cut", mask_use="ignore")
    train = scene.splits["train"]
    assert torch.equal(train.images, plain.splits["train"].images)  # composited as without masks
    assert (train.alphas is None) == (plain.splits["train"].alphas is None)
    for i, name in enumerate(train.names):
        assert np.array_equal(train.valid[i].numpy(), masks[f"{name}.png"] >= 0.5)
    assert scene.meta["mask_use"] == "ignore" and 0 < scene.meta["pixels_kept"]["train"] < 1
    with pytest.raises(DataError, match="mask_use 'maybe'"):
        load_colmap(root, masks="cut", mask_use="maybe")


def test_nls_reconstruct_trains_and_scores_a_nerfstudio_folder_with_masks(tmp_path):
    from pipeline.testing import TINY_SCENE
    from tests.conftest import run_nls

    masks = _nerfstudio_folder(tmp_path / "ns", n=5, size=24)
    scene = {**TINY_SCENE, "name": "masked_tiny", "scene": {"type": "blender", "path": str(tmp_path / "ns"),
                                                            "aabb": [-1, -1, -1, 1, 1, 1]},
             "evaluators": [{"type": "psnr", "ssim": True, "color_correct": "gain"}]}
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    run_nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--steps", "3", check=True)
    run = next((tmp_path / "runs").glob("masked_tiny/*/*/summary.json")).parent
    recorded = json.loads((run / "scene.json").read_text())
    assert recorded["mask_use"] == "ignore" and recorded["pixels_kept"]["test"] < 1
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert np.isfinite(metrics["psnr"]) and np.isfinite(metrics["ssim"]) and np.isfinite(metrics["psnr_cc"])

    # the pictures made from the side-by-sides (nls compare, nls report) score the kept pixels, as eval did
    from pipeline.compare_figures import views_png
    from pipeline.report.figures import split_side_by_side, valid_beside

    (side,) = sorted((run / "renders" / "test").glob("*_pred_gt_depth.png"))  # (the one test view)
    name = side.name[:-len("_pred_gt_depth.png")]
    valid = valid_beside(side)
    assert valid is not None and np.array_equal(valid, masks[name] >= 128)
    _, (score,) = views_png(name, ["a"], [side])
    assert score == pytest.approx(metrics["psnr"], abs=0.05)
    import imageio.v3 as iio
    import shutil

    # the ignored pixels do not count: the prediction made perfect there leaves the view's score as it was
    picture = iio.imread(side)
    pred, gt, _ = split_side_by_side(picture)
    pred[~valid] = gt[~valid]
    picture[:, :pred.shape[1]] = pred
    (tmp_path / "edited").mkdir()
    iio.imwrite(tmp_path / "edited" / side.name, picture)
    _, (unmasked,) = views_png(name, ["a"], [tmp_path / "edited" / side.name])
    shutil.copyfile(side.with_name(f"{name}_valid.png"), tmp_path / "edited" / f"{name}_valid.png")
    _, (edited,) = views_png(name, ["a"], [tmp_path / "edited" / side.name])
    assert edited == pytest.approx(score, abs=1e-9) and unmasked > score + 0.1
    from pipeline.report import _comparisons
    from pipeline.report.collect import read_run

    assert "the pixels its ignore mask leaves out are greyed and not scored" in _comparisons(read_run(run), [side])


def test_photos_with_ignore_masks_keep_structure_from_motion_off_the_masked_pixels(tmp_path, monkeypatch,
                                                                                  pycolmap):  # noqa: F811
    """With mask_use: ignore, structure from motion gets the masks (black and white, named as COLMAP reads them) as
    its feature masks, the SfM cache is keyed by them, and the photos load with them as ignore masks; COLMAP's
    feature extraction itself finds no keypoint under black (checked on two lego views)."""
    import sqlite3

    import imageio.v3 as iio

    from plugins.scenes.config import PhotosConfig
    from plugins.scenes.sources import build_photos
    from tests.test_masks import masked_shoot

    given: list = []
    photos, names, masks = masked_shoot(tmp_path, monkeypatch, lambda _, feature_masks: given.append(
        None if feature_masks is None else {p.name: iio.imread(p) for p in sorted(Path(feature_masks).iterdir())}))
    scene = build_photos(PhotosConfig(path=str(photos), masks="masks", mask_use="ignore", test_every=0), None)()
    assert len(given) == 1 and sorted(given[0]) == [f"{n}.png" for n in names]
    for n in names:
        assert set(np.unique(given[0][f"{n}.png"])) <= {0, 255}
        assert np.array_equal(given[0][f"{n}.png"] == 255, masks[n] >= 0.5)
    train = scene.splits["train"]
    assert train.valid is not None and scene.meta["sfm"]["feature_masks"] == str(photos / "masks")
    build_photos(PhotosConfig(path=str(photos), masks="masks", test_every=0), None)()  # object masks: no SfM masks
    assert len(given) == 2 and given[1] is None

    lego = sorted(Path(p) for p in (data_lego_train() or []))[:2]
    if not lego:
        return  # (the pycolmap check below needs lego's views; said by data_lego_train)
    (tmp_path / "img").mkdir()
    (tmp_path / "fm").mkdir()
    for k, path in enumerate(lego):
        iio.imwrite(tmp_path / "img" / f"{k}.png", iio.imread(path)[..., :3])
        half = np.full((400, 400), 255, np.uint8)
        half[:, :200] = 0
        iio.imwrite(tmp_path / "fm" / f"{k}.png.png", half)
    reader = pycolmap.ImageReaderOptions()
    reader.mask_path = str(tmp_path / "fm")
    pycolmap.extract_features(tmp_path / "db.db", tmp_path / "img", reader_options=reader)
    with sqlite3.connect(tmp_path / "db.db") as con:
        xs = [np.frombuffer(data, np.float32).reshape(rows, cols)[:, 0]
              for rows, cols, data in con.execute("select rows, cols, data from keypoints")]
    assert len(xs) == 2 and all(len(x) > 50 and x.min() >= 200 for x in xs)


def data_lego_train():
    """Lego's first train views, or None (with the reason printed) when the data root lacks lego."""
    from pipeline.scenes import data_path

    folder, why = data_path("nerf", "lego")
    if folder is None:
        print(f"the pycolmap feature-mask check is left out: {why}")
        return None
    return sorted(Path(folder).glob("train/r_*.png"))
