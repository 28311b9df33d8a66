"""``nls reconstruct`` and ``nls resume``: train a run, then finish it (render, export, evaluate, write
summary.json) and print its summary with the commands to run next."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from pipeline import __version__, notices
from pipeline.commands.evaluation import metrics_table
from pipeline.commands.run_loading import Loaded, host_for, open_run
from pipeline.types import NLSError, PluginError


def finish_run(ld: Loaded, train_seconds: float, *, progress: bool = True) -> dict:
    """Render the eval split, export the mesh, evaluate and write summary.json."""
    import platform

    import torch

    from pipeline.evaluate import EvalContext, flatten, run_evaluators
    from pipeline.metric_notes import run_metric_better, run_metric_notes
    from pipeline.mesh import progress_default
    from pipeline.runs import source_version

    from pipeline.pose_refinement import refined_scene

    # the training views as the run last saw them: through its refined poses (train.refine_poses)
    ctx = EvalContext(ld.cfg, refined_scene(ld.scene, ld.system), ld.system, ld.run, ld.device, progress=progress)
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
        "metric_notes": run_metric_notes(ld.cfg.evaluators, results),
        "metric_better": run_metric_better(ld.cfg.evaluators, results),
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
    if ld.cfg.train.wandb:
        from pipeline.wandb_log import publish_summary

        publish_summary(ld.run.path, ld.cfg.train.wandb_project, summary)
    return summary


def _plugins_flags(args) -> str:
    """' --plugins-dir D' for each --plugins-dir given, as an absolute path, so printed follow-up commands
    run as copied, from any folder."""
    from pipeline.runs import plugins_dir_flags

    return plugins_dir_flags([Path(d).absolute() for d in getattr(args, "plugins_dir", None) or []])


def _print_summary(summary: dict, run_path: Path, flags: str = "") -> None:
    """The run's metrics table, folders and the commands to run next, on stdout."""
    from pipeline.console import stdout_console

    with stdout_console() as con:
        _summary_lines(con, summary, run_path, flags)


def _summary_lines(con, summary: dict, run_path: Path, flags: str) -> None:
    """:func:`_print_summary`'s lines on ``con``."""
    from rich.markup import escape

    # the title is a line of its own: as a table title it would wrap to the narrow table's width
    con.print(f"[bold]{summary['scene']} / {summary['method']}[/bold]  (step {summary['step']}, "
              f"{summary['train_seconds']:.0f} s training on {summary['device']})", soft_wrap=True)
    con.print(metrics_table(summary["metrics"], summary.get("metric_notes"), summary.get("metric_better")))
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


def cmd_reconstruct(args) -> int:
    """Run ``nls reconstruct``: train a new run, then evaluate it (unless ``--no-eval``); exit code 0,
    130 when interrupted."""
    from pipeline.config import dump_yaml, load_scene
    from pipeline.runs import RunDir, check_writable

    host = host_for(args)
    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if getattr(args, "val_every", None) is not None:
        overrides.append(f"train.val_every={args.val_every}")
    if getattr(args, "tensorboard", False):
        overrides.append("train.tensorboard=true")
    if getattr(args, "wandb", False):
        overrides.append("train.wandb=true")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_scene(Path(args.scene), host, overrides, data=Path(args.data) if args.data else None)
    root = Path(args.output or cfg.output.root)
    check_writable(root)

    from pipeline.build import build_system, load_scene_for_command, pick_device, setup_threads
    from pipeline.train import Trainer, seed_everything

    from pipeline import distributed

    setup_threads(cfg.train.threads)
    device = distributed.rank_device(pick_device(cfg.train.device))
    info = distributed.setup(device, threads=cfg.train.threads)  # torchrun: join the process group
    distributed.check_same_config({"config": cfg.to_dict(), "plugins": host.versions()}, info)
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    scene = load_scene_for_command(cfg, device, overrides, quiet=getattr(args, "quiet", False))
    system = build_system(cfg, scene, device)
    from pipeline.evaluate import check_eval_split, warn_skipped_evaluators

    check_eval_split(cfg, scene, system, overrides)  # before training, not after it (--no-eval: evaluated later)
    warn_skipped_evaluators(cfg, scene)

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
        run.keep_scene_files(scene.meta.get("keep"))  # e.g. a photos scene's SfM model: the run stands without the cache
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
    from pipeline.config import with_defaults
    from pipeline.notices import warn
    from pipeline.train import config_diff, describe_diff

    diff = config_diff(with_defaults(ld.state.get("config"), ld.host), ld.cfg.to_dict(), ignore=("scene.path",))
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
