"""The ``nls`` command line. Heavy modules (torch, nerfacc, trimesh) load inside commands only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline import __version__
from pipeline.types import NLSError

EPILOG = """\
examples:
  nls reconstruct scenes/csg_dense.yaml                 train, render, export and evaluate
  nls reconstruct scenes/csg_dense.yaml --steps 200 --set field.resolution=64
  nls resume outputs/csg/dense_grid/<stamp>             continue a stopped run to its step budget
  nls render outputs/csg/dense_grid/<stamp> --spiral 60 test renders and a turntable video
  nls export outputs/csg/dense_grid/<stamp> -o mesh.ply --resolution 384
  nls eval outputs/csg/dense_grid/<stamp>               metrics to JSON
  nls plugins --all                                     what every plugin provides, with options

environment: NLS_DATA (data root), NLS_CACHE (rendered-scene cache), NLS_LOAD_PLUGINS,
NLS_TRACE_PLUGINS=1, NLS_THREADS (CPU threads).
"""


def _host(args):
    if getattr(args, "host", None) is not None:
        return args.host
    from pipeline.plugins import PluginHost

    return PluginHost.create(plugins_dirs=[Path(d) for d in (getattr(args, "plugins_dir", None) or [])])


# -- shared run loading ------------------------------------------------------------------

@dataclass
class Loaded:
    host: Any
    cfg: Any
    run: Any
    device: Any
    scene: Any
    system: Any
    step: int
    state: Optional[dict]


def open_run(args, *, need_checkpoint: bool = True) -> Loaded:
    """Rebuild a run from its folder: resolved config, scene, model and newest checkpoint."""
    from pipeline.build import build_system, load_scene_data, pick_device, setup_threads
    from pipeline.config import load_resolved
    from pipeline.runs import RunDir

    run = RunDir.open(Path(args.run_dir))
    host = _host(args)
    cfg = load_resolved(run.config_path, host)
    setup_threads(cfg.train.threads)
    device = pick_device(getattr(args, "device", None) or cfg.train.device)
    state = run.load_checkpoint() if need_checkpoint else None
    scene = load_scene_data(cfg, device)
    system = build_system(cfg, scene, device)
    if state is not None:
        try:
            system.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise NLSError(f"checkpoint of {run.path} does not match its config.yaml: "
                           f"{str(exc).splitlines()[0]}") from None
    return Loaded(host, cfg, run, device, scene, system, int(state["step"]) if state else 0, state)


def finish_run(ld: Loaded, train_seconds: float) -> dict:
    """Render the eval split, export the mesh, evaluate and write summary.json."""
    import platform

    import torch

    from pipeline.evaluate import EvalContext, flatten, run_evaluators

    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    mesh_path = None
    if ld.cfg.stages.get("extractor"):
        from pipeline.mesh import export_mesh

        try:
            mesh_path = export_mesh(ctx.mesh(), ld.run.meshes_dir / "mesh.ply")
        except NLSError as exc:
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
        "versions": {"nls": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "plugins": ld.host.versions()},
        "parameters": sum(p.numel() for p in ld.system.parameters()),
    }
    ld.run.write_json("summary.json", summary)
    return summary


def _print_summary(summary: dict, run_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=False)
    table = Table(title=f"{summary['scene']} / {summary['method']}  (step {summary['step']}, "
                        f"{summary['train_seconds']:.0f} s training on {summary['device']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary["metrics"].items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    con.print(table)
    con.print(f"run folder: [bold]{run_path}[/bold]")
    if summary.get("mesh"):
        con.print(f"mesh:       {run_path / summary['mesh']}")
    if summary.get("renders"):
        con.print(f"renders:    {run_path / summary['renders']}")
    con.print(f"next: [bold]nls render {run_path} --spiral 60[/bold]  or  "
              f"[bold]nls export {run_path} -o mesh.glb --resolution 384[/bold]")


def _train_and_finish(ld: Loaded, trainer, args) -> int:
    res = trainer.fit()
    ld.step = trainer.step
    if res.interrupted:
        print(f"\ninterrupted at step {trainer.step}/{ld.cfg.train.steps}; checkpoint saved.\n"
              f"resume with: nls resume {ld.run.path}", file=sys.stderr)
        return 130
    if getattr(args, "no_eval", False):
        print(f"trained to step {trainer.step}; run folder: {ld.run.path}")
        return 0
    summary = finish_run(ld, trainer.elapsed)
    _print_summary(summary, ld.run.path)
    return 0


# -- commands ----------------------------------------------------------------------------

def cmd_reconstruct(args) -> int:
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

    setup_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    scene = load_scene_data(cfg, device)
    system = build_system(cfg, scene, device)
    run = RunDir.create(root, cfg.name, cfg.method)
    from pipeline.runs import atomic_write_text

    atomic_write_text(run.config_path, dump_yaml(cfg.to_dict()))
    run.write_json("plugins.json", {"plugins": [vars(p) for p in host.plugins()],
                                    "components": cfg.provenance(host.versions())})
    run.write_json("scene.json", {**scene.meta, "aabb": scene.aabb.tolist(),
                                  "gt_mesh": str(scene.gt_mesh) if scene.gt_mesh else None,
                                  "splits": {k: len(v) for k, v in scene.splits.items()}})
    run.record_command()
    print(f"run folder: {run.path}  (scene loaded in {time.perf_counter() - t0:.1f} s, device {device})",
          file=sys.stderr)
    trainer = Trainer(cfg, system, scene, run, device, progress=not args.quiet)
    ld = Loaded(host, cfg, run, device, scene, system, 0, None)
    return _train_and_finish(ld, trainer, args)


def cmd_resume(args) -> int:
    from pipeline.train import Trainer

    ld = open_run(args)
    ld.run.record_command()
    trainer = Trainer(ld.cfg, ld.system, ld.scene, ld.run, ld.device, progress=not args.quiet)
    trainer.load_state(ld.state)
    ld.run.truncate_metrics_after(trainer.step)
    if trainer.step >= ld.cfg.train.steps:
        print(f"run already reached its step budget ({trainer.step}/{ld.cfg.train.steps}); "
              f"finishing evaluation only", file=sys.stderr)
    else:
        print(f"resuming {ld.run.path} from step {trainer.step}/{ld.cfg.train.steps}", file=sys.stderr)
    return _train_and_finish(ld, trainer, args)


def cmd_render(args) -> int:
    from pipeline.evaluate import EvalContext

    ld = open_run(args)
    out_root = Path(args.output) if args.output else ld.run.renders_dir
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device, split=args.split,
                      out_dir=out_root / args.split)
    pairs = ctx.renders()
    print(f"wrote {len(pairs)} {args.split} renders (prediction | ground truth | depth) to {out_root / args.split}")
    if args.spiral:
        from pipeline.video import render_turntable

        path = render_turntable(ld, args.spiral, out_root)
        print(f"wrote turntable video: {path}")
    return 0


def cmd_export(args) -> int:
    from pipeline.evaluate import EvalContext, extract
    from pipeline.mesh import export_mesh

    ld = open_run(args)
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    mesh = extract(ctx, resolution=args.resolution, level=args.level, bbox=args.bbox)
    out = export_mesh(mesh, Path(args.output))
    print(f"wrote {out}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
          f"watertight={mesh.is_watertight} ({mesh.metadata.get('quantity')} level {mesh.metadata.get('level')})")
    return 0


def cmd_eval(args) -> int:
    from pipeline.evaluate import EvalContext, flatten, run_evaluators

    ld = open_run(args)
    ctx = EvalContext(ld.cfg, ld.scene, ld.system, ld.run, ld.device)
    results = run_evaluators(ctx)
    data = {"run": str(ld.run.path), "step": ld.step, "metrics": flatten(results), "evaluators": results}
    out = Path(args.output) if args.output else ld.run.path / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data["metrics"], indent=2))
    print(f"wrote {out}")
    return 0


def cmd_plugins(args) -> int:
    from pipeline.plugins_list import print_plugins

    return print_plugins(_host(args), as_json=args.json, show_all=args.all, hook=args.hook)


def cmd_new_plugin(args) -> int:
    from pipeline.scaffold import new_plugin

    path = new_plugin(args.name, Path(args.dir))
    print(f"created plugin package {path}\n"
          f"install it:  pip install -e {path}\n"
          f"check it:    nls plugins   and   pytest {path}")
    return 0


# -- parser ------------------------------------------------------------------------------

def build_parser(host=None) -> argparse.ArgumentParser:
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
                   help="override a config key, e.g. --set train.steps=500 --set field.resolution=64")
    r.add_argument("--output", metavar="DIR", help="runs root (default: the scene's output.root, 'outputs')")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the scene's train.device")
    r.add_argument("--steps", type=int, metavar="N", help="training steps (same as --set train.steps=N)")
    r.add_argument("--no-eval", action="store_true", help="stop after training")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_reconstruct)

    def run_cmd(name, func, help_, desc):
        c = sub.add_parser(name, parents=[common], help=help_, description=desc)
        c.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `nls reconstruct`")
        c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the run's train.device")
        c.set_defaults(func=func)
        return c

    c = run_cmd("resume", cmd_resume, "continue a stopped run to its step budget",
                "Load the newest checkpoint of RUN_DIR and train to the run's step budget (never past it), "
                "then evaluate.")
    c.add_argument("-q", "--quiet", action="store_true")
    c.add_argument("--no-eval", action="store_true")
    c = run_cmd("render", cmd_render, "render a split (and a turntable video)",
                "Render a split of the scene with the trained field: prediction, ground truth and depth.")
    c.add_argument("--split", default="test", help="split to render (default: test)")
    c.add_argument("--spiral", type=int, default=0, metavar="N", help="also render an N-frame turntable video")
    c.add_argument("--output", metavar="DIR", help="default: RUN_DIR/renders")
    c = run_cmd("export", cmd_export, "extract and export a mesh",
                "Marching cubes on the field (SDF level, density threshold or occupancy 0.5); the format "
                "follows the file extension (.ply .obj .glb .stl .off).")
    c.add_argument("-o", "--output", required=True, metavar="MESH", help="output file, e.g. mesh.ply")
    c.add_argument("--resolution", type=int, metavar="N", help="grid samples per side (default: the scene's)")
    c.add_argument("--level", type=float, metavar="L", help="iso-level (default: the extractor's)")
    c.add_argument("--bbox", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="box to mesh (default: the extractor's, else the scene box)")
    c = run_cmd("eval", cmd_eval, "evaluate a run (PSNR/SSIM, Chamfer, ...)",
                "Run the scene's evaluators on the newest checkpoint and write JSON.")
    c.add_argument("--output", metavar="FILE", help="default: RUN_DIR/eval.json")

    c = sub.add_parser("plugins", parents=[common], help="list plugins and the components they provide")
    c.add_argument("--all", action="store_true", help="also show every component's options")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--hook", metavar="NAME", help="only plugins implementing this hook")
    c.set_defaults(func=cmd_plugins)

    c = sub.add_parser("new-plugin", help="create a pip-installable plugin package with a passing test")
    c.add_argument("name", help="plugin name (letters, digits, _)")
    c.add_argument("--dir", default=".", help="parent folder (default: here)")
    c.set_defaults(func=cmd_new_plugin)

    if host is not None:
        host.add_commands(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see DESIGN.md: spin-waiting hurts shared cores
    argv = sys.argv[1:] if argv is None else argv
    try:
        # plugin modules register names only (no torch), so building the host here is cheap and
        # lets plugin subcommands appear in `nls --help`
        host = _host(argparse.Namespace(plugins_dir=_plugins_dirs(argv)))
        parser = build_parser(host)
        args = parser.parse_args(argv)
        args.host = host
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except NLSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _plugins_dirs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--plugins-dir"]


if __name__ == "__main__":
    sys.exit(main())
