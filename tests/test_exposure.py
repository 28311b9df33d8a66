"""Per-image exposure compensation (pipeline/exposure.py, train.exposure) against exact references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.exposure import ImageExposure, jitter_exposure


def _randomised(kind: str, n: int = 5, seed: int = 0) -> ImageExposure:
    module = ImageExposure(n, kind)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def test_starts_as_the_identity():
    rgb, alpha = torch.rand(64, 3), torch.rand(64, 1)
    image = torch.randint(0, 4, (64,))
    for kind in ("gain", "affine"):
        out = ImageExposure(4, kind)(rgb, alpha, image, torch.tensor([1.0, 1.0, 1.0]))
        assert torch.equal(out, rgb), kind


@pytest.mark.parametrize("kind", ["gain", "affine"])
def test_the_mean_transform_is_the_identity(kind):
    """The common transform the field could absorb is pinned: gains' geometric mean 1, mean matrix I, mean offset 0."""
    a, b = _randomised(kind).transforms()
    if kind == "gain":
        assert torch.allclose(torch.log(torch.diagonal(a, dim1=1, dim2=2)).mean(0), torch.zeros(3), atol=1e-6)
        assert not torch.allclose(a, torch.eye(3).expand_as(a), atol=1e-2)  # the images do differ
    else:
        assert torch.allclose(a.mean(0), torch.eye(3), atol=1e-6)
    assert torch.allclose(b.mean(0), torch.zeros(3), atol=1e-6)


@pytest.mark.parametrize("kind", ["gain", "affine"])
def test_same_as_transforming_every_sample_before_compositing(kind):
    """Transforming the composited object colour (premultiplied) and leaving the background is exactly
    compositing the transformed sample colours A c_k + b with the same weights, then the background."""
    torch.manual_seed(0)
    module = _randomised(kind).double()
    R, K = 32, 7
    w = torch.rand(R, K, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True) * torch.rand(R, 1, dtype=torch.float64)  # opacity < 1 on every ray
    c = torch.rand(R, K, 3, dtype=torch.float64)
    bg = torch.tensor([0.2, 0.7, 0.4], dtype=torch.float64)
    image = torch.randint(0, 5, (R,))
    opacity = w.sum(1, keepdim=True)
    rendered = (w[..., None] * c).sum(1) + (1 - opacity) * bg
    a, b = module.transforms()
    c_seen = torch.einsum("rij,rkj->rki", a[image], c) + b[image][:, None, :]
    reference = (w[..., None] * c_seen).sum(1) + (1 - opacity) * bg
    assert torch.allclose(module(rendered, opacity, image, bg), reference, atol=1e-12)
    # rays that hit nothing keep the background, whatever the transforms
    empty = module(bg.expand(R, 3), torch.zeros(R, 1, dtype=torch.float64), image, bg)
    assert torch.allclose(empty, bg.expand(R, 3), atol=1e-12)


def test_recovers_known_gains_from_colours():
    """Fitting the gains alone to colours seen through known (centred) gains finds those gains."""
    torch.manual_seed(1)
    n = 6
    truth = torch.exp((torch.rand(n, 3) - 0.5) * 0.8)
    truth = truth / torch.exp(torch.log(truth).mean(0))  # geometric mean 1: the gauge the module holds
    colours = torch.rand(4096, 3) * 0.8 + 0.1
    image = torch.randint(0, n, (4096,))
    target = truth[image] * colours
    module = ImageExposure(n, "gain")
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        loss = ((module(colours, None, image) - target) ** 2).mean()
        loss.backward()
        opt.step()
    got = torch.diagonal(module.transforms()[0], dim1=1, dim2=2)
    assert torch.allclose(got, truth, atol=2e-3), (got, truth)


def test_jitter_exposure_gains_and_background():
    torch.manual_seed(2)
    images = torch.rand(10, 8, 8, 3) * 0.5
    alphas = (torch.rand(10, 8, 8, 1) > 0.5).float()
    bg = (1.0, 1.0, 1.0)
    images = images * alphas + (1 - alphas) * torch.tensor(bg)
    out, gains = jitter_exposure(images, alphas, bg, 0.3, seed=3)
    assert gains.shape == (10, 3)
    assert torch.allclose(torch.log(gains).mean(0), torch.zeros(3), atol=1e-6)  # centred over the images
    assert float(torch.log(gains).abs().max()) <= 0.6 + 1e-6 and float(torch.log(gains).abs().max()) > 0.05
    background = alphas[..., 0] == 0
    assert torch.equal(out[background], images[background])  # the background is no part of the shot's exposure
    assert torch.allclose(out[~background], (gains[:, None, None, :] * images).clamp(0, 1)[~background], atol=1e-6)
    again, _ = jitter_exposure(images, alphas, bg, 0.3, seed=3)
    assert torch.equal(out, again)


@pytest.mark.parametrize("setting", ["exposure=gain", "refine_poses=true"])
def test_refused_without_training_images(nls, tmp_path, setting):
    """The per-training-image parts (exposure transforms, pose corrections) on a point cloud: a ConfigError that
    names the key and its value."""
    cloud = tmp_path / "cloud.xyz"
    cloud.write_text("\n".join(f"{x} {y} {z}" for x, y, z in torch.rand(200, 3).tolist()))
    proc = nls("reconstruct", str(cloud), "--steps", "2", "--set", f"train.{setting}", "--output",
               str(tmp_path / "out"))
    assert proc.returncode != 0
    assert f"train.{setting.replace('=', ': ')}" in proc.stderr and "no training images" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_learns_the_shots_gains_and_renders_without_them(nls, tiny_scene, tmp_path):
    """A tiny run on images of simulated exposure: exposure.json holds one gain per training image that follows
    the true gains (scene.json), and render/export/eval of the run load it without the training-only part."""
    scene = tiny_scene(train={"steps": 300, "batch_rays": 1024, "checkpoint_every": 150, "log_every": 25,
                              "grid_warmup": 20, "lr": 0.02, "exposure": "gain", "exposure_lr": 0.005},
                       scene={"type": "procedural", "shape": "sphere", "n_train": 8, "n_test": 2,
                              "image_size": 32, "supersample": 1, "gt_resolution": 64, "exposure_jitter": 0.4},
                       evaluators=[{"type": "psnr", "ssim": False, "color_correct": "gain"}])
    out = tmp_path / "out"
    nls("reconstruct", str(scene), "--output", str(out), "-q", check=True)
    (run,) = list(out.glob("*/*/*"))
    record = json.loads((run / "exposure.json").read_text())
    assert record["kind"] == "gain" and record["step"] == 300 and len(record["images"]) == 8
    learned = torch.log(torch.tensor([r["gain"] for r in record["images"]]))
    truth = torch.log(torch.tensor(json.loads((run / "scene.json").read_text())["exposure_gains"]))
    corr = float(torch.corrcoef(torch.stack([learned.flatten(), truth.flatten()]))[0, 1])
    assert corr > 0.9, (corr, learned, truth)  # 0.953 when written; gains of the wrong images would give ~0
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["psnr_cc"] >= metrics["psnr"]  # the least-squares gain is at least as good as none
    nls("render", str(run), "--split", "test", "--max-images", "1", "-q", check=True)
    nls("render", str(run), "--split", "train", "--max-images", "1", "-q", check=True)  # through its exposure
    _renders_through_one_photos_exposure(nls, run, record, tmp_path)
    nls("eval", str(run), "-q", check=True)
    nls("report", str(run), "--no-model", "-q", check=True)
    html = (run / "report.html").read_text()
    assert "Exposure of the training images" in html and "the gains the scene simulated" in html


def test_color_corrected_undoes_a_colour_transform_exactly():
    """A render that differs from its image by per-channel gains (or an affine map) scores infinite PSNR once
    colour-corrected by that kind, while a plain PSNR sees the difference."""
    from pipeline.metrics import color_corrected, psnr

    rng = np.random.default_rng(0)
    gt = rng.uniform(0.1, 0.8, (16, 16, 3))
    gained = gt * np.array([1.2, 0.9, 0.7])
    assert psnr(gained, gt) < 25
    assert np.allclose(color_corrected(gained, gt, "gain"), gt, atol=1e-12)
    m = np.array([[0.9, 0.1, 0.0], [0.05, 1.1, 0.0], [0.0, 0.1, 0.8]])
    mixed = np.clip(gt @ m.T + 0.05, 0, 1)
    assert np.allclose(color_corrected(mixed, gt, "affine"), gt, atol=1e-9)
    assert psnr(color_corrected(mixed, gt, "gain"), gt) < 60  # gains alone cannot undo channel mixing
    noise = rng.uniform(0, 1, gt.shape)  # no transform makes noise the image: the corrected PSNR stays low
    assert psnr(color_corrected(noise, gt, "affine"), gt) < 20
    with pytest.raises(Exception, match="kind 'curve'"):
        color_corrected(gt, gt, "curve")


def test_resume_continues_the_exposure_bit_for_bit(nls, tiny_scene, tmp_path):
    """The transforms are part of the checkpoint: a run resumed from its mid-run checkpoint ends with the
    same gains (and the same exposure.json) as the run that was never stopped."""
    from pipeline.runs import RunDir
    from tests.short_runs import resumed_from_the_middle

    scene = tiny_scene(train={"steps": 20, "batch_rays": 256, "checkpoint_every": 10, "log_every": 5,
                              "grid_warmup": 4, "exposure": "gain", "exposure_lr": 0.01},
                       scene={"type": "procedural", "shape": "sphere", "n_train": 8, "n_test": 2,
                              "image_size": 32, "supersample": 1, "gt_resolution": 64, "exposure_jitter": 0.4})
    original, copy = resumed_from_the_middle(nls, scene, tmp_path, 20)
    a, b = (RunDir.open(r).load_checkpoint()["model"] for r in (original, copy))
    assert torch.equal(a["exposure.log_gain"], b["exposure.log_gain"])
    assert float(a["exposure.log_gain"].abs().max()) > 0  # it did learn something
    assert (original / "exposure.json").read_text() == (copy / "exposure.json").read_text()


def test_report_says_so_when_exposure_json_is_damaged(tmp_path):
    """A damaged exposure.json costs the report its plot, not the report."""
    from pipeline.report import _exposure
    from pipeline.report.collect import RunFacts

    facts = RunFacts.__new__(RunFacts)
    facts.path, facts.scene = tmp_path, None
    for text in ("{not json", '{"images": [{"name": "a"}]}', '{"images": []}'):
        (tmp_path / "exposure.json").write_text(text)
        html = _exposure(facts)
        assert "no exposure plot" in html, text
    (tmp_path / "exposure.json").write_text(json.dumps({"kind": "gain", "step": 3, "images": [
        {"name": "a", "gain": [1.1, 1.0, 0.9]}, {"name": "b", "gain": [0.9, 1.0, 1.1]}]}))
    assert "<img" in _exposure(facts) and "at step 3" in _exposure(facts)


def test_training_views_are_scored_as_their_cameras_took_them():
    """as_shot: a training view's render goes through that image's transform (the photo's exposure), a view of
    any other split, or of a run without exposure, is left as rendered; image_as_shot is forward() per pixel."""
    from types import SimpleNamespace

    from pipeline.evaluate import as_shot

    module = _randomised("gain", n=4)
    torch.manual_seed(3)
    out = {"rgb": torch.rand(5, 6, 3), "opacity": torch.rand(5, 6, 1)}
    bg = torch.tensor([1.0, 1.0, 1.0])
    system = SimpleNamespace(exposure=module, renderer=SimpleNamespace(background=bg))
    shot = as_shot(system, "train", out, 2)
    flat = module(out["rgb"].reshape(-1, 3), out["opacity"].reshape(-1, 1), torch.full((30,), 2), bg)
    assert torch.allclose(shot, flat.reshape(5, 6, 3))
    assert not torch.allclose(shot, out["rgb"], atol=1e-3)
    assert as_shot(system, "test", out, 2) is out["rgb"]
    assert as_shot(SimpleNamespace(exposure=None, renderer=None), "train", out, 2) is out["rgb"]


def _renders_through_one_photos_exposure(nls, run, record: dict, tmp_path) -> None:
    """``nls render --exposure NAME``: a test view's opaque pixels come out as the plain render times that
    training image's gains (within the PNGs' rounding), the clear ones as they were; a name that is not a
    training image, or an index out of range, is refused naming what is valid, before anything is written."""
    import imageio.v3 as iio

    row = max(record["images"], key=lambda r: abs(math.log(r["gain"][0])))  # the image furthest from the mean
    plain, shot = tmp_path / "plain", tmp_path / "shot"
    nls("render", str(run), "--split", "test", "--max-images", "1", "--depth", "-q", "-o", str(plain), check=True)
    proc = nls("render", str(run), "--split", "test", "--max-images", "1", "-q", "-o", str(shot), "--exposure",
               row["name"], check=True)
    assert f"through the exposure of training image {row['name']}" in proc.stdout
    (png,) = [p for p in (plain / "test").glob("*.png") if "_pred_gt_depth" not in p.name]
    a, b = (iio.imread(folder / "test" / png.name)[..., :3] / 255.0 for folder in (plain, shot))
    opacity = np.load(plain / "test" / png.name.replace(".png", "_opacity.npy"))
    gain = np.asarray(row["gain"])
    solid = (opacity > 0.99) & (a.max(-1) * gain.max() < 0.95)
    clear = opacity < 0.01
    assert solid.sum() > 20 and clear.sum() > 20
    assert np.abs(b[solid] - a[solid] * gain).max() < 3 / 255
    assert np.abs(b[clear] - a[clear]).max() < 2 / 255
    assert np.abs(b[solid] - a[solid]).max() > 10 / 255  # the gain is not ~1
    path = tmp_path / "path"  # a camera path's frames go through the same transform
    nls("render", str(run), "-q", "-o", str(path), "--cameras", str(plain / "test_cameras.json"), "--exposure",
        row["name"], check=True)
    frame = iio.imread(path / "test_cameras" / png.name)[..., :3] / 255.0
    assert np.abs(frame - b).mean() < 1 / 255 and np.abs(frame - a).mean() > 2 / 255
    for bad, says in (("no_such_photo", "no such training image"), ("99", "index 0..7")):
        proc = nls("render", str(run), "--split", "test", "-q", "-o", str(tmp_path / "bad"), "--exposure", bad)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "bad").exists()


def test_render_exposure_is_refused_for_a_run_without_it():
    """--exposure on a run that learned no exposure says so and how to train one."""
    from types import SimpleNamespace

    from pipeline.exposure import exposure_image
    from pipeline.types import NLSError

    with pytest.raises(NLSError, match=r"learned no exposure \(train.exposure: none\)"):
        exposure_image(SimpleNamespace(exposure=None), ["a", "b"], "a")
    system = SimpleNamespace(exposure=ImageExposure(2))
    assert exposure_image(system, ["r_0", "r_1"], "r_1") == 1 and exposure_image(system, ["r_0", "r_1"], "0") == 0
    with pytest.raises(NLSError, match="did you mean r_1"):
        exposure_image(system, ["r_0", "r_1"], "r_11")
