"""Read what a run folder holds, without building its model: the facts `nls report` and
`nls compare` show. Works for finished runs (summary.json), for runs trained with
``--no-eval`` and evaluated later by ``nls eval`` (eval.json), and for runs killed midway
(only config.yaml, metrics.jsonl and checkpoints).

When a run has both files, the rule is: eval.json counts when it evaluated the model the
folder ends with (its ``step`` is summary.json's). Its metrics are then added to summary.json's,
and where both have a metric eval.json's value wins, since ``nls eval`` ran later. An eval.json
from an earlier step (the run was resumed and trained on afterwards) is ignored, and
:attr:`RunFacts.evaluation_note` says so."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from pipeline.runs import RunDir
from pipeline.types import NLSError

#: metrics where a larger value is better; every other metric whose name starts with one of
#: LOWER_IS_BETTER is better when smaller. Used to mark the best run in comparisons.
HIGHER_IS_BETTER = ("psnr", "ssim", "normal_consistency", "fscore", "precision", "recall", "iou",
                    "certified_accuracy", "accuracy")
LOWER_IS_BETTER = ("chamfer", "accuracy_l1", "completeness_l1", "lpips", "loss", "hausdorff")
#: bookkeeping numbers evaluators report next to metrics (sample counts, scale factors)
BOOKKEEPING = ("n_images", "n_samples", "n_rec", "n_gt", "scale", "mesh_level", "sdf_slices")


def is_bookkeeping(name: str) -> bool:
    """Sample counts (``n_*``, ``*_n_*``), scale factors and bounds: numbers reported next to
    metrics, not metrics."""
    return name in BOOKKEEPING or name.endswith("_floor") or re.search(r"(^|_)n_[a-z]+$", name) is not None


def better(metric: str) -> Optional[str]:
    """'higher', 'lower' or None (unknown direction, or a bookkeeping number)."""
    if is_bookkeeping(metric):
        return None
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
    #: ``RUN_DIR/eval.json`` written by ``nls eval``; its metrics stand in when summary.json is absent
    evaluation: Optional[dict] = None

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)

    @property
    def name(self) -> str:
        return str((self.summary or {}).get("scene") or self.config.get("name") or "?")

    @property
    def method(self) -> str:
        return str((self.summary or {}).get("method") or self.config.get("method") or "?")

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def steps(self) -> Optional[int]:
        return (self.config.get("train") or {}).get("steps")

    @property
    def step(self) -> int:
        """Last step reached: from summary.json, else the newest checkpoint or log line."""
        if self.summary:
            return int(self.summary.get("step", 0))
        ck = _ckpt_step(self.checkpoints[-1]) if self.checkpoints else 0
        logged = int(self.log[-1].get("step", 0)) if self.log else 0
        return max(ck, logged)

    @property
    def checkpoint_step(self) -> Optional[int]:
        """Step of the newest checkpoint, None without one."""
        return _ckpt_step(self.checkpoints[-1]) if self.checkpoints else None

    @property
    def train_seconds(self) -> Optional[float]:
        if self.summary and self.summary.get("train_seconds") is not None:
            return float(self.summary["train_seconds"])
        return float(self.log[-1]["time"]) if self.log and "time" in self.log[-1] else None

    @property
    def later_evaluation(self) -> Optional[dict]:
        """eval.json when it counts: no summary.json, or written at summary.json's step."""
        ev = self.evaluation
        if not ev or not self.summary:
            return ev or None
        return ev if _int(ev.get("step")) == _int(self.summary.get("step")) else None

    @property
    def metrics_source(self) -> Optional[str]:
        """'summary.json', 'eval.json' (``nls eval`` on a run without a summary),
        'summary.json+eval.json' (``nls eval`` after training) or None."""
        files = [n for n, d in (("summary.json", self.summary), ("eval.json", self.later_evaluation)) if d]
        return "+".join(files) or None

    @property
    def metrics(self) -> dict[str, float]:
        """Final evaluation metrics: summary.json's, updated by eval.json's when it counts."""
        out = dict((self.summary or {}).get("metrics") or {})
        out.update((self.later_evaluation or {}).get("metrics") or {})
        return out

    @property
    def later_metrics(self) -> list[str]:
        """Names of the metrics whose value comes from eval.json."""
        return list(((self.later_evaluation or {}).get("metrics") or {}))

    @property
    def eval_overrides(self) -> list[str]:
        """The ``--set`` overrides ``nls eval`` was given, as recorded in eval.json."""
        return [str(o) for o in (self.later_evaluation or {}).get("overrides") or []]

    @property
    def eval_config(self) -> dict:
        """config.yaml with eval.json's overrides applied: the settings the metrics were taken with.

        Evaluators merge by type, as their metrics do: an evaluator eval.json re-ran replaces the
        one of that type, and the others stay, since their metrics still come from summary.json.
        Overrides that no longer apply to the file are left out."""
        from pipeline.config import apply_overrides
        from pipeline.types import ConfigError

        cfg = self.config
        for text in self.eval_overrides:
            try:
                cfg = apply_overrides(cfg, [text])
            except ConfigError:
                continue
        if self.summary and cfg is not self.config:
            by_type = {str(e.get("type")): e for e in self.config.get("evaluators") or [] if isinstance(e, dict)}
            by_type.update({str(e.get("type")): e for e in cfg.get("evaluators") or [] if isinstance(e, dict)})
            cfg["evaluators"] = list(by_type.values())
        return cfg

    @property
    def evaluation_note(self) -> Optional[str]:
        """One sentence on where the metrics come from when eval.json is involved, else None."""
        ev = self.evaluation
        if not ev:
            return None
        if self.later_evaluation is None:
            return (f"eval.json was written at step {ev.get('step', '?')}, before the run was trained on to "
                    f"step {self.step}; its metrics are not shown (run `nls eval {self.path}` again)")
        sets = f" with {' '.join('--set ' + o for o in self.eval_overrides)}" if self.eval_overrides else ""
        where = "" if self.summary else " (the run has no summary.json)"
        return (f"{', '.join(self.later_metrics) or 'no metrics'} from eval.json, written by `nls eval` at step "
                f"{ev.get('step', '?')}{sets}{where}")

    @property
    def skipped(self) -> dict[str, str]:
        """Evaluators that did not run, with the reason (eval.json's entry replaces summary.json's)."""
        ev = dict((self.summary or {}).get("evaluators") or {})
        ev.update((self.later_evaluation or {}).get("evaluators") or {})
        return {k: v["skipped"] for k, v in ev.items() if isinstance(v, dict) and "skipped" in v}

    @property
    def reference(self) -> dict[str, dict]:
        """Published figures from the config's ``reference:`` block: {metric: {value, source}}."""
        ref = self.config.get("reference") or {}
        return {str(k): (v if isinstance(v, dict) else {"value": v, "source": ""}) for k, v in ref.items()}

    @property
    def status(self) -> str:
        if self.complete:
            return str(self.summary.get("status", "complete"))
        if self.evaluation:
            return (f"evaluated by nls eval: no summary.json; trained to step {self.step} of {self.steps}, "
                    f"metrics from eval.json (step {self.evaluation.get('step', '?')})")
        ck = "no checkpoint" if self.checkpoint_step is None else f"newest checkpoint at step {self.checkpoint_step}"
        return f"incomplete: no summary.json; trained to step {self.step} of {self.steps}, {ck}"

    @property
    def short_status(self) -> str:
        """One word for tables: complete, evaluated (eval.json metrics, no summary) or incomplete."""
        return "complete" if self.complete else "evaluated" if self.evaluation else "incomplete"

    def parameters(self) -> Optional[int]:
        """Trainable parameter count: summary.json's, else the numel of the newest checkpoint's
        optimiser state (one Adam moment per trainable parameter)."""
        if self.summary and self.summary.get("parameters") is not None:
            return int(self.summary["parameters"])
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
        if not self.complete:
            how = (f"finish it from its newest checkpoint with `nls resume {self.path}`" if self.checkpoints
                   else "it cannot be resumed without a checkpoint")
            got = (f"; the metrics shown come from eval.json, written by `nls eval` at step "
                   f"{self.evaluation.get('step', '?')}" if self.evaluation else "")
            out.append(f"summary.json: the run stopped at step {self.step} of {self.steps} before evaluation "
                       f"({how}){got}")
        if not self.log:
            out.append("metrics.jsonl: no training step was logged")
        if not self.checkpoints:
            out.append("checkpoints/: no checkpoint, so nothing can be rebuilt from this run")
        return out


def count_parameters(state: dict) -> int:
    """Numel of every first moment in a checkpoint's optimiser state (= trainable parameters)."""
    opt = state.get("optimizer") or {}
    n = 0
    for st in (opt.get("state") or {}).values():
        t = st.get("exp_avg") if isinstance(st, dict) else None
        if t is not None:
            n += int(t.numel())
    if n == 0:  # no optimiser state: every floating tensor of the model
        n = sum(int(v.numel()) for v in state.get("model", {}).values() if getattr(v, "is_floating_point", lambda: False)())
    return n


def _int(v: Any) -> Optional[int]:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _ckpt_step(path: Path) -> int:
    try:
        return int(path.stem.split("_")[-1])
    except ValueError:
        return 0


def read_run(path: Path) -> RunFacts:
    """Read a run folder; raises :class:`NLSError` when it is not one."""
    run = RunDir.open(Path(path))
    try:
        config = yaml.safe_load(run.config_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise NLSError(f"{run.config_path} is not valid YAML ({str(exc).splitlines()[0]}); "
                       f"is this a run folder made by `nls reconstruct`?") from None
    if not isinstance(config, dict):
        raise NLSError(f"{run.config_path} does not hold a mapping; is this a run folder made by "
                       f"`nls reconstruct`?")
    return RunFacts(path=run.path, config=config, summary=run.read_json("summary.json"),
                    log=run.read_metrics(), scene=run.read_json("scene.json"),
                    plugins=run.read_json("plugins.json"), checkpoints=run.checkpoints(),
                    evaluation=run.read_json("eval.json"))


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
