"""``nls batch SCENE.yaml... [--jobs N]``: many independent per-scene runs, then one comparison table.

Each scene is trained by its own ``nls reconstruct`` child process (its own run folder, its own
threads, its own log), ``--jobs`` at a time. A scene that fails (bad config, missing data,
divergence, a crash, ``--scene-timeout``) is reported with its error and the others go on. At the
end the finished runs are compared with :mod:`pipeline.compare` (the ``nls compare`` table).

Under ``torchrun --nproc_per_node N -m pipeline.cli batch ...`` (also over several nodes) scene
``i`` goes to rank ``i mod N``; each rank runs its scenes as above, the ranks gather their results
over a gloo process group, and rank 0 writes the table (over the run folders it can see: put
``--output`` on a shared filesystem when the nodes do not share one). Everything of one batch lands in
``<output>/batch/<timestamp>/``::

    batch.json      per scene: status, exit code, seconds, run folder, error, log file, rank
    compare.md      the comparison table of the finished runs (Markdown)
    logs/NN_<scene>.log   stdout+stderr of each child run
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from pipeline.types import NLSError

#: what ``nls reconstruct`` prints once the run folder exists
RUN_FOLDER_LINE = re.compile(r"^run folder: (.+?)(?:  \(.*)?$", re.M)
#: the ranks wait this long for each other at the end of a batch (scenes may take hours)
BATCH_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass
class SceneResult:
    """The outcome of one scene of a batch."""

    index: int
    scene: str
    status: str  # "complete" | "failed"
    exit_code: Optional[int]
    seconds: float
    run_dir: Optional[str]
    error: str
    log: str
    rank: int = 0


@dataclass
class BatchOptions:
    """What every child run gets: output root, overrides, steps, device, plugin folders, limits."""

    output: Optional[str] = None
    overrides: Sequence[str] = ()
    steps: Optional[int] = None
    device: Optional[str] = None
    plugins_dirs: Sequence[str] = ()
    no_eval: bool = False
    scene_timeout: Optional[float] = None
    threads: int = 1

    def command(self, scene: str) -> list[str]:
        """The argv of the child ``nls reconstruct <scene> -q`` run, with these options as flags."""
        cmd = [sys.executable, "-m", "pipeline.cli", "reconstruct", scene, "-q"]
        for d in self.plugins_dirs:
            cmd += ["--plugins-dir", d]
        for o in self.overrides:
            cmd += ["--set", o]
        if self.output:
            cmd += ["--output", self.output]
        if self.steps is not None:
            cmd += ["--steps", str(self.steps)]
        if self.device:
            cmd += ["--device", self.device]
        if self.no_eval:
            cmd.append("--no-eval")
        return cmd


def _error_of(log_text: str, exit_code: Optional[int]) -> str:
    """The child's own ``error: ...`` paragraph, else the tail of its log (a crash, a traceback)."""
    errors = [line[len("error: "):] for line in log_text.splitlines() if line.startswith("error: ")]
    if errors:
        return errors[-1]
    tail = [line for line in log_text.strip().splitlines() if line.strip()][-3:]
    return f"exit code {exit_code}: " + " | ".join(tail) if tail else f"exit code {exit_code}, no output"


def _threads_per_run(cpus: int, parallel: int) -> int:
    """NLS_THREADS when set (each run inherits it), else this machine's cores shared by the runs."""
    from pipeline.build import env_threads

    return env_threads() or max(1, cpus // parallel)


def run_scene(index: int, scene: str, opts: BatchOptions, log_dir: Path, rank: int = 0) -> SceneResult:
    """Run one scene in a child process; never raises for a failure of the scene itself."""
    from pipeline.distributed import clean_child_env

    log = log_dir / f"{index:02d}_{Path(scene).stem}.log"
    env = clean_child_env()  # the child is a single process even when this one is a torchrun rank
    env.setdefault("NLS_THREADS", str(opts.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    argv = opts.command(scene)
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        try:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=opts.scene_timeout, stdin=subprocess.DEVNULL)
            code: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    found = RUN_FOLDER_LINE.findall(text)
    run_dir = found[0].strip() if found else None
    if run_dir is not None and not Path(run_dir).is_dir():  # a job refused before training removes its folder
        run_dir = None
    if code == 0:
        return SceneResult(index, scene, "complete", 0, round(seconds, 2), run_dir, "", str(log), rank)
    error = (f"stopped after --scene-timeout {opts.scene_timeout:g} s" if code is None
             else _error_of(text, code))
    return SceneResult(index, scene, "failed", code, round(seconds, 2), run_dir, error, str(log), rank)


def run_scenes(scenes: Sequence[tuple[int, str]], opts: BatchOptions, jobs: int, log_dir: Path,
               rank: int = 0, say=print) -> list[SceneResult]:
    """Run ``(index, scene)`` pairs, ``jobs`` at a time, reporting each as it ends."""
    total = len(scenes)

    def one(item: tuple[int, str]) -> SceneResult:
        i, scene = item
        say(f"[{i + 1}] started {scene}")
        res = run_scene(i, scene, opts, log_dir, rank)
        if res.status == "complete":
            say(f"[{i + 1}] done    {scene} in {res.seconds:.0f} s -> {res.run_dir}")
        else:
            say(f"[{i + 1}] FAILED  {scene} (exit {res.exit_code}): {res.error}  (log: {res.log})")
        return res

    if total == 0:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, total))) as pool:
        return list(pool.map(one, scenes))


def precheck(scene: str, opts: BatchOptions, host) -> Optional[str]:
    """Validate a scene file as ``nls reconstruct`` would, before any process starts (no torch)."""
    from pipeline.config import load_scene

    overrides = list(opts.overrides) + ([f"train.steps={opts.steps}"] if opts.steps is not None else [])
    try:
        load_scene(Path(scene), host, overrides)
    except NLSError as exc:
        return str(exc)
    return None


def comparison_table(results: Sequence[SceneResult], out_dir: Path, *, show: bool = True) -> Optional[Path]:
    """The ``nls compare`` table over the finished runs, written to ``compare.md`` (and printed)."""
    from pipeline.compare import compare_runs, print_rich, to_markdown

    runs = [r.run_dir for r in results if r.status == "complete" and r.run_dir and Path(r.run_dir).is_dir()]
    if not runs:
        return None
    table = compare_runs([Path(p) for p in runs])
    path = out_dir / "compare.md"
    path.write_text(to_markdown(table))
    if show:
        print_rich(table)
        for w in table.warnings:  # as `nls compare` prints them, and as compare.md holds them
            print(f"warning: {w}", file=sys.stderr)
    return path


def _batch_dir(root: Path) -> Path:
    from pipeline.runs import check_writable

    base = root / "batch"
    check_writable(base)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1, 1000):
        path = base / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise NLSError(f"could not create a batch folder under {base}")


def cmd_batch(args) -> int:
    """``nls batch``: see the module docstring. Exit code 0 when every scene finished, else 1."""
    from pipeline import distributed

    from pipeline.config import parse_override

    info = distributed.from_env()
    jobs = args.jobs
    for text in args.set or []:  # a malformed --set is the command's error, not every scene's
        parse_override(text)
    cpus = os.cpu_count() or 1
    opts = BatchOptions(output=args.output, overrides=list(args.set or []), steps=args.steps,
                        device=args.device, plugins_dirs=list(args.plugins_dir or []), no_eval=args.no_eval,
                        scene_timeout=args.scene_timeout,
                        # runs at once: --jobs, or fewer when there are fewer scenes than jobs
                        threads=_threads_per_run(cpus, min(jobs, len(args.scenes)) * max(1, info.local_world_size)))
    scenes = list(args.scenes)
    if info.enabled:  # torchrun: one gloo group only to agree on the folder and gather the results
        import torch

        # the ranks meet again only at the end, after scenes of unequal length (torchrun's agent
        # has done the rendezvous already and stops the job if a rank dies)
        os.environ[distributed.TIMEOUT_ENV] = str(max(BATCH_TIMEOUT_S, distributed.timeout_s()))
        info = distributed.setup(torch.device("cpu"), threads=1)
    root = Path(args.output or "outputs")
    out_dir = distributed.main_creates(lambda: _batch_dir(root), info, lambda p: p, Path)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = info.tag()

    def say(msg: str) -> None:
        print(f"{tag}{msg}", flush=True)

    mine = [(i, s) for i, s in enumerate(scenes) if i % info.world_size == info.rank]
    results: list[SceneResult] = []
    todo = []
    for i, s in mine:  # a scene file that cannot be valid fails here, before any process starts
        problem = precheck(s, opts, args.host)
        if problem:
            say(f"[{i + 1}] FAILED  {s}: {problem}")
            results.append(SceneResult(i, s, "failed", 2, 0.0, None, problem, "", info.rank))
        else:
            todo.append((i, s))
    if info.is_main:
        say(f"batch of {len(scenes)} scene(s), {min(jobs, len(scenes))} at a time"
            + (f" on each of {info.world_size} ranks" if info.enabled else "")
            + f", {opts.threads} thread(s) per run; logs in {log_dir}")
    results += run_scenes(todo, opts, jobs, log_dir, info.rank, say)
    if info.enabled:
        gathered: list = [None] * info.world_size
        import torch.distributed as dist

        with distributed.collective("gathering the batch results"):
            dist.all_gather_object(gathered, [asdict(r) for r in results])
        distributed.shutdown()
        if not info.is_main:  # rank 0 reports the batch (and its exit code); a non-zero exit here
            return 0          # would make torchrun stop rank 0 before it has written the table
        results = [SceneResult(**d) for part in gathered for d in part]
    results.sort(key=lambda r: r.index)
    return _finish(results, out_dir)


def _finish(results: list[SceneResult], out_dir: Path) -> int:
    from pipeline.runs import atomic_write_text

    try:
        table = comparison_table(results, out_dir)
    except NLSError as exc:  # a run folder that cannot be read must not hide the batch outcome
        print(f"comparison table skipped: {exc}", file=sys.stderr)
        table = None
    atomic_write_text(out_dir / "batch.json", json.dumps({
        "scenes": [asdict(r) for r in results], "compare": str(table) if table else None}, indent=2) + "\n")
    done = [r for r in results if r.status == "complete"]
    failed = [r for r in results if r.status != "complete"]
    print(f"{len(done)} of {len(results)} scene(s) finished; batch folder: {out_dir}"
          + (f"; table: {table}" if table else ""))
    for r in failed:
        print(f"failed: {r.scene}: {r.error}" + (f" (log: {r.log})" if r.log else ""), file=sys.stderr)
    return 0 if not failed else 1


def add_parser(sub, common) -> None:
    """Register ``nls batch`` on the CLI's sub-parsers."""
    from pipeline.cli import int_at_least, positive_seconds

    c = sub.add_parser(
        "batch", parents=[common], help="reconstruct many scenes (in parallel), then one comparison table",
        description="Train every SCENE.yaml in its own `nls reconstruct` process, --jobs at a time, each in its "
        "own run folder; a failing scene is reported and the others go on. Ends with the `nls compare` table "
        "of the finished runs. Under `torchrun --nproc_per_node N -m pipeline.cli batch ...` the scenes are "
        "spread over the ranks (and nodes). Exit code 1 when any scene failed.")
    c.add_argument("scenes", metavar="SCENE.yaml", nargs="+", help="scene configs")
    c.add_argument("-j", "--jobs", type=int_at_least(1), default=1, metavar="N",
                   help="scenes trained at the same time (per rank; default: 1); the CPU cores are shared among them")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override applied to every scene")
    c.add_argument("-o", "--output", metavar="DIR", help="runs root (default: each scene's output.root); "
                   "the batch folder goes to DIR/batch/<stamp> (default outputs/batch/<stamp>)")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: each scene's train.device "
                   "(auto: cuda when available, else cpu)")
    c.add_argument("--steps", type=int_at_least(1), metavar="N", help="training steps for every scene")
    c.add_argument("--no-eval", action="store_true", help="stop each run after training")
    c.add_argument("--scene-timeout", type=positive_seconds, metavar="S",
                   help="stop (and fail) a scene after S seconds")
    c.set_defaults(func=cmd_batch)
