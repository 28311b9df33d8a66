"""Mesh extraction (marching cubes on any scalar field) and mesh / point-cloud export.

``extract_mesh(fn, bbox, resolution, level)`` is the stage "field -> mesh": ``fn`` maps
``(M, 3)`` world points to ``(M,)`` values (an SDF, a density, an occupancy
probability...). ``inside="below"`` means values under ``level`` are inside (SDFs, negative
inside); ``inside="above"`` means values over ``level`` are inside (density, occupancy).
Faces are always oriented so normals point outward (positive signed volume for a closed
surface). An analytic SDF's mesh is simply ``extract_mesh(sdf, bbox, res, 0.0)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from pipeline.types import Cameras, EmptyLevelSet, NLSError

#: marching-cubes level used when a scene gives none, per quantity
DEFAULT_LEVEL = {"sdf": 0.0, "occupancy": 0.5, "density": 10.0}
#: which side of the level is inside the surface, per quantity
INSIDE = {"sdf": "below", "occupancy": "above", "density": "above"}

__all__ = ["DEFAULT_LEVEL", "INSIDE", "extract_mesh", "field_to_grid", "field_to_grid_narrow", "grid_to_mesh", "export_mesh",
           "export_point_cloud", "MESH_FORMATS", "COLOR_FORMATS", "bake_vertex_colors", "weld_for_format",
           "progress_default"]

#: extensions accepted by :func:`export_mesh`
MESH_FORMATS = (".ply", ".obj", ".glb", ".stl", ".off")


def _check_bbox(bbox) -> np.ndarray:
    try:
        b = np.asarray(bbox, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise NLSError(f"bbox must be 6 numbers [xmin, ymin, zmin, xmax, ymax, zmax], "
                       f"got {bbox!r}") from None
    if b.size != 6 or not np.isfinite(b).all() or (b[3:] <= b[:3]).any():
        raise NLSError(f"bbox must be 6 finite numbers [xmin, ymin, zmin, xmax, ymax, zmax] "
                       f"with min < max, got {bbox!r}")
    return b


def _values(fn: Callable, pts):
    """``fn(pts (M,3))`` as a CPU float32 tensor ``(M,)``; a field that returns another count of
    values gets an error naming the shapes."""
    import torch

    val = fn(pts)
    if not torch.is_tensor(val):
        val = torch.as_tensor(np.asarray(val))
    if val.numel() != len(pts):
        raise NLSError(f"extract_mesh: the field returned {tuple(val.shape)} for "
                       f"{len(pts)} points; expected ({len(pts)},) values")
    return val.reshape(-1).detach().to("cpu", torch.float32)


#: when stderr is not a terminal, field sampling that has run this many seconds starts printing plain
#: progress lines (pipeline.progress.StepProgress's, every 10 s and at the end); shorter work stays silent
PLAIN_PROGRESS_AFTER_S = 5.0
#: the ``progress`` that field sampling takes when its caller passes None (see :func:`progress_default`)
_PROGRESS_DEFAULT: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("nls_mesh_progress", default=None)


@contextlib.contextmanager
def progress_default(progress: Optional[bool]) -> Iterator[None]:
    """Within the block, field sampling called with ``progress=None`` (as extractors call it) uses
    ``progress``: False silences it (``-q``), True always reports, None keeps the automatic choice."""
    token = _PROGRESS_DEFAULT.set(progress)
    try:
        yield
    finally:
        _PROGRESS_DEFAULT.reset(token)


def progress_setting() -> Optional[bool]:
    """The ``progress`` of the innermost :func:`progress_default` block (None outside any): False under ``-q``."""
    return _PROGRESS_DEFAULT.get()


class _SamplingProgress:
    """Progress of evaluating a field at ``total`` points, through :class:`pipeline.progress.StepProgress`.

    ``progress``: True reports (a bar on a terminal, plain lines otherwise), False never; None (the
    default, or :func:`progress_default`'s value): a bar on a terminal for ``resolution`` >= 256, and,
    when stderr is not a terminal, plain lines once the work has taken :data:`PLAIN_PROGRESS_AFTER_S`
    seconds since ``started``."""

    def __init__(self, total: int, label: str, progress: Optional[bool], resolution: int,
                 started: Optional[float] = None):
        from pipeline.progress import StepProgress

        if progress is None:
            progress = _PROGRESS_DEFAULT.get()
        tty = sys.stderr.isatty()
        auto = progress is None
        enabled = bool(progress) or (auto and (resolution >= 256 or not tty))
        self.bar = StepProgress(int(total), 0, label, enabled=enabled)
        self.quiet_until = ((started if started is not None else time.perf_counter()) + PLAIN_PROGRESS_AFTER_S
                            if auto and not tty else float("-inf"))
        self.shown = False

    def __enter__(self) -> "_SamplingProgress":
        self.bar.__enter__()
        return self

    def advance(self, done: int) -> None:
        """``done`` of the points are evaluated."""
        if self.shown or time.perf_counter() >= self.quiet_until:
            self.shown = True
            self.bar.advance(done, "points")

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


#: points per field call when sampling a grid, unless the field asks for another count (:func:`query_chunk`)
DEFAULT_CHUNK = 2 ** 18


def query_chunk(chain, device) -> int:
    """Points per call of ``chain`` when sampling a grid: on CPU, its field's ``cpu_query_chunk`` when the
    field declares one, else :data:`DEFAULT_CHUNK`. An MLP field declares a small count, so the activations
    of one call stay in the CPU's cache (lipschitz's SLL field on spot, 128^3 on 2 cores: 22.9 s at 2^18
    points, 8.6 s at 2^13, the same grid bit for bit); grid fields gain nothing from it and pay a per-call
    overhead, so they declare none."""
    import torch

    field = getattr(chain, "field", None)
    hint = getattr(field, "cpu_query_chunk", None)
    return int(hint) if hint and torch.device(device).type == "cpu" else DEFAULT_CHUNK


def field_to_grid(fn: Callable, bbox: Sequence[float], resolution: int, *,
                  chunk: int = DEFAULT_CHUNK, device="cpu",
                  progress: Optional[bool] = None) -> np.ndarray:
    """Evaluate ``fn`` on the ``resolution**3`` grid of corner-aligned samples of ``bbox``
    (``linspace(min, max, resolution)`` per axis) in chunks under ``torch.no_grad``.

    ``progress``: True reports progress (a bar on a terminal, plain stderr lines otherwise), False
    never; None: a bar on a terminal from 256^3 up, plain lines once the work has taken a few seconds
    when stderr is not a terminal (:class:`_SamplingProgress`; :func:`progress_default` sets it for a block).

    Returns a float32 array ``(R, R, R)`` indexed ``[ix, iy, iz]``.
    """
    import torch

    b = _check_bbox(bbox)
    R = int(resolution)
    if R != resolution or R < 2:
        raise NLSError(f"resolution must be an integer >= 2, got {resolution!r}")
    if int(chunk) < 1:
        raise NLSError(f"chunk must be a positive integer, got {chunk!r}")
    total = R ** 3
    out = np.empty(total, np.float32)
    lo = torch.tensor(b[:3], dtype=torch.float32, device=device)
    step = torch.tensor((b[3:] - b[:3]) / (R - 1), dtype=torch.float32, device=device)
    with _SamplingProgress(total, f"evaluating field on {R}^3 grid", progress, R) as bar, torch.no_grad():
        for s in range(0, total, int(chunk)):
            e = min(total, s + int(chunk))
            idx = torch.arange(s, e, device=device, dtype=torch.int64)
            ijk = torch.stack([idx // (R * R), (idx // R) % R, idx % R], -1)
            out[s:e] = _values(fn, lo + ijk.to(torch.float32) * step).numpy()
            bar.advance(e)
    return out.reshape(R, R, R)


def field_to_grid_narrow(fn: Callable, bbox: Sequence[float], resolution: int, level: float,
                         lipschitz: float, *, stride: int = 4, chunk: int = DEFAULT_CHUNK,
                         device="cpu", progress: Optional[bool] = None) -> tuple[np.ndarray, dict]:
    """The grid of :func:`field_to_grid`, exact only near the level set, for fields whose
    Lipschitz constant is at most ``lipschitz`` (an SDF: 1; a trained MLP SDF: a margin above 1).

    The field is evaluated on a coarse grid of ``stride`` fine cells per side; a coarse cell can
    hold the level set only if ``|f − level| ≤ lipschitz · (its diagonal)`` at one of its
    corners. Fine points of such cells are evaluated; the others get the trilinear
    interpolation of the coarse values, which all have the sign of the cell's corners, so
    marching cubes at ``level`` sees the same crossings as on the dense grid. The bound is
    raised to 1.25× the steepest finite difference of the coarse grid when that is larger; a
    field steeper than the bound only between coarse samples can still lose thin parts.

    ``progress`` as in :func:`field_to_grid`, over the coarse grid, then the points near the level.

    Returns ``(grid (R, R, R) float32, stats)`` with the number of field evaluations.
    """
    import torch

    b = _check_bbox(bbox)
    R, s = int(resolution), int(stride)
    if R != resolution or R < 2:
        raise NLSError(f"resolution must be an integer >= 2, got {resolution!r}")
    if s < 1 or not (lipschitz > 0 and np.isfinite(lipschitz)):
        raise NLSError(f"narrow band: need stride >= 1 and a finite lipschitz bound > 0, got "
                       f"stride={stride!r}, lipschitz={lipschitz!r}")
    h = (b[3:] - b[:3]) / (R - 1)  # fine spacing
    nc = -(-(R - 1) // s)  # coarse cells per axis; the coarse grid may reach past the box
    lo = torch.tensor(b[:3], dtype=torch.float32, device=device)
    hs = torch.tensor(h * s, dtype=torch.float32, device=device)

    started = time.perf_counter()

    def evaluate(pts, label: str):
        out = []
        with _SamplingProgress(len(pts), label, progress, R, started) as bar, torch.no_grad():
            for i in range(0, len(pts), int(chunk)):
                out.append(_values(fn, pts[i:i + int(chunk)]))
                bar.advance(min(len(pts), i + int(chunk)))
        return torch.cat(out) if out else torch.empty(0)

    axes = torch.arange(nc + 1, device=device, dtype=torch.float32)
    gi = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), -1).reshape(-1, 3)
    coarse = evaluate(lo + gi * hs, f"evaluating field on {nc + 1}^3 coarse grid").reshape(nc + 1, nc + 1, nc + 1)
    if torch.isnan(coarse).any():
        raise NLSError("extract_mesh: the field is NaN on the coarse grid (diverged training?); no mesh")
    # the bound is checked on the coarse grid: a steeper finite difference raises it
    slope = max(float(((coarse.diff(dim=a)).abs().max() / float(h[a] * s))) for a in range(3))
    lipschitz_used = max(float(lipschitz), 1.25 * slope)
    near = ((coarse - level).abs() <= lipschitz_used * float(np.linalg.norm(h * s))).float()
    cell = torch.nn.functional.max_pool3d(near[None, None], 2, stride=1)[0, 0] > 0  # (nc, nc, nc)
    fine = torch.nn.functional.interpolate(coarse[None, None], size=(nc * s + 1,) * 3, mode="trilinear",
                                           align_corners=True)[0, 0]
    # fine points of the flagged cells (with their boundary), as unique fine indices
    c = cell.nonzero()
    off = torch.arange(s + 1)
    local = torch.stack(torch.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3)
    idx = (c[:, None, :] * s + local[None]).reshape(-1, 3)
    idx = idx[(idx < R).all(1)]
    m = nc * s + 1
    flat = torch.unique(idx[:, 0] * m * m + idx[:, 1] * m + idx[:, 2])
    ijk = torch.stack([flat // (m * m), (flat // m) % m, flat % m], -1)
    if len(flat):
        fine.view(-1)[flat] = evaluate(lo + ijk.to(device, torch.float32) * torch.tensor(
            h, dtype=torch.float32, device=device), f"evaluating field near level {level:g} ({R}^3 grid)")
    grid = fine[:R, :R, :R].contiguous().numpy()
    return grid, {"coarse_evals": int(coarse.numel()), "fine_evals": int(len(flat)),
                  "dense_evals": R ** 3, "cells_flagged": int(cell.sum()),
                  "coarse_slope": slope, "lipschitz_used": lipschitz_used}


def grid_to_mesh(values: np.ndarray, bbox: Sequence[float], level: float, *,
                 inside: str = "below", close: bool = False):
    """Marching cubes on a ``(Rx, Ry, Rz)`` grid sampled at the corners of ``bbox``;
    vertices in world coordinates, faces oriented outward.

    ``close``: where the inside region reaches the box, cap it with the box's faces, so the mesh
    is closed (the grid is padded with one layer of outside samples and the cap's vertices are
    moved onto the box). Off, the surface is open there."""
    import trimesh
    from skimage.measure import marching_cubes

    if inside not in ("below", "above"):
        raise NLSError(f"inside must be 'below' (values < level are inside, e.g. SDF) or "
                       f"'above' (values > level are inside, e.g. density), got {inside!r}")
    b = _check_bbox(bbox)
    vol = np.asarray(values, dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise NLSError(f"grid_to_mesh: need a 3-D grid with >= 2 samples per axis, got "
                       f"shape {vol.shape}")
    level = float(level)
    n_nan = int(np.isnan(vol).sum())
    if n_nan:
        raise NLSError(f"extract_mesh: the field is NaN at {n_nan} of {vol.size} grid points "
                       "(diverged training or an invalid operation in the field); no mesh")
    finite = np.isfinite(vol)
    if not finite.all():  # +-inf: clamp so marching cubes stays finite
        fv = vol[finite]
        lo_v = float(fv.min()) if fv.size else level - 1
        hi_v = float(fv.max()) if fv.size else level + 1
        vol = np.clip(vol, min(lo_v, level) - 1.0, max(hi_v, level) + 1.0)
    vmin, vmax = float(vol.min()), float(vol.max())
    if not vmin < level < vmax:
        kind = "SDF" if inside == "below" else "density/occupancy"
        raise EmptyLevelSet(
            f"extract_mesh: empty level set: the field ranges over [{vmin:.6g}, {vmax:.6g}] "
            f"in the box but level {level:.6g} was asked for ({kind}, inside='{inside}'); "
            + (f"choose a level strictly inside that range, e.g. {0.5 * (vmin + vmax):.6g} (`nls export RUN --level "
               f"{0.5 * (vmin + vmax):.6g}`, or `--set extractor.level={0.5 * (vmin + vmax):.6g}` for eval and "
               f"training), or enlarge the box"
               if vmin < vmax else "the field is constant there, so no level has a surface: move or enlarge "
               "the box (--bbox) to where the shape is"), low=vmin, high=vmax, level=level)
    shape = vol.shape
    spacing = (b[3:] - b[:3]) / (np.asarray(shape) - 1)
    if close:  # an outside layer one voxel beyond each face; its crossings are pulled back onto the box below
        outside = level + (vmax - vmin) * (1.0 if inside == "below" else -1.0)
        vol = np.pad(vol, 1, constant_values=outside)
    # skimage's winding: with values below ``level`` inside (an SDF), 'descent' gives
    # outward normals (positive signed volume, checked in tests); 'ascent' flips it.
    direction = "descent" if inside == "below" else "ascent"
    verts, faces, _normals, _ = marching_cubes(vol, level=level, spacing=tuple(spacing),
                                               gradient_direction=direction)
    verts = verts + b[:3]
    if close:  # each padded crossing lies on a grid line through a face sample: clipping moves it onto the face
        verts = np.clip(verts - spacing, b[:3], b[3:])
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    mesh.metadata.update({"level": level, "inside": inside, "bbox": b.tolist(),
                          "resolution": list(shape), "closed_at_box": bool(close)})
    return mesh


def extract_mesh(fn: Callable, bbox: Sequence[float], resolution: int, level: float, *,
                 inside: str = "below", chunk: int = DEFAULT_CHUNK, device="cpu",
                 progress: Optional[bool] = None, lipschitz: Optional[float] = None, close: bool = False):
    """Marching cubes on the level set ``fn(x) == level`` inside ``bbox``.

    Args:
        fn: maps a ``(M, 3)`` float32 tensor of world points to ``(M,)`` values.
        bbox: ``[xmin, ymin, zmin, xmax, ymax, zmax]``.
        resolution: samples per axis (corner-aligned: voxel size ``(max-min)/(R-1)``).
        level: iso-value.
        inside: ``"below"`` (values < level are inside: SDFs) or ``"above"`` (values >
            level are inside: density, occupancy).
        chunk: points per call of ``fn``.
        device: where the query points are made.
        progress: progress on stderr (:func:`field_to_grid`; default: a bar from 256^3 up on a terminal,
            plain lines after a few seconds otherwise), on either path.
        lipschitz: a bound on ``|∇fn|``; when given, only a narrow band around the level set
            is evaluated at full resolution (:func:`field_to_grid_narrow`, 7.9x fewer queries
            at 256³ for the SDF of a sphere of radius 0.3). None: every grid point is evaluated.
        close: cap the surface with the box's faces where the inside region reaches the box
            (a closed mesh; :func:`grid_to_mesh`). False leaves it open there.

    Returns:
        ``trimesh.Trimesh`` in world coordinates with outward-facing normals.

    Raises:
        NLSError: the field has NaNs, or ``level`` is outside the field's range (message
        gives the range and a level that would work).

    Example:
        >>> sphere = lambda p: p.norm(dim=-1) - 0.5
        >>> m = extract_mesh(sphere, [-1, -1, -1, 1, 1, 1], 64, 0.0)
        >>> m.is_watertight
        True
    """
    if inside not in ("below", "above"):
        raise NLSError(f"inside must be 'below' (values < level are inside, e.g. SDF) or "
                       f"'above' (values > level are inside, e.g. density), got {inside!r}")
    if lipschitz is None:
        grid = field_to_grid(fn, bbox, resolution, chunk=chunk, device=device, progress=progress)
    else:
        grid, _ = field_to_grid_narrow(fn, bbox, resolution, level, lipschitz, chunk=chunk, device=device,
                                       progress=progress)
    return grid_to_mesh(grid, bbox, level, inside=inside, close=close)


def _writable_path(path, valid: Sequence[str], what: str) -> Path:
    """``path`` when it has one of the ``valid`` extensions and can be written as a file, else NLSError."""
    path = Path(path)
    if path.is_dir():
        raise NLSError(f"cannot export {what} to {path}: it is a directory. Give a file name, "
                       f"e.g. {path / 'mesh.ply'}")
    ext = path.suffix.lower()
    if ext not in valid:
        raise NLSError(f"cannot export {what} to {path}: unknown extension "
                       f"'{path.suffix or '(none)'}'; valid: {', '.join(valid)}")
    from pipeline.runs import check_output_file

    return check_output_file(path, what)


def check_mesh_path(path) -> Path:
    """The checks :func:`export_mesh` makes on ``path``, to run before an expensive extraction."""
    return _writable_path(path, MESH_FORMATS, "mesh")


def check_point_cloud_path(path) -> Path:
    """The checks :func:`export_point_cloud` makes on ``path``, to run before the points are made."""
    return _writable_path(path, (".ply",), "point cloud")


#: how each format stores vertex coordinates: "float32" (binary), or the decimals trimesh writes (text)
FORMAT_PRECISION = {".ply": "float32", ".glb": "float32", ".stl": "float32", ".obj": 8, ".off": 10}


def weld_for_format(mesh, ext: str):
    """A copy of ``mesh`` as a file of extension ``ext`` holds it and trimesh reads it back: coordinates
    rounded to the format's precision (:data:`FORMAT_PRECISION`), vertices that then coincide merged as
    trimesh merges them on load (by position, to 8 decimals), and the faces this collapses (two
    corners on one vertex) dropped.

    Marching cubes at a fine grid makes vertices closer than float32 can tell apart; written as they
    are, trimesh merged them on reading and kept the collapsed faces, so a watertight mesh read back as
    not watertight. Welded first, the file reads back as the mesh that was written (same counts)."""
    precision = FORMAT_PRECISION.get(ext.lower())
    out = mesh.copy()
    if precision is None or len(out.vertices) == 0:
        return out
    v = np.asarray(out.vertices, dtype=np.float64)
    v = v.astype(np.float32).astype(np.float64) if precision == "float32" else np.round(v, precision)
    out.vertices = v
    # a textured mesh keeps its seams: vertices at one place with different UVs stay apart
    out.merge_vertices(merge_tex=getattr(out.visual, "kind", None) != "texture", merge_norm=True)
    f = np.asarray(out.faces)
    kept = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    if not kept.all():
        out.update_faces(kept)
        out.remove_unreferenced_vertices()
    out.metadata.update(mesh.metadata)
    return out


def export_mesh(mesh, path, *, weld: bool = True) -> Path:
    """Write ``mesh`` to ``path``; the format follows the extension (.ply .obj .glb .stl .off).

    Parent folders are created. The mesh is first welded at the format's precision
    (:func:`weld_for_format`; ``mesh`` itself is left as it is), so the file reads back as written;
    ``weld=False`` for a mesh that ``weld_for_format`` already gave.
    The file is encoded in memory and written atomically (temp file,
    fsync, rename): a killed export leaves the previous file, not an empty one. A textured mesh written as .obj
    brings its ``NAME.mtl`` and texture ``NAME.png`` (named by its material) beside it. Raises NLSError for
    an unknown extension (listing the valid ones) or a location that cannot be written (naming it).
    """
    from pipeline.runs import atomic_write_bytes

    path = _writable_path(path, MESH_FORMATS, "mesh")
    mesh = weld_for_format(mesh, path.suffix) if weld else mesh
    if path.suffix.lower() == ".obj" and getattr(mesh.visual, "kind", None) == "texture":
        from trimesh.exchange.obj import export_obj

        text, files = export_obj(mesh, return_texture=True, mtl_name=f"{path.stem}.mtl")
        for name, content in files.items():  # the .mtl and the texture image, beside the .obj
            atomic_write_bytes(path.parent / name, content)
        atomic_write_bytes(path, text.encode("utf-8"))
        return path
    data = mesh.export(file_type=path.suffix.lower()[1:])
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return path


#: formats whose files keep per-vertex colours (trimesh writes none into .stl or .off)
COLOR_FORMATS = (".ply", ".obj", ".glb")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded colours in [0, 1] -> linear (IEC 61966-2-1), e.g. for glTF's linear COLOR_0."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The inverse of :func:`srgb_to_linear`."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.clip(c, 0, None) ** (1 / 2.4) - 0.055)


def field_colour(chain, points: np.ndarray, dirs: np.ndarray, device, chunk: int = 65536,
                 what: str = "--colors") -> np.ndarray:
    """(P, 3) float32 colour in [0, 1] of ``chain`` at ``points`` (P, 3) seen along the unit ``dirs`` (P, 3),
    ``chunk`` points at a time; NLSError when the chain has no colour (naming ``what`` to leave out)."""
    import torch

    cols = []
    with torch.no_grad():
        for i in range(0, len(points), chunk):
            out = chain(torch.as_tensor(np.asarray(points[i:i + chunk]), dtype=torch.float32, device=device),
                        torch.as_tensor(np.asarray(dirs[i:i + chunk]), dtype=torch.float32, device=device))
            if "rgb" not in out:
                raise NLSError(f"this run's field chain has no colour (it gives {', '.join(sorted(out))}); "
                               f"export without {what}")
            cols.append(out["rgb"].float().clamp(0, 1).cpu().numpy())
    return np.concatenate(cols) if cols else np.zeros((0, 3), np.float32)


def bake_vertex_colors(mesh, chain, device, chunk: int = 65536, linear: bool = False,
                       cameras: Optional[Cameras] = None) -> np.ndarray:
    """Colour each vertex with the field's radiance there: the mean along the rays of the training ``cameras``
    that see it (:mod:`pipeline.view_colours`), and, for a vertex none sees or without ``cameras``, seen along the
    inward normal, ``d = -normal`` (the direction of a camera ray that meets the surface head-on from outside; the
    extracted faces are oriented outward).

    ``chain(x (V,3), d (V,3))["rgb"]`` is queried at the vertices. Returns ``(V, 3)`` float colours in [0, 1], as
    the images are encoded (sRGB), and stores them as ``mesh.visual.vertex_colors``, converted to linear values
    with ``linear=True`` (glTF defines vertex colours as linear). Raises NLSError when the chain has no colour.
    """
    from pipeline.view_colours import seeing_views, view_colour

    views = seeing_views(mesh, cameras) if cameras is not None and len(cameras) else None
    rgb = view_colour(chain, np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), device, views=views,
                      seen=views.vertex if views is not None else None, chunk=chunk)
    stored = srgb_to_linear(rgb) if linear else rgb
    rgba = np.concatenate([np.round(stored * 255), np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    mesh.visual.vertex_colors = rgba
    return rgb


def read_back_watertight(path: Path) -> bool:
    """Whether the mesh file at ``path`` is watertight as trimesh reads it back (coincident
    vertices merged; for a textured mesh also those its UV seams keep apart, so the surface is judged,
    not its charts). This can differ from the in-memory mesh that was written, so it is what
    ``nls export`` reports."""
    import trimesh

    mesh = trimesh.load(str(path), force="mesh")
    if getattr(mesh.visual, "kind", None) == "texture":
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces)  # plain: merged by position alone
    return bool(mesh.is_watertight)


def export_point_cloud(points, path, normals=None, colors=None) -> Path:
    """Write ``points`` ``(P, 3)`` (with optional ``normals`` ``(P, 3)`` and ``colors`` ``(P, 3)`` in [0, 1],
    stored as 8-bit red, green, blue) as a binary .ply, atomically."""
    def array(v, what: str, dtype) -> np.ndarray:
        a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=dtype)
        if a.ndim != 2 or a.shape[1] != 3 or (what != "points" and len(a) != len(pts)):
            raise NLSError(f"export_point_cloud: {what} must be (P, 3)"
                           + (f" like the points {pts.shape}" if what != "points" else "") + f", got {a.shape}")
        return a

    pts = array(points, "points", np.float32)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    parts = [pts]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
        parts.append(array(normals, "normals", np.float32))
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        parts.append(np.round(np.clip(array(colors, "colors", np.float64), 0, 1) * 255))
    data = np.empty(len(pts), dtype=fields)
    for k, (name, _) in enumerate(fields):
        data[name] = parts[k // 3][:, k % 3]
    path = check_point_cloud_path(path)
    kind = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(pts)}"]
    header += [f"property {kind[t]} {name}" for name, t in fields]
    header += ["end_header"]
    from pipeline.runs import atomic_write_bytes

    atomic_write_bytes(path, ("\n".join(header) + "\n").encode("ascii") + data.tobytes())
    return path
