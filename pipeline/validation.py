"""Validation during training (``train.val_every``): every N steps, render a few held-out views at a
preview size, log their PSNR beside the training loss in ``metrics.jsonl`` and write each view's
prediction | ground truth | depth to ``renders/progress/``, so a run shows how it is going on views it does
not train on while it trains. Runs without images validate their mesh instead
(:mod:`pipeline.geometry_validation`); :func:`build_validators` picks.

The preview renders at ``1/f`` of the image size (``f`` the smallest integer that brings the longer side
to at most ``train.val_max_side``) with one ray through the centre of each preview pixel, against the
ground truth averaged over ``f x f`` blocks. That PSNR follows the full-size one but is not equal to it
(one ray per preview pixel samples the pixel's footprint, the block mean integrates it); ``nls eval``
gives the figure to report. Validation does not count as training time and leaves every random-number
state as it found it, so a run with validation trains bit for bit as one without. Views of the training split
(``train.val_split: train``) are rendered as training sees them: from their refined poses
(``train.refine_poses``) and through their images' colour transforms (``train.exposure``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.config import SceneConfig
from pipeline.scenes.blender import area_downscale
from pipeline.types import Cameras, NLSError, SceneData, component_label, plugin_errors

#: where the preview images go, under the run's ``renders/``
PROGRESS_DIR = "progress"


def validation_split(cfg: SceneConfig, scene: SceneData) -> str:
    """``train.val_split``, else ``val`` when the scene loaded it, else ``eval.split``."""
    t = cfg.train
    if t.val_split:
        return t.val_split
    return "val" if "val" in scene.splits else cfg.eval.split


def metric_name(split: str) -> str:
    """The metrics.jsonl key of the validation PSNR on ``split``: ``psnr_<split>`` (``psnr_train_views``
    for the train split, whose ``psnr_train`` is the training batch's)."""
    return "psnr_train_views" if split == "train" else f"psnr_{split}"


def validation_kinds(cfg: SceneConfig, scene: SceneData, system) -> tuple[bool, bool]:
    """(images, geometry): what ``train.val_every`` validates. Held-out views whenever the run renders posed
    images; the geometry (:mod:`pipeline.geometry_validation`) when ``train.val_geometry`` says so, by default
    when the run renders no images."""
    images = system.renderer is not None and bool(scene.splits)
    geometry = cfg.train.val_geometry
    return images, (not images) if geometry is None else geometry


def check_validation(cfg: SceneConfig, scene: SceneData, system) -> None:
    """Before training: with ``train.val_every`` set, the run needs the validation split (images) or an
    extractor and a reference (geometry), and something to validate."""
    from pipeline.evaluate import missing_split_message
    from pipeline.geometry_validation import check_geometry_validation

    if cfg.train.val_every is None:
        return
    images, geometry = validation_kinds(cfg, scene, system)
    if not images and not geometry:
        raise NLSError(f"{cfg.source}: train.val_every = {cfg.train.val_every}: this run renders no images "
                       f"(it has {'no renderer stage' if system.renderer is None else 'no posed images'}) and "
                       f"train.val_geometry = false turns off validating its mesh, so there is nothing to validate; "
                       f"leave train.val_geometry unset, or train.val_every unset")
    if images:
        split = validation_split(cfg, scene)
        if split not in scene.splits:
            option = "train.val_split" if cfg.train.val_split else "eval.split"
            raise NLSError(f"{cfg.source}: " + missing_split_message(scene, split, option))
    if geometry:
        check_geometry_validation(cfg, scene)


def build_validators(cfg: SceneConfig, scene: SceneData, system, renders_dir: Path, device) -> list:
    """The validators of a run with ``train.val_every`` ([] without): :class:`Validator` for held-out views
    and/or :class:`~pipeline.geometry_validation.GeometryValidator`, as :func:`validation_kinds` says. Each has
    ``key`` (its metrics.jsonl name), ``tag`` (its TensorBoard image's), ``out_dir``, ``describe()``,
    ``__call__(step) -> {key: value}`` and ``preview`` ((name, image) of its latest call)."""
    from pipeline.geometry_validation import GeometryValidator

    if cfg.train.val_every is None:
        return []
    images, geometry = validation_kinds(cfg, scene, system)
    return ([Validator(cfg, scene, system, renders_dir, device)] if images else []) + \
        ([GeometryValidator(cfg, scene, system, renders_dir, device)] if geometry else [])


def preview_factor(width: int, height: int, max_side: Optional[int]) -> int:
    """The integer downscale ``f >= 1`` that brings ``max(width, height)`` to at most ``max_side`` (1 for
    None or a smaller image)."""
    if not max_side:
        return 1
    return max(1, -(-max(width, height) // max_side))


@dataclass
class PreviewView:
    """One validation view: its name, index in the split, preview camera, block-averaged ground truth
    (h, w, 3) and the (h, w) bool pixels that count (None: all; ignore masks)."""

    name: str
    index: int
    camera: Cameras
    target: np.ndarray
    valid: Optional[np.ndarray] = None


class Validator:
    """Renders the validation views of a run at preview size; :meth:`__call__` gives the mean PSNR (and each
    view's) and writes each view's preview image; :attr:`preview` is the first's, for TensorBoard. Built once per training session (the views stay on ``device``)."""

    def __init__(self, cfg: SceneConfig, scene: SceneData, system, renders_dir: Path, device) -> None:
        t = cfg.train  # checked by check_validation first (the Trainer does it on every rank)
        self.split = validation_split(cfg, scene)
        self.key = metric_name(self.split)
        self.system, self.chunk = system, cfg.eval.chunk
        self.out_dir = renders_dir / PROGRESS_DIR
        sp = scene.splits[self.split]
        n = len(sp)
        indices = sorted({round(k * n / t.val_views) for k in range(min(t.val_views, n))})  # spread over the split
        self.factor = preview_factor(sp.cameras.width, sp.cameras.height, t.val_max_side)
        self.views = [PreviewView(sp.names[i] if i < len(sp.names) else f"{i:03d}", i,
                                  sp.cameras.select([i]).downscaled(self.factor).to(device),
                                  area_downscale(sp.images[i].cpu().numpy(), self.factor).astype(np.float64),
                                  sp.valid_of(i, self.factor))
                      for i in indices]
        self.tag = f"{self.split}/{self.views[0].name}"  # its TensorBoard image
        #: (view name, (h, 3w, 3) uint8 prediction | ground truth | depth) of the latest call
        self.preview: Optional[tuple[str, np.ndarray]] = None

    def describe(self) -> str:
        """'N view(s) of <split> at W x H' for the run's log line."""
        cam = self.views[0].camera
        return (f"the PSNR of {len(self.views)} view{'s' if len(self.views) != 1 else ''} of {self.split} at "
                f"{cam.width} x {cam.height}" + (f" (1/{self.factor} size)" if self.factor > 1 else ""))

    def camera(self, view: PreviewView) -> Cameras:
        """``view``'s preview camera as it stands now: a training view's with its refined pose when the run
        refines them (the corrections change as training goes on), a held-out view's with the refined focal
        length when the run refines it, else the camera as given."""
        poses = getattr(self.system, "poses", None)
        if poses is None:
            return view.camera
        return poses.refined(view.camera, [view.index]) if self.split == "train" else poses.refocused(view.camera)

    def __call__(self, step: int) -> dict[str, float]:
        """Render every view, write ``renders/progress/<name>_<step>.png`` for each (prediction | ground truth |
        depth), return ``{key: mean PSNR in dB}``, with several views also ``{key/<name>: that view's}``. Leaves
        the system in eval mode."""
        import torch

        from pipeline.evaluate import as_shot, depth_to_uint8, to_uint8
        from pipeline.runs import atomic_write_image
        from pipeline.system import check_render_output

        renderer = self.system.renderer
        self.system.eval()
        psnrs = []
        for k, view in enumerate(self.views):
            with torch.no_grad(), plugin_errors(f"{component_label(renderer)} failed rendering validation view "
                                                f"{view.name} of {self.split} at step {step}"):
                out = renderer.render_image(self.camera(view), 0, self.system.chain, chunk=self.chunk)
            check_render_output(out, renderer, "render_image")
            with torch.no_grad():
                pred = as_shot(self.system, self.split, out, view.index).clamp(0, 1).double().cpu().numpy()
            counts = slice(None) if view.valid is None or not view.valid.any() else view.valid
            mse = float(np.mean((pred[counts] - view.target[counts]) ** 2))
            psnrs.append(-10 * np.log10(max(mse, 1e-10)))
            self.out_dir.mkdir(parents=True, exist_ok=True)
            side = np.concatenate([to_uint8(pred), to_uint8(view.target),
                                   depth_to_uint8(out["depth"], out["opacity"])], 1)
            atomic_write_image(self.out_dir / f"{view.name}_{step:08d}.png", side)
            if k == 0:
                self.preview = (view.name, side)
        record = {self.key: float(np.mean(psnrs))}
        if len(self.views) > 1:  # each view's too, which the report titles its previews with
            record.update({f"{self.key}/{view.name}": float(p) for view, p in zip(self.views, psnrs)})
        return record
