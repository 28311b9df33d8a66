"""Progress inside one rendered image: renderers report finished pixels per chunk, the split's (or
turntable's) progress shows them as fractional images, sparse off a terminal; renderers that never
report still work."""

from __future__ import annotations

import itertools
import sys
from types import SimpleNamespace

import pytest
import torch

from pipeline import progress
from pipeline.progress import StepProgress, image_progress, listen_pixels, report_pixels
from pipeline.rendering import render_image
from pipeline.types import Cameras

AABB = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
STEP = 1.0 / 32


def slab(x, d):
    """A red slab -0.25 < z < 0.5 of density 2."""
    inside = (x[:, 2] > -0.25) & (x[:, 2] < 0.5)
    return torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3), torch.where(inside, 2.0, 0.0)


def cameras(n: int = 1, width: int = 7, height: int = 5) -> Cameras:
    """``n`` cameras at z = 2 looking down -z at the slab."""
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, 2, 3] = 2.0
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return Cameras(c2w=c2w, fx=full(8), fy=full(8), cx=full(width / 2), cy=full(height / 2),
                   width=width, height=height)


class SlabRenderer:
    """A renderer plugin: pipeline.rendering.render_image, which reports its chunks."""

    def render_image(self, cams, i, query, *, chunk, supersample=1):
        return render_image(cams, i, slab, chunk=chunk, supersample=supersample, aabb=AABB, step_size=STEP)


class SilentRenderer:
    """A third-party renderer that knows nothing of progress: one pass, no reports."""

    def render_image(self, cams, i, query, *, chunk, supersample=1):
        H, W = cams.height, cams.width
        return {"rgb": torch.full((H, W, 3), 0.5), "opacity": torch.ones(H, W, 1), "depth": torch.ones(H, W, 1)}


def recorded(fn) -> tuple[list, object]:
    """``fn()`` under a pixel listener: (the (done, total) reports, its result)."""
    seen: list[tuple[int, int]] = []
    with listen_pixels(lambda done, total: seen.append((done, total))):
        result = fn()
    return seen, result


@pytest.mark.parametrize("supersample", [1, 2])
def test_render_image_reports_every_chunk_and_renders_the_same(supersample):
    cams = cameras()
    seen, out = recorded(lambda: render_image(cams, 0, slab, chunk=6, supersample=supersample,
                                              aabb=AABB, step_size=STEP))
    assert seen == [(e, 35) for e in (6, 12, 18, 24, 30, 35)]
    quiet = render_image(cams, 0, slab, chunk=6, supersample=supersample, aabb=AABB, step_size=STEP)
    for k in ("rgb", "opacity", "depth", "depth_median"):
        assert torch.equal(out[k], quiet[k]), k
    assert out["opacity"].max() > 0.5  # the slab is in view


def test_sphere_tracer_reports_the_rays_of_every_sub_pixel_pass():
    from plugins.lipschitz.tracing import SphereTracer, sphere_sdf

    cfg = SimpleNamespace(near=0.0, far=4.0, max_steps=64, eps=1e-3, lipschitz=1.0, chunk=16)
    tracer, sdf, cams = SphereTracer(cfg), sphere_sdf((0, 0, 0), 0.5), cameras(width=6, height=5)
    query = lambda x, _d: {"sdf": sdf(x)}  # noqa: E731
    seen, out = recorded(lambda: tracer.render_image(cams, 0, query, supersample=2))
    assert seen == [(j * 30 + e, 120) for j in range(4) for e in (16, 30)]
    quiet = tracer.render_image(cams, 0, query, supersample=2)
    assert all(torch.equal(out[k], quiet[k]) for k in ("rgb", "opacity", "depth", "normals"))
    assert out["opacity"].sum() > 0


def test_no_listener_no_report_and_the_listener_ends_with_its_block():
    seen: list = []
    report_pixels(1, 2)  # nobody listens: nothing happens
    with listen_pixels(lambda *a: seen.append(a)):
        report_pixels(1, 2)
    report_pixels(2, 2)
    assert seen == [(1, 2)]


def test_image_progress_moves_the_bar_by_fractions_on_a_terminal(monkeypatch):
    """rich's bar (and its ETA) gets the fraction of the image rendered, never going backwards."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with StepProgress(4, 0, "rendering test") as bar:
        task = bar._progress.tasks[0]
        with image_progress(bar, 2):
            report_pixels(3, 12)
            assert task.completed == 2.25 and task.fields["info"] == "image 3/4: 25% of pixels"
            report_pixels(1, 12)  # a renderer with a second, smaller pass
            assert task.completed == 2.25


def fake_clock(monkeypatch, step_s: float = 1.0) -> None:
    """Every perf_counter() call of pipeline.progress (and only of it) is ``step_s`` seconds after the last."""
    ticks = itertools.count(1000.0, step_s)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))


def test_plain_lines_show_whole_images_and_the_last_one_once(monkeypatch, capsys):
    fake_clock(monkeypatch)
    with StepProgress(2, 0, "rendering test", plain_every_s=0) as bar:
        for k in range(2):
            with image_progress(bar, k):
                for done in (5, 10):
                    report_pixels(done, 10)
            bar.advance(k + 1)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split("  ")[0] for ln in lines] == ["rendering test 0/2", "rendering test 1/2", "rendering test 1/2",
                                                   "rendering test 1/2", "rendering test 2/2"], lines
    assert "image 1/2: 50% of pixels" in lines[0] and "image 2/2: 100% of pixels" in lines[-1]
    assert lines[0].endswith("eta –") and lines[1].endswith("eta 2s") and lines[-1].endswith("done"), lines


def eval_context(tmp_path, renderer, n_views: int = 2, chunk: int = 4) -> SimpleNamespace:
    """The parts of an EvalContext that render_split reads."""
    cams = cameras(n_views)
    split = type("Split", (), {"__len__": lambda self: n_views, "cameras": cams,
                               "images": torch.zeros(n_views, 5, 7, 3), "names": [f"r_{i}" for i in range(n_views)],
                               "valid_of": lambda self, i: None})()  # (no ignore masks)
    from pipeline.config import EvalConfig

    cfg = SimpleNamespace(eval=EvalConfig(split="test", chunk=chunk))
    system = SimpleNamespace(renderer=renderer, chain=None, eval=lambda: None)
    return SimpleNamespace(cfg=cfg, scene=SimpleNamespace(splits={"test": split}), system=system, run=None,
                           device="cpu", split=None, out_dir=tmp_path, progress=True, save_depth=False,
                           exposure_of=None)


def test_render_split_reports_pixels_sparsely_off_a_terminal(tmp_path, monkeypatch, capsys):
    """35 pixels in chunks of 4: 9 reports and an advance per image, 1 s apart, but a line only every
    10 s (at 0 s, at 10 s: the first chunk of image 2) and one at the end."""
    from pipeline.evaluate import render_split

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    fake_clock(monkeypatch)
    pairs = render_split(eval_context(tmp_path, SlabRenderer()))
    lines = capsys.readouterr().err.splitlines()
    assert len(pairs) == 2 and (tmp_path / "r_1.png").is_file()
    assert len(lines) == 3, lines
    assert lines[0].startswith("rendering test 0/2  image 1/2: 11% of pixels  eta –"), lines
    assert lines[1].startswith("rendering test 1/2  image 2/2: 11% of pixels  eta 9s"), lines
    assert lines[2] == "rendering test 2/2  image 2/2: 100% of pixels  done", lines


def test_render_split_with_a_renderer_that_never_reports(tmp_path, monkeypatch, capsys):
    from pipeline.evaluate import render_split

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    pairs = render_split(eval_context(tmp_path, SilentRenderer()))
    lines = capsys.readouterr().err.splitlines()
    assert len(pairs) == 2 and float(pairs[0][0].mean()) == pytest.approx(0.5)
    assert lines[0].startswith("rendering test 1/2") and lines[-1].startswith("rendering test 2/2"), lines


def test_turntable_reports_pixels_of_each_frame(tmp_path, monkeypatch, capsys):
    import pipeline.video as video

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(video, "write_video", lambda frames, stem: stem)
    ctx = eval_context(tmp_path, SlabRenderer())
    ld = SimpleNamespace(scene=ctx.scene, cfg=ctx.cfg, device="cpu", system=ctx.system)
    video.render_turntable(ld, 2, tmp_path)
    err = capsys.readouterr().err
    assert "turntable 0/2  frame 1/2: 11% of pixels" in err and "turntable 2/2" in err, err


def test_volume_renderer_caps_cpu_chunks_by_samples_and_renders_the_same(monkeypatch):
    """On CPU a chunk holds at most CPU_CHUNK_SAMPLES samples (rays x samples_per_ray): lego_hash's eval.chunk
    of 32768 rays at 1024 samples per ray peaked at 19.8 GB for one view. The capped image is the same."""
    from plugins.ngp.config import VolumeRendererConfig
    from plugins.ngp.renderer import VolumeRenderer

    renderer = VolumeRenderer(VolumeRendererConfig(samples_per_ray=64), AABB, (1.0, 1.0, 1.0), 0.0, 10.0)
    chain = SimpleNamespace(radiance_fn=slab, density_fn=lambda x: slab(x, None)[1])
    cams = cameras()
    monkeypatch.setattr(VolumeRenderer, "CPU_CHUNK_SAMPLES", 64 * 6)
    seen, capped = recorded(lambda: renderer.render_image(cams, 0, chain, chunk=1000))
    assert seen == [(e, 35) for e in (6, 12, 18, 24, 30, 35)]
    monkeypatch.setattr(VolumeRenderer, "CPU_CHUNK_SAMPLES", 1 << 22)
    seen, whole = recorded(lambda: renderer.render_image(cams, 0, chain, chunk=1000))
    assert seen == [(35, 35)]
    for k in ("rgb", "opacity", "depth"):
        assert torch.allclose(capped[k], whole[k], atol=1e-6), k
    assert whole["opacity"].max() > 0.5


def test_turntable_renders_with_the_given_supersampling(tmp_path, monkeypatch):
    """`nls render --spiral N --supersample S`: the turntable's frames used to ignore S."""
    import pipeline.video as video

    calls = []

    class Recording(SlabRenderer):
        def render_image(self, cams, i, query, *, chunk, supersample=1):
            calls.append(supersample)
            return super().render_image(cams, i, query, chunk=chunk, supersample=supersample)

    monkeypatch.setattr(video, "write_video", lambda frames, stem: stem)
    ctx = eval_context(tmp_path, Recording())
    ld = SimpleNamespace(scene=ctx.scene, cfg=ctx.cfg, device="cpu", system=ctx.system)
    video.render_turntable(ld, 2, tmp_path, progress=False, supersample=3)
    assert calls == [3, 3]


def test_turntable_without_supersampling_works_with_a_renderer_that_takes_no_such_keyword(tmp_path, monkeypatch):
    """An older plugin's render_image(cams, i, query, *, chunk) still renders turntables, as eval renders."""
    import pipeline.video as video

    class Older:
        def render_image(self, cams, i, query, *, chunk):
            return SlabRenderer().render_image(cams, i, query, chunk=chunk)

    monkeypatch.setattr(video, "write_video", lambda frames, stem: len(frames))
    ctx = eval_context(tmp_path, Older())
    ld = SimpleNamespace(scene=ctx.scene, cfg=ctx.cfg, device="cpu", system=ctx.system)
    assert video.render_turntable(ld, 2, tmp_path, progress=False) == 2
