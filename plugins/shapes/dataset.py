"""Map-style datasets over a :class:`ShapeCollection` and the two scene-source factories.

An item is one (object, view) pair::

    image  (3, S, S) float in [0, 1]    the view, on white
    points (P, 3)    float              training points (boundary sampler below)
    occ    (P,)      float in {0, 1}    their occupancy labels
    voxels (32,32,32) float            the object's 32^3 occupancy
    dist   (32,32,32) float            distance of voxel centres to the GT surface points
    object, view     int

Points are drawn with a ``torch.Generator`` seeded from ``(seed, split, index)``, so an item is the
same in every process and every epoch: a 2-process run sees exactly the batches of a 1-process run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline.types import SceneData
from plugins.shapes.collection import BOX, ShapeCollection

SPLIT_SALT = {"train": 0, "val": 1, "test": 2}
#: items below this index keep the seeds every measured figure was made with
_LEGACY_ITEMS = 100_003


def item_seed(seed: int, split: str, i: int) -> int:
    """The generator seed of item ``i`` of ``split``: distinct for every ``(split, i)`` of one run.

    Items below 100 003 keep the original ``seed·1000003 + salt·100003 + i`` (so the published
    figures repeat); from there on, where that formula would hand item ``100003 + j`` of one split the
    seed of item ``j`` of the next, a ``SeedSequence((seed, salt, i))`` hash at or above 2⁶² is used,
    which the formula never reaches for ``|seed| < 2⁴¹``."""
    salt = SPLIT_SALT.get(split, 3)
    if i < _LEGACY_ITEMS:
        return int(seed) * 1_000_003 + salt * 100_003 + i
    h = int(np.random.SeedSequence([int(seed) % 2**63, salt, int(i)]).generate_state(1, np.uint64)[0])
    return 2**62 + h % 2**62


def sample_boundary_points(surface: Tensor, n: int, sigma: float, uniform_fraction: float, half: float,
                           gen: torch.Generator) -> Tensor:
    """Littwin & Wolf 2019, Sec. 4 (training points for Eq. 3): ``n - n_u`` points are GT surface points
    plus N(0, sigma^2 I) noise, followed by ``n_u = round(uniform_fraction * n)`` points uniform in
    ``[-half, half]^3``. surface: (S, 3) -> (n, 3), Gaussian points first."""
    n_u = int(round(uniform_fraction * n))
    n_g = n - n_u
    idx = torch.randint(0, surface.shape[0], (n_g,), generator=gen)
    gauss = surface[idx] + sigma * torch.randn(n_g, 3, generator=gen)
    uni = (torch.rand(n_u, 3, generator=gen) * 2 - 1) * half
    return torch.cat([gauss, uni], 0)


def occupancy_at(points: Tensor, grid: Tensor) -> Tensor:
    """Nearest-voxel lookup of a (R,R,R) bool grid over the unit box; 0 outside. points (P,3) -> (P,) float."""
    R = grid.shape[0]
    ijk = torch.floor((points + 0.5) * R).long()
    inside = ((ijk >= 0) & (ijk < R)).all(-1)
    ijk = ijk.clamp(0, R - 1)
    return (grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]] & inside).float()


class ShapeViewDataset(torch.utils.data.Dataset):
    """Items of one split; see the module docstring."""

    def __init__(self, collection: ShapeCollection, split: str, opts):
        self.collection, self.split, self.opts = collection, split, opts
        self.items = collection.splits.get(split, [])

    def __len__(self) -> int:
        return len(self.items)

    def objects(self) -> dict[int, list[int]]:
        """object index -> its view indices in this split (in order)."""
        out: dict[int, list[int]] = {}
        for o, v in self.items:
            out.setdefault(o, []).append(v)
        return out

    def image(self, obj: int, view: int) -> Tensor:
        """View ``view`` of object ``obj`` -> (3, S, S) float in [0, 1]."""
        return self.collection.images[obj, view].float() / 255.0

    def __getitem__(self, i: int) -> dict:
        o, v = self.items[i]
        c, opts = self.collection, self.opts
        gen = torch.Generator().manual_seed(item_seed(opts.seed, self.split, i))
        pts = sample_boundary_points(c.surface[o], opts.n_points, opts.sigma, opts.uniform_fraction, 0.5, gen)
        return {"image": self.image(o, v), "points": pts, "occ": occupancy_at(pts, c.labels[o]),
                "voxels": c.vox[o].float(), "dist": c.dist[o], "object": o, "view": v}


def scene_from_collection(collection: ShapeCollection, opts) -> SceneData:
    """SceneData with a :class:`ShapeViewDataset` per split (train, val, test), the unit box as
    aabb and the collection's meta plus sizes; DataError when the train split is empty."""
    datasets = {s: ShapeViewDataset(collection, s, opts) for s in ("train", "val", "test")}
    if len(datasets["train"]) == 0:
        from pipeline.types import DataError

        raise DataError(f"shape scene {collection.meta.get('path') or collection.meta.get('folder')}: "
                        f"the train split is empty; use more objects or fewer held-out views")
    meta = {**collection.meta, "image_size": opts.image_size, "n_objects": len(collection.names),
            "items": {s: len(d) for s, d in datasets.items()},
            "frame": "unit box [-0.5,0.5]^3 = the 32^3 voxel grid's cube"}
    return SceneData(splits={}, aabb=torch.tensor(BOX, dtype=torch.float32), datasets=datasets, meta=meta)


def checked_scene(collection: ShapeCollection, opts, ctx) -> SceneData:
    """:func:`scene_from_collection`, then the run's ``shape_iou`` splits checked against it before any
    training (:func:`plugins.shapes.evaluate.check_evaluator_splits`; ``ctx`` None: not checked)."""
    from plugins.shapes.evaluate import check_evaluator_splits

    scene = scene_from_collection(collection, opts)
    check_evaluator_splits(ctx, scene.datasets, scene.meta)
    return scene


def build_r2n2(cfg, ctx):
    """Build the ``r2n2`` scene source from its ``scene:`` block (``R2N2Config``): returns a loader
    ``() -> SceneData``."""
    def load() -> SceneData:
        from plugins.shapes.collection import load_r2n2

        return checked_scene(load_r2n2(cfg), cfg, ctx)

    return load


def build_families(cfg, ctx):
    """Build the ``shape_families`` scene source from its ``scene:`` block (``ShapeFamiliesConfig``):
    returns a loader ``() -> SceneData``."""
    def load() -> SceneData:
        from plugins.shapes.collection import load_families

        return checked_scene(load_families(cfg), cfg, ctx)

    return load
