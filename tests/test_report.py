"""`nls report`: a self-contained HTML page of a run, for finished and killed runs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml

from tests.short_runs import browser_or_skip, killed_run, short_run


class _Page(HTMLParser):
    """Collects tags with their attributes, table rows and visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


def embedded_images(page: _Page) -> list[np.ndarray]:
    import imageio.v3 as iio

    out = []
    for tag, attrs in page.tags:
        if tag == "img":
            m = re.fullmatch(r"data:image/(png|gif);base64,(.+)", attrs["src"], re.S)
            assert m, f"image not embedded as a data URI: {attrs['src'][:80]}"
            out.append(iio.imread(io.BytesIO(base64.b64decode(m.group(2))), index=None))
    return out


def assert_self_contained(page: _Page) -> None:
    """No script at all, and every src/href of img/link/video/source/iframe is a data URI or a fragment."""
    for tag, attrs in page.tags:
        assert tag != "script", "the report must not need scripts"
        for key in ("src", "href"):
            val = attrs.get(key)
            if tag in ("img", "link", "video", "source", "iframe", "audio", "embed", "object") and val:
                assert not re.match(r"^(https?:)?//", val), f"external {key} in <{tag}>: {val[:80]}"
                assert val.startswith(("data:", "#")), f"<{tag} {key}> is not embedded: {val[:80]}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid")


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    """`nls report RUN -o FILE` on the finished run; (path, stdout)."""
    from tests.conftest import run_nls

    out = tmp_path_factory.mktemp("report") / "report.html"
    res = run_nls("report", str(run), "-o", str(out), "-q", check=True)
    return out, res.stdout


def test_report_is_self_contained_with_metrics_and_images(run, report):
    out, stdout = report
    assert str(out) in stdout
    text = out.read_text()
    assert "http://" not in text and "https://" not in text
    page = parse(out)
    assert_self_contained(page)
    summary = json.loads((run / "summary.json").read_text())
    rows = {r[0]: r[1:] for r in page.rows if r}
    for k, v in summary["metrics"].items():
        want = f"{v:.4f}" if isinstance(v, float) else str(v)
        assert rows[k][1] == want, f"metric {k}: report shows {rows.get(k)}, summary.json has {v}"
        assert rows[k][-1] == summary["metric_notes"][k]  # what it is, as the run recorded it
    imgs = embedded_images(page)
    # curves, one render comparison (1 test image), depth+normals, slices, mesh turntable
    assert len(imgs) >= 5
    for a in imgs:
        assert a.size > 0 and float(np.asarray(a, np.float32).std()) > 1.0, "a blank embedded image"
    gifs = [a for a in imgs if a.ndim == 4]
    assert gifs and gifs[0].shape[0] == 24, "the mesh turntable has 24 frames"
    words = " ".join(page.text)
    for heading in ("Training curves", "Test renders and ground truth", "Depth and normal maps",
                    "Field slices", "Mesh", "Provenance"):
        assert heading in words
    assert "resolved config (config.yaml)" in words
    assert str(summary["parameters"]) in words
    assert "Missing from this run folder" not in words
    level = summary["metrics"]["mesh_level"]  # slices and mesh name the level the mesh was made at
    assert f"black: the level the evaluated mesh was extracted at, {level:g}" in words, words
    assert f"extracted at level {level:g}" in words


def test_report_opens_offline_in_chromium(report):
    """Headless Chromium loads the report with no request but the file itself and data: URIs,
    and every image decodes (skips without a Chromium binary or playwright)."""
    exe = browser_or_skip(need_viser=False)
    from playwright.sync_api import sync_playwright

    out = report[0]
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        browser.close()
    assert all(u == out.as_uri() or u.startswith("data:") for u in requests), requests
    assert not errors, errors
    assert len(sizes) >= 5 and all(ok and w > 0 for ok, w in sizes), sizes


def test_error_panel_reproduces_the_evaluated_psnr(run):
    """The report's error map comes from the pred|gt|depth PNGs; its PSNR matches summary.json
    (up to 8-bit quantisation of the PNGs)."""
    import imageio.v3 as iio

    from pipeline.report.figures import psnr, split_side_by_side

    summary = json.loads((run / "summary.json").read_text())
    side = sorted((run / "renders" / "test").glob("*_pred_gt_depth.png"))
    assert len(side) == 1
    pred, gt, depth = split_side_by_side(iio.imread(side[0]))
    assert pred.shape == gt.shape == depth.shape == (32, 32, 3)
    got = psnr(pred / 255.0, gt / 255.0)
    assert abs(got - summary["metrics"]["psnr"]) < 0.2, (got, summary["metrics"]["psnr"])


def test_slices_of_an_analytic_sdf():
    """field_slices evaluates the three centre planes: compare with a sphere SDF in closed form."""
    from pipeline.report.figures import field_slices, plane_points, slices_png

    aabb = [-1.0, -0.5, 0.0, 1.0, 1.5, 2.0]  # centre (0, 0.5, 1)
    c = np.array([0.0, 0.5, 1.0])
    sdf = lambda p: np.linalg.norm(p - c, axis=1) - 0.6  # noqa: E731
    sl = field_slices(sdf, aabb, res=33)
    for axis, (vals, (a_ax, b_ax)) in enumerate(sl):
        assert vals.shape == (33, 33) and {axis, a_ax, b_ax} == {0, 1, 2}
        u = np.linspace(aabb[a_ax], aabb[a_ax + 3], 33)
        v = np.linspace(aabb[b_ax], aabb[b_ax + 3], 33)
        U, V = np.meshgrid(u - c[a_ax], v - c[b_ax], indexing="xy")
        np.testing.assert_allclose(vals, np.sqrt(U ** 2 + V ** 2) - 0.6, atol=1e-5)
    pts, _ = plane_points(aabb, 2, 5)
    assert np.allclose(pts[:, 2], 1.0)
    png = slices_png(sl, aabb, "sdf", 0.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_depth_normals_of_an_analytic_sphere():
    """Normals of the exact depth map of a unit sphere seen from z=3 equal its radial normals."""
    from pipeline.report.model_views import depth_normals
    from pipeline.scenes.mesh_render import look_at, pixel_rays

    H = W = 64
    o, d = pixel_rays(look_at(np.array([0.0, 0.0, 3.0]), up=(0.0, 1.0, 0.0)), W, H, focal=80.0)
    b = np.sum(o * d, -1)
    disc = b ** 2 - (np.sum(o * o, -1) - 1.0)
    hit = disc > 0
    t = np.where(hit, -b - np.sqrt(np.clip(disc, 0, None)), 0.0)
    pts = (o + t[:, None] * d).reshape(H, W, 3)
    n = depth_normals(pts, d.reshape(H, W, 3))
    inner = hit.reshape(H, W)
    for axis in (0, 1):  # drop pixels next to the silhouette (differences across it are meaningless)
        inner &= np.roll(inner, 1, axis) & np.roll(inner, -1, axis)
    cos = np.sum(n * pts, -1)[inner]  # |pts| = 1 on the sphere
    assert inner.sum() > 500
    assert np.median(cos) > 0.999 and cos.min() > 0.98, (np.median(cos), cos.min())


def test_rendered_normals_of_the_trained_sphere_point_outwards(run):
    """The report's normal map of the (tiny, 100-step) sphere run agrees with the sphere's radial
    normals at the rendered surface points (measured mean cosine 0.82)."""
    import torch

    from pipeline.rays import image_rays
    from pipeline.report.model_views import load_run, render_view

    ld = load_run(run)
    v = render_view(ld, "test", 0)
    assert v["normals_from"] == "the rendered depth map" and "gt" in v
    o, d = image_rays(ld.scene.splits["test"].cameras, 0)
    pts = (o + torch.as_tensor(v["depth"].reshape(-1, 1)) * d).numpy().reshape(32, 32, 3)
    radial = pts / np.linalg.norm(pts, axis=-1, keepdims=True)
    m = v["normals_mask"]
    cos = np.sum(v["normals"] * radial, -1)[m]
    print(f"tiny sphere normal map: mean cos to the radial normal {cos.mean():.3f} over {m.sum()} pixels")
    assert m.sum() > 100 and cos.mean() > 0.6


def test_report_of_a_killed_run_says_what_is_missing(tmp_path_factory, tmp_path):
    from pipeline.report import build_report

    run = killed_run(tmp_path_factory)
    page = parse(build_report(run, tmp_path / "killed.html", progress=False))
    assert_self_contained(page)
    words = " ".join(page.text)
    assert "incomplete: no summary.json; trained to step 100 of 100, newest checkpoint at step 50" in words
    assert "summary.json: the run stopped at step 100" in words
    assert "No final metrics" in words and "Last logged training values" in words
    assert "No exported mesh" in words
    assert "rendered from the newest checkpoint (step 50)" in words
    imgs = embedded_images(page)
    assert len(imgs) >= 4  # curves, a render from the checkpoint, depth+normals, slices


def test_report_of_a_run_with_a_corrupt_checkpoint_warns_on_the_terminal(run, nls, tmp_path):
    """The report is still written (exit 0), and the reason its model views are missing is
    printed, not only embedded in the HTML."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    newest = sorted((bad / "checkpoints").glob("ckpt_*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    res = nls("report", str(bad), "-o", str(tmp_path / "bad.html"), "-q", check=True)
    assert "warning:" in res.stderr and "no renders, normal maps or slices" in res.stderr, res.stderr
    assert newest.name in res.stderr, res.stderr
    assert "could not be rebuilt" in (tmp_path / "bad.html").read_text()


def test_report_names_an_unreadable_render_instead_of_crashing(run, tmp_path):
    """A 0-byte side-by-side (left by a render killed before renders were written atomically) is named in the
    report, with the command that writes it again; the report used to stop with imageio's traceback."""
    import shutil

    from pipeline.report import build_report

    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    side = sorted((cut / "renders").rglob("*_pred_gt_depth.png"))[0]
    side.write_bytes(b"")
    words = " ".join(parse(build_report(cut, tmp_path / "cut.html", progress=False, use_model=False)).text)
    assert f"{side.relative_to(cut)} cannot be read" in words and f"nls render {cut}" in words


def test_report_shows_published_reference_and_plugin_slices(run, tmp_path):
    """A scene's `reference:` block is validated, kept in the resolved config and shown by the report;
    PNGs a plugin wrote to a `*slices` folder are embedded byte for byte."""
    from pipeline.report.figures import png_bytes

    from pipeline.config import dump_yaml, load_resolved
    from pipeline.report import build_report
    from pipeline.testing import plugin_host

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["reference"] = {"psnr": {"value": 31.5, "source": "Table 1 of the paper"}, "chamfer_l1": 4.2}
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    slice_png = png_bytes(np.random.default_rng(0).random((20, 30, 3)))
    (copy / "sdf_slices").mkdir()
    (copy / "sdf_slices" / "sdf_x_0.50.png").write_bytes(slice_png)
    resolved = load_resolved(copy / "config.yaml", plugin_host())
    assert resolved.reference["psnr"].value == 31.5 and resolved.reference["chamfer_l1"].source == ""
    assert yaml.safe_load(dump_yaml(resolved.to_dict()))["reference"]["psnr"]["source"] == "Table 1 of the paper"
    page = parse(build_report(copy, tmp_path / "r.html", use_model=False, progress=False))
    rows = {r[0]: r[1:] for r in page.rows if r}
    assert rows["psnr"][0] == "↑" and rows["psnr"][2:4] == ["31.5000", "Table 1 of the paper"]
    assert rows["chamfer_l1"][0] == "↓" and rows["chamfer_l1"][2] == "4.2000"
    srcs = [a["src"] for t, a in page.tags if t == "img"]
    assert f"data:image/png;base64,{base64.b64encode(slice_png).decode()}" in srcs
    assert "sdf_slices/sdf_x_0.50.png (written by the method's plugin)" in " ".join(page.text)


def report_sections(path) -> dict[str, str]:
    """{section heading: the section's visible text} of a report page."""
    import html

    found = re.findall(r"<section><h2>(.*?)</h2>(.*?)</section>", path.read_text(), re.S)
    return {html.unescape(h): html.unescape(re.sub(r"<[^>]+>", " ", inner)) for h, inner in found}


def side_by_side_paths(text: str) -> list[str]:
    """The run-relative paths of the side-by-sides a section's captions name."""
    return re.findall(r"(?<![\w/])(\S+_pred_gt_depth\.png):", text)


def test_report_sections_say_which_split_and_command_made_each_render(run, nls, tmp_path):
    """`nls render --split train` and `nls eval` beside training's test renders: the test section shows
    one set of test renders (those its PSNR comes from), names the other, and the train views get a
    section of their own; only a folder named after one of the run's evaluators is said to be
    written by an evaluator."""
    from pipeline.report import build_report
    from pipeline.report.figures import png_bytes

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    nls("render", str(copy), "--split", "train", "--every", "4", "--max-images", "2", "-q", check=True)
    trains = sorted(p.relative_to(copy).as_posix() for p in (copy / "renders" / "train").glob("*_pred_gt_depth.png"))
    tests = sorted(p.relative_to(copy).as_posix() for p in (copy / "renders" / "test").glob("*_pred_gt_depth.png"))
    assert len(trains) == 2 and tests

    secs = report_sections(build_report(copy, tmp_path / "a.html", use_model=False, progress=False))
    assert side_by_side_paths(secs["Test renders and ground truth"]) == tests
    assert "Other renders" not in secs["Test renders and ground truth"]
    assert side_by_side_paths(secs["Renders of the train split (nls render)"]) == trains

    nls("eval", str(copy), "--set", "evaluators=[{type: psnr}]", "-q", check=True)
    shown = sorted(p.relative_to(copy).as_posix()
                   for p in (copy / "eval_renders" / "test").glob("*_pred_gt_depth.png"))
    png = png_bytes(np.random.default_rng(0).random((8, 8, 3)))
    for folder in ("sphere_trace", "scratch"):
        (copy / "renders" / folder).mkdir()
        (copy / "renders" / folder / "view_00.png").write_bytes(png)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["evaluators"].append({"type": "sphere_trace"})
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    secs = report_sections(build_report(copy, tmp_path / "b.html", use_model=False, progress=False))
    test = secs["Test renders and ground truth"]
    assert side_by_side_paths(test) == shown, test  # the renders its PSNR (from eval.json) was computed from
    assert f"Other renders of the test split, not shown here: renders/test/ ({len(tests)} view" in test, test
    assert side_by_side_paths(secs["Renders of the train split (nls render)"]) == trains
    assert "renders/sphere_trace/view_00.png (written by the sphere_trace evaluator)" in \
        secs["Images of the sphere_trace evaluator"]
    assert "renders/scratch/view_00.png" in secs["Images in renders/scratch/"]
    assert not any("written by an evaluator" in t or "scratch/view_00.png (" in t for t in secs.values()), secs


def test_report_mesh_hint_puts_the_mesh_where_the_report_finds_it(run, nls, tmp_path):
    """The hint of a run without a mesh names a path inside the run (a relative -o would be relative to
    the current folder); followed from another folder, the next report shows that mesh."""
    import shlex

    from pipeline.report import build_report

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "meshes")
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({**summary, "mesh": None}))
    secs = report_sections(build_report(copy, tmp_path / "a.html", use_model=False, progress=False))
    hint = re.search(r"Make one with `(nls export [^`]+)`", secs["Mesh"])
    assert hint and hint.group(1) == f"nls export {copy} -o {copy / 'meshes' / 'mesh.ply'}", secs["Mesh"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nls(*shlex.split(hint.group(1))[1:], cwd=elsewhere, check=True)
    assert not list(elsewhere.iterdir())
    secs = report_sections(build_report(copy, tmp_path / "b.html", use_model=False, progress=False))
    assert "No exported mesh" not in secs["Mesh"] and "meshes/mesh.ply:" in secs["Mesh"], secs["Mesh"]


def test_reference_block_is_validated(tmp_path):
    from pipeline.config import validate
    from pipeline.testing import TINY_SCENE, plugin_host
    from pipeline.types import ConfigError

    host = plugin_host()
    with pytest.raises(ConfigError, match=r"reference\.psnr\.value"):
        validate({**TINY_SCENE, "reference": {"psnr": {"value": "high"}}}, host, source="s.yaml")
    with pytest.raises(ConfigError, match=r"reference must be a mapping"):
        validate({**TINY_SCENE, "reference": [1, 2]}, host, source="s.yaml")
    with pytest.raises(ConfigError, match=r"reference\.psnr\.paper: unknown key; valid keys here: value, source"):
        validate({**TINY_SCENE, "reference": {"psnr": {"value": 1, "paper": "x"}}}, host, source="s.yaml")


def test_report_of_a_folder_that_is_not_a_run(nls, tmp_path):
    res = nls("report", str(tmp_path))
    assert res.returncode == 2
    assert "is not a run folder" in res.stderr and "Traceback" not in res.stderr
