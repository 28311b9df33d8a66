"""After training: render the eval split, export the mesh, run evaluators, write summary.json."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.config import SceneConfig
from pipeline.notices import warn
from pipeline.runs import RunDir
from pipeline.types import NLSError, PluginError, SceneData, component_label, plugin_errors


def to_uint8(img) -> np.ndarray:
    """An image (tensor or array, values in [0, 1]) clipped, scaled to 0..255 and rounded to uint8."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def depth_to_uint8(depth, opacity) -> np.ndarray:
    """``(H, W, 1)`` depth and opacity -> ``(H, W, 3)`` uint8 turbo image: depth scaled between its
    1st and 99th percentile where opacity > 0.5 (near is red), the other pixels white."""
    import matplotlib

    d = depth[..., 0].detach().cpu().numpy()
    m = opacity[..., 0].detach().cpu().numpy() > 0.5
    if m.any():
        lo, hi = np.percentile(d[m], 1), np.percentile(d[m], 99)
        d = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = matplotlib.colormaps["turbo"](1 - d)[..., :3]
    rgb[~m] = 1.0
    return (rgb * 255).astype(np.uint8)


@dataclass
class EvalContext:
    """What evaluators see. ``renders()`` and ``mesh()`` are computed once and cached."""

    cfg: SceneConfig
    scene: SceneData
    system: Any
    run: RunDir
    device: Any
    split: Optional[str] = None
    out_dir: Optional[Path] = None
    #: where evaluators write their own files (:attr:`files_dir`, :attr:`renders_root`); None: the run folder
    files_root: Optional[Path] = None
    progress: bool = True  # a progress bar (or plain lines) while rendering the split, a line per evaluator
    save_depth: bool = False  # also write NAME_depth.npy, NAME_opacity.npy (and NAME_depth_median.npy), float32 (H, W)
    exposure_of: Optional[int] = None  # render every view through this training image's exposure (nls render)
    _renders: Optional[list] = field(default=None, repr=False)
    _depths: Optional[list] = field(default=None, repr=False)
    _mesh: Any = field(default=None, repr=False)

    @property
    def files_dir(self) -> Optional[Path]:
        """The folder for an evaluator's own files (``meshes/...``, slices): the run folder while training
        evaluates; for ``nls eval`` the folder beside its JSON (``<stem>_renders/``), so a re-evaluation never
        writes over what training saved. None without a run."""
        return self.files_root if self.files_root is not None else (self.run.path if self.run is not None else None)

    @property
    def renders_root(self) -> Optional[Path]:
        """The folder for an evaluator's images: ``renders/`` of the run while training evaluates, else
        :attr:`files_dir`."""
        return self.files_root if self.files_root is not None else (self.run.renders_dir if self.run is not None else None)

    @property
    def can_render(self) -> bool:
        """True when the run has a renderer and the scene has the eval split."""
        return self.system.renderer is not None and (self.split or self.cfg.eval.split) in self.scene.splits

    @property
    def rendered(self) -> bool:
        """Whether :meth:`renders` has run (its result is cached)."""
        return self._renders is not None

    def renders(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(pred (H,W,3), gt (H,W,3))] float arrays of the eval split; PNGs written on the way."""
        if self._renders is None:
            self._depths = []
            self._renders = render_split(self, keep=self._depths)
        return self._renders

    def masks(self) -> list[Optional[np.ndarray]]:
        """For each view of :meth:`renders`, in its order, the (H, W) bool pixels that count (its ignore mask:
        ``PosedImages.valid``), or None when every pixel does. Scores over the pixels kept are taken with
        ``psnr(pred, gt, mask)`` and the like (:mod:`pipeline.metrics`)."""
        split = self.scene.splits[self.split or self.cfg.eval.split]
        return [split.valid_of(i) for i in eval_indices(len(split), self.cfg.eval.every, self.cfg.eval.max_images)]

    def object_masks(self) -> list[np.ndarray]:
        """For each view of :meth:`renders`, in its order, the (H, W) bool pixels on the object: its ground truth's
        alpha (RGBA images, object masks) at least 0.5, within its ignore mask. NLSError when the eval split has no
        alpha."""
        name = self.split or self.cfg.eval.split
        split = self.scene.splits[name]
        if split.alphas is None:
            raise NLSError(f"the '{name}' split has no alpha (RGBA images or object masks), so there is no object "
                           f"to score on")
        indices = eval_indices(len(split), self.cfg.eval.every, self.cfg.eval.max_images)
        on = [split.alphas[i, ..., 0].cpu().numpy() >= 0.5 for i in indices]
        return [o if keep is None else o & keep for o, keep in zip(on, self.masks())]

    def depths(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """[(view index, {"depth", "opacity"[, "depth_median"]: (H, W) float32})] of the same renders, in the
        same order (:meth:`renders` runs when it has not)."""
        self.renders()
        return self._depths

    def mesh(self):
        """The extracted mesh; an extraction error (e.g. empty level set) is raised again, not retried."""
        if self._mesh is None:
            try:
                self._mesh = extract(self)
            except NLSError as exc:
                self._mesh = exc
        if isinstance(self._mesh, NLSError):
            raise self._mesh
        return self._mesh


def missing_split_message(scene: SceneData, name: str, option: str, *, run_config: bool = False) -> str:
    """'<option> = name: the scene has no such split (it has ...)', with how to choose another. With
    ``run_config`` (the config is a trained run's config.yaml, as for ``nls eval``) the advice is a ``--set``,
    not an edit of the scene file. The splits the dataset folder holds beyond those loaded are named, with
    the nearest to ``name``."""
    import difflib

    if not scene.splits:  # no split would do, so the option (perhaps only its default) is not named
        return ("this run's scene has no posed images at all (a geometry or point-cloud scene), so there "
                "is nothing to render; export the surface with `nls export` instead")
    have = ", ".join(scene.splits)
    how = ("give one of them" if option == "--split" else
           f"give one of them with nls eval RUN --set {option}=NAME" if run_config else
           f"set {option} to one of them in the scene file or with --set {option}=NAME")
    root = scene.meta.get("root") if scene.meta.get("source") == "blender" else None

    def load(split: str) -> str:  # how to have ``split`` loaded as well
        wanted = ", ".join([*scene.splits, split])
        return (f"evaluate it with nls eval RUN --set eval.split={split} --set 'scene.splits=[{wanted}]'"
                if option == "--split" else f"load it too with --set 'scene.splits=[{wanted}]'")

    if name in (scene.meta.get("splits_empty") or ()):  # its file is there but lists no frames
        where = Path(root) / f"transforms_{name}.json" if root else f"transforms_{name}.json"
        return (f"{option} = {name!r}: {where} has no frames (its 'frames' list is empty), so the "
                f"scene has no such split (it has {have}); {how}, or add frames to that file")
    if root and (Path(root) / f"transforms_{name}.json").is_file():  # on disk, but not loaded by this run
        return (f"{option} = {name!r}: this run loaded only the splits {have} (its scene.splits), although "
                f"{root} has transforms_{name}.json; {how}, or {load(name)}")
    text = f"{option} = {name!r}: the scene has no such split (it has {have}); {how}"
    from pipeline.scenes.blender import dataset_splits

    try:
        held, where = dataset_splits(Path(root)) or ([], "") if root else ([], "")
    except OSError:
        held, where = [], ""
    unloaded = [s for s in held if s not in scene.splits]
    if unloaded:  # the folder holds more than this run loaded
        text += (f"; {root} holds the splits {', '.join(held)} ({where}), of which "
                 f"{', '.join(unloaded)} {'is' if len(unloaded) == 1 else 'are'} not loaded")
    near = difflib.get_close_matches(name, [*scene.splits, *unloaded], n=1, cutoff=0.6)
    if near:
        text += f"; did you mean {near[0]!r}?" + (f" ({load(near[0])})" if near[0] in unloaded else "")
    return text


def check_can_render(scene: SceneData, system, split: str, option: str = "--split") -> None:
    """Before anything is written: the run needs a renderer and the scene ``split`` (chosen by
    ``option``, named in the error)."""
    if split not in scene.splits:
        raise NLSError(missing_split_message(scene, split, option))
    check_renderer(system)


def check_renderer(system) -> None:
    """NLSError unless the run's ``system`` has a renderer stage."""
    if system.renderer is None:
        raise NLSError("this run has no renderer stage, so it cannot render images; "
                       "export the surface with `nls export` instead")


def check_eval_split(cfg: SceneConfig, scene: SceneData, system, overrides: Sequence[str] = (), *,
                     run_config: bool = False) -> None:
    """Before training: a run that will render its eval split must name one the scene has. The
    error names the ``--set`` among ``overrides`` that chose the split, else the scene file; with
    ``run_config`` (``cfg`` is a trained run's config.yaml: ``nls eval``, ``nls resume``) it advises a
    ``--set``, not an edit of the file."""
    from pipeline.config import where_set

    if system.renderer is not None and scene.splits and cfg.eval.split not in scene.splits:
        raise NLSError(f"{where_set(cfg.source, overrides, 'eval.split')}: "
                       + missing_split_message(scene, cfg.eval.split, "eval.split", run_config=run_config))


def eval_indices(n_views: int, every: int = 1, max_images: Optional[int] = None) -> list[int]:
    """The views of a split that evaluation renders: every ``every``-th of ``n_views`` (0, k, 2k, ...),
    then at most ``max_images`` of them."""
    return list(range(0, n_views, every))[:max_images]


def supersample_kwargs(supersample: int) -> dict:
    """The ``supersample`` keyword for a renderer's ``render_image``: passed only when above 1, so
    renderers of older plugins, whose ``render_image`` takes no such keyword, keep working."""
    return {"supersample": int(supersample)} if supersample > 1 else {}


#: the render outputs ``--depth`` writes as float32 (H, W) arrays (renderers without a median give none)
DEPTH_ARRAYS = ("depth", "opacity", "depth_median")


def save_depth_arrays(out_dir: Path, name: str, out: dict) -> None:
    """Write ``out``'s :data:`DEPTH_ARRAYS` (each (H, W, 1)) as ``NAME_<key>.npy``, float32 (H, W)."""
    from pipeline.runs import atomic_save_npy

    for key in DEPTH_ARRAYS:
        if key in out:
            atomic_save_npy(out_dir / f"{name}_{key}.npy", out[key][..., 0].float().cpu().numpy())


def as_shot(system, split_name: Optional[str], out: dict, i: int, exposure_of: Optional[int] = None):
    """The rendered ``out["rgb"]`` (H, W, 3) of view ``i`` of ``split_name`` (None: a view of no split): for a
    training view of a run that learned each training image's exposure (``train.exposure``), through that image's
    transform, so it is compared with the photo as its camera took it; with ``exposure_of``, any view through
    that training image's transform (``nls render --exposure``); every other view as rendered (the average
    camera)."""
    exposure = getattr(system, "exposure", None)
    index = exposure_of if exposure_of is not None else (i if split_name == "train" else None)
    if index is None or exposure is None:
        return out["rgb"]
    return exposure.image_as_shot(out, index, getattr(system.renderer, "background", None))


def render_split(ctx: EvalContext, keep: Optional[list] = None) -> list:
    """Render the chosen views of ``ctx``'s split, writing ``NAME.png`` and ``NAME_pred_gt_depth.png``
    (and ``.npy`` arrays with ``save_depth``, and ``NAME_valid.png`` for a view with an ignore mask) to
    ``out_dir`` (default ``renders/<split>``);
    returns [(pred, gt)] ``(H, W, 3)`` float arrays. ``keep``, when given, gets (view index, its
    :data:`DEPTH_ARRAYS` as (H, W) float32) for each view."""
    import torch

    from pipeline.progress import StepProgress, image_progress
    from pipeline.report.figures import SIDE_BY_SIDE, VALID_BESIDE
    from pipeline.runs import atomic_write_image

    split_name = ctx.split or ctx.cfg.eval.split
    check_can_render(ctx.scene, ctx.system, split_name, "--split" if ctx.split else "eval.split")
    split = ctx.scene.splits[split_name]
    out_dir = ctx.out_dir or (ctx.run.renders_dir / split_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = eval_indices(len(split), ctx.cfg.eval.every, ctx.cfg.eval.max_images)
    n = len(indices)
    cams = split.cameras.to(ctx.device)
    extra = supersample_kwargs(ctx.cfg.eval.supersample)
    from pipeline.system import check_render_output

    pairs = []
    alignments = {}
    poses = getattr(ctx.system, "poses", None)
    if split_name != "train" and ctx.cfg.eval.align_poses == 0 and poses is not None and poses.refines_poses:
        warn(f"this run refined its training cameras' poses (train.refine_poses); the {split_name} views are "
             f"scored from their poses as given, so any error in those poses, or a refined frame a fraction of a "
             f"pixel off, counts as misregistration; eval.align_poses: 100 fits each view's pose to its image "
             f"first, as BARF scores such runs (README: Poses)")
    ctx.system.eval()
    with StepProgress(n, 0, f"rendering {split_name}", enabled=ctx.progress) as bar, torch.no_grad():
        for k, i in enumerate(indices):
            name = split.names[i] if i < len(split.names) else f"{i:03d}"
            view, j = cams, i
            if ctx.cfg.eval.align_poses > 0 and split_name != "train":  # (training views: their refined poses)
                view, j = aligned_view(ctx, cams.select([i]), split.images[i], name, alignments), 0
            with plugin_errors(f"{component_label(ctx.system.renderer)} failed rendering view {i} of {split_name}"), \
                    image_progress(bar, k):
                out = ctx.system.renderer.render_image(view, j, ctx.system.chain, chunk=ctx.cfg.eval.chunk, **extra)
            check_render_output(out, ctx.system.renderer, "render_image")
            pred = as_shot(ctx.system, split_name, out, i, ctx.exposure_of).clamp(0, 1).cpu().numpy()
            gt = split.images[i].cpu().numpy()
            atomic_write_image(out_dir / f"{name}.png", to_uint8(pred))
            side = np.concatenate([to_uint8(pred), to_uint8(gt), depth_to_uint8(out["depth"], out["opacity"])], 1)
            atomic_write_image(out_dir / f"{name}{SIDE_BY_SIDE}", side)
            write_valid_beside(out_dir / f"{name}{VALID_BESIDE}", split.valid_of(i))
            if ctx.save_depth:
                save_depth_arrays(out_dir, name, out)
            if keep is not None:
                keep.append((i, {key: out[key][..., 0].float().cpu().numpy() for key in DEPTH_ARRAYS if key in out}))
            pairs.append((pred, gt))
            bar.advance(k + 1)
    if alignments:
        from pipeline.runs import atomic_write_text

        atomic_write_text(out_dir / POSE_ALIGNMENT, json.dumps({"steps": ctx.cfg.eval.align_poses,
                                                                "rays": ctx.cfg.eval.align_rays,
                                                                "views": alignments}, indent=1))
    return pairs


def write_valid_beside(path: Path, valid: Optional[np.ndarray]) -> None:
    """Write a view's ignore mask ``valid`` (H, W) bool to ``path`` (8-bit, white where the pixels count), for
    the pictures that score the side-by-sides (:func:`pipeline.report.figures.valid_beside`); with None, remove
    a stale one."""
    from pipeline.runs import atomic_write_image

    if valid is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_image(path, np.where(valid, 255, 0).astype(np.uint8))


#: the test-time pose corrections of a split's views (``eval.align_poses``), in its renders folder
POSE_ALIGNMENT = "pose_alignment.json"


def aligned_view(ctx: EvalContext, camera, image, name: str, record: dict):
    """``camera`` (one view's) fitted to ``image`` by :func:`pipeline.pose_alignment.align_camera` with
    ``ctx.cfg.eval``'s steps and rays; the correction goes into ``record[name]``."""
    from pipeline.pose_alignment import align_camera

    with plugin_errors(f"{component_label(ctx.system.renderer)} failed aligning the pose of view {name}"):
        aligned, record[name] = align_camera(ctx.system, camera, image, steps=ctx.cfg.eval.align_poses,
                                             rays=ctx.cfg.eval.align_rays)
    return aligned


def extract(ctx: EvalContext, *, resolution: Optional[int] = None, level: Optional[float] = None,
            bbox: Optional[list[float]] = None):
    """Build the scene's extractor and mesh ``ctx.system.chain`` with it (``resolution``, ``level`` and
    ``bbox`` passed on); raises NLSError when the scene has no extractor stage.

    With a run and checkpoint, a level calibrated before for them is used again, and a mesh extracted before
    with the same :func:`mesh_key` is read back from the run folder (:mod:`pipeline.mesh_cache`) instead of
    meshing the field again; either way the caller gets a mesh of its own, free to change."""
    choice = ctx.cfg.stages.get("extractor")
    if choice is None:
        raise NLSError("this run's scene has no extractor stage: `nls eval` takes one with --set "
                       "'extractor={type: marching_cubes}'; to export, train a run whose scene file has "
                       "`extractor: {type: marching_cubes}`")
    from pipeline.build import BuildContext

    extractor = choice.build(BuildContext(ctx.cfg, ctx.device, ctx.scene, ctx.scene.aabb))
    ctx.system.eval()
    options = choice.to_dict()
    key = calibration_key(ctx, options, resolution, bbox) if level is None else None
    known = known_calibrations(ctx.run) if key else {}
    asked = known[key]["level"] if key in known else level  # the level the extractor is asked for
    cached = mesh_key(ctx, extractor, options, resolution, asked, bbox)
    mesh = reuse_mesh(ctx, cached) if cached else None
    if mesh is None:
        mesh = mesh_field(extractor, ctx.system.chain, ctx.device, resolution=resolution, level=asked, bbox=bbox)
        calibrated = bool(key) and key not in known and isinstance(mesh.metadata.get("level_calibration"), dict)
        if calibrated:  # the calibrated level is recorded; the mesh is kept as the one at that level
            remember_calibration(ctx.run, key, mesh.metadata["level"], mesh.metadata["level_calibration"], known)
            cached = mesh_key(ctx, extractor, options, resolution, float(mesh.metadata["level"]), bbox)
        if cached:
            keep_mesh(ctx, cached, mesh, calibrated=calibrated)
    if key in known:  # the level this checkpoint and extractor set calibrated to before
        mesh.metadata["level_calibration"] = {**known[key]["calibration"], "reused": True}
    return mesh


def mesh_field(extractor, chain, device, *, resolution: Optional[int] = None, level: Optional[float] = None,
               bbox: Optional[list[float]] = None, doing: str = ""):
    """``extractor``'s mesh of ``chain`` (a trimesh.Trimesh); PluginError naming the extractor (and what it was
    ``doing``) when it raises or returns something else."""
    who = component_label(extractor)
    with plugin_errors(f"{who} failed" + (f" {doing}" if doing else "")):
        mesh = extractor.extract(chain, resolution=resolution, device=device, bbox=bbox, level=level)
    if not (hasattr(mesh, "vertices") and hasattr(mesh, "faces") and hasattr(mesh, "export")):
        raise PluginError(f"{who} returned {type(mesh).__name__}; an extractor returns a trimesh.Trimesh "
                          f"(e.g. trimesh.Trimesh(vertices, faces))")
    return mesh


#: the run's record of calibrated extraction levels (``calibrate: silhouettes``), by checkpoint and extractor
CALIBRATIONS = Path("meshes") / "level_calibrations.json"


def calibration_key(ctx: EvalContext, extractor: dict, resolution: Optional[int],
                    bbox: Optional[list[float]], **more: Any) -> Optional[str]:
    """What a calibrated level depends on: the newest checkpoint's sha256 (the model evaluated), the
    extractor's options and the ``resolution``/``bbox`` arguments, with ``more`` (e.g. a mesh's level) when
    given, hashed; None without a run or checkpoint, and while another process trains the run (its newest
    checkpoint may then be newer than the model loaded here), so that nothing is recorded or reused under it."""
    import hashlib
    import json

    ck = ctx.run.latest_checkpoint() if ctx.run is not None and not trained_elsewhere(ctx.run) else None
    digest = ck.with_suffix(".pt.sha256") if ck is not None else None
    if digest is None or not digest.is_file():
        return None
    text = json.dumps({"checkpoint": digest.read_text().strip(), "extractor": extractor,
                       "resolution": resolution, "bbox": bbox, **more}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def mesh_key(ctx: EvalContext, extractor, options: dict, resolution: Optional[int], level: Optional[float],
             bbox: Optional[list[float]]) -> Optional[str]:
    """What ``extractor``'s mesh depends on: :func:`calibration_key` with the ``level`` it is asked for and the
    device kind (CPU and GPU sums differ in the last bits). None where :func:`calibration_key` is None (no
    checkpoint, or another process trains the run), and for an extractor whose class sets
    ``cache_meshes = False`` (one that is not deterministic)."""
    if not getattr(extractor, "cache_meshes", True):
        return None
    device = getattr(ctx.device, "type", str(ctx.device))
    return calibration_key(ctx, options, resolution, bbox, level=level, device=device)


def trained_elsewhere(run) -> bool:
    """Whether a process other than this one holds the run's training lock."""
    pid = run.trainer_pid()
    return pid is not None and pid != str(os.getpid())


def reuse_mesh(ctx: EvalContext, key: str):
    """The mesh the run keeps under ``key`` (a new one), said on stderr unless progress is off (``-q``);
    None when it keeps none."""
    from pipeline.mesh import progress_setting
    from pipeline.mesh_cache import entry_path, load_mesh

    mesh = load_mesh(ctx.run, key)
    if mesh is not None and progress_setting() is not False:
        res = mesh.metadata.get("resolution")
        at = f" at resolution {res}" if isinstance(res, int) else ""
        print(f"mesh: reused the one extracted from this checkpoint{at} "
              f"({entry_path(ctx.run, key).relative_to(ctx.run.path)})", file=sys.stderr)
    return mesh


def keep_mesh(ctx: EvalContext, key: str, mesh, *, calibrated: bool) -> None:
    """Keep ``mesh`` in the run folder under ``key``; a ``calibrated`` one without its ``level_calibration``
    (it is kept as the mesh at its level, and the record of the calibration is added back on reuse)."""
    from pipeline.mesh_cache import store_mesh

    drop = ("level_calibration",) if calibrated else ()
    store_mesh(ctx.run, key, mesh, {k: v for k, v in mesh.metadata.items() if k not in drop})


def known_calibrations(run) -> dict:
    """``{key: {"level", "calibration"}}`` from the run's :data:`CALIBRATIONS` ({} when absent or damaged)."""
    from pipeline.runs import json_record

    data = json_record(run.path / CALIBRATIONS)[0] or {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("level"), (int, float))
            and isinstance(v.get("calibration"), dict)}


def remember_calibration(run, key: str, level: float, calibration: dict, known: dict) -> None:
    """Add a calibrated level to the run's record (atomically), so eval and export reuse it instead of
    meshing every candidate level again (about 10 s on rs_sdf_csg); a run folder that cannot be written
    keeps no record."""
    import json

    from pipeline.runs import atomic_write_text, json_default

    try:
        (run.path / CALIBRATIONS).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.path / CALIBRATIONS, json.dumps(
            {**known, key: {"level": float(level), "calibration": calibration}}, indent=1, default=json_default))
    except (OSError, NLSError):
        pass


#: an evaluator that took this long (seconds) gets a "done in" line after its start line
SLOW_EVALUATOR_S = 5.0


def publish_staged(staging: Path, root: Path) -> None:
    """Move every entry of ``staging`` (what ``nls eval`` rendered and its evaluators wrote) into ``root``, each
    replacing the entry of that name there; ``staging`` is removed."""
    import shutil

    if staging.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = root / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    shutil.rmtree(staging, ignore_errors=True)


def needs_gt_mesh(choice) -> bool:
    """Whether the evaluator ``choice`` (a config entry) consumes the scene's ground-truth mesh."""
    return "gt_mesh" in {q for alt in choice.component.consumes for q in alt}


def warn_skipped_evaluators(cfg: SceneConfig, scene: SceneData) -> None:
    """Before training: a warning naming the evaluators that will be skipped after it because this scene has no
    ground-truth mesh (its source may give one, e.g. a Blender folder's ``gt_mesh.ply``, but did not here)."""
    skipped = [c.name for c in cfg.evaluators if needs_gt_mesh(c)] if not scene.gt_mesh else []
    if skipped:
        warn(f"evaluator{'s' if len(skipped) > 1 else ''} {', '.join(skipped)} will be skipped after training: the "
             f"scene has no ground-truth mesh (a Blender or instant-ngp folder gives one as gt_mesh.ply; a capture, "
             f"COLMAP's or an IDR / NeuS folder, takes one in its own coordinates with scene.gt_mesh)")


def run_evaluators(ctx: EvalContext) -> dict:
    """Run every evaluator of the scene; returns {evaluator name: {metric: value}}."""
    from pipeline.build import BuildContext

    import time

    bctx = BuildContext(ctx.cfg, ctx.device, ctx.scene, ctx.scene.aabb)
    results: dict[str, dict] = {}
    for k, choice in enumerate(ctx.cfg.evaluators, 1):
        if needs_gt_mesh(choice) and not ctx.scene.gt_mesh:
            print(f"evaluator {choice.name}: skipped, the scene has no ground-truth mesh", file=sys.stderr)
            results[choice.name] = {"skipped": "scene has no ground-truth mesh"}
            continue
        t0 = time.perf_counter()
        if ctx.progress:  # some take minutes (sphere tracing, meshing a Lipschitz field): say which one runs
            print(f"evaluator {choice.name} ({k}/{len(ctx.cfg.evaluators)})...", file=sys.stderr, flush=True)
        try:
            results[choice.name] = _checked_results(choice, _call_evaluator(choice, choice.build(bctx), ctx))
            if ctx.progress and time.perf_counter() - t0 >= SLOW_EVALUATOR_S:
                print(f"evaluator {choice.name}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        except PluginError:
            raise  # a broken plugin is not a skipped evaluation
        except NLSError as exc:  # e.g. an empty level set after a very short run
            print(f"evaluator {choice.name}: skipped, {exc}", file=sys.stderr)
            results[choice.name] = {"skipped": str(exc)}
    _warn_shadowed_metrics(results)
    return results


def _warn_shadowed_metrics(results: dict) -> None:
    """Say which numeric metric names two evaluators both report: the run's flat ``metrics`` (summary,
    compare, report) keep only the later one's value; both stay under ``evaluators``."""
    seen: dict[str, str] = {}
    for ev, metrics in results.items():
        for k in flatten({ev: metrics}):
            if k in seen:
                warn(f"evaluators {seen[k]} and {ev} both report {k!r}; the run's metrics keep {ev}'s value "
                     f"(both are under evaluators in summary.json)")
            seen[k] = ev


def _call_evaluator(choice, evaluator, ctx) -> Any:
    """``evaluator(ctx)``; an exception of its own becomes a :class:`PluginError` naming it."""
    with plugin_errors(f"evaluator {choice.name!r} of plugin {choice.component.plugin} failed"):
        return evaluator(ctx)


def _checked_results(choice, res: Any) -> dict:
    """An evaluator's results as JSON can hold them: a mapping, with numpy and one-element torch
    numbers made Python numbers, and NaN/inf replaced by null (strict JSON has neither) and said so
    on stderr."""
    if not isinstance(res, dict):
        raise PluginError(f"evaluator {choice.name!r} of plugin {choice.component.plugin} returned "
                          f"{type(res).__name__}; an evaluator returns a mapping {{metric: value}}")
    keys = [k for k in res if not isinstance(k, str)]
    if keys:
        raise PluginError(f"evaluator {choice.name!r} of plugin {choice.component.plugin} returned the metric "
                          f"name(s) {', '.join(map(repr, keys))}; metric names are strings, e.g. 'iou'")
    res = {k: _plain_number(v) for k, v in res.items()}
    odd = [k for k, v in res.items() if not isinstance(v, (int, float, str, list, tuple, dict, type(None)))]
    if odd:  # JSON would hold only their repr; said, and kept as text
        warn(f"evaluator {choice.name}: {', '.join(f'{k} is a {type(res[k]).__name__}' for k in odd)}, not a "
             f"number, text, list or mapping; recorded as its text")
        res = {k: (str(v) if k in odd else v) for k, v in res.items()}
    bad = [k for k, v in res.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        warn(f"evaluator {choice.name}: {', '.join(f'{k} = {res[k]}' for k in bad)} is not finite; "
             f"recorded as null")
    return {k: (None if k in bad else v) for k, v in res.items()}


def _plain_number(value: Any) -> Any:
    """``np.float32(1.5)``, ``np.array(3)``, ``torch.tensor(1.5)`` (one element) -> ``1.5``, ``3``, ``1.5``;
    anything else is returned as it is."""
    torch = sys.modules.get("torch")
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0) or \
            (torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    return value


def flatten(results: dict) -> dict:
    """``{evaluator: {metric: value}}`` -> ``{metric: value}`` of the numeric (non-bool) values; of two
    evaluators reporting one name, the later wins."""
    flat = {}
    for ev, metrics in results.items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[k] = v
    return flat
