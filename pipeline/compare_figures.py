"""The pictures of ``nls compare --html``: the same test views as each run rendered them, beside the ground truth,
and the runs' training curves on shared axes. Both come from what the runs wrote (the side-by-sides of their
evaluation, metrics.jsonl); no model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from pipeline.report.collect import RunFacts

#: at most this many shared views are shown
MAX_VIEWS = 4
#: metrics.jsonl keys plotted against the step, each on its own panel, when a run logged them
CURVE_KEYS = ("loss", "psnr_train")


def shared_views(runs: Sequence[RunFacts]) -> tuple[Optional[str], list[str], list[dict[str, Path]]]:
    """(split, view names every run rendered, [{name: side-by-side}] per run): the eval split's side-by-sides of
    each run (:func:`pipeline.report.shown_renders`), when all runs evaluated the same split; at most
    :data:`MAX_VIEWS` names, spread over the shared ones."""
    from pipeline.report import shown_renders
    from pipeline.report.figures import SIDE_BY_SIDE

    found = [shown_renders(r) for r in runs]
    splits = {split for split, _ in found}
    if len(splits) != 1:
        return None, [], []
    per_run = [{p.name[:-len(SIDE_BY_SIDE)]: p for p in files} for _, files in found]
    names = sorted(set.intersection(*(set(d) for d in per_run)))
    if len(names) > MAX_VIEWS:
        names = [names[round(k * (len(names) - 1) / (MAX_VIEWS - 1))] for k in range(MAX_VIEWS)]
    return splits.pop(), names, per_run


def views_png(name: str, labels: Sequence[str], files: Sequence[Path]) -> tuple[bytes, list[float]]:
    """One row for view ``name``: its ground truth, then each run's render titled with its label and PSNR
    (computed here from the 8-bit side-by-sides, over the pixels its ignore mask keeps where the run wrote one
    beside them: :func:`pipeline.report.figures.valid_beside`); (PNG bytes, the PSNRs in dB, NaN for a view
    with no pixel kept)."""
    import imageio.v3 as iio

    from pipeline.report.figures import (kept_psnr, panels_png, psnr_title, shown_with_ignored,
                                         split_side_by_side, valid_beside)

    panels, scores, truth, first_valid = [], [], None, None
    for label, path in zip(labels, files):
        pred, gt, _ = split_side_by_side(iio.imread(path))
        valid = valid_beside(path)
        if truth is None:
            truth, first_valid = gt, valid
        scores.append(kept_psnr(pred, gt, valid))
        panels.append((f"{label}\n{psnr_title(scores[-1], valid)}", pred, None))
    title = "ground truth" + (", ignored greyed" if first_valid is not None else "")
    return panels_png([(title, shown_with_ignored(truth, first_valid), None), *panels], f"view {name}"), scores


def curve_keys(runs: Sequence[RunFacts]) -> list[str]:
    """The metrics.jsonl keys to plot: :data:`CURVE_KEYS`, then the validation figures (``psnr_<split>`` but the
    training batch's, ``val_*``), each when at least one run logged it."""
    logged = {k for r in runs for row in r.log for k in row}
    extra = sorted(k for k in logged if (k.startswith("psnr_") and k != "psnr_train") or k.startswith("val_"))
    return [k for k in CURVE_KEYS if k in logged] + extra


def compare_sections(runs: Sequence[RunFacts], labels: Sequence[str]) -> list[tuple[str, str]]:
    """The (heading, html) sections of the pictures: the shared views, then the curves; a section says why it
    is empty (no shared views, different splits, nothing logged)."""
    from pipeline.report import html as H

    split, names, per_run = shared_views(runs)
    if split is None:
        views = H.missing("the runs evaluated different splits, so no view is shared")
    elif not names:
        views = H.missing(f"no {split} view was rendered by every run (their evaluation's side-by-sides, "
                          f"renders/{split}/ or eval_renders/{split}/)")
    else:
        parts = []
        for name in names:
            png, _ = views_png(name, labels, [d[name] for d in per_run])
            parts.append(H.img(png, f"view {name}", caption=f"{split} view {name}: the ground truth, then each "
                                                           f"run's render with its PSNR on this view"))
        views = "\n".join(parts)
    from pipeline.report.figures import overlaid_curves_png

    png = overlaid_curves_png([(label, run.log) for label, run in zip(labels, runs)], curve_keys(runs))
    curves = H.img(png, "training curves", caption="metrics.jsonl of each run against the step") if png else \
        H.missing("no run logged a training curve (metrics.jsonl)")
    return [("Renders of the same views", views), ("Training curves", curves)]
