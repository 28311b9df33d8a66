"""Weights & Biases logging of a run (``train.wandb``): every line of ``metrics.jsonl`` as a step of a W&B run and
every validation preview (:mod:`pipeline.validation`) as an image, like the TensorBoard events
(:mod:`pipeline.tensorboard_log`). Needs the ``wandb`` package (``pip install '.[wandb]'``) and, to send
anything, a W&B login (``wandb login``); ``WANDB_MODE=offline`` keeps the run in ``<run>/wandb/`` for a later
``wandb sync``, and W&B's other environment variables (``WANDB_ENTITY``, ``WANDB_API_KEY``, ...) apply as they
do anywhere. metrics.jsonl stays the run's record: W&B is a view of it.

The W&B run is named after the run folder (``<scene>/<method>/<stamp>``), grouped by scene, tagged with the
method, and holds the run's resolved config; the final evaluation's metrics become its summary
(:func:`publish_summary`), the figures W&B's runs table shows, and each later ``nls eval`` of the run adds its
own beside them (``eval/psnr``; :func:`eval_prefix`). Its id is kept in ``<run>/wandb.json``, so
``nls resume`` goes on in the same W&B run. W&B takes each step once: a session resumed from a checkpoint behind
the last step W&B received (a run killed between checkpoints) sends only the steps after that one, so W&B keeps
the killed session's figures for the steps between (metrics.jsonl has the resumed session's).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
import numpy as np

from pipeline.types import NLSError

#: the run's W&B id and project, under the run folder
WANDB_RECORD = "wandb.json"


def check_wandb(option: str) -> None:
    """NLSError naming ``option`` (how the user asked for W&B) when the wandb package is not installed; looked up
    without importing it, so ``nls batch`` checks it before any scene starts."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise NLSError(f"{option} needs the wandb package, which is not installed; install it with pip install "
                       f"'.[wandb]' (or pip install wandb), or leave it off (metrics.jsonl, nls report and "
                       f"train.tensorboard have the same figures)")


class WandbLog:
    """Scalars and images of one training session in the run's W&B run (module docstring).

    ``run_dir``: the run folder; ``project``: the W&B project; ``config``: the run's resolved config (a dict).
    """

    def __init__(self, run_dir: Path, project: str, config: dict) -> None:
        import wandb

        from pipeline.runs import atomic_write_text

        record_path = run_dir / WANDB_RECORD
        known = _read_record(record_path)
        run_id = known.get("id") if known.get("project") == project else None
        run_id = run_id or uuid.uuid4().hex[:12]  # (W&B ids: letters and digits)
        name = "/".join(run_dir.resolve().parts[-3:])
        try:
            self.run = wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir), name=name,
                                  group=run_dir.resolve().parts[-3], tags=[run_dir.resolve().parts[-2]],
                                  config=config)
        except Exception as exc:  # (W&B's own errors: no login, no network in online mode, a bad project name)
            raise NLSError(f"train.wandb: W&B could not start the run ({type(exc).__name__}: {exc}); log in with "
                           f"`wandb login`, set WANDB_MODE=offline to keep it in {run_dir / 'wandb'} for a later "
                           f"`wandb sync`, or leave train.wandb off") from None
        atomic_write_text(record_path, json.dumps({"id": run_id, "project": project}) + "\n")
        #: the first step W&B takes: on a resumed W&B run, the one after the last it received
        self.first_step = int(getattr(self.run, "step", 0) or 0)

    def scalars(self, record: dict) -> None:
        """Every number of a metrics.jsonl ``record`` but ``step`` and ``time``, at its ``step`` (a step W&B
        already has is left out)."""
        step = int(record["step"])
        values = {k: v for k, v in record.items()
                  if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values and step >= self.first_step:
            self.run.log(values, step=step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image at ``step`` (with the scalars of that step, which are logged after it)."""
        import wandb

        if step >= self.first_step:
            self.run.log({tag: wandb.Image(image)}, step=step, commit=False)

    def close(self) -> None:
        """Finish the W&B run (uploads what is left, or closes the offline files)."""
        self.run.finish()


def publish_summary(run_dir: Path, project: str, summary: dict, prefix: str = "", what: str = "train.wandb",
                    record: str = "summary.json") -> bool:
    """Put the final figures of summary.json (``summary``: its ``metrics``, ``train_seconds`` and ``step``) into
    the W&B run of ``run_dir`` (the one :class:`WandbLog` opened, by the id in wandb.json), as its summary, which
    W&B's runs table shows; each key with ``prefix`` before it (``nls eval`` puts its figures beside training's:
    ``eval/psnr``). ``what`` names the setting in warnings and ``record`` the file that has the figures. A warning,
    not an error, when W&B cannot take them. True when W&B took them."""
    from pipeline.notices import warn

    known = _read_record(run_dir / WANDB_RECORD)
    if not known.get("id"):
        warn(f"{what}: {run_dir / WANDB_RECORD} names no W&B run, so the metrics were not sent to W&B "
             f"({record} has them)")
        return False
    figures = {k: v for k, v in (summary.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    figures.update({k: summary[k] for k in ("train_seconds", "step") if isinstance(summary.get(k), (int, float))})
    try:
        import wandb

        run = wandb.init(project=known.get("project") or project, id=known["id"], resume="allow", dir=str(run_dir))
        run.summary.update({prefix + k: v for k, v in figures.items()})
        run.finish()
    except Exception as exc:  # (W&B's own errors: the evaluation's record stands without it)
        warn(f"{what}: the metrics were not sent to W&B ({type(exc).__name__}: {exc}); {record} has them")
        return False
    return True


def eval_prefix(out: Path, run_dir: Path) -> str:
    """The W&B summary keys' prefix of an ``nls eval`` written to ``out``: ``eval/`` for the run's own eval.json,
    ``<stem>/`` for ``-o <stem>.json`` inside the run folder, ``eval-<stem>/`` elsewhere (so an eval of another split
    or setting stands beside the run's final figures and never replaces them)."""
    if out.resolve() == (run_dir / "eval.json").resolve():
        return "eval/"
    inside = out.resolve().parent == run_dir.resolve()
    return f"{out.stem}/" if inside else f"eval-{out.stem}/"


def _read_record(path: Path) -> dict:
    """``wandb.json`` of a run folder as a dict; {} when there is none or it cannot be read (a new W&B run then)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
