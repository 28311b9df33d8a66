"""``nls eval``: evaluate a run again, with what evaluation reads changed by ``--set``, into eval.json (or
``-o``); the metrics table; and the check that keeps an output path off the run's own records."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

from pipeline.commands.run_loading import Loaded, host_for, open_run
from pipeline.types import NLSError


#: the top-level keys ``nls eval --set`` may change: what evaluation reads, not the trained model
EVAL_SET_ROOTS = ("evaluators", "eval", "extractor")
#: single options it may change too: the renderer's set how rays are sampled, and no trained state
#: depends on them (the step size is computed from ``samples_per_ray`` when the renderer is built);
#: ``scene.splits`` loads a split of the data that training did not (lego's val), never fewer
EVAL_SET_KEYS = ("renderer.samples_per_ray", "scene.splits")
#: the blocks eval.json records as it resolved them: those of the two lists above
EVAL_RECORDED = (*EVAL_SET_ROOTS, *dict.fromkeys(k.split(".")[0] for k in EVAL_SET_KEYS))


#: files and folders of a run folder that only training writes (``nls eval -o`` may not replace them)
RUN_RECORDS = ("config.yaml", "plugins.json", "scene.json", "cmd.txt", "metrics.jsonl", "summary.json",
               "checkpoints", "renders", "meshes", ".lock")


def refuse_run_record(out: Path, run_dir: Path, default: Optional[str] = "eval.json",
                       also: tuple[str, ...] = ()) -> None:
    """Refuse an output path that is, or lies inside, one of the run's own records (or ``also``)."""
    run_dir = run_dir.resolve()
    target = out.resolve()
    for name in RUN_RECORDS + also:
        own = run_dir / name
        if target == own or own in target.parents:
            wrote = "nls eval wrote" if name == "eval.json" else "training wrote"
            hint = f" (default: {run_dir / default})" if default else ""
            raise NLSError(f"-o {out}: that is the run's own {name}, which {wrote}; give another file{hint}")


def _check_more_splits(sets: list[str], run_dir: Path, host=None) -> None:
    """``--set scene.splits=[...]`` of ``nls eval`` may add splits to those the run trained with, not drop
    one (the trained run is the same whichever extra splits are loaded), and only on a scene type that
    loads splits from its data (``host``'s scene component has a ``splits`` option: blender)."""
    from pipeline.config import parse_override, read_yaml
    from pipeline.runs import RunDir

    for text in sets:
        key, value = parse_override(text)
        if key != ["scene", "splits"]:
            continue
        scene = read_yaml(RunDir.open(run_dir).config_path).get("scene")
        kind = scene.get("type") if isinstance(scene, dict) else None
        if host is not None and isinstance(kind, str):
            try:
                fields = host.component("scene", kind).config_class().model_fields
            except NLSError:  # an unknown or broken scene type: open_run reports it
                fields = None
            if fields is not None and "splits" not in fields:
                having = [c.name for c in host.components("scene")
                          if _has_option(c, "splits")]
                raise NLSError(f"--set {text}: this run's scene type {kind!r} has no splits option: it makes "
                               f"its own views (or none) and has no other split of data to load; scene.splits "
                               f"applies to scene types that load splits from a dataset folder "
                               f"({', '.join(having) or 'none loaded'})")
        trained = scene.get("splits") if isinstance(scene, dict) else None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise NLSError(f"--set {text}: scene.splits takes a list of split names, e.g. "
                           f"'scene.splits=[{', '.join([*(trained or ['train', 'test']), 'val'])}]'")
        dropped = [sp for sp in trained or [] if sp not in value]
        if dropped:
            raise NLSError(f"--set {text}: eval may add splits to the run's scene.splits {trained}, not drop "
                           f"{', '.join(dropped)}; give [{', '.join([*trained, *[v for v in value if v not in trained]])}]")


def _has_option(component, name: str) -> bool:
    """Whether ``component``'s config class has the option ``name`` (False when it cannot be loaded)."""
    try:
        return name in component.config_class().model_fields
    except NLSError:
        return False


def cmd_eval(args) -> int:
    """Run ``nls eval``: run the evaluators and write eval.json (or ``-o``); exit code 0, or 1 when
    every evaluator was skipped (the JSON is still written and says why)."""
    from pipeline.config import parse_override
    from pipeline.evaluate import check_eval_split
    from pipeline.runs import check_output_file, exclusive_lock

    if args.output:
        refuse_run_record(Path(args.output), Path(args.run_dir))
        if Path(args.output).suffix.lower() != ".json":
            raise NLSError(f"-o {args.output}: nls eval writes JSON; give a file name ending in .json")
    out = check_output_file(Path(args.output), "metrics") if args.output else None  # before any work
    renders_root = out.parent / f"{out.stem}_renders" if out is not None else None
    if renders_root is not None and renders_root.exists() and not renders_root.is_dir():
        raise NLSError(f"-o {out}: its renders go to {renders_root}, which is a file; move it or give another -o")
    sets = args.set or []
    for text in sets:  # only what evaluation reads; the trained model stays as it was trained
        key = parse_override(text)[0]
        if key[0] not in EVAL_SET_ROOTS and ".".join(key) not in EVAL_SET_KEYS:
            raise NLSError(f"--set {text}: eval changes only {', '.join(EVAL_SET_ROOTS)} and "
                           f"{', '.join(EVAL_SET_KEYS)}; {'.'.join(key)!r} is part of the trained run "
                           f"(train a new run to change it)")
    _check_more_splits(sets, Path(args.run_dir), host_for(args))
    renders_from = _renders_folder(args)
    mesh_from = _mesh_file(args)
    if renders_from is not None and mesh_from is not None:
        raise NLSError("--renders and --mesh: give one; each scores another method's output (images or a mesh)")
    given = renders_from.name if renders_from is not None else mesh_from.stem if mesh_from is not None else None
    if given is not None and out is None:
        out = check_output_file(Path(args.run_dir) / f"eval_{given}.json", "metrics")
    ld = open_run(args, overrides=sets)
    if renders_from is not None:
        _image_evaluators_only(ld)
    if mesh_from is not None:
        _mesh_evaluators_only(ld)
    if not ld.cfg.evaluators:
        whose = "--set emptied the evaluators" if any(parse_override(t)[0] == ["evaluators"] for t in sets) \
            else "the run's config has no evaluators"
        raise NLSError(f"nothing to evaluate: {whose}; give some with "
                       f"--set 'evaluators=[{{type: psnr}}, {{type: chamfer}}]'")
    check_eval_split(ld.cfg, ld.scene, ld.system, sets, run_config=True)
    out = out or ld.run.path / "eval.json"
    # one nls eval per output at a time: they share its staging folder and renders, and would delete each other's
    with exclusive_lock(out.parent / f".{out.stem}.lock", lambda pid: (
            f"{out} is being written by another nls eval (pid {pid}); wait for it, or give another -o"),
            f"writes {out}", remove=True):
        data, ctx, renders = _evaluate_into(ld, out, sets, quiet=args.quiet, renders_from=renders_from,
                                            mesh_from=mesh_from, mesh_frame=getattr(args, "mesh_frame", "input"))
    title = f"{renders_from} (the renders of {ld.run.path}'s {ld.cfg.eval.split} views)" if renders_from else \
        f"{mesh_from} (a mesh of {ld.run.path}'s scene)" if mesh_from else f"{ld.run.path}  (step {ld.step})"
    _print_metrics(data["metrics"], title, data["metric_notes"], data["metric_better"])
    print(f"wrote {out}" + (f" and its renders to {renders}" if ctx.rendered else ""))
    if ld.cfg.train.wandb and getattr(args, "wandb", True) and given is None:
        from pipeline.wandb_log import eval_prefix, publish_summary

        prefix = eval_prefix(out, ld.run.path)
        if publish_summary(ld.run.path, ld.cfg.train.wandb_project, data, prefix, what="nls eval", record=out.name):
            print(f"sent its metrics to the run's W&B summary as {prefix}<metric> (--no-wandb leaves W&B alone)")
    results = data["evaluators"]
    if all(set(r) == {"skipped"} for r in results.values()):
        print(f"error: nothing was evaluated: all {len(results)} evaluator(s) were skipped (see the "
              f"reasons above and in {out})", file=sys.stderr)
        return 1
    return 0


def _given_path(args, option: str, *, folder: bool, want: str) -> Optional[Path]:
    """``--<option>`` as an existing folder (``folder``) or file, None when not given; NLSError saying ``want``
    otherwise."""
    given = getattr(args, option, None)
    if given is None:
        return None
    path = Path(given)
    if not (path.is_dir() if folder else path.is_file()):
        kind = ("is a file" if folder else "is a folder") if path.exists() else "does not exist"
        raise NLSError(f"--{option} {given}: {kind}; give {want}")
    return path


def _renders_folder(args) -> Optional[Path]:
    """``--renders DIR`` as a folder that exists (None without it); NLSError otherwise."""
    return _given_path(args, "renders", folder=True, want="the folder of another method's renders of the run's eval "
                       "views, each named as its view (NAME.png)")


def _mesh_file(args) -> Optional[Path]:
    """``--mesh FILE`` as a file that exists (None without it); NLSError otherwise."""
    return _given_path(args, "mesh", folder=False, want="the mesh file (PLY, OBJ, OFF, ...) of another method's "
                       "reconstruction of the run's scene")


def _mesh_evaluators_only(ld: Loaded) -> None:
    """With ``--mesh``: the run's evaluators that score a mesh by itself (:func:`pipeline.external_mesh.mesh_only`),
    or ``chamfer`` when the run has none and its scene a ground-truth mesh; NLSError when there is nothing to score
    the mesh with."""
    from pipeline.config import load_resolved
    from pipeline.external_mesh import mesh_only

    kept = [c for c in ld.cfg.evaluators if mesh_only(c.component.consumes)]
    left = [c.name for c in ld.cfg.evaluators if c not in kept]
    if left:
        print(f"--mesh: scoring the mesh only; {', '.join(left)} evaluate the run's own field or renders",
              file=sys.stderr)
    if not kept and ld.scene.gt_mesh:
        kept = load_resolved(ld.run.config_path, ld.host, ["evaluators=[{type: chamfer}]"]).evaluators
    if not kept:
        raise NLSError("--mesh: the run has no evaluator that scores a mesh by itself, and its scene no ground-truth "
                       "mesh for chamfer; give one, e.g. --set 'evaluators=[{type: dtu}]' (DTU's point clouds) or "
                       "--set 'evaluators=[{type: point_fit}]' (the scene's input points)")
    ld.cfg.evaluators = kept


def _image_evaluators_only(ld: Loaded) -> None:
    """With ``--renders``: the run's image-metric evaluators (``psnr``), or ``psnr`` with its defaults when the run
    has none; what the others score (the run's own field, mesh or depth) is not in another method's images."""
    from pipeline.config import load_resolved

    kept = [c for c in ld.cfg.evaluators if c.name == "psnr"]
    left = [c.name for c in ld.cfg.evaluators if c.name != "psnr"]
    if left:
        print(f"--renders: scoring the images only (psnr); {', '.join(left)} evaluate the run's own field or mesh",
              file=sys.stderr)
    if not kept:
        kept = load_resolved(ld.run.config_path, ld.host, ["evaluators=[{type: psnr}]"]).evaluators
    ld.cfg.evaluators = kept


def _evaluate_into(ld: Loaded, out: Path, sets: list[str], *, quiet: bool, renders_from: Optional[Path] = None,
                   mesh_from: Optional[Path] = None, mesh_frame: str = "input"):
    """Run the evaluators of ``ld`` and write ``out`` with its renders beside it: ``(data, ctx, renders)``.

    The renders, and the files evaluators write (``ctx.files_dir``: sphere-traced views, level-set points,
    slices), go to ``<stem>_renders/``, never over what training wrote into the run folder. They are made in
    a staging folder and replace the previous ones only with the JSON, so a stopped eval never leaves new
    renders beside an old eval.json (nor stale views of an earlier, longer eval)."""
    from pipeline.evaluate import EvalContext, flatten, publish_staged, run_evaluators
    from pipeline.metric_notes import run_metric_better, run_metric_notes
    from pipeline.runs import atomic_write_text, json_default

    root = out.parent / f"{out.stem}_renders"
    renders = root / ld.cfg.eval.split
    staging = out.parent / f".{out.stem}_renders.partial"
    shutil.rmtree(staging, ignore_errors=True)
    if renders_from is not None:  # (another method's renders, read instead of rendered)
        from pipeline.external_renders import ExternalRenders

        ctx = ExternalRenders(ld.cfg, ld.scene, ld.system, ld.run, ld.device, out_dir=staging / ld.cfg.eval.split,
                              files_root=staging, progress=not quiet, renders_from=renders_from)
        ctx.renders()  # (a missing, ambiguous or mis-sized render is an error here, not a skipped evaluator)
    elif mesh_from is not None:  # (another method's mesh, read instead of extracted)
        from pipeline.external_mesh import GivenMesh

        ctx = GivenMesh(ld.cfg, ld.scene, ld.system, ld.run, ld.device, out_dir=staging / ld.cfg.eval.split,
                        files_root=staging, progress=not quiet, mesh_from=mesh_from, mesh_frame=mesh_frame)
        ctx.mesh()  # (an unreadable file is an error here, not a skipped evaluator)
    else:
        ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, out_dir=staging / ld.cfg.eval.split,
                          files_root=staging, progress=not quiet)
    from pipeline.mesh import progress_default

    with progress_default(False if quiet else None):  # -q: no progress of field sampling either
        results = run_evaluators(ctx)
    resolved = ld.cfg.to_dict()
    data = {"run": str(ld.run.path.resolve()), "step": ld.step, "overrides": sets, "metrics": flatten(results),
            **({"renders_from": str(renders_from.resolve())} if renders_from is not None else {}),
            **({"mesh_from": str(mesh_from.resolve()), "mesh_frame": mesh_frame} if mesh_from is not None else {}),
            "evaluators": results, "metric_notes": run_metric_notes(ld.cfg.evaluators, results),
            "metric_better": run_metric_better(ld.cfg.evaluators, results),
            "config": {k: resolved.get(k) for k in EVAL_RECORDED}}
    shutil.rmtree(renders, ignore_errors=True)  # the old renders go first: at worst a stop leaves none
    atomic_write_text(out, json.dumps(data, indent=2, default=json_default) + "\n")
    publish_staged(staging, root)
    return data, ctx, renders


def metrics_table(metrics: dict, notes: Optional[dict] = None, better: Optional[dict] = None):
    """A rich table of ``metrics`` (floats to 4 decimals; the JSON records keep every digit), each marked
    ↑ or ↓ where higher or lower is better (``better``: what its evaluator declared, else by its name) and with
    its note (``notes``: {metric: note}, what the run recorded, :mod:`pipeline.metric_notes`); counts and
    scales come last, dimmed. A line saying there are none when ``metrics`` is empty."""
    from rich.markup import escape
    from rich.table import Table

    from pipeline.metric_notes import direction_mark
    from pipeline.report.collect import is_bookkeeping

    if not metrics:
        return "no metrics (no evaluator ran or every one was skipped)"
    notes = notes or {}
    table = Table()
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)  # ↑ / ↓
    if notes:
        table.add_column("what it is", overflow="fold")
    for k in sorted(metrics, key=is_bookkeeping):  # stable: metrics first, in the evaluators' order
        v = metrics[k]
        row = [escape(k), f"{v:.4f}" if isinstance(v, float) else str(v), direction_mark(k, better)]
        table.add_row(*row, *([escape(notes.get(k, ""))] if notes else []),
                      style="dim" if is_bookkeeping(k) else None)
    return table


def _print_metrics(metrics: dict, title: str, notes: Optional[dict] = None, better: Optional[dict] = None) -> None:
    """``title`` and :func:`metrics_table` on stdout."""
    from rich.markup import escape

    from pipeline.console import stdout_console

    with stdout_console() as con:
        con.print(f"[bold]{escape(title)}[/bold]", soft_wrap=True)
        con.print(metrics_table(metrics, notes, better))
