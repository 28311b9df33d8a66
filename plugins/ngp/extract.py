"""Marching-cubes mesh extractor over whatever the field chain produces."""

from __future__ import annotations

from typing import Optional, Sequence

from pipeline.mesh import DEFAULT_LEVEL, INSIDE
from pipeline.types import NLSError
from plugins.ngp.config import MarchingCubesConfig, UdfMarchingCubesConfig


class MarchingCubes:
    """``extract(chain, bbox, resolution=None, level=None) -> trimesh.Trimesh``."""

    def __init__(self, cfg: MarchingCubesConfig, produces: set[str], aabb):
        self.cfg = cfg
        self.produces = produces
        self.aabb = [float(v) for v in aabb]

    def quantity(self) -> str:
        if self.cfg.quantity != "auto":
            if self.cfg.quantity not in self.produces:
                raise NLSError(f"extractor.quantity = {self.cfg.quantity!r}, but the field chain produces "
                               f"only {', '.join(sorted(self.produces))}")
            return self.cfg.quantity
        for q in ("sdf", "occupancy", "density"):
            if q in self.produces:
                return q
        raise NLSError("marching cubes needs a field that produces sdf, occupancy or density")

    def extract(self, chain, *, bbox: Optional[Sequence[float]] = None, resolution: Optional[int] = None,
                level: Optional[float] = None, device="cpu"):
        from pipeline.mesh import extract_mesh

        q = self.quantity()
        level = level if level is not None else (self.cfg.level if self.cfg.level is not None else DEFAULT_LEVEL[q])
        bbox = list(bbox or self.cfg.bbox or self.aabb)
        res = int(resolution or self.cfg.resolution)
        fn = lambda x: chain(x, None)[q]  # noqa: E731
        if self.cfg.fill_interior and INSIDE[q] == "above":
            from pipeline.mesh import field_to_grid, grid_to_mesh

            grid = fill_interior(field_to_grid(fn, bbox, res, device=device), level)
            mesh = grid_to_mesh(grid, bbox, level, inside="above")
        else:
            mesh = extract_mesh(fn, bbox, res, level, inside=INSIDE[q], device=device,
                                lipschitz=self.cfg.lipschitz)
        if self.cfg.min_component > 0:
            mesh = drop_small_components(mesh, self.cfg.min_component)
        mesh.metadata.update({"quantity": q, "level": level, "resolution": res, "bbox": bbox,
                              "min_component": self.cfg.min_component})
        return mesh


class UdfMarchingCubes(MarchingCubes):
    """``extract(chain, bbox, resolution=None, level=None) -> trimesh.Trimesh``: the single sheet of an
    unsigned field's minimum (``level``, when given, overrides the configured offset)."""

    def extract(self, chain, *, bbox: Optional[Sequence[float]] = None, resolution: Optional[int] = None,
                level: Optional[float] = None, device="cpu"):
        import numpy as np

        from pipeline.udf_mesh import extract_udf_mesh

        q = self.quantity()  # the config has no "auto": the parent checks the chain produces it
        bbox = list(bbox or self.cfg.bbox or self.aabb)
        res = int(resolution or self.cfg.resolution)
        diagonal = float(np.linalg.norm((np.asarray(bbox[3:]) - np.asarray(bbox[:3])) / (res - 1)))
        mesh = extract_udf_mesh(lambda x: chain(x, None)[q], bbox, res, threshold=self.cfg.threshold * diagonal,
                                offset=level if level is not None else self.cfg.offset, trim=self.cfg.trim,
                                device=device)
        if self.cfg.min_component > 0:
            mesh = drop_small_components(mesh, self.cfg.min_component)
        mesh.metadata.update({"quantity": q, "resolution": res, "bbox": bbox, "min_component": self.cfg.min_component})
        return mesh


def fill_interior(grid, level: float):
    """Raise cavities enclosed by the ``grid > level`` region above ``level``.

    A radiance field is only constrained where rays see it: the inside of an opaque
    object may hold any density, and its low-density pockets would become internal
    surfaces. Flood-filling from the box boundary (scipy ``binary_fill_holes``) keeps the
    outer surface only. grid: (R,R,R) float -> same shape.
    """
    from scipy.ndimage import binary_fill_holes

    solid = grid > level
    cavity = binary_fill_holes(solid) & ~solid
    out = grid.copy()
    out[cavity] = level + max(float(grid.max()) - level, 1e-3) * 0.5
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
    return MarchingCubes(cfg, _produces(ctx), ctx.aabb.tolist())


def build_udf_marching_cubes(cfg: UdfMarchingCubesConfig, ctx) -> UdfMarchingCubes:
    return UdfMarchingCubes(cfg, _produces(ctx), ctx.aabb.tolist())
