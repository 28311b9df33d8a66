"""Marching-cubes mesh extractor over whatever the field chain produces."""

from __future__ import annotations

from typing import Optional, Sequence

from pipeline.types import NLSError
from plugins.ngp.config import MarchingCubesConfig

DEFAULT_LEVEL = {"sdf": 0.0, "occupancy": 0.5, "density": 10.0}
INSIDE = {"sdf": "below", "occupancy": "above", "density": "above"}


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
        mesh = extract_mesh(lambda x: chain(x, None)[q], bbox, res, level, inside=INSIDE[q], device=device)
        mesh.metadata.update({"quantity": q, "level": level, "resolution": res, "bbox": bbox})
        return mesh


def build_marching_cubes(cfg: MarchingCubesConfig, ctx) -> MarchingCubes:
    produces: set[str] = set()
    for s in ("field", "certifier", "density"):
        c = ctx.cfg.stages.get(s)
        if c:
            produces |= set(c.component.produces)
    return MarchingCubes(cfg, produces, ctx.aabb.tolist())
