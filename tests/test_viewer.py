"""`nls view`: the viser viewer. Unit checks of the camera convention and the level slider's
re-extraction, the install hint without viser, and an end-to-end test in headless Chromium
(skips with the reason when viser, playwright or a Chromium binary is missing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.short_runs import browser_or_skip, short_run

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid")


def test_view_without_viser_says_how_to_install(run, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setitem(sys.modules, "viser", None)  # import viser -> ImportError
    code = main(["view", str(run), "--seconds", "0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install '.[viewer]'" in err


def test_frustum_rotation_looks_at_the_target():
    """A Blender/OpenGL camera looks down its -z; viser wants OpenCV (+z forward, +y down)."""
    from scipy.spatial.transform import Rotation

    from pipeline.scenes.mesh_render import look_at
    from pipeline.viewer import gl_to_cv_wxyz

    for eye in ([2.0, 0.5, 1.0], [-1.0, -2.0, 0.3], [0.1, 0.2, -3.0]):
        c2w = look_at(np.array(eye), target=(0.0, 0.0, 0.0))
        w, x, y, z = gl_to_cv_wxyz(c2w)
        R = Rotation.from_quat([x, y, z, w]).as_matrix()
        forward = R[:, 2]
        np.testing.assert_allclose(forward, -np.array(eye) / np.linalg.norm(eye), atol=1e-9)
        assert R[:, 1] @ np.array([0.0, 0.0, 1.0]) < 0  # image +y (down) points away from world up


def test_level_slider_reextracts_at_that_level(run):
    """Each re-extracted mesh lies on its level of the cached grid (trilinear interpolation at
    the vertices gives the level), it differs per level, and for a density field a higher level gives a smaller volume."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    from scipy.interpolate import RegularGridInterpolator

    from pipeline.viewer import LevelSetViewer

    v = LevelSetViewer(run, port=free_port(), resolution=48)
    try:
        assert v.ready.wait(120), "the level grid was not cached within 2 minutes"
        assert v.server.get_host() == "127.0.0.1"  # served on localhost only
        assert v.geo.quantity == "density" and v.geo.inside == "above"
        assert v.mesh_handle is not None  # the exported mesh is shown first
        b = np.asarray(v.aabb).reshape(2, 3)
        axes = [np.linspace(b[0, i], b[1, i], 48) for i in range(3)]
        interp = RegularGridInterpolator(axes, v.grid)
        volumes = []
        for level in (2.0, 10.0, 20.0):
            assert v.extract(level)
            verts = np.asarray(v.mesh_handle.vertices)
            err = np.abs(interp(verts) - level) / level
            # marching-cubes vertices on grid edges interpolate to the level exactly; Lewiner's method
            # adds a few vertices inside ambiguous cells, off the trilinear level set
            assert np.mean(err < 1e-3) > 0.98 and err.max() < 0.1, (np.mean(err < 1e-3), err.max())
            faces = np.asarray(v.mesh_handle.faces)
            tri = verts[faces]
            volumes.append(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6))
        assert volumes[0] > volumes[1] > volumes[2] > 0, volumes
        assert not v.extract(float(v.grid.max()) + 1.0)  # empty level set: refused, message shown
        assert "empty level set" in v.status.content
    finally:
        v.stop()


def test_rendering_from_the_browsers_camera_gives_the_views_render(run):
    """A browser camera placed as test view 0 (its pose in viser's OpenCV axes, its vertical field of view and
    aspect) renders what the renderer gives for that view, to the 8-bit rounding, and becomes that browser's
    background image, with the depth of each pixel's surface point along the view axis (worked out here from the
    renderer's rays) where the field is opaque, and beyond the scene elsewhere."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    from types import SimpleNamespace

    import torch

    from pipeline.evaluate import to_uint8
    from pipeline.viewer import LevelSetViewer, gl_to_cv_wxyz

    v = LevelSetViewer(run, port=free_port(), resolution=16)
    try:
        cams = v.ld.scene.splits["test"].cameras
        c2w, fy, w, h = cams.c2w[0].numpy(), float(cams.fy[0]), cams.width, cams.height
        shown = []
        client = SimpleNamespace(
            camera=SimpleNamespace(position=c2w[:3, 3], wxyz=gl_to_cv_wxyz(c2w), fov=2 * np.arctan(0.5 * h / fy),
                                   aspect=w / h),
            scene=SimpleNamespace(set_background_image=lambda image, format, depth: shown.append((image, depth))))
        image = v.render_for(client, h)
        with torch.no_grad():
            out = v.ld.system.renderer.render_image(cams.select([0]), 0, v.ld.system.chain)
        ref = to_uint8(out["rgb"])
        assert image.shape == (h, w, 3) and np.abs(image.astype(int) - ref.astype(int)).max() <= 1
        assert len(shown) == 1 and shown[0][0] is image and "rendered" in v.status.content
        from pipeline.rays import image_rays
        from pipeline.viewer import FAR_DEPTH

        origins, dirs = image_rays(cams.select([0]), 0)  # the surface point of each pixel, then along the axis
        points = origins + out["depth_median"].reshape(-1, 1) * dirs
        axis = -cams.c2w[0, :3, 2]  # the camera looks down its -z
        expected = ((points - origins) @ axis).reshape(h, w).numpy()
        hit = out["opacity"][..., 0].numpy() > 0.5
        depth = shown[0][1]
        assert depth.shape == (h, w) and hit.any() and (~hit).any()
        assert np.allclose(depth[hit], expected[hit], rtol=1e-4, atol=1e-4)
        assert (depth[~hit] == FAR_DEPTH).all()
    finally:
        v.stop()


def _wait_for_line(proc, text: str, timeout: float) -> str:
    seen = []
    t0 = time.monotonic()
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if text in line:
                return "".join(seen)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.1)
    raise AssertionError(f"`nls view` did not print {text!r} in {timeout} s; exit {proc.poll()}; "
                         f"stdout: {''.join(seen)}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


def test_view_says_when_its_port_is_taken(run, capsys):
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    from pipeline.viewer import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve(run, port=port, resolution=16, seconds=0.2) == 0
    out, err = capsys.readouterr()
    assert f"port {port} is in use; serving on port" in err, err
    assert f"127.0.0.1:{port}  " not in out, out


def test_view_says_when_the_level_slider_is_ready(run):
    """The terminal said "caching the field ..." and then nothing, however long the grid took."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(run), "--port", "0", "--resolution",
                           "16", "--seconds", "3"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NLS_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "caching the field on a 16^3 grid" in proc.stdout and "nls view: level slider ready (" in proc.stdout


def test_view_stopped_while_caching_the_grid_exits_cleanly(run):
    """--seconds ends the viewer while its background thread is still sampling a 256^3 grid: the thread is
    cancelled and joined, so the process exits 0 instead of aborting in torch (exit 134); port 0 is not
    reported as taken."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(run), "--port", "0", "--resolution",
                           "256", "--seconds", "1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NLS_THREADS": "1"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "caching the field on a 256^3 grid" in proc.stdout and "terminate called" not in proc.stderr
    assert "is in use" not in proc.stderr


def test_view_in_headless_chromium(run, tmp_path):
    exe = browser_or_skip()
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "view", str(run), "--port", str(port),
                             "--resolution", "48"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                         "PYTHONFAULTHANDLER": "1"})
    errors, external = [], []
    try:
        _wait_for_line(proc, f"http://127.0.0.1:{port}", timeout=120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=[
                "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith(
                (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", "data:", "blob:")) else None)
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("canvas", timeout=60_000)
            shot = tmp_path / "view.png"
            mesh_px = 0
            for _ in range(30):  # the scene streams in over the websocket: wait until the mesh is drawn
                page.wait_for_timeout(500)
                page.screenshot(path=str(shot))
                mesh_px = _mesh_pixels(shot)
                if mesh_px > 300:
                    break
            browser.close()
        print(f"nls view screenshot: {mesh_px} mesh-coloured pixels in the central region")
        assert mesh_px > 300, f"the mesh does not show in the screenshot ({mesh_px} mesh-coloured pixels): {shot}"
        assert not errors, f"console errors: {errors}"
        assert not external, f"the page made requests off localhost: {external}"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # show where it hangs: faulthandler dumps every thread on SIGABRT
            proc.send_signal(signal.SIGABRT)
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                err = "(no traceback: killed)"
            raise AssertionError(f"`nls view` did not exit within 30 s of Ctrl-C; its threads:\n{err[-6000:]}")
    assert proc.returncode == 0, err
    assert "nls view: stopped" in err and "Traceback" not in err


def _mesh_pixels(path) -> int:
    """Pixels of the central half of the screenshot with the mesh's orange hue (R > G > B, saturated);
    the background is white, grid and frustums grey, the GUI panels sit at the edges."""
    import imageio.v3 as iio

    a = iio.imread(path)[..., :3].astype(np.int32)
    h, w = a.shape[:2]
    c = a[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    return int(((r > g + 15) & (g > b + 5) & (r - b > 60) & (r > 60)).sum())


def test_view_depth_of_a_plane_facing_the_camera_is_its_distance():
    """A camera 2 units above the plane z = 0, looking straight down: each pixel's ray meets the plane 2 / cos
    units away, and its view depth is 2 everywhere (off-centre principal point, fx != fy); empty pixels are far."""
    import torch

    from pipeline.rays import image_rays
    from pipeline.types import Cameras
    from pipeline.viewer import FAR_DEPTH, view_depth

    c2w = torch.eye(4, dtype=torch.float64)
    c2w[2, 3] = 2.0  # Blender axes: the camera looks down its -z, which is the world's -z here
    cams = Cameras(c2w[None], torch.tensor([30.0]), torch.tensor([45.0]), torch.tensor([14.0]), torch.tensor([9.0]),
                   32, 24)
    origins, dirs = image_rays(cams, 0)
    t = (-origins[:, 2] / dirs[:, 2]).reshape(24, 32, 1)  # distance along each unit ray to z = 0
    assert float(t.max() - t.min()) > 0.3  # the corners' rays are much longer than the centre's
    opacity = torch.ones(24, 32, 1)
    opacity[:3] = 0.2
    depth = view_depth(t, opacity, cams)
    assert np.allclose(depth[3:], 2.0, atol=1e-5) and (depth[:3] == FAR_DEPTH).all()


def _blue_pixels(path) -> int:
    """Pixels of the central half of the screenshot in the blue of the test's background image."""
    import imageio.v3 as iio

    a = iio.imread(path)[..., :3].astype(np.int32)
    h, w = a.shape[:2]
    c = a[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    return int(((c[..., 2] > 150) & (c[..., 0] < 60) & (c[..., 1] < 60)).sum())


def test_background_depth_hides_what_lies_behind_it_in_chromium(run, tmp_path):
    """viser composites the background image by the depth the viewer gives it (view depth in world units, as
    :func:`pipeline.viewer.view_depth` makes it): in headless Chromium a blue background set a fifth nearer than
    the mesh's nearest vertex (along the browser camera's axis) hides the mesh, and one a fifth beyond its farthest
    leaves it in view."""
    exe = browser_or_skip()
    from playwright.sync_api import sync_playwright
    from scipy.spatial.transform import Rotation

    from pipeline.viewer import LevelSetViewer

    v = LevelSetViewer(run, port=free_port(), resolution=16)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=[
                "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.goto(v.url())
            page.wait_for_selector("canvas", timeout=60_000)
            shot = tmp_path / "view.png"

            def counts(want_mesh: bool) -> tuple[int, int]:
                for _ in range(30):  # the scene and the image stream in over the websocket
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(shot))
                    mesh, blue = _mesh_pixels(shot), _blue_pixels(shot)
                    if (mesh > 300) == want_mesh and blue > 300:
                        break
                return mesh, blue

            blue = np.zeros((150, 200, 3), np.uint8)
            blue[..., 2] = 220
            for _ in range(60):
                clients = list(v.server.get_clients().values())
                if clients and v.mesh_handle is not None:
                    break
                page.wait_for_timeout(500)
            client = clients[0]
            page.wait_for_timeout(1000)  # the camera _frame_client set, as the browser reports it back
            cam = client.camera
            w, x, y, z = (float(c) for c in cam.wxyz)
            axis = Rotation.from_quat([x, y, z, w]).as_matrix()[:, 2]  # OpenCV axes: the camera looks down +z
            depths = (np.asarray(v.mesh_handle.vertices, np.float64) - np.asarray(cam.position)) @ axis
            near, far = float(depths.min()), float(depths.max())
            assert near > 0, depths
            client.scene.set_background_image(blue, format="png", depth=np.full((150, 200), 1.2 * far, np.float32))
            behind = counts(want_mesh=True)
            client.scene.set_background_image(blue, format="png", depth=np.full((150, 200), 0.8 * near, np.float32))
            front = counts(want_mesh=False)
            browser.close()
        print(f"mesh / blue pixels with the background behind the mesh: {behind}, in front of it: {front}")
        assert behind[0] > 300 and behind[1] > 300, behind
        assert front[0] < 20 and front[1] > 300, front
    finally:
        v.stop()


@pytest.mark.parametrize("coloured", [True, False])
def test_the_scene_s_points_are_shown_in_their_own_colours(coloured, monkeypatch):
    """Sparse points with colours (structure from motion's) are shown in them, a sample of them kept with its own
    colours when there are too many; points without colours in the viewer's one colour."""
    pytest.importorskip("viser", reason="viser is not installed (pip install '.[viewer]')")
    from types import SimpleNamespace

    from pipeline import viewer

    monkeypatch.setattr(viewer, "MAX_POINTS", 40)
    pts = np.random.default_rng(0).random((100, 3)).astype(np.float32)
    colours = (pts * 255).astype(np.uint8) if coloured else None  # (each point's colour its position)
    shown = {}
    fake = SimpleNamespace(ld=SimpleNamespace(scene=SimpleNamespace(points=pts, point_colors=colours)),
                           aabb=[0, 0, 0, 1, 1, 1], server=SimpleNamespace(scene=SimpleNamespace(
                               add_point_cloud=lambda name, p, colors, point_size: shown.update(p=p, c=colors))))
    viewer.LevelSetViewer._add_points(fake)
    assert len(shown["p"]) == 40
    if coloured:
        assert np.array_equal(shown["c"], (shown["p"] * 255).astype(np.uint8))
    else:
        assert shown["c"] == viewer.POINT_COLOR
