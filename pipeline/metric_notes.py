"""What each metric measures, and in what unit: the notes evaluators declare with ``metrics=`` when they
register (:class:`pipeline.components.Registrar`), looked up for the metrics a run reports.

A run records the notes of its metrics in summary.json and eval.json (``metric_notes``), so that
``nls eval``, ``nls reconstruct``'s summary, ``nls report`` and ``nls compare`` can say what a number is
without the plugin that made it. A note key ending in ``@`` covers every metric it starts, and ``{at}``
in its note is replaced by the rest of the name: ``fscore@`` covers ``fscore@0.01``.

The notes of the Chamfer family are shared by every evaluator that scores a mesh against a reference
(:func:`chamfer_notes`), so that their wording is kept in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Optional

#: the Chamfer family's notes; ``{frame}`` is the frame distances are measured in, ``{ref}`` the reference,
#: ``{ref_samples}`` the points taken on it
_CHAMFER = {
    "chamfer_l1": "×10³ in {frame}: mean nearest-sample distance mesh→{ref} "
                  "and {ref}→mesh, halved",
    "chamfer_l2": "×10³: chamfer_l1 with squared distances",
    "accuracy_l1": "×10³: mean distance mesh→{ref} (surface that is not there)",
    "completeness_l1": "×10³: mean distance {ref}→mesh (surface that is missed)",
    "normal_consistency": "mean |cos| between the normals of nearest samples, both ways; 0..1",
    "fscore@": "harmonic mean of precision and recall at distance {at}; 0..1",
    "precision@": "share of the mesh's samples within {at} of the {ref}",
    "recall@": "share of the {ref_samples} within {at} of the mesh",
}

#: the ground truth of a scene, as the ``chamfer`` evaluator scores against it
GROUND_TRUTH = {"frame": "the GT's frame (its box centred, largest side 1)", "ref": "GT", "ref_samples": "GT's samples"}


def chamfer_notes(prefix: str = "", *, frame: str, ref: str, ref_samples: str,
                  keys: Sequence[str] = tuple(_CHAMFER)) -> dict[str, str]:
    """The Chamfer family's notes (``keys`` of them) for metrics named ``prefix + key``, measured in
    ``frame`` against ``ref`` (a short name; ``ref_samples``: the points taken on it), e.g.
    ``chamfer_notes(**GROUND_TRUTH)``; names of other metrics in a note get the prefix too."""
    out = {}
    for k in keys:
        note = _CHAMFER[k].format(frame=frame, ref=ref, ref_samples=ref_samples, at="{at}")
        out[prefix + k] = note.replace("chamfer_l1 ", f"{prefix}chamfer_l1 ")
    return out


def lower(note: str) -> dict[str, str]:
    """A ``metrics=`` entry for a metric where lower is better: ``{"note": note, "better": "lower"}``."""
    return {"note": note, "better": "lower"}


def higher(note: str) -> dict[str, str]:
    """A ``metrics=`` entry for a metric where higher is better: ``{"note": note, "better": "higher"}``."""
    return {"note": note, "better": "higher"}


def note_for(metric: str, notes: Mapping[str, str]) -> Optional[str]:
    """``metric``'s note among ``notes``: its own, else that of the longest ``...@`` key it starts with
    (``{at}`` replaced by the rest of its name); None when none covers it."""
    if metric in notes and not metric.endswith("@"):  # a pattern is not a metric's own note
        return notes[metric]
    keys = [k for k in notes if k.endswith("@") and metric.startswith(k) and len(metric) > len(k)]
    if not keys:
        return None
    key = max(keys, key=len)
    return notes[key].replace("{at}", metric[len(key):])


def run_metric_notes(choices: Sequence[Any], results: Mapping[str, Any]) -> dict[str, str]:
    """{metric: note} for the numeric metrics in ``results`` ({evaluator: {metric: value}}) that the
    evaluator which reported them describes (``choices``: the scene's evaluator choices, whose
    ``component.metrics`` hold the notes). Of two evaluators reporting one name, the later's note is kept,
    as its value is (:func:`pipeline.evaluate.flatten`)."""
    return _per_metric(choices, results, 1)


def run_metric_better(choices: Sequence[Any], results: Mapping[str, Any]) -> dict[str, str]:
    """{metric: "higher" or "lower"} for the metrics in ``results`` whose evaluator declared which way is better
    (as :func:`run_metric_notes` finds notes)."""
    return _per_metric(choices, results, 2)


def _per_metric(choices: Sequence[Any], results: Mapping[str, Any], field: int) -> dict[str, str]:
    """What the evaluators ``choices`` declare of each numeric metric they report in ``results``: ``field`` 1 of
    their ``component.metrics`` triples (the note) or 2 (which way is better); the later evaluator's, or none,
    for a name two report."""
    from pipeline.evaluate import flatten

    out: dict[str, str] = {}
    for choice in choices:
        declared = {m[0]: m[field] for m in getattr(choice.component, "metrics", ()) or () if m[field]}
        metrics = results.get(choice.name)
        if not isinstance(metrics, dict):
            continue
        for name in flatten({choice.name: metrics}):
            value = note_for(name, declared)
            if value:
                out[name] = value
            else:
                out.pop(name, None)  # a later evaluator's value without a note: an earlier note would mislead
    return out


def direction_mark(metric: str, declared: Optional[Mapping[str, str]] = None) -> str:
    """``↑`` for a metric where higher is better, ``↓`` where lower is, else ``""``: as its evaluator declared
    (``declared``: {metric: "higher" or "lower"}), else as :func:`pipeline.report.collect.better` says."""
    from pipeline.report.collect import better

    way = (declared or {}).get(metric) or better(metric) or ""
    return {"higher": "↑", "lower": "↓"}.get(way, "")


def registered_notes(results: Mapping[str, Any]) -> dict[str, str]:
    """{metric: note} for ``results`` ({evaluator type: {metric: value}}) from the notes the evaluators of those
    names declare now (the built-in and installed plugins): for runs recorded before runs kept their notes.
    Empty when the plugins cannot be loaded; evaluators that are not found, or skipped, give none."""
    return run_metric_notes(_registered_choices(results), results)


def registered_better(results: Mapping[str, Any]) -> dict[str, str]:
    """{metric: "higher" or "lower"} as :func:`registered_notes` finds notes."""
    return run_metric_better(_registered_choices(results), results)


def _registered_choices(results: Mapping[str, Any]) -> list:
    """Stand-ins for evaluator choices (``name``, ``component``) of the evaluators ``results`` names that the
    built-in and installed plugins register."""
    from types import SimpleNamespace

    table = _evaluators()
    return [SimpleNamespace(name=name, component=table[name]) for name in results if name in table]


@lru_cache(maxsize=1)
def _evaluators() -> dict[str, Any]:
    """{name: evaluator component} of the built-in and installed plugins, loaded once per process; empty when
    they cannot be loaded (a broken installed plugin: the notes are a nicety, a comparison goes on without)."""
    try:
        from pipeline.plugins import PluginHost

        return {c.name: c for c in PluginHost.create().components("evaluator")}
    except Exception:
        return {}
