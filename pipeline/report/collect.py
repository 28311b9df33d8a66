"""Read what a run folder holds, without building its model: the facts `nls report` and
`nls compare` show. Works for finished runs (summary.json), for runs trained with
``--no-eval`` and evaluated later by ``nls eval`` (eval.json), and for runs killed midway
(only config.yaml, metrics.jsonl and checkpoints).

When a run has both files, eval.json counts when it evaluated the model the folder ends with
(its ``step`` is summary.json's). The merge goes by evaluator, as both files record results
per evaluator: each evaluator that eval.json ran replaces summary.json's entry whole, since
``nls eval`` ran later, and the others keep summary.json's. When eval.json's ``--set``
changed settings every evaluator reads (``eval.*``, ``extractor.*``, ``renderer.samples_per_ray``),
the evaluators it did not run again are left out, so that one column never mixes settings. An
eval.json from an earlier step (the run was resumed and trained on afterwards) is ignored.
:attr:`RunFacts.evaluation_notes` says which of these happened.

Damaged records are read defensively, in :func:`read_run` alone: a JSON file that cannot be read, or
a field of the wrong type (``"step": "abc"``), is left out and named in :attr:`RunFacts.record_notes`,
so that every accessor can trust the types it reads. Only a config.yaml that cannot be read as a
mapping stops the reading, with an NLSError naming it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from pipeline.config import SINGLE_STAGES, load_yaml_text
from pipeline.runs import WARNINGS_RECORD, RunDir, json_record, os_reason
from pipeline.types import NLSError

#: metrics where a larger value is better; every other metric whose name starts with one of
#: LOWER_IS_BETTER is better when smaller. Used to mark the best run in comparisons.
HIGHER_IS_BETTER = ("psnr", "ssim", "normal_consistency", "fscore", "precision", "recall", "iou",
                    "certified_accuracy", "accuracy")
LOWER_IS_BETTER = ("chamfer", "accuracy_l1", "completeness_l1", "lpips", "loss", "hausdorff", "residual")
#: prefixes that name what a metric was measured against (``point_fit``'s ``fit_chamfer_l1``: against the input
#: points) and leave its direction as without them. (An evaluator's own metrics of other names say which way is
#: better where they are registered: :mod:`pipeline.metric_notes`.)
REFERENCE_PREFIXES = ("fit_",)
#: bookkeeping numbers evaluators report next to metrics (sample counts, scale factors)
BOOKKEEPING = ("n_images", "n_samples", "n_rec", "n_gt", "scale", "mesh_level", "sdf_slices")


#: config blocks that every evaluator reads (an ``nls eval --set`` on them changes every metric; of the
#: renderer, ``nls eval`` may change the ray step, which every rendered metric reads)
SHARED_EVAL_BLOCKS = ("eval", "extractor", "renderer")


def is_bookkeeping(name: str) -> bool:
    """Sample counts (``n_*``, ``*_n_*``), scale factors and bounds: numbers reported next to
    metrics, not metrics."""
    return name in BOOKKEEPING or name.endswith("_floor") or re.search(r"(^|_)n_[a-z]+$", name) is not None


def better(metric: str) -> Optional[str]:
    """'higher', 'lower' or None (unknown direction, or a bookkeeping number)."""
    if is_bookkeeping(metric):
        return None
    for prefix in REFERENCE_PREFIXES:
        metric = metric.removeprefix(prefix)
    if metric.startswith(LOWER_IS_BETTER):
        return "lower"
    if metric.startswith(HIGHER_IS_BETTER):
        return "higher"
    return None


@dataclass
class RunFacts:
    """Everything readable from a run folder's files (no torch needed except for the
    parameter count of an unfinished run)."""

    path: Path
    config: dict
    summary: Optional[dict]
    log: list[dict]
    scene: Optional[dict]
    plugins: Optional[dict]
    checkpoints: list[Path] = field(default_factory=list)
    #: ``RUN_DIR/eval.json`` written by ``nls eval`` (see the module docstring for how it counts)
    evaluation: Optional[dict] = None
    #: {file name: why it was not read} of the run's JSON files that exist but could not be read
    #: ("is not valid JSON (damaged or cut off)", "holds a list, not a JSON object", ...)
    unreadable: dict[str, str] = field(default_factory=dict)
    #: fields of the run's records that were left out because their value has the wrong type, one
    #: sentence each ("summary.json: step is 'abc', not an integer, so it is ignored")
    problems: list[str] = field(default_factory=list)
    #: ``RUN_DIR/warnings.json``: the warnings given while loading and training, as of the newest checkpoint
    training_warnings: Optional[dict] = None

    @property
    def run(self) -> RunDir:
        """The :class:`RunDir` of ``path``."""
        return RunDir(self.path)

    @property
    def name(self) -> str:
        """Scene name: summary.json's ``scene``, else config.yaml's ``name``, else ``"?"``."""
        return str((self.summary or {}).get("scene") or self.config.get("name") or "?")

    @property
    def method(self) -> str:
        """Method: summary.json's ``method``, else config.yaml's, else ``"?"``."""
        return str((self.summary or {}).get("method") or self.config.get("method") or "?")

    @property
    def complete(self) -> bool:
        """Whether the run has a summary.json."""
        return self.summary is not None

    @property
    def steps(self) -> Optional[int]:
        """The step budget, config.yaml's ``train.steps`` (None when absent)."""
        return (self.config.get("train") or {}).get("steps")

    @property
    def step(self) -> int:
        """Last step reached: from summary.json, else the newest checkpoint or the last log line
        that names an integer step."""
        if self.summary and _is_int(self.summary.get("step")):
            return self.summary["step"]
        ck = _ckpt_step(self.checkpoints[-1]) if self.checkpoints else 0
        logged = next((r["step"] for r in reversed(self.log) if _is_int(r.get("step"))), 0)
        return max(ck, logged)

    @property
    def checkpoint_step(self) -> Optional[int]:
        """Step of the newest checkpoint, None without one."""
        return _ckpt_step(self.checkpoints[-1]) if self.checkpoints else None

    @property
    def train_seconds(self) -> Optional[float]:
        """summary.json's ``train_seconds``, else the ``time`` of the last metrics.jsonl line that logs a
        number there, else None."""
        if self.summary and _is_number(self.summary.get("train_seconds")):
            return float(self.summary["train_seconds"])
        return next((float(r["time"]) for r in reversed(self.log) if _is_number(r.get("time"))), None)

    @property
    def later_evaluation(self) -> Optional[dict]:
        """eval.json when it counts: it names a step, and the run has no summary.json or that step
        is summary.json's."""
        ev = self.evaluation
        if not ev or _int(ev.get("step")) is None:
            return None
        if not self.summary:
            return ev
        return ev if _int(ev.get("step")) == _int(self.summary.get("step")) else None

    @property
    def eval_overrides(self) -> list[str]:
        """The ``--set`` overrides ``nls eval`` was given, as recorded in eval.json."""
        return [str(o) for o in (self.later_evaluation or {}).get("overrides") or []]

    @property
    def _shared_overrides(self) -> list[str]:
        """eval.json overrides of settings every evaluator reads (``eval.*``, ``extractor.*``,
        ``renderer.samples_per_ray``)."""
        from pipeline.config import parse_override

        return [o for o in self.eval_overrides if parse_override(o)[0][0].strip() in SHARED_EVAL_BLOCKS]

    @property
    def dropped_evaluators(self) -> list[str]:
        """summary.json's evaluators left out: eval.json changed settings they all read
        (``eval.*``, ``extractor.*``, ``renderer.samples_per_ray``) and did not run them again, so
        their values would describe other settings than the ones compared."""
        if not (self.summary and self.later_evaluation and self._shared_overrides):
            return []
        again = set((self.later_evaluation.get("evaluators") or {}))
        return [k for k in (self.summary.get("evaluators") or {}) if k not in again]

    @property
    def evaluator_results(self) -> dict[str, dict]:
        """{evaluator: its results}: summary.json's, where each evaluator that eval.json ran again
        replaces its entry whole (so a metric it no longer reports is gone, not stale)."""
        out = dict((self.summary or {}).get("evaluators") or {})
        if self.summary and not out and self.summary.get("metrics"):  # a summary without the breakdown
            out = {"summary": dict(self.summary["metrics"])}
        for k in self.dropped_evaluators:
            out.pop(k, None)
        out.update((self.later_evaluation or {}).get("evaluators") or {})
        return out

    @property
    def metrics(self) -> dict[str, float]:
        """Final evaluation metrics: the numbers of :attr:`evaluator_results`."""
        from pipeline.evaluate import flatten

        return flatten({k: v for k, v in self.evaluator_results.items() if isinstance(v, dict)})

    @property
    def metric_notes(self) -> dict[str, str]:
        """{metric: what it measures} of the shown :attr:`metrics` that the run recorded a note for (summary.json's
        ``metric_notes``, eval.json's where eval.json gave the value); for a run made before runs recorded notes,
        the notes its evaluators declare now (:func:`pipeline.metric_notes.registered_notes`)."""
        from pipeline.metric_notes import registered_notes

        return self._declared("metric_notes", registered_notes)

    @property
    def metric_better(self) -> dict[str, str]:
        """{metric: "higher" or "lower"} of the shown :attr:`metrics` whose evaluator declared which way is better,
        as :attr:`metric_notes` finds notes (``metric_better``)."""
        from pipeline.metric_notes import registered_better

        return self._declared("metric_better", registered_better)

    def _declared(self, key: str, registered: Callable[[dict], dict]) -> dict[str, str]:
        """:attr:`metric_notes` or :attr:`metric_better`: the records' ``key`` (eval.json's for the metrics it gave),
        or, for a run that recorded none (an older nls), ``registered(evaluator_results)``."""
        later = set(self.later_metrics)
        if not any(r and key in r for r in (self.summary, self.later_evaluation)) and self.metrics:
            found = registered(self.evaluator_results)
        else:
            found = {k: v for k, v in ((self.summary or {}).get(key) or {}).items() if k not in later}
            found.update((self.later_evaluation or {}).get(key) or {})
        return {k: found[k] for k in self.metrics if k in found}

    @property
    def later_metrics(self) -> list[str]:
        """Names of the metrics whose value comes from eval.json."""
        from pipeline.evaluate import flatten

        ev = (self.later_evaluation or {}).get("evaluators") or {}
        return list(flatten({k: v for k, v in ev.items() if isinstance(v, dict)}))

    @property
    def eval_config(self) -> dict:
        """The settings the shown metrics were taken with: config.yaml, with the ``eval:``,
        ``extractor:`` and ``renderer:`` blocks eval.json used and its evaluators merged by type as
        their results are (:attr:`evaluator_results`). eval.json records its resolved blocks; for an older one
        its overrides are applied to config.yaml (those that no longer apply are left out)."""
        ev = self.later_evaluation
        if not ev or not self.eval_overrides:
            return self.config
        used = ev.get("config")
        if not isinstance(used, dict):
            from pipeline.config import apply_overrides
            from pipeline.types import ConfigError

            used = self.config
            for text in self.eval_overrides:
                try:
                    used = apply_overrides(used, [text])
                except ConfigError:
                    continue
        cfg = dict(self.config)
        for block in SHARED_EVAL_BLOCKS:
            if isinstance(used.get(block), dict):
                cfg[block] = used[block]
        keep = set(self.evaluator_results)
        by_type = {str(e.get("type")): e for e in self.config.get("evaluators") or []
                   if isinstance(e, dict) and str(e.get("type")) in keep}
        listed = used.get("evaluators") if isinstance(used.get("evaluators"), list) else []
        by_type.update({str(e.get("type")): e for e in listed if isinstance(e, dict)})
        cfg["evaluators"] = list(by_type.values())
        return cfg

    @property
    def record_notes(self) -> list[str]:
        """Sentences on the run's records that were not read whole: files that could not be read
        (:attr:`unreadable`), then fields left out for their type (:attr:`problems`)."""
        return [f"{name} {why}, so it was not read" for name, why in self.unreadable.items()] + self.problems

    @property
    def warnings(self) -> list[str]:
        """The warnings the run gave while it loaded, trained and was evaluated (summary.json); for a run
        without one, those it gave while it loaded and trained (warnings.json, written with checkpoints)."""
        if self.summary is not None:
            return list(self.summary.get("warnings") or [])
        return list((self.training_warnings or {}).get("warnings") or [])

    @property
    def results_damaged(self) -> bool:
        """Whether summary.json or eval.json, which hold the final metrics, could not be read whole."""
        return any(n.startswith(("summary.json", "eval.json")) for n in self.record_notes)

    @property
    def evaluation_notes(self) -> list[str]:
        """Sentences on where the metrics come from when eval.json is involved, and on files that
        could not be read."""
        out = list(self.record_notes)
        ev = self.evaluation
        if ev and _int(ev.get("step")) is None:
            out.append(f"eval.json names no step ({ev.get('step')!r}), so its metrics are not shown")
        elif ev and self.later_evaluation is None:
            out.append(f"eval.json was written at step {ev.get('step')}, before the run was trained on to "
                       f"step {self.step}; its metrics are not shown (run `nls eval {self.path}` again)")
        elif ev:
            sets = f" with {' '.join('--set ' + o for o in self.eval_overrides)}" if self.eval_overrides else ""
            where = "" if self.summary else " (the run has no summary.json)"
            evaluators = ev.get("evaluators") or {}
            ran = [k for k, v in evaluators.items() if not (isinstance(v, dict) and set(v) == {"skipped"})]
            what = f"{_and(ran)} results" if ran else "no results"
            skipped = [k for k in evaluators if k not in ran]
            also = f" (it skipped {_and(skipped)})" if skipped else ""
            out.append(f"{what} from eval.json, written by `nls eval` at step {ev.get('step')}{sets}{where}{also}")
        if self.dropped_evaluators:
            out.append(f"summary.json's {_and(self.dropped_evaluators)} results are not shown: they were "
                       f"taken before eval.json's {' '.join('--set ' + o for o in self._shared_overrides)}")
        return out

    @property
    def evaluation_note(self) -> Optional[str]:
        """:attr:`evaluation_notes` as one paragraph, None when there is nothing to say."""
        return "; ".join(self.evaluation_notes) or None

    @property
    def skipped(self) -> dict[str, str]:
        """Evaluators that did not run, with the reason (eval.json's entry replaces summary.json's)."""
        ev = self.evaluator_results
        return {k: v["skipped"] for k, v in ev.items() if isinstance(v, dict) and "skipped" in v}

    @property
    def reference(self) -> dict[str, dict]:
        """Published figures from the config's ``reference:`` block: {metric: {value, source}}."""
        ref = self.config.get("reference") or {}
        return {str(k): (v if isinstance(v, dict) else {"value": v, "source": ""}) for k, v in ref.items()}

    @property
    def trained(self) -> bool:
        """Training finished: summary.json says so, or a checkpoint holds step ``train.steps``
        (a step only logged is not kept: resume starts again from the newest checkpoint)."""
        ck = self.checkpoint_step
        return self.complete or (ck is not None and self.steps is not None and ck >= int(self.steps))

    @property
    def status(self) -> str:
        """One sentence: summary.json's ``status``, else whether the run was trained, evaluated by
        ``nls eval`` or stopped early, with its step and newest checkpoint."""
        if self.complete:
            budget = " (its time budget, train.max_seconds)" if self.summary.get("stopped_by") == "train.max_seconds" else ""
            again = (f"; evaluated again by nls eval (eval.json, step {self.later_evaluation.get('step')})"
                     if self.later_evaluation else "")
            return f"complete: trained to step {self.step} of {self.steps}{budget} and evaluated (summary.json){again}"
        ck = "no checkpoint" if self.checkpoint_step is None else f"newest checkpoint at step {self.checkpoint_step}"
        why = self.unreadable.get("summary.json")
        no_summary = f"summary.json {why}" if why else "no summary.json"
        if self.later_evaluation:
            done = "trained to the end" if self.trained else "training stopped early"
            return (f"evaluated by nls eval, {done}: {no_summary}; trained to step {self.step} of {self.steps}, "
                    f"{ck}, metrics from eval.json (step {self.later_evaluation.get('step')})")
        if self.trained and why:
            return f"trained, final metrics unknown: {no_summary}; step {self.step} of {self.steps}, {ck}"
        if self.trained:
            return (f"trained, not evaluated: no summary.json (trained with --no-eval?); step {self.step} of "
                    f"{self.steps}, {ck}")
        return f"incomplete: {no_summary}; trained to step {self.step} of {self.steps}, {ck}"

    @property
    def short_status(self) -> str:
        """One word for tables: complete; evaluated (trained to the end, metrics from eval.json,
        no summary); trained (to the end, not evaluated); or incomplete (stopped early, with or
        without eval.json metrics of a checkpoint)."""
        if self.complete:
            return "complete"
        if self.trained:
            return "evaluated" if self.later_evaluation else "trained"
        return "incomplete"

    def parameters(self) -> Optional[int]:
        """Trainable parameter count: summary.json's, else the numel of the newest checkpoint's
        optimiser state (one Adam moment per trainable parameter)."""
        if self.summary and _is_int(self.summary.get("parameters")):
            return self.summary["parameters"]
        if not self.checkpoints:
            return None
        try:
            state = self.run.load_checkpoint()
        except NLSError:
            return None
        return count_parameters(state)

    def missing(self) -> list[str]:
        """What a finished, evaluated run would have and this one lacks, one sentence each."""
        out = []
        if "summary.json" in self.unreadable:
            out.append(f"summary.json: the file {self.unreadable['summary.json']}; `nls resume {self.path}` "
                       f"evaluates the run again and rewrites it")
        elif not self.complete:
            how = (f"finish it from its newest checkpoint with `nls resume {self.path}`" if self.checkpoints
                   else "it cannot be resumed without a checkpoint")
            if self.trained:
                how = (f"evaluate it with `nls resume {self.path}`" if self.checkpoints
                       else "it cannot be evaluated without a checkpoint")
            got = (f"; the metrics shown come from eval.json, written by `nls eval` at step "
                   f"{self.later_evaluation.get('step')}" if self.later_evaluation else "")
            stop = (f"the run was trained to step {self.step} of {self.steps} but not evaluated" if self.trained
                    else f"the run stopped at step {self.step} of {self.steps} before evaluation")
            out.append(f"summary.json: {stop} ({how}){got}")
        if not self.log and "metrics.jsonl" not in self.unreadable:
            out.append("metrics.jsonl: no training step was logged")
        if not self.checkpoints:
            out.append("checkpoints/: no checkpoint, so nothing can be rebuilt from this run")
        return out


def summary_mesh_level(summary: Optional[dict], run_dir: Path, mesh: Path) -> Optional[float]:
    """The level the mesh file ``mesh`` was extracted at, as ``run_dir``'s ``summary`` (summary.json, as read;
    None without one) records it: its ``metrics.mesh_level`` (reported by ``chamfer`` for the mesh training
    evaluated and exported to summary's ``mesh``) when that ``mesh`` is the file ``mesh``; else None."""
    summary = summary if isinstance(summary, dict) else {}
    level = (summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}).get("mesh_level")
    named = summary.get("mesh")
    if not (_is_number(level) and isinstance(named, str) and named):
        return None
    return float(level) if (Path(run_dir) / named).resolve() == Path(mesh).resolve() else None


def count_parameters(state: dict) -> int:
    """Numel of every first moment in a checkpoint's optimiser state (= trainable parameters)."""
    opt = state.get("optimizer") or {}
    n = 0
    for st in (opt.get("state") or {}).values():
        t = st.get("exp_avg") if isinstance(st, dict) else None
        if t is not None:
            n += int(t.numel())
    if n == 0:  # no optimiser state: every floating tensor of the model
        n = sum(int(v.numel()) for v in state.get("model", {}).values()
                if getattr(v, "is_floating_point", lambda: False)())
    return n


def _and(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _int(v: Any) -> Optional[int]:
    if isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ckpt_step(path: Path) -> int:
    try:
        return int(path.stem.split("_")[-1])
    except ValueError:
        return 0


def _is_override(v: Any) -> bool:
    """Whether ``v`` is an ``nls eval --set`` override text (``KEY=VALUE`` with a dotted key)."""
    from pipeline.config import parse_override
    from pipeline.types import ConfigError

    if not isinstance(v, str):
        return False
    try:
        parse_override(v)
    except ConfigError:
        return False
    return True


#: kind name -> (test, what a value of that kind is called in a message)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "integer": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "mapping": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "numbers": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers"),
    "override": (_is_override, "a --set KEY=VALUE override"),
    "better": (lambda v: v in ("higher", "lower"), "'higher' or 'lower'"),
}

#: the fields of each JSON record of a run that :class:`RunFacts`, ``nls report`` and ``nls compare``
#: read, with the kind each must hold. A field holding another kind is left out, as if absent, and
#: named in :attr:`RunFacts.problems`; null counts as absent.
RECORD_FIELDS: dict[str, dict[str, str]] = {
    "summary.json": {"scene": "string", "method": "string", "status": "string", "step": "integer",
                     "steps": "integer", "train_seconds": "number", "parameters": "integer", "mesh": "string",
                     "device": "string", "device_name": "string", "threads": "integer",
                     "load_average": "numbers", "versions": "mapping", "metrics": "mapping",
                     "evaluators": "mapping", "metric_notes": "mapping", "metric_better": "mapping",
                     "warnings": "list"},
    "scene.json": {},
    "plugins.json": {"plugins": "list", "components": "mapping"},
    "eval.json": {"overrides": "list", "evaluators": "mapping", "metric_notes": "mapping", "metric_better": "mapping",
                  "config": "mapping"},
    WARNINGS_RECORD: {"step": "integer", "warnings": "list"},
}
#: the kind of each entry of the list and mapping fields above (an entry of another kind is left out)
RECORD_ENTRIES: dict[str, dict[str, str]] = {
    "summary.json": {"evaluators": "mapping", "metric_notes": "string", "metric_better": "better",
                     "warnings": "string"},
    "plugins.json": {"plugins": "mapping", "components": "mapping"},
    "eval.json": {"overrides": "override", "evaluators": "mapping", "metric_notes": "string", "metric_better": "better"},
    WARNINGS_RECORD: {"warnings": "string"},
}
#: the same for config.yaml: its blocks, their entries, and the settings of blocks that are read
CONFIG_FIELDS: dict[str, str] = {**{s: "mapping" for s in SINGLE_STAGES}, "losses": "list", "evaluators": "list",
                                 "train": "mapping", "eval": "mapping", "output": "mapping", "reference": "mapping"}
CONFIG_ENTRIES: dict[str, str] = {"losses": "mapping", "evaluators": "mapping"}
CONFIG_SETTINGS: dict[str, dict[str, str]] = {"train": {"steps": "integer", "max_seconds": "number"},
                                              "eval": {"split": "string"}}


def _shown(v: Any) -> str:
    """``repr(v)``, cut to 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked(name: str, data: dict, fields: dict[str, str], entries: dict[str, str], problems: list[str],
             prefix: str = "") -> dict:
    """A copy of ``data`` (read from the run's file ``name``) without the ``fields`` that hold another
    kind than theirs, and without the entries of list and mapping fields that hold another kind than
    ``entries`` gives; each one left out adds a sentence to ``problems``."""
    out = dict(data)
    for key, kind in fields.items():
        value = out.get(key)
        if value is None:
            continue
        test, what = _KINDS[kind]
        if not test(value):
            problems.append(f"{name}: {prefix}{key} is {_shown(value)}, not {what}, so it is ignored")
            del out[key]
            continue
        if key not in entries:
            continue
        test, what = _KINDS[entries[key]]
        pairs = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        bad = {k for k, v in pairs if not test(v)}
        for k, v in pairs:
            if k in bad:
                where = f"{key}.{k}" if isinstance(value, dict) else f"{key}[{k}]"
                problems.append(f"{name}: {prefix}{where} is {_shown(v)}, not {what}, so it is ignored")
        if bad:
            kept = [(k, v) for k, v in pairs if k not in bad]
            out[key] = dict(kept) if isinstance(value, dict) else [v for _, v in kept]
    return out


def _read_config(path: Path) -> dict:
    """config.yaml as a mapping; NLSError naming it when it cannot be read, is empty or holds no mapping."""
    made = "a run folder made by `nls reconstruct` holds its resolved config there"
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise NLSError(f"{path} is a directory, not a file; {made}") from None
    except UnicodeDecodeError:
        raise NLSError(f"{path} is not UTF-8 text (damaged?); {made}") from None
    except OSError as exc:
        raise NLSError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        config = load_yaml_text(text)  # the loader of scene files: a key given twice is refused here too
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: an impossible date
        raise NLSError(f"{path} is not valid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                       f"is this a run folder made by `nls reconstruct`?") from None
    if config is None:
        raise NLSError(f"{path} is empty, so the run cannot be described; {made}")
    if not isinstance(config, dict):
        raise NLSError(f"{path} does not hold a mapping; is this a run folder made by "
                       f"`nls reconstruct`?")
    return config


def read_run(path: Path) -> RunFacts:
    """Read a run folder; raises :class:`NLSError` naming the file when it is not one, or when its
    config.yaml cannot be read, is empty or holds no mapping.

    Damaged records do not raise: a JSON record that cannot be read (or holds no JSON object) is
    left out and named in :attr:`RunFacts.unreadable`; a field of a record, or a block or setting of
    config.yaml, that holds the wrong kind of value (see :data:`RECORD_FIELDS`) is left out and named
    in :attr:`RunFacts.problems`; metrics.jsonl lines that are not JSON objects are skipped."""
    run = RunDir.open(Path(path))
    problems: list[str] = []
    config = _read_config(run.config_path)
    config = {k: ({"type": v} if k in SINGLE_STAGES and isinstance(v, str) else v) for k, v in config.items()}
    config = _checked("config.yaml", config, CONFIG_FIELDS, CONFIG_ENTRIES, problems)
    for block, settings in CONFIG_SETTINGS.items():
        if isinstance(config.get(block), dict):
            config[block] = _checked("config.yaml", config[block], settings, {}, problems, prefix=f"{block}.")
    files: dict[str, Optional[dict]] = {}
    unreadable: dict[str, str] = {}
    for name, fields in RECORD_FIELDS.items():
        data, why = json_record(run.path / name)
        if why:
            unreadable[name] = why
        files[name] = None if data is None else _checked(name, data, fields, RECORD_ENTRIES.get(name, {}), problems)
    try:
        log = run.read_metrics()
    except NLSError:  # the file cannot be opened at all
        try:
            with open(run.metrics_path, "rb"):
                why = "cannot be read"
        except OSError as exc:
            why = os_reason(exc)
        log, unreadable["metrics.jsonl"] = [], why
    return RunFacts(path=run.path, config=config, summary=files["summary.json"], log=log,
                    scene=files["scene.json"], plugins=files["plugins.json"], checkpoints=run.checkpoints(),
                    evaluation=files["eval.json"], unreadable=unreadable, problems=problems,
                    training_warnings=files[WARNINGS_RECORD])


def flatten_dict(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept whole."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_dict(v, key))
        else:
            out[key] = v
    return out
