"""`nls compare RUN_DIR...`: one table of metrics, training time and parameter count over runs,
with warnings when the runs are not comparable (different scenes, scene settings or
evaluation settings) or when runs sharing a method label are made of different components."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.report.collect import RunFacts, better, flatten_dict, is_bookkeeping, read_run
from pipeline.types import NLSError

#: config blocks whose differences make metrics incomparable
EVAL_BLOCKS = ("eval",)


@dataclass
class Comparison:
    """Rows are quantities, columns are runs. ``best[row]``: column indices of the best value. ``notes``:
    {metric: what it measures}, as the runs recorded them (the first run's where they differ)."""

    runs: list[RunFacts]
    labels: list[str]
    rows: list[tuple[str, list[Any]]]
    best: dict[str, set[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    #: {metric: "higher" or "lower"} where an evaluator declared which way is better (else :func:`better` decides)
    better: dict[str, str] = field(default_factory=dict)
    #: each method's mean over its runs on several scenes (None when no method has finished runs on two)
    means: Optional["MethodMeans"] = None

    def legend(self) -> list[tuple[str, str, str]]:
        """(metric, ↑ / ↓ / "", note) for each metric row with a note, in the table's order (the counts and
        scales evaluators report beside them are left out: ``to_dict`` has their notes)."""
        from pipeline.metric_notes import direction_mark

        return [(name, direction_mark(name, self.better), self.notes[name]) for name, _ in self.rows
                if name in self.notes and not is_bookkeeping(name)]

    def to_dict(self) -> dict:
        """Plain data (``nls compare --json``): runs (``status`` is the table's status name, one of
        complete / evaluated / trained / incomplete; ``status_detail`` says why, in a sentence; ``warnings``
        are those the run gave), ``{row: {label: value}}``, best labels per row, and the comparison's
        own warnings."""
        return {"runs": [{"label": lab, "path": str(r.path), "scene": r.name, "method": r.method,
                          "status": r.short_status, "status_detail": r.status, "warnings": r.warnings}
                         for lab, r in zip(self.labels, self.runs)],
                "table": {name: dict(zip(self.labels, vals)) for name, vals in self.rows},
                "best": {k: [self.labels[i] for i in sorted(v)] for k, v in self.best.items()},
                "notes": self.notes, "better_is": self.better, "warnings": self.warnings,
                **({"means": self.means.to_dict()} if self.means else {})}


@dataclass
class MethodMeans:
    """Each method's metrics averaged over its finished runs, one per scene (a benchmark's scenes, as ``nls batch
    --data A B ...`` trains them). A mean is given only where every one of the method's runs has the metric; best
    means are marked only when every method ran on the same scenes."""

    methods: list[str]
    scenes: list[list[str]]  # each method's scenes, in the runs' order
    rows: list[tuple[str, list[Optional[float]]]]
    best: dict[str, set[int]] = field(default_factory=dict)

    def counted_rows(self) -> list[tuple[str, list]]:
        """:attr:`rows` after a first row ``scenes``: how many scenes each method's means are over."""
        return [("scenes", [len(sc) for sc in self.scenes]), *self.rows]

    def to_dict(self) -> dict:
        """Plain data: {method: {"scenes": [...], metric: mean}} and the best methods per metric."""
        return {"methods": {m: {"scenes": sc, **{name: vals[i] for name, vals in self.rows}}
                            for i, (m, sc) in enumerate(zip(self.methods, self.scenes))},
                "best": {k: [self.methods[i] for i in sorted(v)] for k, v in self.best.items()}}


def method_means(runs: list[RunFacts], declared: dict[str, str]) -> Optional[MethodMeans]:
    """:class:`MethodMeans` of ``runs``, None unless they span several scenes and some method finished on two."""
    if len({r.name for r in runs}) < 2:
        return None
    by_method: dict[str, list[RunFacts]] = {}
    for r in runs:
        if r.trained and r.metrics:
            by_method.setdefault(r.method, []).append(r)
    if not any(len({r.name for r in rs}) > 1 for rs in by_method.values()):
        return None
    methods = list(by_method)
    names = [k for rs in by_method.values() for r in rs for k in r.metrics if not is_bookkeeping(k)]
    rows = []
    for name in dict.fromkeys(names):
        vals = []
        for m in methods:
            got = [r.metrics.get(name) for r in by_method[m]]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in got)
            vals.append(float(sum(got) / len(got)) if numeric else None)
        rows.append((name, vals))
    scenes = [[r.name for r in by_method[m]] for m in methods]
    best: dict[str, set[int]] = {}
    if len(methods) > 1 and len({tuple(sorted(sc)) for sc in scenes}) == 1:
        for name, vals in rows:
            marked = best_cells(vals, declared.get(name) or better(name), range(len(vals)))
            if marked:
                best[name] = marked
    return MethodMeans(methods, scenes, rows, best)


def best_cells(vals: Sequence[Any], direction: Optional[str], among) -> set[int]:
    """The indices in ``among`` of the best numbers of ``vals`` (``direction``: "lower" or "higher"); empty without
    a direction or with fewer than two numbers to rank."""
    nums = [(i, v) for i, v in enumerate(vals) if isinstance(v, (int, float)) and not isinstance(v, bool)
            and i in among]
    if not direction or len(nums) < 2:
        return set()
    target = (min if direction == "lower" else max)(v for _, v in nums)
    return {i for i, v in nums if v == target}


def compare_runs(paths: Sequence[Path]) -> Comparison:
    """Read the runs and build the table: method, status, step, train seconds, parameters, then
    every final metric any run has (blank where a run lacks it), then the bookkeeping numbers
    evaluators report next to them (sample counts, mesh level, bounds).

    Best values are marked only among runs on one scene, and only for runs whose training
    finished; time only when the runs had the same training budget, and metrics only when they
    were taken with the same scene, evaluation and (within one method) extractor settings, and
    the same ray step where ``nls eval`` changed it."""
    if len(paths) < 1:
        raise NLSError("nls compare needs at least one RUN_DIR (two or more to compare)")
    runs = [_read(Path(p)) for p in paths]
    labels = _labels(runs)
    rows: list[tuple[str, list[Any]]] = [
        ("scene", [r.name for r in runs]),
        ("method", [r.method for r in runs]),
        ("status", [r.short_status for r in runs]),
        ("step", [r.step for r in runs]),
        ("train_seconds", [r.train_seconds for r in runs]),
        ("parameters", [r.parameters() for r in runs]),
    ]
    metric_names: list[str] = []
    for r in runs:
        metric_names += [k for k in r.metrics if k not in metric_names]
    metric_names.sort(key=is_bookkeeping)  # stable: metrics first, in the evaluators' order
    for m in metric_names:
        rows.append((m, [r.metrics.get(m) for r in runs]))
    notes: dict[str, str] = {}
    declared: dict[str, str] = {}  # which way is better, where an evaluator said so
    for r in runs:
        for k, v in r.metric_notes.items():
            notes.setdefault(k, v)
        for k, v in r.metric_better.items():
            declared.setdefault(k, v)
    best = {}
    warnings = comparability_warnings(runs, labels)
    finished = {i for i, r in enumerate(runs) if r.trained and r.metrics}
    same_budget = not _differing([_budget(r) for r in runs])
    metrics_comparable = not any(w.endswith(UNMARKED) for w in warnings)
    images_comparable = metrics_comparable and not any(w.endswith(UNMARKED_IMAGES) for w in warnings)
    for name, vals in rows if len({r.name for r in runs}) == 1 else ():  # no best across scenes
        if (name == "train_seconds" and not same_budget) or (name in metric_names and not metrics_comparable) \
                or (name.startswith(IMAGE_METRICS) and not images_comparable):
            continue
        direction = "lower" if name in ("train_seconds", "parameters") else declared.get(name) or better(name)
        marked = best_cells(vals, direction, finished)  # a run stopped early is neither "fastest" nor "best"
        if marked:
            best[name] = marked
    means = method_means(runs, declared)
    if means and not means.best and len(means.methods) > 1:
        warnings.append("the methods ran on different scenes, so no mean over scenes is marked best")
    return Comparison(runs, labels, rows, best, warnings + run_notes(runs, labels), notes, declared, means)


def _read(path: Path) -> RunFacts:
    """A run folder (:func:`read_run`), or the JSON of ``nls eval RUN --renders DIR`` (or ``--mesh FILE``): another
    method's renders or mesh scored as RUN's (:func:`pipeline.report.scored_renders.read_scored_renders`)."""
    if path.suffix.lower() == ".json" and path.is_file():
        from pipeline.report.scored_renders import read_scored_renders

        return read_scored_renders(path)
    return read_run(path)


def _labels(runs: list[RunFacts]) -> list[str]:
    """method, or method/<scene> when runs of one method are on different scenes, else method/<run folder name>
    when two runs share a method; '#2', '#3' ... when that is still not unique (the same folder name under other
    roots, or one run given twice)."""
    methods = [r.method for r in runs]
    scenes = {m: [r.name for r in runs if r.method == m] for m in methods}

    def label(m: str, r: RunFacts) -> str:
        if methods.count(m) == 1:
            return m
        return f"{m}/{r.name}" if len(set(scenes[m])) == len(scenes[m]) else f"{m}/{r.path.name}"

    labels = [label(m, r) for m, r in zip(methods, runs)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            lab = f"{lab}#{seen[lab]}"
        out.append(lab)
    return out


def _budget(r: RunFacts) -> dict:
    train = r.config.get("train") or {}
    return {k: train.get(k) for k in ("steps", "max_seconds")}


#: appended to a difference that makes the metrics incomparable
UNMARKED = ", so no metric is marked best"
#: appended to a difference that makes only the metrics of rendered images incomparable
UNMARKED_IMAGES = ", so no image metric is marked best"
#: metrics computed from rendered images (the others come from meshes, points or fields)
IMAGE_METRICS = ("psnr", "ssim", "lpips")
#: eval: settings that change only what is rendered, not geometry metrics
RENDER_ONLY_EVAL_KEYS = frozenset({"split", "every", "max_images", "supersample", "chunk"})


def comparability_warnings(runs: list[RunFacts], labels: Sequence[str]) -> list[str]:
    """Sentences naming what differs between the runs' scenes, training budgets and evaluation
    settings (with ``nls eval --set`` overrides applied), and which runs did not finish. Those
    that make the metrics incomparable end with :data:`UNMARKED`."""
    out = []
    if len(runs) < 2:
        return out
    paths = [r.path.resolve() for r in runs]
    twice = sorted({lab for lab, p in zip(labels, paths) if paths.count(p) > 1})
    if twice:
        out.append(f"the same run folder is given more than once: {', '.join(twice)}")
    names = {r.name for r in runs}
    if len(names) > 1:
        # one statement: nothing is marked best across scenes, so the settings that would keep a mark
        # (scene keys, ground truth, budgets, evaluation and extractor options) are not listed one by one
        out.append(f"the runs are on different scenes ({', '.join(sorted(names))}): their metrics are not "
                   f"comparable, so no best value is marked (and their scene, budget and evaluation settings "
                   f"are not compared)")
        out += _component_warnings(runs, labels)
        out += _evaluator_warnings(runs, labels)[0]
        return out + _progress_warnings(runs, labels)
    shared = _shared_views(runs, labels)
    if shared:  # (runs on a run's own data, exported: the scene settings differ only in where it was read from)
        out.append(shared)
    diff = {} if shared else _differing([r.config.get("scene") or {} for r in runs])
    hashes = [(r.scene or {}).get("gt_mesh_sha256") for r in runs]
    one_truth = None not in hashes and len(set(hashes)) == 1  # runs before this record was kept have none
    if diff and one_truth and "type" in diff:
        # e.g. a mesh rendered into images and the same mesh as a point scan: the geometry metrics are
        # taken against one ground truth, the images (if any) are not the same views
        types = _describe({"type": diff["type"]}, labels)
        out.append(f"the scene sources differ ({types}; {len(diff) - 1} other scene setting(s) with them) over one "
                   f"ground-truth mesh (sha256 {hashes[0][:12]}), so the geometry metrics are comparable"
                   + UNMARKED_IMAGES)
    elif diff:
        out.append("the scene settings differ: " + _describe(diff, labels) + UNMARKED)
    if None not in hashes and len(set(hashes)) > 1:
        groups = {h: [lab for lab, g in zip(labels, hashes) if g == h] for h in dict.fromkeys(hashes)}
        out.append("the ground-truth meshes differ (scene.json's gt_mesh_sha256: "
                   + "; ".join(f"{h[:12]} ({', '.join(labs)})" for h, labs in groups.items()) + ")" + UNMARKED)
    out += _component_warnings(runs, labels)
    diff = _differing([_budget(r) for r in runs])
    if diff:
        out.append("the training budgets differ, so train_seconds is not marked: " + _describe(diff, labels, "train."))
    configs = [r.eval_config for r in runs]  # with `nls eval --set` overrides applied
    for block in EVAL_BLOCKS:
        diff = _differing([c.get(block) or {} for c in configs])
        if diff:
            render_only = block == "eval" and set(diff) <= RENDER_ONLY_EVAL_KEYS
            out.append(f"the evaluation settings ({block}:) differ: " + _describe(diff, labels)
                       + (UNMARKED_IMAGES if render_only else UNMARKED))
    diff = _evaluation_renderer_differences(runs, configs)
    if diff:
        out.append("the ray sampling at evaluation differs (`nls eval --set renderer.*`): "
                   + _describe(diff, labels, "renderer.") + UNMARKED)
    extractors = [c.get("extractor") or {} for c in configs]
    # between methods the extractor is part of the method; within one method its options matter
    if len({r.method for r in runs}) == 1 and len({json.dumps(e.get("type"), default=str) for e in extractors}) == 1:
        diff = _differing(extractors)
        if diff:
            out.append("the extractor settings differ: " + _describe(diff, labels) + UNMARKED)
    partial, options = _evaluator_warnings(runs, labels)
    return out + partial + options + _progress_warnings(runs, labels)


def views_origin(r: RunFacts) -> Path:
    """The run whose views ``r`` was scored on: for a run trained on ``nls export RUN --dataset`` (in RUN's own frame:
    transforms.json's ``nls_run``), RUN; for ``nls eval RUN --renders`` scores, RUN; else ``r`` itself."""
    if isinstance(r.summary, dict) and r.short_status == "scored" and r.summary.get("run"):
        return Path(r.summary["run"]).resolve()
    root = (r.scene or {}).get("root")
    if isinstance(root, str):
        try:
            source = json.loads((Path(root) / "transforms.json").read_text()).get("nls_run")
        except (OSError, ValueError, AttributeError):
            source = None
        if isinstance(source, dict) and source.get("frame") == "run" and isinstance(source.get("run"), str):
            return Path(source["run"]).resolve()
    return r.path.resolve()


def _shared_views(runs: list[RunFacts], labels: Sequence[str]) -> str:
    """A sentence when the runs' views all come from one run's data (:func:`views_origin`: runs trained on its
    export, scores of renders of its views) at one image size, with at least one not the run itself; "" otherwise.
    Their scene settings then differ only in where the same images were read from."""
    origins = [views_origin(r) for r in runs]
    sizes = {json.dumps((r.scene or {}).get("image_size"), sort_keys=True) for r in runs}
    if len(set(origins)) != 1 or len(sizes) != 1 or all(o == r.path.resolve() for o, r in zip(origins, runs)):
        return ""
    via = [lab for lab, o, r in zip(labels, origins, runs) if o != r.path.resolve()]
    return (f"{', '.join(via)} {'is' if len(via) == 1 else 'are'} on the views of {origins[0]} (its nls export "
            f"--dataset, or nls eval --renders of its views), so their scene settings are not compared")


def _evaluator_warnings(runs: list[RunFacts], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """(evaluators only some runs have, as one sentence; evaluator options that differ, as one sentence),
    with ``nls eval --set`` overrides applied; empty lists when they agree."""
    evs = [{str(e.get("type")): e for e in (r.eval_config.get("evaluators") or []) if isinstance(e, dict)}
           for r in runs]
    partial = sorted({t for e in evs for t in e} - set.intersection(*(set(e) for e in evs)))
    first = ["the evaluators differ: " + "; ".join(
        f"{t} only in {', '.join(lab for lab, e in zip(labels, evs) if t in e)}" for t in partial)] if partial else []
    # (an option a run does not record is one its nls version did not have: options are added with the default
    # that keeps the old behaviour, so only the runs that record it are compared)
    ev = _differing([{t: b for t, b in e.items() if t not in partial} for e in evs], recorded_only=True)
    return first, (["the evaluator options differ: " + _describe(ev, labels) + UNMARKED] if ev else [])


def _progress_warnings(runs: list[RunFacts], labels: Sequence[str]) -> list[str]:
    """Runs that did not finish (with their step and newest checkpoint, or that they have none), and runs
    trained but without final metrics."""
    out = []

    def where(r: RunFacts) -> str:
        if r.checkpoint_step is None:
            return f"step {r.step} of {r.steps}, no checkpoint"
        if r.checkpoint_step != r.step:
            return f"step {r.step} of {r.steps}, newest checkpoint at step {r.checkpoint_step}"
        return f"step {r.step} of {r.steps}"

    stopped = [f"{lab} ({where(r)})" for lab, r in zip(labels, runs) if not r.trained]
    if stopped:
        out.append(f"not finished, so not marked best: {', '.join(stopped)}")
    no_metrics = [(lab, r) for lab, r in zip(labels, runs) if r.trained and not r.metrics]
    unevaluated = [lab for lab, r in no_metrics if not r.results_damaged]
    if unevaluated:
        out.append(f"trained but not evaluated (no final metrics; `nls resume RUN_DIR` evaluates): "
                   f"{', '.join(unevaluated)}")
    damaged = [lab for lab, r in no_metrics if r.results_damaged]
    if damaged:
        out.append(f"trained, but no final metrics could be read (their summary.json or eval.json is damaged, "
                   f"see below; `nls resume RUN_DIR` evaluates again): {', '.join(damaged)}")
    return out


def _components(r: RunFacts) -> dict[str, Any]:
    """The component types a run is made of: ``<stage>.type`` of each single stage but the scene
    (its settings are compared on their own) and the loss types, from config.yaml."""
    from pipeline.config import SINGLE_STAGES

    blocks = {s: r.config.get(s) for s in SINGLE_STAGES if s != "scene"}
    out: dict[str, Any] = {f"{s}.type": b.get("type") if isinstance(b, dict) else None for s, b in blocks.items()}
    out["losses"] = [b.get("type") for b in r.config.get("losses") or [] if isinstance(b, dict)]
    return out


def _component_warnings(runs: list[RunFacts], labels: Sequence[str]) -> list[str]:
    """One sentence per method label shared by runs made of different components (e.g. a run of a
    ``method: dense_grid`` scene trained with ``--set field.type=hash_grid``): its label names a method
    it was not made of."""
    out = []
    for method in dict.fromkeys(r.method for r in runs):
        group = [(lab, r) for lab, r in zip(labels, runs) if r.method == method]
        diff = _differing([_components(r) for _, r in group]) if len(group) > 1 else {}
        if diff:
            out.append(f"runs labelled {method!r} (config.yaml's method:) are made of different components, "
                       f"so the label does not tell them apart: " + _describe(diff, [lab for lab, _ in group]))
    return out


def _evaluation_renderer_differences(runs: list[RunFacts], configs: list[dict]) -> dict[str, list[Any]]:
    """Renderer keys that ``nls eval --set`` changed for some run (scored with another ray step than
    it was trained with) and whose evaluated values differ between the runs. A renderer difference
    the runs were trained with is part of each run's method and is not returned."""
    changed: set[str] = set()
    for r, c in zip(runs, configs):
        changed |= set(_differing([r.config.get("renderer") or {}, c.get("renderer") or {}]))
    diff = _differing([c.get("renderer") or {} for c in configs]) if changed else {}
    return {k: v for k, v in diff.items() if k in changed}


def run_notes(runs: list[RunFacts], labels: Sequence[str]) -> list[str]:
    """Per run: where its metrics come from when eval.json is involved, files that could not be
    read, and evaluators that were skipped, with the reason."""
    out = []
    for lab, r in zip(labels, runs):
        out += [f"{lab}: {n}" for n in r.evaluation_notes]
        out += [f"{lab}: evaluator {k} was skipped: {why}" for k, why in r.skipped.items()]
    return out


def _differing(blocks: list[dict], recorded_only: bool = False) -> dict[str, list[Any]]:
    """``{flattened key: [each block's value (None where absent)]}`` of the keys whose values differ between
    ``blocks``; with ``recorded_only``, a block without the key does not count as differing."""
    flat = [flatten_dict(b) for b in blocks]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys
            if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat
                    if not recorded_only or k in f}) > 1}


def _describe(diff: dict[str, list[Any]], labels: Sequence[str], prefix: str = "") -> str:
    """'key = v1 (runs having v1), v2 (runs having v2)' per differing key, runs grouped by value."""
    parts = []
    for k, vals in diff.items():
        groups: dict[str, tuple[Any, list[str]]] = {}
        for v, lab in zip(vals, labels):
            groups.setdefault(json.dumps(v, sort_keys=True, default=str), (v, []))[1].append(lab)
        parts.append(f"{prefix}{k} = " + ", ".join(f"{v!r} ({', '.join(labs)})" for v, labs in groups.values()))
    return "; ".join(parts)


# -- output formats -----------------------------------------------------------------------------

def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def _markdown_table(labels: Sequence[str], rows: Sequence[tuple[str, list]], best: dict[str, set[int]]) -> str:
    """A Markdown table of ``rows`` under ``labels``, the ``best`` cells in bold."""
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, vals in rows:
        cells = [f"**{_cell(v)}**" if i in best.get(name, ()) else _cell(v) for i, v in enumerate(vals)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(c: Comparison) -> str:
    """``c`` as a Markdown table, best cells in bold, then its warnings as ``> warning:`` lines."""
    text = _markdown_table(c.labels, c.rows, c.best)
    if c.means:
        m = c.means
        text += "\nMean over scenes:\n\n" + _markdown_table(m.methods, m.counted_rows(), m.best)
    if c.notes:
        text += "\n" + "\n".join(f"- `{name}`{' ' + mark if mark else ''}: {note}" for name, mark, note in c.legend()) + "\n"
    if c.warnings:
        text += "\n" + "\n".join(f"> warning: {w}" for w in c.warnings) + "\n"
    return text


def to_html(c: Comparison) -> str:
    """``c`` as a self-contained HTML page: warnings and table (best cells marked), the metrics' notes, the same
    views as each run rendered them and the runs' training curves (:mod:`pipeline.compare_figures`), then each
    run's folder."""
    from pipeline.report import html as H

    best = {(i, j + 1) for i, (name, _) in enumerate(c.rows) for j in c.best.get(name, ())}
    body = H.table(["", *c.labels], [(name, *vals) for name, vals in c.rows], best=best)
    warn = "\n".join(H.warning(w) for w in c.warnings)
    paths = H.table(["run", "folder"], [(lab, str(r.path)) for lab, r in zip(c.labels, c.runs)])
    legend = [("Metrics", H.table(["metric", "", "what it is"], c.legend()))] if c.notes else []
    if c.means:
        m = c.means
        rows = m.counted_rows()
        marked = {(i, j + 1) for i, (name, _) in enumerate(rows) for j in m.best.get(name, ())}
        legend.insert(0, ("Mean over scenes", H.table(["", *m.methods], [(n, *v) for n, v in rows], best=marked)))
    from pipeline.compare_figures import compare_sections

    return H.page("nls compare", f"{len(c.runs)} runs" + ("; best values in bold" if c.best else ""),
                  [("Table", warn + body), *legend, *compare_sections(c.runs, c.labels), ("Runs", paths)])


def print_rich(c: Comparison) -> None:
    """Print ``c`` as a rich table (best cells bold, or ``*`` when stdout is not a terminal), then each
    run's folder; the warnings are not printed."""
    from pipeline.console import stdout_console

    with stdout_console() as con:
        _print_table(con, c)


def _rich_table(title: str, labels: Sequence[str], rows: Sequence[tuple[str, list]], best: dict[str, set[int]],
                plain: bool):
    """A rich Table of ``rows`` under ``labels``, the ``best`` cells bold green (marked ``*`` when ``plain``)."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    for lab in labels:
        t.add_column(lab, justify="right", overflow="fold")
    for name, vals in rows:
        t.add_row(name, *[(f"*{_cell(v)}" if plain else f"[bold green]{_cell(v)}[/]")
                          if i in best.get(name, ()) else _cell(v) for i, v in enumerate(vals)])
    return t


def _print_table(con, c: Comparison) -> None:
    """:func:`print_rich`'s table and run folders on ``con``."""
    from rich.markup import escape

    plain = not con.is_terminal  # piped: bold is dropped, so the best cells get a visible '*'
    marks = "" if not c.best else " (best marked *)" if plain else " (best in bold)"
    con.print(_rich_table("nls compare" + marks, [lab.replace("/", "\n") for lab in c.labels], c.rows, c.best,
                          plain))  # (headers whole, folded)
    if c.means:
        con.print(_rich_table("mean over scenes" + marks, c.means.methods, c.means.counted_rows(), c.means.best,
                              plain))
    for name, mark, note in c.legend():
        con.print(f"[dim]{escape(name)}{' ' + mark if mark else ''}: {escape(note)}[/dim]", highlight=False)
    for lab, r in zip(c.labels, c.runs):
        con.print(f"{lab}: {r.path}", highlight=False, soft_wrap=True)  # paths whole, never wrapped


#: what ``-o FILE`` writes without --markdown/--json/--html, by FILE's extension (else Markdown)
FORMAT_BY_SUFFIX = {".html": "html", ".htm": "html", ".json": "json", ".md": "markdown",
                    ".markdown": "markdown", ".txt": "markdown"}
FORMAT_NAMES = {"markdown": "Markdown", "html": "HTML", "json": "JSON"}


def output_format(fmt: Optional[str], output: Optional[Path]) -> str:
    """The format to print or write: ``fmt`` when it was chosen (markdown, json or html), else
    ``output``'s by its extension (:data:`FORMAT_BY_SUFFIX`, Markdown for others), else rich.
    ``rich``, the CLI's default, counts as not chosen. A chosen format that another extension
    suggests is kept, with a note on stderr."""
    import sys

    chosen = fmt if fmt not in (None, "rich") else None
    if output is None:
        return chosen or "rich"
    by_suffix = FORMAT_BY_SUFFIX.get(output.suffix.lower())
    if chosen and by_suffix and by_suffix != chosen:
        print(f"note: writing {FORMAT_NAMES[chosen]} to {output} as --{chosen} asks, although its extension "
              f"{output.suffix} suggests {FORMAT_NAMES[by_suffix]}", file=sys.stderr)
    return chosen or by_suffix or "markdown"


def run_compare(paths: Sequence[Path], fmt: Optional[str] = None, output: Optional[Path] = None) -> int:
    """Print (or write to ``output``) the comparison in ``fmt`` (None or ``rich``: rich on the terminal,
    or the format of ``output``'s extension, see :func:`output_format`); warnings go to stderr."""
    import sys

    from pipeline.runs import atomic_write_text, check_output_file

    output = check_output_file(Path(output), "comparison") if output else None  # before reading the runs
    fmt = output_format(fmt, output)
    c = compare_runs(paths)
    for w in c.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if fmt == "rich" and output is None:
        print_rich(c)
        return 0
    text = {"markdown": to_markdown, "html": to_html,
            "json": lambda x: json.dumps(x.to_dict(), indent=2) + "\n"}[fmt](c)
    if output:
        atomic_write_text(output, text)
        print(f"wrote {output} ({FORMAT_NAMES.get(fmt, fmt)})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
