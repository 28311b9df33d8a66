"""Another method's renders scored by ``nls eval RUN --renders DIR`` (:mod:`pipeline.external_renders`), or its mesh
by ``nls eval RUN --mesh FILE`` (:mod:`pipeline.external_mesh`), read as a column of ``nls compare``: the scores of
its JSON, on RUN's scene, eval views and ground truth, beside the runs compared."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.report.collect import RunFacts, read_run
from pipeline.types import NLSError


@dataclass
class ScoredRenders(RunFacts):
    """The JSON of ``nls eval RUN --renders DIR`` (or ``--mesh FILE``) as :class:`RunFacts`: RUN's config and scene
    (its evaluation blocks as the JSON used them), the JSON's metrics as its final ones, and a method named after DIR
    (``renders:DIR``) or FILE (``mesh:FILE``). Nothing of it was trained here: no step budget, time or parameters of
    its own."""

    #: the folder of the renders that were scored
    renders_from: str = ""
    #: the mesh file that was scored
    mesh_from: str = ""

    @property
    def status(self) -> str:
        """What the column is, in a sentence."""
        if self.mesh_from:
            return (f"scored: the mesh {self.mesh_from} against the ground truth of {self.summary.get('run')} "
                    f"(nls eval --mesh)")
        return (f"scored: the renders in {self.renders_from} against the eval views of {self.summary.get('run')} "
                f"(nls eval --renders)")

    @property
    def short_status(self) -> str:
        """``scored``: the column holds scores of renders made elsewhere, not a run."""
        return "scored"


def read_scored_renders(path: Path) -> ScoredRenders:
    """The ``nls eval --renders`` JSON ``path`` as a :class:`ScoredRenders`; NLSError naming the file when it is not
    one, or when the run it scored against cannot be read."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NLSError(f"{path}: not a readable JSON file ({exc})") from None
    given = {k: doc.get(k) for k in ("renders_from", "mesh_from")} if isinstance(doc, dict) else {}
    if not any(isinstance(v, str) for v in given.values()) or not isinstance(doc.get("run"), str):
        raise NLSError(f"{path}: nls compare takes run folders, or the JSON of nls eval RUN --renders DIR or --mesh "
                       f"FILE (which names renders_from or mesh_from, and run); this file is neither")
    try:
        base = read_run(Path(doc["run"]))
    except NLSError as exc:
        raise NLSError(f"{path}: scored against the eval views of {doc['run']}, which cannot be read ({exc})") from None
    config = dict(base.config)
    used = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    config.update({k: used[k] for k in ("evaluators", "eval") if k in used})
    mesh = isinstance(given["mesh_from"], str)
    config["method"] = f"mesh:{Path(doc['mesh_from']).name}" if mesh else f"renders:{Path(doc['renders_from']).name}"
    summary = {"scene": base.name, "method": config["method"], "run": doc["run"], "step": base.step,
               **{k: doc[k] for k in ("metrics", "evaluators", "metric_notes", "metric_better") if k in doc}}
    return ScoredRenders(path=Path(path), config=config, summary=summary, log=[], scene=base.scene, plugins=None,
                         renders_from="" if mesh else doc["renders_from"], mesh_from=doc["mesh_from"] if mesh else "")
