"""The ``shape_iou`` evaluator: IoU at 32^3 per object and mean, Chamfer-L1 when a GT mesh exists."""

from __future__ import annotations

import sys
from typing import Optional

import torch

from pipeline.types import ConfigError, NLSError
from plugins.shapes.collection import BOX
from plugins.shapes.config import ShapeIoUConfig
from plugins.shapes.conditional import ConditionalField, conditional_field


def iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Intersection over union of two boolean grids (1.0 when both are empty)."""
    union = (pred | gt).sum().item()
    return 1.0 if union == 0 else (pred & gt).sum().item() / union


@torch.no_grad()
def embeddings(field: ConditionalField, ds, obj: int, views: list[int]) -> torch.Tensor:
    """Encodings of object ``obj``'s ``views`` in ``ds`` on the field's device, no grad -> (len(views), E)."""
    dev = next(field.parameters()).device
    imgs = torch.stack([ds.image(obj, v) for v in views]).to(dev)
    return field.encode(imgs)


def shape_mesh(field: ConditionalField, e: torch.Tensor, resolution: int):
    """Marching cubes of the field for one embedding e (1,E) over the unit box, closed with the box's faces
    where the shape reaches them (as the ground-truth voxel meshes are)."""
    from pipeline.mesh import extract_mesh

    q, level, inside = field.contour
    fn = lambda x: field.point_outputs(x[None], e)[q][0]  # noqa: E731
    return extract_mesh(fn, list(BOX), resolution, level, inside=inside, device=e.device, close=True)


@torch.no_grad()
def evaluate_shapes(field: ConditionalField, ds, *, views: int = 1, max_objects=None, chamfer: bool = True,
                    mesh_resolution: int = 128, chamfer_samples: int = 30000) -> dict:
    """IoU of ``field.inside(grid_values(e, 32))`` against each object's 32^3 voxels, with e the embedding of
    one view (``views=1``: mean IoU over every view of the object in ``ds``) or the mean embedding of the
    object's first ``views`` views. Chamfer-L1 x10^3 (:func:`pipeline.metrics.chamfer`) of the first group's mesh."""
    from pipeline.metrics import chamfer as chamfer_fn
    from pipeline.scenes.mesh_render import load_mesh

    field.eval()
    coll = ds.collection
    res = coll.vox.shape[-1]
    per_object: dict[str, dict] = {}
    for n, (o, vs) in enumerate(sorted(ds.objects().items())):
        if max_objects is not None and n >= max_objects:
            break
        if len(vs) < views:
            raise NLSError(f"shape_iou: views={views} but object {coll.names[o]} has only {len(vs)} views in "
                           f"split {ds.split!r}")
        E = embeddings(field, ds, o, vs)
        groups = E[:, None] if views == 1 else E[:views].mean(0, keepdim=True)[None]
        gt = coll.vox[o].to(E.device)
        scores = [iou(field.inside(field.grid_values(g, res)[0]), gt) for g in groups]
        rec = {"iou": sum(scores) / len(scores), "n_views": len(scores)}
        if chamfer and coll.meshes[o] is not None:
            try:
                m = shape_mesh(field, groups[0], mesh_resolution)
                rec["chamfer_l1"] = chamfer_fn(m, load_mesh(coll.meshes[o]), n_samples=chamfer_samples)["chamfer_l1"]
            except NLSError as exc:  # empty level set: no mesh to compare
                print(f"shape_iou: no mesh for {coll.names[o]}: {exc}", file=sys.stderr)
                rec["chamfer_l1"] = None
        per_object[coll.names[o]] = rec
    if not per_object:
        raise NLSError(f"shape_iou: split {ds.split!r} has no objects to evaluate")
    out = {"iou": sum(r["iou"] for r in per_object.values()) / len(per_object), "n_objects": len(per_object),
           "views_averaged": views}
    cds = [r["chamfer_l1"] for r in per_object.values() if r.get("chamfer_l1") is not None]
    if cds:
        out["chamfer_l1"] = sum(cds) / len(cds)
        out["chamfer_failed"] = sum(1 for r in per_object.values() if "chamfer_l1" in r and r["chamfer_l1"] is None)
    out["per_object"] = per_object
    return out


def split_problem(datasets: dict, split: str, meta: Optional[dict] = None) -> Optional[str]:
    """Why ``split`` of a shape scene's ``datasets`` cannot be evaluated (no such split, or no items), else
    None; ``meta`` (the scene's) adds how that scene source fills its splits."""
    have = ", ".join(f"{k} ({len(v)} item{'' if len(v) == 1 else 's'})" for k, v in datasets.items()) or "none"
    if split not in datasets:
        return f"the scene has no split {split!r} (its splits: {have})"
    if len(datasets[split]) > 0:
        return None
    hints = {"objects": "scene.split_by=objects holds out whole objects (test needs 3 or more, val 5 or more)",
             "views": "scene.split_by=views takes them from scene.val_views and scene.test_views"}
    meta = meta or {}
    hint = hints.get(meta.get("split_by"), "scene.per_family and scene.split set how many objects each split gets"
                     if meta.get("source") == "shape_families" else "")
    return f"split {split!r} of the scene is empty (its splits: {have})" + (f"; {hint}" if hint else "")


def check_evaluator_splits(ctx, datasets: dict, meta: Optional[dict] = None) -> None:
    """Before training: every ``shape_iou`` evaluator of the run's config (``ctx.cfg``) names a split of
    ``datasets`` that has items; ConfigError naming the option and the splits otherwise. No config: no check."""
    cfg = getattr(ctx, "cfg", None)
    for i, choice in enumerate(getattr(cfg, "evaluators", None) or []):
        if not isinstance(choice.options, ShapeIoUConfig):
            continue
        why = split_problem(datasets, choice.options.split, meta)
        if why:
            from pipeline.config import where_set

            where = where_set(cfg.source, getattr(ctx, "overrides", ()), f"evaluators.{i}.split")
            raise ConfigError(f"{where}: evaluators.{i}.split = {choice.options.split!r} (evaluator "
                              f"{choice.name}): {why}; set it to a split with items in the scene file or with "
                              f"--set evaluators.{i}.split=NAME")


class ShapeIoU:
    """The ``shape_iou`` evaluator: called with the evaluation context, runs :func:`evaluate_shapes` on
    the scene's ``split`` dataset and returns its metrics dict."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, ctx) -> dict:
        field = conditional_field(ctx.system)
        why = split_problem(ctx.scene.datasets, self.cfg.split, ctx.scene.meta)
        if why:
            raise NLSError(f"shape_iou: split = {self.cfg.split!r}: {why}; set evaluators.N.split")
        ds = ctx.scene.datasets[self.cfg.split]
        ctx.system.eval()
        c = self.cfg
        res = evaluate_shapes(field, ds, views=c.views, max_objects=c.max_objects, chamfer=c.chamfer,
                              mesh_resolution=c.mesh_resolution, chamfer_samples=c.chamfer_samples)
        res["split"] = c.split
        res["shapes"] = ctx.scene.meta.get("note", "")
        return res


def build_shape_iou(cfg, ctx):
    """Build the shape IoU evaluator from its ``evaluators:`` entry (``ShapeIoUConfig``). Evaluators are
    built only after training, so the scene sources check ``split`` before it (:func:`check_evaluator_splits`)."""
    return ShapeIoU(cfg)
