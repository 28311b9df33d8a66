"""`nls view RUN_DIR`: an interactive viewer (viser) served on localhost only.

Shows the exported mesh (or one extracted from the checkpoint), the training cameras as
frustums, the input point cloud where the scene has one, and a slider over level-set values
that re-extracts the mesh at the chosen level from a cached grid of the field (marching
cubes through :func:`pipeline.mesh.grid_to_mesh`). For a run that renders images, a button
renders the field from the browser's camera (:meth:`LevelSetViewer.render_view`) and shows it
behind the scene, composited by depth (the mesh is hidden where it lies behind the field's
surface), with a switch that hides the mesh. viser is an optional extra, imported
only here: ``pip install '.[viewer]'``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.types import NLSError

INSTALL_HINT = "nls view needs the optional viewer extra: pip install '.[viewer]'  (or: pip install viser)"
MESH_COLOR = (230, 120, 40)  # orange: the browser test finds the mesh by this hue
CAMERA_COLOR = (40, 40, 40)
POINT_COLOR = (30, 90, 220)
MAX_FRUSTUMS = 200
MAX_POINTS = 200_000


def import_viser():
    """Import viser or raise an NLSError that says how to install it."""
    try:
        import viser
    except ImportError:
        raise NLSError(INSTALL_HINT) from None
    return viser


def cv_view_camera(position, wxyz, fov: float, aspect: float, height: int):
    """The :class:`pipeline.types.Cameras` (one, OpenGL axes, square pixels, principal point at the centre) of a
    viser camera: ``position`` (3,), ``wxyz`` its camera-to-world rotation in OpenCV axes, ``fov`` vertical (radians),
    ``aspect`` width / height, at ``height`` pixels: the inverse of :func:`gl_to_cv_wxyz`."""
    import torch
    from scipy.spatial.transform import Rotation

    from pipeline.types import Cameras

    w, x, y, z = (float(v) for v in wxyz)
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_quat([x, y, z, w]).as_matrix() @ np.diag([1.0, -1.0, -1.0])
    c2w[:3, 3] = np.asarray(position, np.float64)
    width = max(1, int(round(height * float(aspect))))
    f = torch.tensor([0.5 * height / np.tan(0.5 * float(fov))], dtype=torch.float32)
    return Cameras(torch.tensor(c2w[None], dtype=torch.float32), f, f.clone(), torch.tensor([width / 2.0]),
                   torch.tensor([height / 2.0]), width, int(height))


#: view depth (world units) given to pixels the field leaves empty (opacity at most 1/2), so that the render there
#: lies behind everything in the scene (viser clips depths at 2^24 / 10^5, about 168 units)
FAR_DEPTH = 1e3


def view_depth(depth, opacity, cameras) -> np.ndarray:
    """``(H, W)`` float32 depth along the viewing axis (world units) for compositing a render with the scene, from
    a render's ``depth`` and ``opacity`` ``(H, W, 1)`` (distances along each pixel's unit ray) through pinhole
    ``cameras`` (one): a pixel ``(u, v)``'s ray meets the axis at ``cos = 1 / |((u - cx) / fx, (v - cy) / fy, 1)|``,
    so its view depth is the distance times that. Pixels of opacity at most 1/2 get :data:`FAR_DEPTH`."""
    from pipeline.rays import image_pixel_coords

    h, w = int(cameras.height), int(cameras.width)
    u, v = (t.double().numpy().reshape(h, w) for t in image_pixel_coords(w, h, 0, w * h))
    fx, fy, cx, cy = (float(t[0]) for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    cos = 1.0 / np.sqrt(1.0 + ((u - cx) / fx) ** 2 + ((v - cy) / fy) ** 2)
    t = np.asarray(depth.detach().cpu().double().numpy()).reshape(h, w)
    hit = np.asarray(opacity.detach().cpu().numpy()).reshape(h, w) > 0.5
    return np.where(hit, t * cos, FAR_DEPTH).astype(np.float32)


def gl_to_cv_wxyz(c2w: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of a Blender/OpenGL camera-to-world rotation (3,3) turned into
    viser's OpenCV convention (camera looks down +z, +y down): R @ diag(1, -1, -1)."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(c2w, np.float64)[:3, :3] @ np.diag([1.0, -1.0, -1.0])
    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return np.array([w, x, y, z])


class LevelSetViewer:
    """Holds the run, the cached field grid and the viser scene handles."""

    def __init__(self, run_dir: Path, *, host=None, port: int = 8080, resolution: int = 128,
                 bind: str = "127.0.0.1"):
        viser = import_viser()
        from pipeline.report.model_views import geometry_of, load_run

        self.ld = load_run(Path(run_dir), host)
        self.geo = geometry_of(self.ld)
        self.aabb = self.ld.scene.aabb.detach().cpu().numpy().astype(np.float64).tolist()
        self.resolution = int(resolution)
        self.grid: Optional[np.ndarray] = None
        self.server = viser.ViserServer(host=bind, port=port, verbose=False)
        self.server.scene.set_up_direction("+z")
        self.server.scene.configure_environment_map(hdri=None)  # the default HDRI is fetched from a CDN
        # without the HDRI the default lights leave the mesh dark: add a sky/ground hemisphere light
        self.server.scene.add_light_hemisphere("/light", sky_color=(255, 255, 255), ground_color=(90, 90, 110),
                                               intensity=1.5)
        self._lock = threading.Lock()
        self.mesh_handle = None
        #: the level the shown mesh was extracted at (None: not known); the level slider starts there
        self.shown_level: Optional[float] = None
        self.slider = None
        self.status = self.server.gui.add_markdown("")
        self._render_lock = threading.Lock()
        if self.ld.system.renderer is not None and self.ld.scene.splits:
            self._add_render_controls()
        self._add_cameras()
        self._add_points()
        self.server.on_client_connect(self._frame_client)
        #: set once the level grid is cached and the slider exists (or that failed; see ``status``)
        self.ready = threading.Event()
        shown = self._add_exported_mesh()
        # evaluating the field on the grid can take a while (large MLPs on CPU): serve meanwhile.
        # stop() cancels it between chunks and joins it: a daemon thread killed inside torch at exit
        # aborts the process ("terminate called without an active exception")
        self._cancel = threading.Event()
        self._levels = threading.Thread(target=self._prepare_levels, args=(not shown,), daemon=True)
        self._levels.start()

    # -- scene ----------------------------------------------------------------------------
    def _show_mesh(self, mesh, label: str) -> None:
        with self._lock:
            if self.mesh_handle is not None:
                self.mesh_handle.remove()
            self.mesh_handle = self.server.scene.add_mesh_simple(
                "/mesh", np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32),
                color=MESH_COLOR, side="double")
            self.status.content = f"**mesh:** {label}  \n{len(mesh.vertices)} vertices, {len(mesh.faces)} faces"

    def _add_exported_mesh(self) -> bool:
        """Show meshes/mesh.ply, with the level summary.json records it was extracted at
        (:func:`pipeline.report.collect.summary_mesh_level`); False when there is no such file."""
        exported = self.ld.run.meshes_dir / "mesh.ply"
        if not exported.exists():
            return False
        from pipeline.report.collect import summary_mesh_level
        from pipeline.scenes.mesh_render import load_mesh

        self.shown_level = summary_mesh_level(self.ld.run.read_json("summary.json"), self.ld.run.path, exported)
        at = f", level {self.shown_level:.4g}" if self.shown_level is not None else ""
        self._show_mesh(load_mesh(exported), f"meshes/mesh.ply (exported{at})")
        return True

    def _prepare_levels(self, show_mesh: bool) -> None:
        """Cache the field on a grid, then add the level slider (and a mesh if none is shown)."""
        from pipeline.mesh import field_to_grid, query_chunk

        try:
            if self.geo is None:
                self.status.content = "no level sets: the field produces no sdf, occupancy or density"
                return
            t0 = time.monotonic()
            note = f"computing the {self.geo.quantity} on a {self.resolution}^3 grid for the level slider..."
            self.status.content = (self.status.content + "  \n" + note) if self.mesh_handle else note
            q = self.geo.quantity

            def values(x):
                if self._cancel.is_set():
                    raise _Cancelled
                return self.ld.system.chain(x, None)[q]

            self.grid = field_to_grid(values, self.aabb, self.resolution, device=self.ld.device,
                                      chunk=query_chunk(self.ld.system.chain, self.ld.device),
                                      progress=sys.stderr.isatty())
            if show_mesh:
                self.shown_level = self.geo.level
                self.extract(self.geo.level)
            elif self.mesh_handle is not None:
                self.status.content = self.status.content.split("  \ncomputing")[0]
            self._add_slider()
            print(f"nls view: level slider ready ({time.monotonic() - t0:.0f} s)", flush=True)
        except _Cancelled:
            pass
        except (NLSError, RuntimeError) as exc:
            self.status.content = f"level slider unavailable: {exc}"
            print(f"nls view: level slider unavailable: {exc}", file=sys.stderr, flush=True)
        finally:
            self.ready.set()

    def extract(self, level: float) -> bool:
        """Re-extract the mesh at ``level`` from the cached grid; False when the level set is empty."""
        from pipeline.mesh import grid_to_mesh

        try:
            mesh = grid_to_mesh(self.grid, self.aabb, level, inside=self.geo.inside)
        except NLSError as exc:
            self.status.content = f"**level {level:.4g}:** {exc}"
            return False
        self._show_mesh(mesh, f"{self.geo.quantity} level {level:.4g} (re-extracted)")
        return True

    def _add_cameras(self) -> None:
        sp = self.ld.scene.splits.get("train")
        if sp is None:
            return
        cams = sp.cameras
        c2w = cams.c2w.detach().cpu().numpy()
        fy = cams.fy.detach().cpu().numpy()
        extent = float(np.linalg.norm(np.subtract(self.aabb[3:], self.aabb[:3])))
        idx = np.linspace(0, len(c2w) - 1, min(len(c2w), MAX_FRUSTUMS)).round().astype(int)
        for k in idx:
            fov = 2 * np.arctan(0.5 * cams.height / float(fy[k]))
            self.server.scene.add_camera_frustum(
                f"/cameras/train_{k:04d}", fov=float(fov), aspect=cams.width / cams.height,
                scale=0.08 * extent, color=CAMERA_COLOR, wxyz=gl_to_cv_wxyz(c2w[k]),
                position=c2w[k][:3, 3].astype(np.float64))

    def _add_points(self) -> None:
        pts = self.ld.scene.points
        if pts is None:
            return
        pts = np.asarray(pts, np.float32)
        colours = self.ld.scene.point_colors  # (structure from motion's own colours where the scene has them)
        colours = POINT_COLOR if colours is None or len(colours) != len(pts) else np.asarray(colours, np.uint8)
        if len(pts) > MAX_POINTS:
            pick = np.random.default_rng(0).choice(len(pts), MAX_POINTS, replace=False)
            pts, colours = pts[pick], colours if isinstance(colours, tuple) else colours[pick]
        extent = float(np.linalg.norm(np.subtract(self.aabb[3:], self.aabb[:3])))
        self.server.scene.add_point_cloud("/points", pts, colors=colours, point_size=0.004 * extent)

    def _add_slider(self) -> None:
        """The level slider over the cached grid's range, starting at the level of the shown mesh (clamped
        to the range): :attr:`shown_level`, else the extractor's level. Moving it re-extracts the mesh."""
        lo, hi = float(np.nanmin(self.grid)), float(np.nanmax(self.grid))
        level = self.geo.level if self.shown_level is None else self.shown_level
        if self.geo.quantity == "density":  # densities span decades: slide over log10
            lo_l, hi_l = np.log10(max(lo, 1e-3)), np.log10(max(hi, 1e-2))
            slider = self.server.gui.add_slider("log10 density level", min=float(lo_l), max=float(hi_l),
                                                step=float((hi_l - lo_l) / 200),
                                                initial_value=float(np.clip(np.log10(level), lo_l, hi_l)))
            to_level = lambda v: 10.0 ** v  # noqa: E731
        else:
            slider = self.server.gui.add_slider(f"{self.geo.quantity} level", min=lo, max=hi,
                                                step=(hi - lo) / 200, initial_value=float(np.clip(level, lo, hi)))
            to_level = lambda v: v  # noqa: E731
        self.slider = slider

        @slider.on_update
        def _(_event) -> None:
            self.extract(float(to_level(slider.value)))

    def _add_render_controls(self) -> None:
        """A button that renders the field from the clicking browser's camera and shows it behind the scene, the
        render's height, and a switch that hides the mesh in front of it."""
        height = self.server.gui.add_slider("render height (px)", min=64, max=800, step=16, initial_value=192)
        button = self.server.gui.add_button("Render the field from this view")
        show = self.server.gui.add_checkbox("show mesh", initial_value=True)

        @button.on_click
        def _(event) -> None:
            self.render_for(event.client, int(height.value))

        @show.on_update
        def _(_event) -> None:
            with self._lock:
                if self.mesh_handle is not None:
                    self.mesh_handle.visible = bool(show.value)

    def render_view(self, cameras) -> tuple[np.ndarray, np.ndarray]:
        """Render of the run's field by its renderer from ``cameras`` (one camera): the ``(H, W, 3)`` uint8 image
        and its ``(H, W)`` view depth (:func:`view_depth`, of the median depth where the renderer gives one: it
        stays on the surface where the expected depth of a soft density drifts behind it)."""
        import torch

        from pipeline.evaluate import to_uint8

        self.ld.system.eval()
        with self._render_lock, torch.no_grad():
            out = self.ld.system.renderer.render_image(cameras.to(self.ld.device), 0, self.ld.system.chain,
                                                       chunk=self.ld.cfg.eval.chunk)
        return to_uint8(out["rgb"]), view_depth(out.get("depth_median", out["depth"]), out["opacity"], cameras)

    def render_for(self, client, height: int) -> np.ndarray:
        """Render from ``client``'s camera at ``height`` pixels (its canvas's aspect) and set it as that browser's
        background image, with its depth, so that the mesh, the cameras and the points show where they lie in front
        of the field's surface and are hidden where they lie behind it; returns the image."""
        cam = client.camera
        t0 = time.monotonic()
        image, depth = self.render_view(cv_view_camera(cam.position, cam.wxyz, cam.fov, cam.aspect, height))
        client.scene.set_background_image(image, format="png", depth=depth)
        self.status.content = (f"**rendered** the field from your view: {image.shape[1]} x {image.shape[0]} in "
                               f"{time.monotonic() - t0:.1f} s; the mesh shows where it lies in front of the "
                               f"field's surface (untick *show mesh* to see the render whole)")
        return image

    def _frame_client(self, client) -> None:
        """Point a new browser's camera at the scene box from outside it."""
        b = np.asarray(self.aabb).reshape(2, 3)
        centre, extent = b.mean(0), float(np.linalg.norm(b[1] - b[0]))
        client.camera.up_direction = (0.0, 0.0, 1.0)
        client.camera.position = tuple(centre + 0.8 * extent * np.array([1.0, -1.2, 0.8]))
        client.camera.look_at = tuple(centre)

    def url(self) -> str:
        """``http://<host>:<port>`` the viser server listens on."""
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def stop(self) -> None:
        """Cancel the level-grid computation (waiting for its current chunk), then stop the viser server."""
        self._cancel.set()
        self._levels.join()
        self.server.stop()


class _Cancelled(Exception):
    """Raised inside the level-grid computation once :meth:`LevelSetViewer.stop` was called."""


#: seconds ``nls view`` waits for the server to close its connections on exit
STOP_TIMEOUT_S = 10.0


def serve(run_dir: Path, *, host=None, port: int = 8080, resolution: int = 128,
          seconds: Optional[float] = None) -> int:
    """Run the viewer until Ctrl-C (or SIGTERM, or ``seconds``); returns the exit code (0)."""
    import signal

    viewer = LevelSetViewer(run_dir, host=host, port=port, resolution=resolution)
    if port != 0 and viewer.server.get_port() != port:  # viser moves on to the next free port
        print(f"nls view: port {port} is in use; serving on port {viewer.server.get_port()} instead",
              file=sys.stderr, flush=True)
    print(f"nls view: serving {run_dir} at {viewer.url()}  (Ctrl-C stops)", flush=True)
    if not viewer.ready.is_set():
        print(f"nls view: caching the field on a {resolution}^3 grid for the level slider "
              f"(the page works meanwhile)", flush=True)
    stop = threading.Event()
    # Ctrl-C and SIGTERM only set the event: no KeyboardInterrupt can land inside library code
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        t0 = time.monotonic()
        while not stop.is_set() and (seconds is None or time.monotonic() - t0 < seconds):
            stop.wait(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        # the server's own shutdown joins its threads with timeouts; bound the whole of it anyway so
        # a stuck websocket teardown cannot keep the command alive
        closer = threading.Thread(target=viewer.stop, daemon=True)
        closer.start()
        closer.join(STOP_TIMEOUT_S)
        if closer.is_alive():
            print(f"nls view: the server did not shut down within {STOP_TIMEOUT_S:g} s; leaving it",
                  file=sys.stderr, flush=True)
        print("nls view: stopped", file=sys.stderr, flush=True)
    return 0
