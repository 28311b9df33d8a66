"""Read what a run folder holds, without building its model: the facts `nls report` and
`nls compare` show. Works for finished runs (summary.json), for runs trained with
``--no-eval`` and evaluated later by ``nls eval`` (eval.json), and for runs killed midway
(only config.yaml, metrics.jsonl and checkpoints)."""

from __future__ import annotations

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
BOOKKEEPING = ("n_images", "n_samples", "n_rec", "n_gt", "scale")


def better(metric: str) -> Optional[str]:
    """'higher', 'lower' or None (unknown direction, or a bookkeeping number)."""
    if metric in BOOKKEEPING or metric.endswith("_floor"):
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
    def _results(self) -> dict:
        """Where the metrics come from: summary.json, else eval.json, else nothing."""
        return self.summary or self.evaluation or {}

    @property
    def metrics_source(self) -> Optional[str]:
        """'summary.json', 'eval.json' (``nls eval`` on a run without a summary) or None."""
        return "summary.json" if self.summary else "eval.json" if self.evaluation else None

    @property
    def metrics(self) -> dict[str, float]:
        """Final evaluation metrics: summary.json's, else eval.json's; empty when neither exists."""
        return dict(self._results.get("metrics") or {})

    @property
    def skipped(self) -> dict[str, str]:
        """Evaluators that did not run, with the reason."""
        ev = self._results.get("evaluators") or {}
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
