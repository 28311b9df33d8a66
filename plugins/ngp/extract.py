"""Marching-cubes mesh extractor over whatever the field chain produces."""

from __future__ import annotations

from typing import Optional, Sequence

from pipeline.mesh import DEFAULT_LEVEL, INSIDE
from pipeline.types import NLSError
from plugins.ngp.config import MarchingCubesConfig, UdfMarchingCubesConfig


class MarchingCubes:
    """``extract(chain, bbox, resolution=None, level=None) -> trimesh.Trimesh``.

    With ``calibrate: silhouettes`` (and no explicit ``level`` argument) the field is sampled
    once and meshed at each candidate level; the mesh whose silhouettes agree best with the
    training views' alpha is kept (:func:`pipeline.silhouettes.calibrate_level`). The chosen level
    and the table of candidates are in ``mesh.metadata``. The grid is then evaluated densely (the
    ``lipschitz`` narrow band is exact only around one level).
    """

    takes_auto = True  # quantity: auto picks sdf, occupancy or density, the first the chain produces

    def __init__(self, cfg: MarchingCubesConfig, produces: set[str], aabb, train_split=None):
        self.cfg = cfg
        self.produces = produces
        self.aabb = [float(v) for v in aabb]
        self.train_split = train_split
        self._rays = None

    def quantity(self) -> str:
        """The chain output to contour: the configured one (NLSError if the chain lacks it) or, for
        ``auto``, the first of sdf, occupancy, density that the chain produces."""
        if self.cfg.quantity != "auto":
            if self.cfg.quantity not in self.produces:
                have = [q for q in ("sdf", "occupancy", "density") if q in self.produces]
                raise NLSError(f"extractor.quantity = {self.cfg.quantity!r}, but the field chain produces "
                               f"only {', '.join(sorted(self.produces))}; use quantity: "
                               f"{' or '.join((['auto'] if self.takes_auto else []) + have)}")
            return self.cfg.quantity
        for q in ("sdf", "occupancy", "density"):
            if q in self.produces:
                return q
        raise NLSError("marching cubes needs a field that produces sdf, occupancy or density")

    def candidate_levels(self, q: str, level: float, bbox: Sequence[float], res: int) -> list[float]:
        """The levels ``calibrate`` tries (``calibrate_levels``, else a default span around ``level``)."""
        if self.cfg.calibrate_levels is not None:
            return [float(v) for v in self.cfg.calibrate_levels]
        if q == "sdf":
            h = max(float(bbox[i + 3] - bbox[i]) for i in range(3)) / (res - 1)
            return [level + 0.25 * k * h for k in range(-8, 9)]
        if q == "occupancy":
            return [0.2 + 0.05 * k for k in range(13)]
        return [level * 2 ** (0.5 * k) for k in range(-6, 7)]

    def extract(self, chain, *, bbox: Optional[Sequence[float]] = None, resolution: Optional[int] = None,
                level: Optional[float] = None, device="cpu"):
        """Mesh ``chain``'s :meth:`quantity` sampled on a ``resolution``^3 grid over ``bbox`` at ``level``
        (arguments override the config; ``level=None`` with ``calibrate`` picks it from silhouettes).
        Returns a ``trimesh.Trimesh`` whose ``metadata`` records quantity, level, resolution and bbox."""
        from pipeline.mesh import extract_mesh, field_to_grid, grid_to_mesh, query_chunk

        q = self.quantity()
        calibrate = self.cfg.calibrate != "off" and level is None
        level = level if level is not None else (self.cfg.level if self.cfg.level is not None else DEFAULT_LEVEL[q])
        bbox = list(bbox or self.cfg.bbox or self.aabb)
        res = int(resolution or self.cfg.resolution)
        fn = lambda x: chain(x, None)[q]  # noqa: E731
        calibration = None
        if calibrate or (self.cfg.fill_interior and INSIDE[q] == "above"):
            grid = field_to_grid(fn, bbox, res, device=device, chunk=query_chunk(chain, device))

            def mesh_at(lv: float):  # calibration meshes one grid at several levels: fill a copy each time
                g = (fill_interior(grid, lv, inplace=not calibrate) if self.cfg.fill_interior and INSIDE[q] == "above"
                     else grid)
                m = grid_to_mesh(g, bbox, lv, inside=INSIDE[q], close=self.cfg.close)
                return drop_small_components(m, self.cfg.min_component) if self.cfg.min_component > 0 else m

            if calibrate:
                from pipeline.silhouettes import calibrate_level

                level, table = calibrate_level(mesh_at, self.candidate_levels(q, level, bbox, res), self.rays())
                calibration = {"method": "silhouettes", "pixels": len(self.rays()), "candidates": table}
            mesh = mesh_at(level)
        else:
            mesh = extract_mesh(fn, bbox, res, level, inside=INSIDE[q], device=device, chunk=query_chunk(chain, device),
                                lipschitz=self.cfg.lipschitz, close=self.cfg.close)
            if self.cfg.min_component > 0:
                mesh = drop_small_components(mesh, self.cfg.min_component)
        mesh.metadata.update({"quantity": q, "level": level, "resolution": res, "bbox": bbox,
                              "min_component": self.cfg.min_component})
        if calibration is not None:
            mesh.metadata["level_calibration"] = calibration
        return mesh

    def rays(self):
        """The training views' silhouette rays (built once)."""
        if self._rays is None:
            from pipeline.silhouettes import silhouette_rays

            if self.train_split is None:
                raise NLSError("extractor.calibrate = silhouettes needs the scene's training images")
            self._rays = silhouette_rays(self.train_split)
        return self._rays


class UdfMarchingCubes(MarchingCubes):
    """``extract(chain, bbox, resolution=None, level=None) -> trimesh.Trimesh``: the single sheet of an
    unsigned field's minimum (``level``, when given, overrides the configured offset)."""

    takes_auto = False

    def extract(self, chain, *, bbox: Optional[Sequence[float]] = None, resolution: Optional[int] = None,
                level: Optional[float] = None, device="cpu"):
        """Mesh the minimum sheet of ``chain``'s :meth:`quantity` on a ``resolution``^3 grid over ``bbox``
        with :func:`pipeline.udf_mesh.extract_udf_mesh`; returns a ``trimesh.Trimesh``."""
        import numpy as np

        from pipeline.mesh import query_chunk
        from pipeline.udf_mesh import extract_udf_mesh

        q = self.quantity()  # the config has no "auto": the parent checks the chain produces it
        bbox = list(bbox or self.cfg.bbox or self.aabb)
        res = int(resolution or self.cfg.resolution)
        diagonal = float(np.linalg.norm((np.asarray(bbox[3:]) - np.asarray(bbox[:3])) / (res - 1)))
        mesh = extract_udf_mesh(lambda x: chain(x, None)[q], bbox, res, threshold=self.cfg.threshold * diagonal,
                                offset=level if level is not None else self.cfg.offset, trim=self.cfg.trim,
                                device=device, chunk=query_chunk(chain, device))
        if self.cfg.min_component > 0:
            mesh = drop_small_components(mesh, self.cfg.min_component)
        mesh.metadata.update({"quantity": q, "resolution": res, "bbox": bbox, "min_component": self.cfg.min_component})
        return mesh


def fill_interior(grid, level: float, *, inplace: bool = False):
    """Raise cavities enclosed by the ``grid > level`` region above ``level`` (in ``grid`` itself with
    ``inplace``, else in a copy).

    A radiance field is only constrained where rays see it: the inside of an opaque
    object may hold any density, and its low-density pockets would become internal
    surfaces. Flood-filling from the box boundary keeps the outer surface only: the cavities are the
    6-connected components of the empty cells that touch no face of the box, what scipy's
    ``binary_fill_holes`` fills, found with one ``label`` pass (the same cells; at 256^3 0.28 s against
    0.46 s for a shell, 0.14 s against 0.41 s for a solid ball, 2 cores).

    Memory: beside ``grid`` (and its copy, without ``inplace``), one byte a cell for the empty mask and
    four for the labels, freed before the cavities are raised (1 + 4 GB at 1024^3).
    grid: (R,R,R) float -> same shape.
    """
    import numpy as np
    from scipy.ndimage import label

    empty = grid > level
    np.logical_not(empty, out=empty)  # in place; NaN cells are empty, as ``grid > level`` is False there
    # default structure: 6-connectivity, as binary_fill_holes uses. Labels are int32: a smaller type saves
    # memory only while the regions fit it, and where they do not scipy labels a second time at int32
    parts, n = label(empty)
    del empty
    outside = np.zeros(n + 1, dtype=bool)
    outside[0] = True  # label 0: the solid cells themselves
    for face in (parts[0], parts[-1], parts[:, 0], parts[:, -1], parts[:, :, 0], parts[:, :, -1]):
        outside[face.ravel()] = True
    cavity = outside[parts]
    del parts
    np.logical_not(cavity, out=cavity)
    out = grid if inplace else grid.copy()
    out[cavity] = level + max(float(np.nanmax(grid)) - level, 1e-3) * 0.5  # nanmax: a NaN cell made it NaN
    return out


def drop_small_components(mesh, fraction: float):
    """Keep the connected components with at least ``fraction`` of all faces (at least the largest)."""
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    n = len(mesh.faces)
    keep = [p for p in parts if len(p.faces) >= fraction * n] or [max(parts, key=lambda p: len(p.faces))]
    out = trimesh.util.concatenate(keep)
    out.metadata.update(mesh.metadata)
    return out


def _produces(ctx) -> set[str]:
    produces: set[str] = set()
    for s in ("field", "certifier", "density"):
        c = ctx.cfg.stages.get(s)
        if c:
            produces |= set(c.component.produces)
    return produces


def build_marching_cubes(cfg: MarchingCubesConfig, ctx) -> MarchingCubes:
    """Build the marching-cubes extractor from its ``extractor:`` block (``MarchingCubesConfig``);
    raises ConfigError if ``calibrate`` is on and the training images have no alpha."""
    from pipeline.types import ConfigError

    split = ctx.scene.splits.get("train") if ctx.scene is not None else None
    if cfg.calibrate != "off" and ctx.scene is not None and (split is None or split.alphas is None):
        raise ConfigError(f"extractor.calibrate = {cfg.calibrate}: this scene's training images have no alpha "
                          f"channel to compare silhouettes with; set extractor.calibrate: off (and a fixed level)")
    mc = MarchingCubes(cfg, _produces(ctx), ctx.aabb.tolist(), split)
    mc.quantity()  # a quantity the chain lacks is refused now, before training, not at export
    return mc


def build_udf_marching_cubes(cfg: UdfMarchingCubesConfig, ctx) -> UdfMarchingCubes:
    """Build the unsigned-field extractor from its ``extractor:`` block (``UdfMarchingCubesConfig``)."""
    mc = UdfMarchingCubes(cfg, _produces(ctx), ctx.aabb.tolist())
    mc.quantity()
    return mc
