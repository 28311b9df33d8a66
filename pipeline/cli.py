"""The ``nls`` command line. Heavy modules (torch, nerfacc, trimesh) load inside commands only."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline import __version__, notices
from pipeline.types import NLSError, PluginError, is_out_of_memory

EPILOG = """\
examples:
  nls reconstruct scenes/csg_dense.yaml                 train, render, export and evaluate
  nls reconstruct scenes/csg_dense.yaml --steps 200 --set field.resolution=64
  nls resume outputs/csg/dense_grid/<stamp>             continue a stopped run to its step budget
  nls render outputs/csg/dense_grid/<stamp> --spiral 60 test renders and a turntable video
  nls export outputs/csg/dense_grid/<stamp> -o mesh.ply --resolution 384
  nls eval outputs/csg/dense_grid/<stamp>               metrics table, and eval.json
  nls plugins --all                                     what every plugin provides, with options
  nls plugins --config                                  the train:, eval:, output: keys of a scene file
  nls batch scenes/a.yaml scenes/b.yaml --jobs 2        many scenes, one run folder each, one table
  torchrun --nproc_per_node 2 -m pipeline.cli reconstruct SCENE.yaml   data-parallel training (DDP)

environment: NLS_DATA (data root), NLS_CACHE (rendered-scene cache), NLS_LOAD_PLUGINS,
NLS_TRACE_PLUGINS=1, NLS_THREADS (CPU threads), NLS_DIST_TIMEOUT (seconds for torchrun collectives, default 600).
"""


def _host(args):
    if getattr(args, "host", None) is not None:
        return args.host
    from pipeline.plugins import PluginHost

    return PluginHost.create(plugins_dirs=[Path(d) for d in (getattr(args, "plugins_dir", None) or [])])


# -- shared run loading ------------------------------------------------------------------

@dataclass
class Loaded:
    """A run as the commands use it: plugin host, config, run folder, device, scene, model, step and
    checkpoint state (None when no checkpoint was loaded)."""

    host: Any
    cfg: Any
    run: Any
    device: Any
    scene: Any
    system: Any
    step: int
    state: Optional[dict]


def open_run(args, *, need_checkpoint: bool = True, overrides: list[str] = (), train: bool = False) -> Loaded:
    """Rebuild a run from its folder: resolved config (with ``overrides``), scene, model and newest
    checkpoint. The losses are built only to ``train`` on (render, export, eval and the viewers use
    the model alone, and some losses take seconds to set up, e.g. hkr's labels)."""
    from pipeline.build import build_system, load_scene_data, pick_device, setup_threads
    from pipeline.config import load_resolved
    from pipeline.distributed import rank_device
    from pipeline.runs import RunDir
    from pipeline.train import config_changes, load_error

    run = RunDir.open(Path(args.run_dir))
    host = _host(args)
    try:
        cfg = load_resolved(run.config_path, host, overrides)
    except NLSError as exc:
        raise NLSError(f"{exc}{_missing_plugins_hint(run, host)}") from None
    recorded = run.read_json("scene.json") or {}  # what the scene source loaded when the run was made
    rebased = _rebased_scene_path(cfg, recorded)
    if rebased is not None:  # the run came from a machine whose data root is elsewhere
        cfg = load_resolved(run.config_path, host, [*overrides, f"scene.path={json.dumps(rebased)}"])
    setup_threads(cfg.train.threads)
    device = rank_device(pick_device(getattr(args, "device", None) or cfg.train.device))
    state = run.load_checkpoint() if need_checkpoint else None
    scene = load_scene_data(cfg, device, overrides)  # an error names the --set that caused it
    _warn_if_ground_truth_changed(run, scene, recorded)
    system = build_system(cfg, scene, device, losses=train)
    if state is not None:
        model = state["model"] if train else {k: v for k, v in state["model"].items() if not k.startswith("losses.")}
        try:
            system.load_state_dict(model)
        except RuntimeError as exc:
            changed = config_changes(state.get("config"), cfg.to_dict())
            raise NLSError(f"checkpoint of {run.path} does not match its config.yaml: "
                           f"{load_error(exc).rstrip('.')}" + (f". {changed}" if changed else "")) from None
    step = int(state["step"]) if state else 0
    pid = None if train else run.trainer_pid()
    if pid is not None:  # render/export/eval of a run in training: say which state they see
        print(f"note: {run.path} is being trained (pid {pid}); this uses its newest checkpoint, step {step} "
              f"of {cfg.train.steps}", file=sys.stderr)
    return Loaded(host, cfg, run, device, scene, system, step, state)


def _rebased_scene_path(cfg, recorded: dict) -> Optional[str]:
    """A run's ``scene.path`` moved to this machine's data root: config.yaml holds the path the run was
    made with (``${NLS_DATA}`` expanded); when it is missing here but lies under the data root recorded in
    scene.json (``recorded``), the same path under today's data root (when it exists; a warning says so),
    else None."""
    from pipeline.scenes import data_root

    path = getattr(getattr(cfg.stages["scene"], "options", None), "path", None)
    then, now = recorded.get("data_root"), data_root()
    if not isinstance(path, str) or not isinstance(then, str) or now is None or Path(path).exists():
        return None
    try:
        moved = now / Path(path).relative_to(then)
    except ValueError:  # not under the old data root
        return None
    if not moved.exists():
        return None
    notices.warn(f"scene.path {path} is missing here; it lies under the data root the run was made with ({then}), "
                 f"so the same path under this data root is used: {moved}")
    return str(moved)


def _warn_if_ground_truth_changed(run, scene, recorded: dict) -> None:
    """The scene's ground-truth mesh is not the one the run recorded (scene.json ``gt_mesh_sha256``, in
    ``recorded``): the data changed since the run was made, and metrics against it no longer measure what
    it trained on."""
    from pipeline.runs import file_sha256

    digest = recorded.get("gt_mesh_sha256")
    if isinstance(digest, str) and scene.gt_mesh and file_sha256(scene.gt_mesh) != digest:
        notices.warn(f"the ground-truth mesh {scene.gt_mesh} is not the one {run.path} was made with (its "
                     f"sha256 differs from scene.json's): the scene's data changed since, so geometry metrics "
                     f"now measure against other data; restore it, or make a new run")


def _missing_plugins_hint(run, host) -> str:
    """' The run was made with plugin(s) ... that are not loaded now: ...' from its plugins.json,
    or '' when every plugin it recorded is loaded."""
    recorded = (run.read_json("plugins.json") or {}).get("plugins") or []
    loaded = {p.name for p in host.plugins()}
    how = []
    for p in recorded:
        if not isinstance(p, dict) or p.get("name") in loaded:
            continue
        src = str(p.get("source", ""))
        if src.startswith("entry point of "):
            how.append(f"{p['name']} ({src}, version {p.get('version', '?')}): install it, or check NLS_LOAD_PLUGINS")
        elif src not in ("builtin", "registered in-process"):
            how.append(f"{p['name']} (from {src}): pass --plugins-dir {Path(src).parent}")
    return f" The run was made with plugin(s) that are not loaded now: {'; '.join(how)}." if how else ""


def finish_run(ld: Loaded, train_seconds: float, *, progress: bool = True) -> dict:
    """Render the eval split, export the mesh, evaluate and write summary.json."""
    import platform

    import torch

    from pipeline.evaluate import EvalContext, flatten, run_evaluators
    from pipeline.mesh import progress_default
    from pipeline.runs import source_version

    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, progress=progress)
    mesh_path = None
    with progress_default(None if progress else False):  # -q: no progress of field sampling either
        if ld.cfg.stages.get("extractor"):
            from pipeline.mesh import export_mesh

            try:
                mesh_path = export_mesh(ctx.mesh(), ld.run.meshes_dir / "mesh.ply")
            except PluginError:
                raise  # a broken extractor is not a skipped export: fix it, then `nls resume` evaluates
            except NLSError as exc:  # e.g. no surface at the extractor's level
                print(f"mesh export skipped: {exc}", file=sys.stderr)
        results = run_evaluators(ctx)
    if ctx.can_render and not ctx.rendered:  # the renders folder is written even without image metrics
        ctx.renders()
    summary = {
        "scene": ld.cfg.name, "method": ld.cfg.method, "status": "complete",
        "step": ld.step, "steps": ld.cfg.train.steps, "train_seconds": round(train_seconds, 2),
        "stopped_by": "steps" if ld.step >= ld.cfg.train.steps else "train.max_seconds",
        "metrics": flatten(results), "evaluators": results,
        "mesh": str(mesh_path.relative_to(ld.run.path)) if mesh_path else None,
        "renders": f"renders/{ld.cfg.eval.split}" if ctx.rendered else None,
        "device": str(ld.device), "device_name": (torch.cuda.get_device_name(ld.device) if ld.device.type == "cuda"
                                                   else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
        "versions": {"nls": __version__, "source": source_version(), "torch": torch.__version__,
                     "python": platform.python_version(), "plugins": ld.host.versions()},
        "parameters": sum(p.numel() for p in ld.system.parameters()),
        "warnings": notices.kept(),  # printed while the scene loaded, trained and was evaluated
    }
    ld.run.write_json("summary.json", summary)
    return summary


def _plugins_flags(args) -> str:
    """' --plugins-dir D' for each --plugins-dir given, as an absolute path, so printed follow-up commands
    run as copied, from any folder."""
    from pipeline.runs import plugins_dir_flags

    return plugins_dir_flags([Path(d).absolute() for d in getattr(args, "plugins_dir", None) or []])


def metrics_table(metrics: dict):
    """A rich table of ``metrics`` (floats to 4 decimals; the JSON records keep every digit), or a line
    saying there are none."""
    from rich.table import Table

    if not metrics:
        return "no metrics (no evaluator ran or every one was skipped)"
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return table


def _print_metrics(metrics: dict, title: str) -> None:
    """``title`` and :func:`metrics_table` on stdout."""
    from rich.markup import escape

    from pipeline.console import stdout_console

    with stdout_console() as con:
        con.print(f"[bold]{escape(title)}[/bold]", soft_wrap=True)
        con.print(metrics_table(metrics))


def _print_summary(summary: dict, run_path: Path, flags: str = "") -> None:
    from rich.markup import escape

    from pipeline.console import StdoutConsole

    con = StdoutConsole()
    # the title is a line of its own: as a table title it would wrap to the narrow table's width
    con.print(f"[bold]{summary['scene']} / {summary['method']}[/bold]  (step {summary['step']}, "
              f"{summary['train_seconds']:.0f} s training on {summary['device']})", soft_wrap=True)
    con.print(metrics_table(summary["metrics"]))
    # Paths and commands are printed whole (soft_wrap): rich would otherwise break them at the
    # terminal width (80 columns when piped), and a copied command would no longer run.
    for w in summary.get("warnings") or []:  # said before the progress bars; repeated where they are read
        con.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    con.print(f"run folder: [bold]{run_path}[/bold]", soft_wrap=True)
    if summary.get("mesh"):
        con.print(f"mesh:       {run_path / summary['mesh']}", soft_wrap=True)
    if summary.get("renders"):
        con.print(f"renders:    {run_path / summary['renders']}", soft_wrap=True)
    glb = run_path / "meshes" / "mesh.glb"  # -o is relative to the current folder: name one in the run
    export = f"[bold]nls export {run_path}{flags} -o {glb} --resolution 384[/bold]"
    if not summary.get("mesh"):  # no mesh at the extractor's level (or no extractor): the same export fails
        export = (f"[bold]nls export {run_path}{flags} -o {glb} --level L[/bold]  (no mesh was made at the "
                  f"extractor's level; choose L)")
    if summary.get("renders"):  # a run without posed images (a geometry scene) cannot be rendered
        con.print(f"next:       [bold]nls render {run_path}{flags} --spiral 60[/bold]", soft_wrap=True)
        con.print(f"       or   {export}", soft_wrap=True)
    else:
        con.print(f"next:       {export}", soft_wrap=True)


def _train_and_finish(ld: Loaded, trainer, args) -> int:
    from pipeline import distributed

    res = trainer.fit()
    ld.step = trainer.step
    distributed.shutdown()  # under torchrun: rank 0 evaluates alone, the other ranks are done
    if not trainer.dist.is_main:
        distributed.leave_worker(130 if res.interrupted else 0)
    flags = _plugins_flags(args)
    if res.interrupted:
        ck = ld.run.latest_checkpoint()
        where = f"interrupted at step {trainer.step}/{ld.cfg.train.steps}"
        if res.saved:
            print(f"\n{where}; checkpoint saved{f' ({ck.name})' if ck else ''}.\n"
                  f"resume with: nls resume {ld.run.path}{flags}", file=sys.stderr)
        elif ck is not None:
            print(f"\n{where} without a checkpoint (a forced stop); the newest is {ck.name}.\n"
                  f"resume from it with: nls resume {ld.run.path}{flags}", file=sys.stderr)
        else:
            print(f"\n{where} before the first checkpoint (a forced stop): nothing to resume; "
                  f"train again with nls reconstruct.", file=sys.stderr)
        return 130
    if getattr(args, "no_eval", False):
        print(f"trained to step {trainer.step}; run folder: {ld.run.path}\n"
              f"evaluate it later with: nls resume {ld.run.path}{flags}   (writes summary.json)")
        return 0
    try:
        summary = _finish_stoppable(ld, trainer.elapsed, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted during the final evaluation; the run is trained (step {ld.step}). Evaluate it "
              f"with: nls resume {ld.run.path}{flags}", file=sys.stderr)
        return 130
    _print_summary(summary, ld.run.path, flags)
    return 0


def _finish_stoppable(ld: Loaded, train_seconds: float, *, progress: bool) -> dict:
    """:func:`finish_run`, stopped by SIGTERM as by Ctrl-C (KeyboardInterrupt): SIGTERM otherwise ends the
    process at once with exit 143 and no word of how to go on."""
    from pipeline.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return finish_run(ld, train_seconds, progress=progress)


# -- commands ----------------------------------------------------------------------------

def cmd_reconstruct(args) -> int:
    """Run ``nls reconstruct``: train a new run, then evaluate it (unless ``--no-eval``); exit code 0,
    130 when interrupted."""
    from pipeline.config import dump_yaml, load_scene
    from pipeline.runs import RunDir, check_writable

    host = _host(args)
    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_scene(Path(args.scene), host, overrides)
    root = Path(args.output or cfg.output.root)
    check_writable(root)

    from pipeline.build import build_system, load_scene_data, pick_device, setup_threads
    from pipeline.train import Trainer, seed_everything

    from pipeline import distributed

    setup_threads(cfg.train.threads)
    device = distributed.rank_device(pick_device(cfg.train.device))
    info = distributed.setup(device, threads=cfg.train.threads)  # torchrun: join the process group
    distributed.check_same_config({"config": cfg.to_dict(), "plugins": host.versions()}, info)
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    scene = load_scene_data(cfg, device, overrides)
    system = build_system(cfg, scene, device)
    from pipeline.evaluate import check_eval_split

    check_eval_split(cfg, scene, system, overrides)  # before training, not after it (--no-eval: evaluated later)

    def new_run() -> RunDir:
        from pipeline.runs import atomic_write_text, file_sha256

        run = RunDir.create(root, cfg.name, cfg.method)
        atomic_write_text(run.config_path, dump_yaml(cfg.to_dict()))
        run.write_json("plugins.json", {"plugins": [vars(p) for p in host.plugins()],
                                        "components": cfg.provenance(host.versions())})
        from pipeline.scenes import data_root

        data = data_root()  # where ${NLS_DATA} pointed: a copy of the run elsewhere finds its data by it
        run.write_json("scene.json", {**scene.meta, "aabb": scene.aabb.tolist(),
                                      "data_root": str(data) if data is not None else None,
                                      "gt_mesh": str(scene.gt_mesh) if scene.gt_mesh else None,
                                      "gt_mesh_sha256": file_sha256(scene.gt_mesh) if scene.gt_mesh else None,
                                      "splits": {k: len(v) for k, v in scene.splits.items()}})
        run.record_command(distributed.launch_argv(info))
        return run

    run = distributed.main_creates(new_run, info, lambda r: r.path, RunDir)  # rank 0 creates, all agree
    procs = f", {info.world_size} processes ({info.backend})" if info.enabled else ""
    distributed.log(info, f"run folder: {run.path}  (scene loaded in {time.perf_counter() - t0:.1f} s, "
                          f"device {device}{procs})")
    with run.training_lock(enabled=info.is_main):
        from pipeline.signals import sigterm_as_interrupt

        try:  # checks and JIT builds (prepare_kernels) that may still refuse the job; SIGTERM acts as Ctrl-C
            with sigterm_as_interrupt():
                trainer = Trainer(cfg, system, scene, run, device, progress=not args.quiet)
        except BaseException as exc:
            _remove_untrained(run, info, "interrupted before training" if isinstance(exc, KeyboardInterrupt)
                              else "refused before training")
            raise
        ld = Loaded(host, cfg, run, device, scene, system, 0, None)
        try:
            return _train_and_finish(ld, trainer, args)
        except Exception:  # e.g. a plugin's component failing at the first step (Ctrl-C checkpoints instead)
            if not run.metrics_path.is_file():
                _remove_untrained(run, info, "failed before its first logged step")
            raise


def _remove_untrained(run, info, why: str) -> None:
    """Remove a run folder in which nothing was trained (no checkpoint), saying so; rank 0 only."""
    import shutil

    if info.is_main and not run.checkpoints():  # leave no half-made run behind
        shutil.rmtree(run.path, ignore_errors=True)
        print(f"removed {run.path} ({why})", file=sys.stderr)


def cmd_resume(args) -> int:
    """Run ``nls resume``: train a run on from its newest checkpoint, then evaluate it (unless
    ``--no-eval``); exit code 0, 130 when interrupted."""
    from pipeline import distributed

    if _say_if_complete(Path(args.run_dir), _plugins_flags(args)):
        return 0
    ld = open_run(args, train=True)
    info = distributed.setup(ld.device, threads=ld.cfg.train.threads)  # torchrun: any number of processes
    distributed.check_same_config({"config": ld.cfg.to_dict(), "plugins": ld.host.versions(),
                                   "checkpoint_step": ld.step}, info, what="run config and checkpoint")
    with ld.run.training_lock(enabled=info.is_main):
        return _resume_locked(ld, info, args)


def _say_if_complete(run_dir: Path, flags: str = "") -> bool:
    """When the run at ``run_dir`` is complete (its summary.json was written for its newest checkpoint, at
    the end of training), say so and what to run instead, and return True: resuming it would only
    evaluate it again and overwrite summary.json, its mesh and renders. False otherwise (and for a
    folder that is no run: :func:`open_run` says what is wrong)."""
    from pipeline.runs import RunDir

    try:
        run = RunDir.open(run_dir)
    except NLSError:
        return False
    summary, ck = run.read_json("summary.json"), run.latest_checkpoint()
    if not summary or summary.get("status") != "complete" or ck is None:
        return False
    step = re.fullmatch(r"ckpt_(\d+)", ck.stem)
    if step is None or summary.get("step") != int(step.group(1)):
        return False  # the summary is not of the newest checkpoint
    steps = summary.get("steps")
    why = (f"trained to step {summary['step']}/{steps}" if summary.get("stopped_by") != "train.max_seconds" else
           f"trained to its time budget (train.max_seconds) at step {summary['step']}/{steps}")
    print(f"{run.path} is complete: {why} and evaluated (summary.json); nothing to resume.\n"
          f"evaluate it again (e.g. with --set): nls eval {run.path}{flags}   (writes eval.json beside "
          f"summary.json)\n"
          f"train longer: start a new run with a larger budget, e.g. nls reconstruct {run.config_path}{flags} "
          f"--output {run.path.parents[2]} --steps N\n"
          f"(to write summary.json, its mesh and renders again, delete summary.json and resume)")
    return True


def _resume_locked(ld: Loaded, info, args) -> int:
    """The part of ``nls resume`` that writes to the run folder, under its training lock."""
    from pipeline.evaluate import check_eval_split
    from pipeline.train import Trainer

    from pipeline import distributed

    if not args.no_eval:  # before training, as reconstruct does: a split the data no longer has
        check_eval_split(ld.cfg, ld.scene, ld.system, run_config=True)
    if info.is_main:
        ld.run.record_command(distributed.launch_argv(info))
    trainer = Trainer(ld.cfg, ld.system, ld.scene, ld.run, ld.device, progress=not args.quiet)
    trainer.load_state(ld.state)
    if info.is_main:
        ld.run.truncate_metrics_after(trainer.step)
    budget_s = ld.cfg.train.max_seconds
    then = "nothing to train (--no-eval: not evaluated either)" if args.no_eval else "finishing evaluation only"
    if trainer.step >= ld.cfg.train.steps:
        distributed.log(info, f"run already reached its step budget ({trainer.step}/{ld.cfg.train.steps}); {then}")
    elif budget_s is not None and trainer.elapsed >= budget_s:
        distributed.log(info, f"run already used its time budget ({trainer.elapsed:.0f} s of train.max_seconds = "
                              f"{budget_s:g}) at step {trainer.step}/{ld.cfg.train.steps}; {then}")
    else:
        before = ld.state.get("world_size", 1)
        procs = (f" with {info.world_size} process(es) (the checkpoint was written by {before})"
                 if before != info.world_size else "")
        distributed.log(info, f"resuming {ld.run.path} from step {trainer.step}/{ld.cfg.train.steps}{procs}")
        _warn_if_layout_differs(ld.state, info)
        if info.is_main:
            _warn_if_config_edited(ld)
    return _train_and_finish(ld, trainer, args)


def _warn_if_config_edited(ld: Loaded) -> None:
    """config.yaml edited since the checkpoint was written (train.steps, a learning rate, ...): the
    checkpoint still loads, but the resumed run is no longer the run that started, so warn, naming the
    keys. ``scene.path`` is left out: a run moved to another data root is rebased on purpose."""
    from pipeline.notices import warn
    from pipeline.train import config_diff, describe_diff

    diff = config_diff(ld.state.get("config"), ld.cfg.to_dict(), ignore=("scene.path",))
    if diff:
        warn(f"{ld.run.config_path} was edited after checkpoint step {ld.step} was written: "
             f"{describe_diff(diff)}. Training goes on with the edited values, so the run is not the one an "
             f"uninterrupted training would give (learning-rate schedules and phases span train.steps); "
             f"restore the old values to resume it exactly")


def _warn_if_layout_differs(state: dict, info) -> None:
    """A resume is bit-identical to an uninterrupted run only with the checkpoint's number of processes
    and CPU threads per process (float sums depend on both); otherwise the main rank gives a warning the
    run keeps. ``state``: the checkpoint (``world_size``, ``threads``); ``info``: this job's layout."""
    import torch

    if not info.is_main:
        return
    procs, threads, now = state.get("world_size", 1), state.get("threads"), torch.get_num_threads()
    if procs != info.world_size:
        notices.warn(f"the checkpoint was trained by {procs} process(es) and this resume runs {info.world_size}: "
                     f"the result is close to, but not bit-identical with, an uninterrupted run (the batch is "
                     f"split and reduced differently); resume with {procs} process(es) to keep it identical")
    elif isinstance(threads, int) and threads != now:
        notices.warn(f"the checkpoint was trained with {threads} CPU thread(s) per process and this resume uses "
                     f"{now}: the result is not bit-identical to an uninterrupted run (CPU sums depend on the "
                     f"thread count); set NLS_THREADS={threads} to keep it identical")


def cmd_render(args) -> int:
    """Run ``nls render``: render a split of a run (and a turntable with ``--spiral``); exit code 0."""
    from pipeline.evaluate import EvalContext, check_can_render

    from pipeline.runs import check_writable

    ld = open_run(args)
    check_can_render(ld.scene, ld.system, args.split)  # before any folder is made
    out_root = Path(args.output) if args.output else ld.run.renders_dir
    check_writable(out_root / args.split)
    given = {"supersample": args.supersample, "max_images": args.max_images, "every": args.every}
    ld.cfg.eval = ld.cfg.eval.model_copy(update={k: v for k, v in given.items() if v is not None})
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, split=args.split,
                      out_dir=out_root / args.split, save_depth=args.depth, progress=not args.quiet)
    pairs = ctx.renders()
    raw = " and depth/opacity .npy arrays" if args.depth else ""
    print(f"wrote {len(pairs)} {args.split} renders (prediction | ground truth | depth){raw} to {out_root / args.split}")
    if args.spiral:
        from pipeline.video import render_turntable

        path = render_turntable(ld, args.spiral, out_root, progress=not args.quiet)
        print(f"wrote turntable video: {path}")
    return 0


def cmd_export(args) -> int:
    """Run ``nls export``: extract a run's mesh and write it to ``-o``; exit code 0."""
    from pipeline.evaluate import EvalContext, extract
    from pipeline.mesh import (COLOR_FORMATS, bake_vertex_colors, check_mesh_path, export_mesh, progress_default,
                               read_back_watertight, weld_for_format)

    check_mesh_path(args.output)  # before the model is built and the field is sampled
    ext = Path(args.output).suffix.lower()
    if args.colors and ext not in COLOR_FORMATS:
        raise NLSError(f"--colors: {ext} files keep no vertex colours; use one of {', '.join(COLOR_FORMATS)}")
    if args.frame == "input":
        _refuse_frame_input(Path(args.run_dir), None)  # before the model is built, when scene.json says so
    ld = open_run(args)
    frame = _input_frame(ld) if args.frame == "input" else None
    if args.colors and not ld.scene.splits:
        raise NLSError("--colors: this run's scene has no posed images of its own (a geometry, point-cloud or "
                       "shape-collection scene), so the field has no trained colour to bake; export without --colors")
    closable = _extractor_closes(ld)
    if args.close:
        if closable is None:
            choice = ld.cfg.stages.get("extractor")
            raise NLSError(f"--close: the run's extractor {choice.name!r} has no `close` option (it does not "
                           f"cap surfaces with the box's faces); export without --close" if choice else
                           "--close: this run's scene has no extractor stage")
        choice = ld.cfg.stages["extractor"]
        choice.options = choice.options.model_copy(update={"close": True})
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    with progress_default(False if args.quiet else None):
        mesh = extract(ctx, resolution=args.resolution, level=args.level, bbox=args.bbox)
    cut = _open_at_box(mesh)  # in the run's frame, where the box is
    if args.colors:
        bake_vertex_colors(mesh, ld.system.chain, ld.device, linear=ext == ".glb")  # glTF colours are linear
    import numpy as np

    if frame is not None:  # run frame -> the input file's: p = (p' - t) / s, a uniform scale and a shift
        mesh.apply_transform(np.linalg.inv(np.asarray(frame["to_run"], dtype=np.float64)))
    up = args.up or ("y" if frame is not None else world_up(ld.scene.meta) if ext == ".glb" else "y")
    if up == "z":  # (x, y, z) -> (x, z, -y): a quarter turn about x takes +Z to +Y
        mesh.apply_transform(np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float))
    written = weld_for_format(mesh, ext)  # as the file holds it: the counts below are those read back
    out = export_mesh(written, Path(args.output), weld=False)
    quantity, level = mesh.metadata.get("quantity"), mesh.metadata.get("level")
    which = f" ({quantity} level {level})" if quantity is not None and level is not None else ""
    watertight = read_back_watertight(out)
    print(f"wrote {out}: {len(written.vertices)} vertices, {len(written.faces)} faces"
          f"{', vertex colours' if args.colors else ''}, watertight={watertight} as read back{which}")
    if frame is not None:
        print(f"in the coordinates of the input file {frame.get('file')} (the run's frame scaled by "
              f"1/{frame['scale']:.6g} and centred back at {[round(c, 6) for c in frame['centre']]})")
    if up == "z":  # the coordinates are no longer the run's: say so, whichever way it was chosen
        print("turned the run's +Z up to +Y up (x, y, z) -> (x, z, -y)" + (
            " for glTF (--up y keeps the coordinates as trained)" if args.up is None else " (--up z)"))
    if not watertight and cut and not args.close:
        where = "the --bbox box" if args.bbox else "the extractor's box"
        fix = ("; --close caps it with the box's faces (a closed mesh)" if closable is not None else
               "; give a larger --bbox to mesh all of it")
        print(f"note: the mesh is open where the surface leaves {where} (marching cubes stops at its faces){fix}")
    return 0


def _refuse_frame_input(run_dir: Path, meta: Optional[dict]) -> None:
    """NLSError for ``--frame input`` when the run's scene (``meta``, else its scene.json) was not made by
    normalising an input file; nothing when it was, or when scene.json cannot tell (checked again once
    the scene is loaded)."""
    from pipeline.runs import RunDir

    if meta is None:
        try:
            meta = RunDir.open(run_dir).read_json("scene.json")
        except NLSError:
            return  # open_run says what is wrong with the folder
        if not meta:
            return
    if isinstance(meta.get("input_frame"), dict) or (
            (meta.get("input") or meta.get("mesh")) and meta.get("normalised_extent") is not None):
        return
    source = meta.get("source") or "this"
    raise NLSError(f"--frame input: this run's scene ({source}) was not made from an input mesh or point file "
                   f"that nls normalised (only mesh, geometry and scan scenes are), so there is no input frame "
                   f"to map back to: its meshes are already in the scene's own coordinates; export without "
                   f"--frame input")


def _input_frame(ld: Loaded) -> dict:
    """The transform of the run's input file into its frame (``input_frame``, which mesh, geometry and scan
    scene sources record in the scene's meta and reconstruct in scene.json): the recorded one, else (a run of
    an older nls) the one the scene source gave when ``open_run`` loaded the scene again; NLSError when the
    scene has none."""
    recorded = ld.run.read_json("scene.json") or {}
    frame = recorded.get("input_frame")
    if not isinstance(frame, dict):
        frame = ld.scene.meta.get("input_frame")
    if not isinstance(frame, dict):
        _refuse_frame_input(ld.run.path, {**ld.scene.meta, **recorded})
        raise NLSError("--frame input: this run's scene records no input frame; export without --frame input")
    return frame


def _extractor_closes(ld: Loaded) -> Optional[bool]:
    """The run's extractor's ``close`` option, None when it has none (or there is no extractor)."""
    choice = ld.cfg.stages.get("extractor")
    if choice is None or "close" not in type(choice.options).model_fields:
        return None
    return bool(choice.options.close)


def _open_at_box(mesh) -> bool:
    """Whether ``mesh`` has open borders lying on the faces of the box it was extracted in (its
    ``metadata["bbox"]``): the surface left the box there, and marching cubes stopped at its faces."""
    import numpy as np
    import trimesh

    box = mesh.metadata.get("bbox")
    if box is None or len(mesh.faces) == 0:
        return False
    border = trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)
    if len(border) == 0:
        return False
    lo, hi = np.asarray(box[:3], dtype=np.float64), np.asarray(box[3:], dtype=np.float64)
    v = np.asarray(mesh.vertices)[np.unique(mesh.edges_sorted[border])]
    tol = 1e-6 * float((hi - lo).max())
    return bool((np.isclose(v, lo, rtol=0, atol=tol) | np.isclose(v, hi, rtol=0, atol=tol)).any())


def world_up(meta: dict) -> str:
    """'z' for a scene whose world is +Z up, else 'y': the up axis its views were rendered with (``world_up``
    of the scene, or of its ``generator`` record), else z for the Blender/instant-ngp formats (NeRF-synthetic
    scenes and colmap2nerf captures are +Z up)."""
    generator = meta.get("generator") if isinstance(meta.get("generator"), dict) else {}
    recorded = meta.get("world_up") or generator.get("world_up")
    if recorded:
        return "z" if recorded == "+z" else "y"
    return "z" if meta.get("source") in ("blender", "instant-ngp") else "y"


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


def _refuse_run_record(out: Path, run_dir: Path, default: Optional[str] = "eval.json",
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
        _refuse_run_record(Path(args.output), Path(args.run_dir))
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
    _check_more_splits(sets, Path(args.run_dir), _host(args))
    ld = open_run(args, overrides=sets)
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
        data, ctx, renders = _evaluate_into(ld, out, sets, quiet=args.quiet)
    _print_metrics(data["metrics"], f"{ld.run.path}  (step {ld.step})")
    print(f"wrote {out}" + (f" and its renders to {renders}" if ctx.rendered else ""))
    results = data["evaluators"]
    if all(set(r) == {"skipped"} for r in results.values()):
        print(f"error: nothing was evaluated: all {len(results)} evaluator(s) were skipped (see the "
              f"reasons above and in {out})", file=sys.stderr)
        return 1
    return 0


def _evaluate_into(ld: Loaded, out: Path, sets: list[str], *, quiet: bool):
    """Run the evaluators of ``ld`` and write ``out`` with its renders beside it: ``(data, ctx, renders)``.

    The renders, and the files evaluators write (``ctx.files_dir``: sphere-traced views, level-set points,
    slices), go to ``<stem>_renders/``, never over what training wrote into the run folder. They are made in
    a staging folder and replace the previous ones only with the JSON, so a stopped eval never leaves new
    renders beside an old eval.json (nor stale views of an earlier, longer eval)."""
    from pipeline.evaluate import EvalContext, flatten, publish_staged, run_evaluators
    from pipeline.runs import atomic_write_text, json_default

    root = out.parent / f"{out.stem}_renders"
    renders = root / ld.cfg.eval.split
    staging = out.parent / f".{out.stem}_renders.partial"
    shutil.rmtree(staging, ignore_errors=True)
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, out_dir=staging / ld.cfg.eval.split,
                      files_root=staging, progress=not quiet)
    from pipeline.mesh import progress_default

    with progress_default(False if quiet else None):  # -q: no progress of field sampling either
        results = run_evaluators(ctx)
    resolved = ld.cfg.to_dict()
    data = {"run": str(ld.run.path.resolve()), "step": ld.step, "overrides": sets, "metrics": flatten(results),
            "evaluators": results, "config": {k: resolved.get(k) for k in EVAL_RECORDED}}
    shutil.rmtree(renders, ignore_errors=True)  # the old renders go first: at worst a stop leaves none
    atomic_write_text(out, json.dumps(data, indent=2, default=json_default) + "\n")
    publish_staged(staging, root)
    return data, ctx, renders


def cmd_plugins(args) -> int:
    """Run ``nls plugins``: list the plugins and their components (``--config``: the scene file's
    ``train:``, ``eval:`` and ``output:`` keys); exit code 0."""
    from pipeline.plugins_list import print_config, print_plugins

    if args.config:
        if args.all or args.hook is not None:
            raise NLSError("--config lists the scene file's train:, eval: and output: keys on its own; give it "
                           "without --all and --hook (which list the plugins' components)")
        return print_config(as_json=args.json)
    return print_plugins(_host(args), as_json=args.json, show_all=args.all, hook=args.hook)


def cmd_new_plugin(args) -> int:
    """Run ``nls new-plugin``: write a plugin package; exit code 0."""
    from pipeline.scaffold import new_plugin, next_steps

    path = new_plugin(args.name, Path(args.dir))
    print(next_steps(args.name, path))
    return 0


def cmd_report(args) -> int:
    """Run ``nls report``: write a run's HTML report; exit code 0."""
    from pipeline.report import build_report

    if args.output:
        _refuse_run_record(Path(args.output), Path(args.run_dir), "report.html", also=("eval.json",))
        suffix = Path(args.output).suffix
        if suffix.lower() not in (".html", ".htm"):  # it was written as HTML whatever the name (x.pdf)
            raise NLSError(f"-o {args.output}: nls report writes an HTML page, so give a file ending in .html "
                           f"or .htm (got {suffix or 'no extension'!s}), e.g. "
                           f"{Path(args.output).with_suffix('.html') if suffix else args.output + '.html'}; "
                           f"a browser's print dialog makes a PDF of it")
    out = build_report(Path(args.run_dir), Path(args.output) if args.output else None, host=args.host,
                       use_model=not args.no_model, progress=not args.quiet)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser)")
    return 0


def cmd_compare(args) -> int:
    """Run ``nls compare``: compare runs in the chosen format; exit code 0."""
    from pipeline.compare import run_compare

    if args.output:
        for run_dir in args.run_dirs:
            _refuse_run_record(Path(args.output), Path(run_dir), None, also=("eval.json",))
    return run_compare([Path(p) for p in args.run_dirs], args.format, Path(args.output) if args.output else None)


def cmd_view(args) -> int:
    """Run ``nls view``: serve the viewer until it is stopped; exit code 0."""
    from pipeline.viewer import serve

    return serve(Path(args.run_dir), host=args.host, port=args.port, resolution=args.resolution,
                 seconds=args.seconds)


# -- parser ------------------------------------------------------------------------------

def _float_arg(text: str, ok, want: str) -> float:
    """``text`` as a finite float for which ``ok(value)`` holds, else a usage error asking for ``want``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text}: give {want}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (not nan or inf), else a usage error."""
    return _float_arg(text, lambda v: True, "a finite number")


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0, else a usage error."""
    return _float_arg(text, lambda v: v > 0, "a number of seconds > 0")


def int_at_least(low: int, high: Optional[int] = None):
    """argparse type: an integer >= ``low`` (and <= ``high``), else a usage error naming the bounds."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            want = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {want}")
        return value
    parse.__name__ = "int"
    return parse


def build_parser(host=None) -> argparse.ArgumentParser:
    """The ``nls`` argument parser with every built-in subcommand, plus those ``host``'s plugins add
    when a host is given."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugins-dir", action="append", metavar="DIR",
                        help="load every .py file in DIR as a plugin (repeatable)")
    p = argparse.ArgumentParser(prog="nls", description="Reconstruct 3D scenes and shapes as level sets of "
                                "neural fields, on a NeRF backend. Every method is a plugin.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[common])
    p.add_argument("--version", action="version", version=f"nls {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("reconstruct", parents=[common], help="train a scene, then render, export and evaluate",
                       description="Validate SCENE.yaml, train it, render the eval split, export a mesh, "
                       "evaluate, and write everything to a new run folder.")
    r.add_argument("scene", metavar="SCENE.yaml", help="scene config (see scenes/)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=500 --set field.resolution=64; "
                   "a new block type (--set field.type=hash_grid) drops the old type's options")
    r.add_argument("-o", "--output", metavar="DIR", help="runs root (default: the scene's output.root, 'outputs')")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the scene's train.device "
                   "(auto: cuda when available, else cpu)")
    r.add_argument("--steps", type=int_at_least(1), metavar="N",
                   help="training steps (same as --set train.steps=N; default: the scene's train.steps)")
    r.add_argument("--no-eval", action="store_true", help="stop after training")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars (training and rendering)")
    r.set_defaults(func=cmd_reconstruct)

    def run_cmd(name, func, help_, desc):
        c = sub.add_parser(name, parents=[common], help=help_, description=desc)
        c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
        c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's train.device "
                            "(auto: cuda when available, else cpu)")
        c.set_defaults(func=func)
        return c

    c = run_cmd("resume", cmd_resume, "continue a stopped run to its step budget",
                "Load the newest checkpoint of RUN_DIR and train to the run's step budget (never past it), "
                "then evaluate. On CPU, with a step budget, the result is bit-identical to a run that was never "
                "stopped; to train longer, start a new run with a larger --steps (the learning-rate schedule "
                "spans the budget).")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars (training and rendering)")
    c.add_argument("--no-eval", action="store_true", help="stop after training")
    c = run_cmd("render", cmd_render, "render a split (and a turntable video)",
                "Render a split of the scene with the trained field: prediction, ground truth and depth.")
    c.add_argument("--split", default="test", help="split to render (default: test)")
    c.add_argument("--spiral", type=int_at_least(0, 3600), default=0, metavar="N",
                   help="also render an N-frame turntable video, 0..3600 frames: a circle around the scene at the "
                   "mean distance of the eval split's cameras (default 0: none)")
    c.add_argument("--depth", action="store_true",
                   help="also write float32 (H, W) arrays: NAME_depth.npy, the expected distance along the "
                   "unit pixel ray given termination; NAME_depth_median.npy, where half the ray's opacity is "
                   "reached (volume renderers; it stays on the surface where the expected depth of a soft "
                   "density lies behind it); and NAME_opacity.npy, the accumulated opacity")
    c.add_argument("--supersample", type=int_at_least(1, 4), metavar="S",
                   help="S x S rays per pixel, averaged, S in 1..4 (default: the run's eval.supersample)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument("--max-images", type=int_at_least(1), metavar="N",
                   help="render the first N views only (after --every; default: the run's eval.max_images, else all)")
    c.add_argument("--every", type=int_at_least(1), metavar="K",
                   help="render every K-th view of the split (0, K, 2K, ...; default: the run's eval.every)")
    c.add_argument("-o", "--output", metavar="DIR", help="default: RUN_DIR/renders")
    c = run_cmd("export", cmd_export, "extract and export a mesh",
                "Marching cubes on the field (SDF level, density threshold or occupancy 0.5); the format "
                "follows the file extension (.ply .obj .glb .stl .off).")
    c.add_argument("-o", "--output", required=True, metavar="MESH", help="output file, e.g. mesh.ply")
    c.add_argument("--resolution", type=int_at_least(16, 1024), metavar="N",
                   help="grid samples per side, 16..1024 as in the extractor's config (default: the scene's)")
    c.add_argument("--level", type=finite_float, metavar="L", help="iso-level (default: the extractor's)")
    c.add_argument("--bbox", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="box to mesh (default: the extractor's, else the scene box)")
    c.add_argument("--colors", action="store_true",
                   help="bake vertex colours: the field's radiance at each vertex, seen along the inward "
                   "normal (.ply, .obj: as the images, sRGB; .glb: linear, as glTF defines them; runs "
                   "trained on images)")
    c.add_argument("--up", choices=["y", "z"],
                   help="the run's up axis; z turns the mesh so +Y is up, as glTF and most viewers take it. "
                   "Default: for .glb, the run's own up axis (z for NeRF-synthetic scenes such as lego and for "
                   "the scenes nls renders itself, whose worlds are +Z up); for other formats, and with "
                   "--frame input, y: the coordinates as they are")
    c.add_argument("--frame", choices=["run", "input"], default="run",
                   help="run (default): the coordinates as trained, which line up with the scene's ground-truth "
                   "mesh (for mesh, geometry and scan scenes: the input normalised to a box of side "
                   "scene.extent, centred); input: mapped back to the coordinates of the input mesh or point "
                   "file, so the mesh lies on it (those scenes only). --bbox is in the run's frame either way")
    c.add_argument("--close", action="store_true",
                   help="cap the mesh with the box's faces where the shape reaches the box (e.g. a --bbox crop), "
                   "so it is closed (the extractor's close option; default: the run's, usually off)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress")
    c = run_cmd("eval", cmd_eval, "evaluate a run (PSNR/SSIM, Chamfer, ...)",
                "Run the scene's evaluators on the newest checkpoint and write JSON (exit 1 when every evaluator "
                "was skipped, e.g. Chamfer on a scene without a ground-truth mesh). --set may change "
                "what evaluation reads (evaluators, eval.*, extractor.*, renderer.samples_per_ray, and scene.splits "
                "on scenes loaded from a dataset folder such as blender), e.g. "
                "--set 'evaluators=[{type: psnr}]' --set eval.supersample=2, --set renderer.samples_per_ray=1024 "
                "for a finer ray step than training's, or --set eval.split=val --set 'scene.splits=[train, test, "
                "val]' for a split of the data that training did not load; the trained model is never changed.")
    c.add_argument("-o", "--output", metavar="FILE", help="default: RUN_DIR/eval.json (the run's own records, "
                   "such as summary.json, are refused); its renders go to <FILE stem>_renders/<split> beside it")
    c.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override an evaluation option of the run's config (repeatable)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("plugins", parents=[common], help="list plugins and the components they provide",
                       description="List the loaded plugins (built-ins, installed entry points, --plugins-dir "
                       "files) with the components each registers: stage, what it consumes and produces, and "
                       "its description; --all adds every option with its type, default and help. --config "
                       "lists the keys of the scene file's train:, eval: and output: blocks the same way.")
    c.add_argument("--all", action="store_true", help="also show every component's options")
    c.add_argument("--config", action="store_true",
                   help="list the scene file's train:, eval: and output: keys with their types, defaults and help "
                   "(instead of the plugins)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--hook", metavar="NAME",
                   help="only plugins implementing this hook, e.g. nls_register_losses (or register_losses, or the stage: losses)")
    c.set_defaults(func=cmd_plugins)

    c = sub.add_parser("new-plugin", help="create a pip-installable plugin package with a passing test",
                       description="Write DIR/nls-NAME/ (with each _ of NAME written as -): a pyproject.toml declaring "
                       "the `nls` entry point, a plugin module nls_NAME/plugin.py registering one example loss "
                       "with its config, and tests: the loss's value, and a few steps of the tiny scene with "
                       "it. Install it with pip install -e and it appears in `nls plugins`; then run pytest. Without "
                       "installing it, --plugins-dir DIR/nls-NAME/nls_NAME loads it (as plugin NAME). "
                       "The hooks of the other stages are documented in pipeline/hookspecs.py and listed by "
                       "`nls plugins --all`.")
    c.add_argument("name", help="plugin name: a lowercase letter, then a-z or 0-9, with single _ between "
                   "(at most 64 characters), e.g. my_method")
    c.add_argument("--dir", default=".", help="parent folder (default: here)")
    c.set_defaults(func=cmd_new_plugin)

    from pipeline.batch import add_parser as add_batch_parser

    add_batch_parser(sub, common)

    c = sub.add_parser("report", parents=[common], help="write a self-contained HTML report of a run",
                       description="One HTML file with the config, metrics (next to published figures from the "
                       "config's reference: block), training curves, test renders against ground truth with error "
                       "maps, depth and normal maps, field slices, a mesh turntable and provenance. Images are "
                       "embedded; opening it needs no network. Runs killed midway get a report too, saying what "
                       "is missing.")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
    c.add_argument("-o", "--output", metavar="FILE", help="output HTML file, ending in .html or .htm "
                   "(default: RUN_DIR/report.html)")
    c.add_argument("--no-model", action="store_true",
                   help="do not rebuild the model from its checkpoint (no slices or normal maps; faster)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", parents=[common], help="compare runs side by side (metrics, time, parameters)",
                       description="A table of final metrics, training time and parameter count over runs, best "
                       "values marked. Warns when the runs' scenes, scene settings or evaluation settings differ. "
                       "Prints a terminal table unless --markdown, --json, --html or -o FILE is given.")
    c.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run folders made by `nls reconstruct`")
    fmt = c.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", dest="format", action="store_const", const="markdown",
                     help="print a Markdown table")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="print JSON")
    fmt.add_argument("--html", dest="format", action="store_const", const="html",
                     help="print a self-contained HTML page (or write one with -o FILE.html)")
    c.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE instead of printing; the format follows its extension (.html/.htm: HTML, "
                   ".json: JSON, anything else: Markdown) unless --markdown, --json or --html is given")
    c.set_defaults(func=cmd_compare, format="rich")

    c = sub.add_parser("view", parents=[common], help="interactive 3D viewer in the browser (viser)",
                       description="Serve an interactive viewer of RUN_DIR on http://127.0.0.1:PORT (localhost "
                       "only): the exported mesh, training cameras as frustums, the input point cloud, and a "
                       "slider that re-extracts the mesh at another level. Ctrl-C stops it. Needs the optional "
                       "extra: pip install '.[viewer]'.")
    c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
    c.add_argument("--port", type=int_at_least(0, 65535), default=8080, metavar="P",
                   help="port on 127.0.0.1 (default: 8080; 0 picks a free one; a port in use moves to the next "
                   "free one, and the command says so)")
    c.add_argument("--resolution", type=int_at_least(16, 512), default=128, metavar="N",
                   help="grid samples per side cached for re-extraction at other levels, 16..512 (default: 128)")
    c.add_argument("--seconds", type=positive_seconds, metavar="S",
                   help="stop after S seconds (default: run until Ctrl-C)")
    c.set_defaults(func=cmd_view)

    if host is not None:
        host.add_commands(sub)
    for parser in (p, *sub.choices.values()):
        accept_negative_numbers(parser)
    return p


#: option values that are negative numbers in any float notation (argparse 3.11 knows only -1 and -1.5,
#: so ``--level -2e-3`` was read as an unknown option); -inf and -nan too, so their checks can name them
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` take ``-2e-3`` or ``-inf`` as an option's value, as it takes ``-0.002`` (no nls
    option looks like a negative number, so none is shadowed)."""
    parser._negative_number_matcher = NEGATIVE_NUMBER


#: glibc ``mallopt`` parameters and the values nls sets (see :func:`keep_freed_memory`)
MALLOPT = {"M_MMAP_THRESHOLD": (-3, 32 * 2 ** 20), "M_TRIM_THRESHOLD": (-1, 256 * 2 ** 20),
           "M_TOP_PAD": (-2, 64 * 2 ** 20)}


def keep_freed_memory() -> bool:
    """Let glibc keep freed buffers of up to 32 MiB for reuse instead of returning them to the OS.

    Training allocates and frees grid-sized buffers (the ngp dense grid's 33 MB table gradient and Adam
    temporaries) every step; glibc serves buffers this large with mmap and unmaps them on free, so every
    step paid fresh page faults. Measured on the demo scene (csg_dense, 2 cores): 122.7 s -> 90.0 s, system
    time 45 s -> 7 s, checkpoints bit-identical. Skipped off glibc, and when the environment already tunes
    the allocator (``MALLOC_MMAP_THRESHOLD_`` ...). Returns whether it was applied."""
    import ctypes

    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt parameters of these numbers)
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(code, value) == 1 for code, value in MALLOPT.values())


def _rank_tag(message: str) -> str:
    """``"[rank R/W] "`` under torchrun, for an error message that does not start with one: every rank
    prints its own, and identical untagged lines read as one process repeating itself."""
    from pipeline import distributed

    try:
        tag = distributed.from_env().tag()
    except NLSError:  # a broken torchrun environment is itself the error being printed
        return ""
    return "" if message.startswith("[rank ") else tag


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an argument that the command does not take is reported by the
    command's own parser (``nls render: error: ...`` and its usage), not by ``nls``'s."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        (commands.get(getattr(args, "command", None)) or parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """The ``nls`` entry point: parse ``argv`` (default ``sys.argv[1:]``) and run its command; returns the
    exit code (an NLSError's ``exit_code``, 130 on Ctrl-C, 141 on a closed pipe, 0 for help)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP threads that spin-wait slow other processes on shared cores
    keep_freed_memory()
    _one_line_warnings()
    notices.reset()  # the warnings this command's run keeps for its summary
    argv = sys.argv[1:] if argv is None else argv
    try:
        # plugin modules register names only (no torch), so building the host here is cheap and
        # lets plugin subcommands appear in `nls --help`
        dirs = _plugins_dirs(argv)
        host = _host(argparse.Namespace(plugins_dir=dirs))
        parser = build_parser(host)
        args = _parse(parser, argv)
        # argparse drops a --plugins-dir given before the subcommand (the subcommand's default
        # overwrites it), and the scan above misses abbreviations such as --plugins-d DIR: keep both
        extra = [d for d in (getattr(args, "plugins_dir", None) or []) if d not in dirs]
        if extra:
            dirs = dirs + extra
            host = _host(argparse.Namespace(plugins_dir=dirs))
        args.plugins_dir, args.host = dirs, host
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except NLSError as exc:
        print(f"error: {_rank_tag(str(exc))}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        print(f"error: out of memory ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no details'}); "
              f"lower the sizes of the command (rays per batch, samples per ray, eval.chunk, --resolution) "
              f"or free the device", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nls ... | head`: the reader left; stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 141
    except OSError as exc:  # after BrokenPipeError, an OSError too
        if exc.errno != errno.ENAMETOOLONG:
            raise
        print(f"error: a file name is too long ({exc.filename or exc}): each part of a path may have at most "
              f"255 bytes; give a shorter path", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _one_line_warnings() -> None:
    """Warnings that nls's own code (pipeline/, plugins/) issues print as one ``warning: ...`` line, as
    its other warnings do, instead of Python's file:line form with a line of source, and are kept for
    the run's summary (:mod:`pipeline.notices`); other packages' warnings keep Python's form."""
    import warnings

    from pipeline.scenes import repo_root

    default = warnings.showwarning
    if getattr(default, "nls_one_line", False):  # installed by an earlier main() of this process
        return
    ours = tuple(str(repo_root() / d) for d in ("pipeline", "plugins"))

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(ours):
            print(f"warning: {message}", file=file or sys.stderr)
            notices.keep(str(message))
        else:
            default(message, category, filename, lineno, file, line)

    show.nls_one_line = True
    warnings.showwarning = show


def _leave_process_group() -> None:
    """Destroy a torch.distributed process group that an error path left open.

    Exiting with a live gloo group lets its worker threads be torn down by static destructors,
    which aborts the process ("terminate called without an active exception", exit -6) instead
    of returning the error's exit code.
    """
    if "torch.distributed" in sys.modules:
        from pipeline import distributed

        try:
            distributed.shutdown()
        except Exception:  # torch half-imported (Ctrl-C while it loaded): it holds no group to leave
            pass


def _plugins_dirs(argv: list[str]) -> list[str]:
    """The ``--plugins-dir DIR`` and ``--plugins-dir=DIR`` values of ``argv``, in order."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugins-dir" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--plugins-dir="):
            out.append(a.split("=", 1)[1])
    return out


if __name__ == "__main__":
    sys.exit(main())
