"""`nls report RUN_DIR`: one self-contained HTML page of a run.

Sections (each shown when the run has what it needs, otherwise a note says what is missing
and how to make it): scene and method with the resolved config; summary metrics next to
the published figures of the config's ``reference:`` block; loss and metric curves; the eval
split's renders next to ground truth with a per-pixel error map (one set: those its metrics
come from), then each other split's renders (``nls render --split``) and the images of other
``renders/`` folders (an evaluator's) in sections of their own; depth and normal maps; field slices
(sdf / occupancy / density) on three axis planes through the box centre plus any PNGs a
plugin wrote to a ``*slices`` folder of the run; a turntable of the exported mesh; wall time, device
and versions. Works for runs killed midway (no summary.json) from their checkpoints and
metrics.jsonl.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from pipeline.report import html as H
from pipeline.report.collect import RunFacts, read_run, summary_mesh_level
from pipeline.runs import EXPOSURE_RECORD, POSES_RECORD
from pipeline.types import NLSError

__all__ = ["build_report", "read_run", "RunFacts"]

MAX_RENDER_PAIRS = 6


def build_report(run_dir: Path, out: Optional[Path] = None, *, host=None, use_model: bool = True,
                 progress: bool = True) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); returns its path.

    ``use_model=False`` skips everything that needs the checkpoint (slices, normal maps,
    renders of unfinished runs).
    """
    from pipeline.progress import StepProgress
    from pipeline.runs import atomic_write_text, check_output_file

    out = check_output_file(Path(out), "report") if out else None  # before any work
    facts = read_run(run_dir)
    for note in facts.record_notes:  # damaged records: the report is still written, and says so here too
        print(f"warning: {facts.path}: {note}", file=sys.stderr, flush=True)
    out = out or facts.path / "report.html"
    ld, load_error = (None, "skipped (--no-model)")
    builders: list[tuple[str, Callable[[], str]]] = [
        ("Run", lambda: _overview(facts)),
        ("Metrics", lambda: _metrics(facts)),
        ("Training curves", lambda: _curves(facts)),
    ]
    if progress_previews(facts.path):
        builders.append(("Validation during training", lambda: _progress(facts)))
    if (facts.path / EXPOSURE_RECORD).is_file():
        builders.append(("Exposure of the training images", lambda: _exposure(facts)))
    if (facts.path / POSES_RECORD).is_file():
        builders.append(("Poses of the training cameras", lambda: _poses(facts)))
    steps = len(builders) + 5
    sections: list[tuple[str, str]] = []
    with StepProgress(steps, 0, "report", enabled=progress) as bar:
        for i, (name, fn) in enumerate(builders):
            sections.append((name, fn()))
            bar.advance(i + 1, name)
        if use_model:
            ld, load_error = _load(facts, host)
            if load_error:  # the report is still written, without the model's views: say so here too
                print(f"warning: {facts.path}: no renders, normal maps or slices in the report: {load_error}",
                      file=sys.stderr, flush=True)
        bar.advance(len(builders) + 1, "model")
        split, shown = shown_renders(facts)
        sections.append((f"{split.capitalize()} renders and ground truth",
                         _renders(facts, split, shown, ld, load_error, progress=progress)))
        sections += other_render_sections(facts, split, shown)
        bar.advance(len(builders) + 2, "renders")
        sections.append(("Depth and normal maps", _depth_normals(facts, ld, load_error, progress=progress)))
        bar.advance(len(builders) + 3, "normals")
        mesh_path = shown_mesh(facts)
        sections.append(("Field slices", _slices(facts, ld, load_error, mesh_path)))
        bar.advance(len(builders) + 4, "slices")
        sections.append(("Mesh", _mesh(facts, mesh_path)))
        sections.append(("Provenance", _provenance(facts)))
        bar.advance(steps, "mesh")
    title = f"{facts.name} / {facts.method}"
    sub = f"{facts.path} — {facts.status}"
    atomic_write_text(out, H.page(title, sub, sections))
    return out


def _load(facts: RunFacts, host):
    if not facts.checkpoints:
        return None, "the run has no checkpoint"
    from pipeline.report.model_views import load_run

    try:
        return load_run(facts.path, host), None
    except NLSError as exc:
        return None, f"the model could not be rebuilt ({exc})"


# -- sections -------------------------------------------------------------------------------

def _fitted(fitted) -> str:
    """"N cameras fitted to WxH (k scaled)" for a ``fitted`` record (pipeline.scenes.camera_fit), "" for none."""
    if not (isinstance(fitted, dict) and isinstance(fitted.get("size"), list) and len(fitted["size"]) == 2):
        return ""
    return (f"{fitted.get('cameras', 'several')} cameras fitted to {fitted['size'][0]}x{fitted['size'][1]} "
            f"({fitted.get('scaled', 0)} scaled)")


def capture_rows(scene: dict) -> list[tuple[str, str]]:
    """Overview rows on the frames taken from a video (scene.json ``frames``), on how a capture was posed (``sfm``:
    structure from motion on photos or those frames), on its object or ignore masks (``masks``), its depth maps
    (``depths``) and its sparse points (``sparse_points``); none for other scenes, or for fields of the wrong
    kind."""
    rows = []
    frames = scene.get("frames")  # the video source: the frames taken from the video
    if isinstance(frames, dict) and isinstance(frames.get("picked"), list) and isinstance(frames.get("decoded"), int):
        text = f"{len(frames['picked'])} frames of {frames['decoded']}"
        if isinstance(frames.get("fps"), (int, float)) and isinstance(frames.get("duration"), (int, float)):
            text += f" ({frames.get('video', 'the video')}, {frames['fps']:g} fps, {frames['duration']:.1f} s)"
        text += ", the sharpest of each stretch" if frames.get("sharpest") else ", the first of each stretch"
        if frames.get("spacing") == "motion":
            text += " of equal motion"
            if isinstance(frames.get("still"), int) and frames["still"]:
                text += f" ({frames['still']} frames standing still)"
        rows.append(("video", text))
    sfm = scene.get("sfm")
    if isinstance(sfm, dict) and all(isinstance(sfm.get(k), (int, float)) for k in ("photos", "registered")):
        what = "frames" if isinstance(frames, dict) else "photos"  # (structure from motion on a video's frames)
        text = f"{sfm['registered']} of {sfm['photos']} {what} registered"
        if isinstance(sfm.get("mean_reprojection_error"), (int, float)):
            text += f", mean reprojection error {sfm['mean_reprojection_error']:.2f} px"
        seconds = sfm.get("seconds")
        if isinstance(seconds, dict) and all(isinstance(v, (int, float)) for v in seconds.values()):
            text += f", {sum(seconds.values()):.0f} s"
        prepared = sfm.get("prepared")
        if isinstance(prepared, dict) and isinstance(prepared.get("turned"), int):
            text += f"; {prepared['turned']} turned upright by their EXIF orientation"
        if isinstance(prepared, dict) and isinstance(prepared.get("converted"), int):
            text += f"; {prepared['converted']} HEIC posed from JPEG copies"
        crops = prepared.get("crop") if isinstance(prepared, dict) else None
        crops = [crops] if isinstance(crops, list) and crops and not isinstance(crops[0], list) else crops
        if isinstance(crops, list) and all(isinstance(c, list) and len(c) == 2 for c in crops) and crops:
            text += f"; portrait and landscape shots cropped to {' and '.join(f'{c[0]}x{c[1]}' for c in crops)}"
        cameras = prepared.get("cameras") if isinstance(prepared, dict) else None
        if isinstance(cameras, list) and all(isinstance(g, list) and len(g) == 4 for g in cameras):
            listed = ", ".join(f"{g[3]} of {g[0]}x{g[1]}{f' at {g[2]}' if isinstance(g[2], str) else ''}"
                               for g in cameras)
            text += f"; a camera for each size and lens ({listed})"
        if isinstance(prepared, dict) and isinstance(prepared.get("lens_assumed"), int):
            text += f"; {prepared['lens_assumed']} without focal-length tags given the one lens of their size"
        if _fitted(sfm.get("fitted")):
            text += f"; undistorted photos of {_fitted(sfm['fitted'])}"
        for key, what in (("unregistered", "left out"), ("off_path", "placed off the camera's path, left out")):
            left = sfm.get(key)
            if isinstance(left, list) and left:
                text += f"; {what}: {', '.join(map(str, left[:10]))}{' ...' if len(left) > 10 else ''}"
        rows.append(("structure from motion", text))
    if _fitted(scene.get("fitted")):  # (a COLMAP capture whose cameras are of several sizes)
        rows.append(("cameras", f"images of {_fitted(scene['fitted'])}"))
    if isinstance(scene.get("masks"), str):
        fm = scene.get("frame_masks") if isinstance(scene.get("frame_masks"), dict) else {}
        how = {"video": " (a mask video)", "folder": f" (numbered from {fm.get('numbered_from', 0)})"}
        kept = scene.get("pixels_kept") if isinstance(scene.get("pixels_kept"), dict) else {}
        share = "; pixels kept: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in kept.items()
                                               if isinstance(v, (int, float))) if kept else ""
        rows.append((f"{'ignore' if scene.get('mask_use') == 'ignore' else 'object'} masks",
                     f"{scene['masks']}{how.get(fm.get('kind'), '')}{share}"))
    depths = scene.get("depths")
    if isinstance(depths, dict) and isinstance(depths.get("from"), str):
        given = depths.get("pixels_with_depth") if isinstance(depths.get("pixels_with_depth"), dict) else {}
        rows.append(("depth maps", depths["from"] + ("; pixels with a depth: " + ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in given.items() if isinstance(v, (int, float))) if given else "")))
    points = scene.get("sparse_points")
    if isinstance(points, dict) and all(isinstance(points.get(k), int) for k in ("total", "in_box")):
        text = f"{points['in_box']} of {points['total']} inside the scene box"
        if isinstance(points.get("off_masks"), int) and points["off_masks"]:
            text += f" ({points['off_masks']} more off the object masks, left out)"
        rows.append(("sparse points", text))
    return rows


def _overview(f: RunFacts) -> str:
    import yaml

    cfg = f.config
    rows = [("scene", f.name), ("method", f.method), ("description", cfg.get("description", "")),
            ("status", f.status), ("steps", f"{f.step} / {f.steps}")]
    for stage in ("scene", "field", "certifier", "density", "renderer", "extractor"):
        block = cfg.get(stage)
        if isinstance(block, dict):
            rows.append((f"{stage} stage", block.get("type", "?")))
    for key in ("losses", "evaluators"):
        items = cfg.get(key) or []
        rows.append((key, ", ".join(str(b.get("type", "?")) for b in items if isinstance(b, dict)) or "none"))
    rows += capture_rows(f.scene or {})
    parts = [H.table(["", ""], rows)]
    if f.warnings:
        parts.append("<p><b>Warnings the run gave</b> (while it loaded, trained and was evaluated):</p><ul>" +
                     "".join(f"<li>{H.esc(w)}</li>" for w in f.warnings) + "</ul>")
    if f.record_notes:
        parts.append("<p><b>Damaged records in this run folder</b> (left out of this report):</p><ul>" +
                     "".join(f"<li>{H.esc(n)}</li>" for n in f.record_notes) + "</ul>")
    miss = f.missing()
    if miss:
        parts.append("<p><b>Missing from this run folder:</b></p><ul>" +
                     "".join(f"<li>{H.esc(m)}</li>" for m in miss) + "</ul>")
    parts.append(H.details("resolved config (config.yaml)", yaml.safe_dump(cfg, sort_keys=False)))
    if f.scene:
        import json

        parts.append(H.details("what the scene source loaded (scene.json)", json.dumps(f.scene, indent=2)))
    return "\n".join(parts)


def _metrics(f: RunFacts) -> str:
    ref = f.reference
    parts = []
    if f.metrics:
        from pipeline.metric_notes import direction_mark

        rows = []
        later = set(f.later_metrics) if f.summary else set()  # mark them only when files are mixed
        notes, declared = f.metric_notes, f.metric_better
        for k, v in f.metrics.items():
            r = ref.get(k) or {}
            rows.append((f"{k} (eval.json)" if k in later else k, direction_mark(k, declared), v, r.get("value", ""),
                         r.get("source", ""), *([notes.get(k, "")] if notes else [])))
        for k in ref:
            if k not in f.metrics:
                rows.append((k, direction_mark(k, declared), "not measured", ref[k].get("value", ""),
                             ref[k].get("source", ""), *([""] if notes else [])))
        parts.append(H.table(["metric", "", "this run", "published", "source", *(["what it is"] if notes else [])],
                             rows))
        notes = [n for n in f.evaluation_notes if n not in f.record_notes]  # those are listed under "Run"
        if notes:
            parts.append(f"<p class=\"sub\">Where the metrics come from: {H.esc('; '.join(notes))}.</p>")
        if not ref:
            parts.append("<p class=\"sub\">No published figures for this scene: add a <code>reference:</code> "
                         "block ({metric: {value, source}}) to the scene YAML to show them here.</p>")
    else:
        hint = (f"Run `nls resume {f.path}` to finish training and evaluate, or `nls eval {f.path}` for metrics "
                f"of the newest checkpoint." if f.checkpoints else "Without a checkpoint it cannot be resumed: start "
                "a new run with `nls reconstruct`.")
        parts.append(H.missing(f"No final metrics: {f.status}. {hint}"))
        if f.log:
            last = {k: v for k, v in f.log[-1].items() if isinstance(v, (int, float))}
            parts.append("<p>Last logged training values:</p>" + H.table(["key", "value"], list(last.items())))
    for ev, why in f.skipped.items():
        parts.append(H.missing(f"evaluator {ev} was skipped: {why}"))
    return "\n".join(parts)


def _curves(f: RunFacts) -> str:
    from pipeline.report.figures import curves_png

    png = curves_png(f.log) if f.log else None
    if png is None:
        return H.missing("metrics.jsonl is empty or missing: no training curves.")
    return H.img(png, "training curves", caption=f"{len(f.log)} logged steps from metrics.jsonl")


def _exposure(f: RunFacts) -> str:
    """The learned colour transform of each training image (``train.exposure``), beside the simulated gains
    of a rendered scene with ``exposure_jitter``."""
    from pipeline.report.figures import exposure_png
    from pipeline.runs import json_record

    record, why = json_record(f.path / EXPOSURE_RECORD)
    rows = (record or {}).get("images")
    if not rows or not isinstance(rows, list):
        return H.missing(f"{EXPOSURE_RECORD} {why or 'lists no images'}: no exposure plot.")
    truth = (f.scene or {}).get("exposure_gains")
    caption = (f"{record.get('kind')} of each of {len(rows)} training images at step {record.get('step')} "
               f"(on average the identity: renders show the average camera)"
               + ("; open circles: the gains the scene simulated" if truth else ""))
    try:
        png = exposure_png(rows, truth)
    except (KeyError, TypeError, ValueError, IndexError):  # rows without 3 gains (or a 3x3 matrix) each
        return H.missing(f"{EXPOSURE_RECORD} holds rows without gains (damaged?): no exposure plot.")
    return H.img(png, "exposure gains", caption=caption)


def _poses(f: RunFacts) -> str:
    """The learned pose correction of each training camera (``train.refine_poses``): their mean and largest, a
    table per camera, and for a rendered scene with ``pose_noise_deg`` the error against the true poses before
    and after."""
    from pipeline.runs import json_record

    record, why = json_record(f.path / POSES_RECORD)
    rows = (record or {}).get("cameras")
    if not rows or not isinstance(rows, list):
        return H.missing(f"{POSES_RECORD} {why or 'lists no cameras'}: no pose table.")
    try:
        per_camera = [(r["name"], r["rotation_deg"], sum(v * v for v in r["shift"]) ** 0.5) for r in rows]
    except (KeyError, TypeError):
        return H.missing(f"{POSES_RECORD} holds cameras without a correction (damaged?): no pose table.")
    rot, shift = record.get("rotation_deg") or {}, record.get("shift") or {}
    poses_refined = record.get("poses", True) is not False  # records before the key refined their poses
    parts = ([H.table(["correction", "mean", "largest"],
                      [["rotation about the camera's centre (degrees)", rot.get("mean"), rot.get("max")],
                       ["shift of the centre (world units)", shift.get("mean"), shift.get("max")]]),
              f"<p>at step {H.esc(record.get('step'))}, {len(rows)} training cameras; their common motion (a "
              f"rotation, translation and scaling of them all) is held at zero, so held-out views keep the frame "
              f"of the given poses.</p>"] if poses_refined else
             [f"<p>at step {H.esc(record.get('step'))}, {len(rows)} training cameras; their poses as given "
              f"(train.refine_poses: false), the focal length alone refined.</p>"])
    focal = record.get("focal")
    if isinstance(focal, dict) and isinstance(focal.get("per_camera"), list):
        parts.append(f"<p>focal length: one factor per camera (train.focal_per_camera), the field's frame scaled "
                     f"with their mean, {H.esc(focal.get('scale'))}, about {H.esc(focal.get('centre'))}</p>")
        parts.append(H.table(["camera (given fx, fy per image width, height)", "images", "focal factor"],
                             [[f"{c.get('fx')}, {c.get('fy')}", c.get("images"), c.get("scale")]
                              for c in focal["per_camera"] if isinstance(c, dict)]))
    elif isinstance(focal, dict):
        parts.append(f"<p>focal length: {H.esc(focal.get('scale'))} times the given one (train.refine_focal), the "
                     f"field's frame scaled with it about {H.esc(focal.get('centre'))}</p>")
    truth = _pose_truth(f, rows)
    if truth:
        parts.append(H.table(["against the true poses (mean over the cameras)", "given", "refined"], truth))
    if poses_refined:
        parts.append(H.details("each camera's correction", H.table(["camera", "rotation (degrees)", "shift"],
                                                                    per_camera)))
    return "".join(parts)


def _pose_truth(f: RunFacts, rows: list) -> list:
    """Table rows of :func:`pipeline.pose_refinement.pose_accuracy` (the given and the refined poses against the
    true ones of a rendered scene with simulated pose error); [] for other scenes."""
    import torch

    from pipeline.pose_refinement import pose_accuracy

    try:
        refined = torch.tensor([r["c2w"] for r in rows], dtype=torch.float64)
        fx = [r["fx"] for r in rows] if all("fx" in r for r in rows) else None
    except (KeyError, TypeError, ValueError):
        return []
    labels = {"rotation_deg": "rotation error (degrees)", "centre": "centre error (world units)",
              "view_deg": "view error: angle at which the object is seen off (degrees)",
              "focal_pct": "focal-length error (per cent)"}
    return [[labels[k], *v] for k, v in pose_accuracy(f.scene or {}, refined, fx).items()]


def progress_previews(run_dir: Path) -> dict[str, list[tuple[int, Path]]]:
    """{view name: [(step, preview)] in step order} of the previews ``train.val_every`` wrote to
    renders/progress/ (``<name>_<8-digit step>.png``)."""
    from pipeline.validation import PROGRESS_DIR

    out: dict[str, list[tuple[int, Path]]] = {}
    for png in sorted((run_dir / "renders" / PROGRESS_DIR).glob("*_[0-9]*.png")):
        name, _, step = png.stem.rpartition("_")
        if step.isdigit() and len(step) == 8:
            out.setdefault(name, []).append((int(step), png))
    return out


def _progress(f: RunFacts, most: int = MAX_RENDER_PAIRS) -> str:
    """Each validation preview series (a held-out view's, the mesh's) at up to ``most`` steps spread over
    training (the last included), next to its ground truth or reference, each titled with the figure logged
    at that step."""
    return "".join(_progress_series(f, name, shots, most) for name, shots in progress_previews(f.path).items())


def _progress_series(f: RunFacts, name: str, shots: list[tuple[int, Path]], most: int) -> str:
    """One series of :func:`_progress`: the previews of view ``name`` (or of the mesh) at their steps."""
    import imageio.v3 as iio

    from pipeline.geometry_validation import DISTANCE_SPAN, PREVIEW_NAME
    from pipeline.report.figures import progress_png, split_side_by_side

    n = min(most, len(shots))
    picked = sorted({shots[round(k * (len(shots) - 1) / max(1, n - 1))] for k in range(n)})
    logged = {r.get("step"): r for r in f.log}
    geometry = name == PREVIEW_NAME
    wanted = (lambda k: k in ("val_chamfer_l1", "val_fit_chamfer_l1")) if geometry else \
        (lambda k: k.startswith("psnr_") and k != "psnr_train")
    key = next((k for r in f.log for k in r if wanted(k) and "/" not in k), None)
    if key and not geometry and any(f"{key}/{name}" in r for r in f.log):  # several views: each one's own
        key = f"{key}/{name}"
    frames, target, distance = [], None, None
    for step, png in picked:
        try:
            pred, target, distance = split_side_by_side(iio.imread(png))
        except Exception as exc:  # a damaged or hand-edited preview (they are written atomically)
            return H.missing(f"{png.relative_to(f.path)} cannot be read ({type(exc).__name__})")
        value = (logged.get(step) or {}).get(key) if key else None
        figure = (f"Chamfer {value:.2f}" if geometry else f"{value:.2f} dB") if isinstance(value, (int, float)) \
            else ("no surface" if geometry else None)
        frames.append((step, pred, figure))
    total = len(shots)
    counts = f"{total} preview{'s' if total != 1 else ''} in renders/progress/, {len(frames)} shown"
    if geometry:
        caption = (f"the field's mesh at train.val_resolution, every train.val_every steps while training ({counts}), "
                   f"beside the reference it is measured against"
                   + (f"; the figure is {key} in metrics.jsonl (Chamfer-L1 x10^3 of that coarse mesh; nls eval "
                      f"gives the figure to report)" if key else "")
                   + f"; last, the mesh at step {frames[-1][0]} coloured by its distance to the reference, from "
                     f"0 (dark blue) to {DISTANCE_SPAN:.0%} of the reference's size or more (yellow)")
        return H.img(progress_png(frames, target, target_title="reference",
                                  extra=[(f"distance, step {frames[-1][0]}", distance)]), "mesh previews",
                     caption=caption)
    caption = (f"view {name}, rendered every train.val_every steps while training ({counts})"
               + (f"; the PSNR is {key} in metrics.jsonl, at preview size (nls eval gives the full-size figure)"
                  if key else ""))
    return H.img(progress_png(frames, target), "validation previews", caption=caption)


def _eval_split(cfg: dict) -> str:
    """The ``eval.split`` of a config dict (``test`` when it names none)."""
    return str((cfg.get("eval") or {}).get("split") or "test")


def _side_by_sides_in(folder: Path) -> list[Path]:
    """The ``*_pred_gt_depth.png`` side-by-sides that rendering a split wrote to ``folder``."""
    from pipeline.report.figures import SIDE_BY_SIDE

    return sorted(folder.glob("*" + SIDE_BY_SIDE))


def shown_renders(f: RunFacts) -> tuple[str, list[Path]]:
    """(split, side-by-sides) of the eval split's section: those the image metrics shown were
    computed from. eval_renders/<split> when they come from eval.json (``nls eval`` writes there),
    else renders/<split> of config.yaml's eval split (training's evaluation, or ``nls render``)."""
    later = f.later_evaluation and any(isinstance(v, dict) and "psnr" in v
                                       for v in (f.later_evaluation.get("evaluators") or {}).values())
    if later:
        split = _eval_split(f.eval_config)
        found = _side_by_sides_in(f.path / "eval_renders" / split)
        if found:
            return split, found
    split = _eval_split(f.config)
    return split, _side_by_sides_in(f.path / "renders" / split)


def _renders(f: RunFacts, split: str, files: list[Path], ld, load_error, *, progress: bool = True) -> str:
    """The eval split's section: one set of its renders, and where the others of that split are
    (``progress``: a per-image bar while views are rendered from the checkpoint)."""
    shown = files[0].parent if files else None
    others = [d for d in (f.path / "renders" / split, f.path / "eval_renders" / split)
              if d != shown and _side_by_sides_in(d)]
    parts = [_split_renders(f, split, files, ld, load_error, progress=progress)]
    if others:
        counts = [(d, len(_side_by_sides_in(d))) for d in others]
        where = ", ".join(f"{d.relative_to(f.path)}/ ({n} view{'' if n == 1 else 's'})" for d, n in counts)
        parts.append(f"<p class=\"sub\">Other renders of the {H.esc(split)} split, not shown here: "
                     f"{H.esc(where)}.</p>")
    return "\n".join(parts)


def _render_author(f: RunFacts, folder: Path) -> str:
    """Who wrote the side-by-sides of ``folder`` (renders/<split>): training's evaluation for the split
    summary.json names, else ``nls render``."""
    return "training's evaluation" if (f.summary or {}).get("renders") == f"renders/{folder.name}" else "nls render"


#: folders of renders/ named ``<prefix><split>`` by an evaluator: prefix -> (evaluator, what its images show)
SPLIT_FOLDERS = {"mesh_": ("mesh_psnr", "the coloured mesh drawn unlit | ground truth"),
                 "depth_": ("depth", "rendered depth | ground-truth depth | |error|")}


def other_render_sections(f: RunFacts, split: str, shown: list[Path]) -> list[tuple[str, str]]:
    """(heading, html) per folder of renders/ not in the eval split's section: each other split's
    side-by-sides (``nls render --split``) and the images of any other folder, such as the
    lipschitz plugin's sphere-traced views in renders/sphere_trace/ (an evaluator named like the
    folder wrote them), up to MAX_RENDER_PAIRS per folder."""
    from pipeline.validation import PROGRESS_DIR

    skip = {f.path / "renders" / split, f.path / "renders" / PROGRESS_DIR, *(p.parent for p in shown)}
    evaluators = {str(e.get("type")) for cfg in (f.config, f.eval_config)
                  for e in (cfg.get("evaluators") or []) if isinstance(e, dict)}
    out = []
    for d in sorted(p for p in (f.path / "renders").glob("*") if p.is_dir() and p not in skip):
        sides = _side_by_sides_in(d)
        if sides:
            out.append((f"Renders of the {d.name} split ({_render_author(f, d)})", _comparisons(f, sides)))
            continue
        writer = d.name if d.name in evaluators else next(
            (e for prefix, (e, _) in SPLIT_FOLDERS.items() if d.name.startswith(prefix) and e in evaluators), None)
        what = next((w for e, w in SPLIT_FOLDERS.values() if e == writer), "")
        who = (f" (written by the {writer} evaluator" + (f": {what}" if what else "") + ")") if writer else ""
        imgs = [H.img(png.read_bytes(), png.name, caption=f"renders/{d.name}/{png.name}{who}")
                for png in sorted(d.glob("*.png"))[:MAX_RENDER_PAIRS]]
        if imgs:
            out.append((f"Images of the {writer} evaluator" if writer else f"Images in renders/{d.name}/",
                        "\n".join(imgs)))
    return out


def _comparisons(f: RunFacts, files: list[Path]) -> str:
    """Up to MAX_RENDER_PAIRS side-by-sides as prediction | ground truth | error | depth panels."""
    import imageio.v3 as iio

    from pipeline.report.figures import comparison_png, split_side_by_side, valid_beside

    parts = []
    for p in files[:MAX_RENDER_PAIRS]:
        try:
            pred, gt, depth = split_side_by_side(iio.imread(p))
        except Exception as exc:  # an empty or cut file (a render killed before renders were written atomically)
            parts.append(H.missing(f"{p.relative_to(f.path)} cannot be read ({type(exc).__name__}); "
                                   f"`nls render {f.path}` writes it again."))
            continue
        valid = valid_beside(p)
        parts.append(H.img(comparison_png(pred, gt, depth, valid=valid), p.name,
                           caption=f"{p.relative_to(f.path)}: prediction, ground truth, per-pixel error, depth"
                           + ("; the pixels its ignore mask leaves out are greyed and not scored"
                              if valid is not None else "")))
    if len(files) > MAX_RENDER_PAIRS:
        parts.append(f"<p class=\"sub\">{len(files) - MAX_RENDER_PAIRS} more in {H.esc(files[0].parent)}</p>")
    return "\n".join(parts)


def _split_renders(f: RunFacts, split: str, files: list[Path], ld, load_error, *, progress: bool = True) -> str:
    """``files`` as comparisons; without any, views of ``split`` rendered from the checkpoint (or why not),
    with a per-image progress bar (:func:`pipeline.report.model_views.render_views`) unless not ``progress``."""
    if files:
        return _comparisons(f, files)
    if ld is None or ld.system.renderer is None:
        why = "this method has no renderer (no images to compare)" if (f.config.get("renderer") is None) \
            else f"no renders on disk and {load_error}"
        return H.missing(f"No {split} renders: {why}.")
    from pipeline.report.figures import comparison_png
    from pipeline.report.model_views import render_views

    parts = [H.missing(f"No renders on disk (the run did not finish); these are rendered from the newest "
                       f"checkpoint (step {ld.step}). `nls render {f.path}` writes them all.")]
    for i, v in enumerate(render_views(ld, split, range(min(2, len(ld.scene.splits.get(split, [])))),
                                       progress=progress)):
        if v is None or "gt" not in v:
            parts.append(H.missing("the eval images are too large to render here; run `nls render`."))
            break
        from pipeline.report.figures import depth_panel

        parts.append(H.img(comparison_png(v["rgb"], v["gt"], depth_panel(v["depth"], v["opacity"])),
                           f"{split} {i}", caption=f"{split} view {i} (step {ld.step})"))
    return "\n".join(parts)


def _depth_normals(f: RunFacts, ld, load_error, *, progress: bool = True) -> str:
    """Depth and normal maps of view 0 of the eval split (else the first split), rendered from the
    checkpoint with a progress bar unless not ``progress``; or why there are none."""
    if ld is None:
        return H.missing(f"No depth or normal maps: {load_error}.")
    if ld.system.renderer is None:
        return H.missing("No depth or normal maps: this method has no renderer.")
    from pipeline.report.figures import depth_panel, normals_to_rgb, panels_png
    from pipeline.report.model_views import render_views

    split = ld.cfg.eval.split if ld.cfg.eval.split in ld.scene.splits else next(iter(ld.scene.splits), None)
    v = next(render_views(ld, split, [0], progress=progress)) if split else None
    if v is None:
        return H.missing("No depth or normal maps: the scene has no image split to render.")
    png = panels_png([("rendered colour", v["rgb"], None), ("depth", depth_panel(v["depth"], v["opacity"]), None),
                      ("normals", normals_to_rgb(v["normals"], v["normals_mask"]), None)])
    return H.img(png, "depth and normals",
                 caption=f"{split} view 0 at {v['rgb'].shape[0]} px from the checkpoint of step {ld.step}; "
                         f"world-space normals as RGB = (n+1)/2, from {v['normals_from']}")


def contour_level(slices: list, option: float, meshed: Optional[float]) -> tuple[float, str]:
    """(level, caption) of the slices' contour: ``meshed``, the evaluated mesh's ``mesh_level`` (a
    calibrated level differs from the option), when the field crosses it on the planes ``slices``
    ([(values (H,W), ...)]); else the extractor's ``option``. An unsigned field is meshed at the sheet of
    its minimum (``udf_marching_cubes``, ``offset: min``), a little below the values on the planes, so its
    mesh level draws no line there."""
    from pipeline.report.figures import crosses

    if meshed is None:
        return option, f"the extraction level, {option:g}"
    meshed = float(meshed)
    if any(crosses(v, meshed) for v, *_ in slices):
        return meshed, f"the level the evaluated mesh was extracted at, {meshed:g}"
    return option, (f"the extractor's level option, {option:g} (the evaluated mesh's level, {meshed:g}, is not "
                    f"crossed on these planes: an unsigned field's mesh is the sheet of its minimum)")


def slice_lines(slices: list, aabb: list, geo, meshed: Optional[float], mesh=None, mesh_name: str = "the mesh"
                ) -> tuple[float, Optional[dict], str]:
    """(level, sections, caption) of what the slices ([(values (H,W), axes)] on the x, y, z planes of
    ``aabb``) draw in black: the contour of :func:`contour_level`; but for an unsigned field
    (``geo.unsigned``), whose mesh is the sheet of its minimum, on each plane the field does not cross
    the mesh's level on (``meshed``, else ``geo.level``), the cross-section of ``mesh`` (a trimesh; named
    ``mesh_name``) as ``sections`` {axis: segments (K,2,2)} (:func:`pipeline.report.figures.mesh_sections`).
    Without ``mesh`` sections is None and the contour falls back as :func:`contour_level` says."""
    import numpy as np

    from pipeline.report.collect import _and
    from pipeline.report.figures import crosses, mesh_sections

    level, what = contour_level(slices, geo.level, meshed)
    if not geo.unsigned or mesh is None:
        return level, None, what
    level = geo.level if meshed is None else float(meshed)
    missed = [axis for axis, (v, *_) in enumerate(slices) if not crosses(v, level)]
    if not missed:
        return level, None, what
    centre = np.asarray(aabb, np.float64).reshape(2, 3).mean(0)
    planes = _and([f"{'xyz'[a]} = {centre[a]:.3g}" for a in missed])
    rest = f"; on the other planes the contour at {level:g}" if len(missed) < len(slices) else ""
    return level, mesh_sections(mesh, aabb, missed), (
        f"the cross-section of the evaluated mesh, {mesh_name}, on {planes}, where the field does not cross its "
        f"level {level:g} (an unsigned field's mesh is the sheet of its minimum){rest}")


def _slice_mesh(mesh_path: Optional[Path]):
    """The mesh at ``mesh_path`` for the slices' cross-sections; None without one, or when it cannot be
    read or has no faces (the Mesh section says why)."""
    if mesh_path is None:
        return None
    from pipeline.scenes.mesh_render import load_mesh

    try:
        mesh = load_mesh(mesh_path)
    except (NLSError, ValueError):
        return None
    return mesh if len(mesh.faces) else None


def _slices(f: RunFacts, ld, load_error, mesh_path: Optional[Path] = None) -> str:
    """Field slices of the model (black: the level its mesh is at, or the cross-section of the mesh at
    ``mesh_path`` where an unsigned field does not reach that level: :func:`slice_lines`) and the slice
    images plugins wrote; or why there are none."""
    from pipeline.report.figures import field_slices, slices_png

    parts = []
    if ld is None:
        parts.append(H.missing(f"No field slices from the model: {load_error}."))
    else:
        from pipeline.report.model_views import field_fn, geometry_of

        geo = geometry_of(ld)
        if geo is None:
            parts.append(H.missing("No field slices: the field chain produces no sdf, occupancy or density."))
        else:
            aabb = ld.scene.aabb.detach().cpu().numpy().tolist()
            sl = field_slices(field_fn(ld, geo.quantity), aabb)
            meshed = f.metrics.get("mesh_level")
            mesh = _slice_mesh(mesh_path) if geo.unsigned else None
            name = str(mesh_path.relative_to(f.path)) if mesh is not None else ""
            level, sections, what = slice_lines(sl, aabb, geo, meshed, mesh, name)
            parts.append(H.img(slices_png(sl, aabb, geo.quantity, level, sections), "field slices",
                               caption=f"{geo.quantity} on the planes through the centre of the scene box "
                                       f"(step {ld.step}); black: {what}"))
    for d in slice_folders(f):
        for p in sorted(d.glob("*.png")):
            parts.append(H.img(p.read_bytes(), p.name, caption=f"{d.name}/{p.name} (written by the method's plugin)"))
    return "\n".join(parts)


def slice_folders(f: RunFacts) -> list[Path]:
    """Folders of the run where plugins write slice images: every top-level folder whose name ends
    in ``slices`` (``slices/``, rs_sdf's ``sdf_slices/``) and any evaluator's ``folder`` option."""
    names = {d.name for d in f.path.iterdir() if d.is_dir() and d.name.endswith("slices")}
    names |= {str(e["folder"]) for e in (f.config.get("evaluators") or [])
              if isinstance(e, dict) and isinstance(e.get("folder"), str)}
    return [f.path / n for n in sorted(names) if (f.path / n).is_dir() and (f.path / n).resolve() != f.path.resolve()]


def exported_mesh(run_dir: Path) -> Optional[Path]:
    """The first mesh file (by name) in ``run_dir/meshes/``, where training and
    ``nls export RUN -o RUN/meshes/NAME`` put them; None when there is none."""
    from pipeline.mesh import MESH_FORMATS

    folder = run_dir / "meshes"
    meshes = sorted(folder.glob("*")) if folder.is_dir() else []
    return next((m for m in meshes if m.is_file() and m.suffix.lower() in MESH_FORMATS), None)


def export_hint(run_dir: Path) -> str:
    """The command that writes a mesh where the report finds it: ``-o`` inside the run's meshes/
    (a relative ``-o`` is relative to the current folder, not to the run)."""
    import shlex

    run = shlex.quote(str(run_dir))
    return (f"Make one with `nls export {run} -o {shlex.quote(str(run_dir / 'meshes' / 'mesh.ply'))}` "
            f"(the report shows the meshes in the run's meshes/ folder).")


def shown_mesh(f: RunFacts) -> Optional[Path]:
    """The mesh file the report shows: the one summary.json names (the evaluated mesh) when it exists,
    else :func:`exported_mesh`; None when there is none."""
    mesh_path = f.path / f.summary["mesh"] if (f.summary or {}).get("mesh") else None
    return mesh_path if mesh_path is not None and mesh_path.is_file() else exported_mesh(f.path)


def _mesh(f: RunFacts, mesh_path: Optional[Path]) -> str:
    """A turntable of ``mesh_path`` (:func:`shown_mesh`) and the run's rendered turntables; or why there is none."""
    parts = []
    if mesh_path is None:
        why = f.skipped.get("chamfer") or ("the run did not finish" if not f.complete else
                                           "the run exported no mesh")
        parts.append(H.missing(f"No exported mesh: {why}. {export_hint(f.path)}"))
    else:
        from pipeline.report.figures import mesh_turntable_gif
        from pipeline.scenes.mesh_render import load_mesh

        try:
            mesh = load_mesh(mesh_path)
            gif = mesh_turntable_gif(mesh)
            level = summary_mesh_level(f.summary, f.path, mesh_path)
            at = f", extracted at level {level:g}" if level is not None else ""
            parts.append(H.img(gif, "mesh turntable", mime="image/gif",
                               caption=f"{mesh_path.relative_to(f.path)}: {len(mesh.vertices)} vertices, "
                                       f"{len(mesh.faces)} faces, watertight={mesh.is_watertight}{at}"))
        except (NLSError, ValueError) as exc:
            parts.append(H.missing(f"The mesh {mesh_path} could not be read: {exc}"))
    for vid in sorted((f.path / "renders").glob("turntable.*")):
        mime = {".gif": "image/gif", ".mp4": "video/mp4"}.get(vid.suffix)
        if mime == "image/gif":
            parts.append(H.img(vid.read_bytes(), "turntable", mime=mime,
                               caption=f"renders/{vid.name}: the radiance field rendered around the scene"))
        elif mime:
            parts.append(H.video(vid.read_bytes(), mime, f"renders/{vid.name}: the field rendered around the scene"))
    return "\n".join(parts)


def _provenance(f: RunFacts) -> str:
    s = f.summary or {}
    rows = [("training wall time (s)", f.train_seconds if f.train_seconds is not None else "unknown"),
            ("device", f"{s.get('device', '?')} ({s.get('device_name', '?')})" if s else
             "unknown (summary.json could not be read)" if "summary.json" in f.unreadable else
             "unknown (no summary.json)"),
            ("CPU threads", s.get("threads", "unknown")),
            ("load average at the end", ", ".join(f"{x:.2f}" for x in s.get("load_average", [])) or "unknown"),
            ("parameters", f.parameters() if f.checkpoints or s else "unknown")]
    versions = s.get("versions") or {}
    for k, v in versions.items():
        if k != "plugins":
            rows.append((f"{k} version", v))
    parts = [H.table(["", ""], rows)]
    plugin_rows = [(p.get("name", "?"), p.get("version", "?"), p.get("source", ""))
                   for p in (f.plugins or {}).get("plugins") or []]
    if plugin_rows:
        parts.append("<p>Plugins loaded:</p>" + H.table(["plugin", "version", "source"], plugin_rows))
    comps = (f.plugins or {}).get("components") or {}
    if comps:
        parts.append("<p>Which plugin supplied each component:</p>" + H.table(
            ["component", "plugin", "version"], [(k, v.get("plugin"), v.get("version")) for k, v in comps.items()]))
    cmd = f.path / "cmd.txt"
    if cmd.exists():
        parts.append(H.details("commands that made and resumed this run (cmd.txt)", cmd.read_text()))
    return "\n".join(parts)

