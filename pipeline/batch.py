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

    batch.json      per scene: outcome, run status, exit code, seconds, run folder, error, log file, rank
    compare.md      the comparison table of the finished runs (Markdown)
    logs/NN_<scene>.log   stdout+stderr of each child run (NN: the scene's number on the console, [1] -> 01)

A scene's ``outcome`` is what happened to its process: ``ok`` (exit code 0), ``failed``, ``timed out``
(``--scene-timeout``) or ``stopped`` (the batch got Ctrl-C or SIGTERM). Its ``status`` is its run
folder's, in the words of ``nls compare`` (``complete``, ``evaluated``, ``trained``, ``incomplete``),
and null when no run folder was made.

Each child runs in its own process group (with what it starts, such as the compiler of a JIT
build). A scene past ``--scene-timeout`` gets SIGTERM, so ``nls reconstruct`` saves a checkpoint
and exits; what is still running :data:`STOP_GRACE_S` seconds later is killed. Ctrl-C and SIGTERM
to the batch are passed on to every child, and scenes not yet started are skipped.

On the console each scene gets a ``started`` line (with its log file), a ``running`` line now and then
while it runs (:data:`PROGRESS_FIRST_S`: its elapsed time and the step its run folder logged), and one
line when it ends.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator, Optional, Sequence

from pipeline.types import NLSError

#: what ``nls reconstruct`` prints once the run folder exists
RUN_FOLDER_LINE = re.compile(r"^run folder: (.+?)(?:  \(.*)?$", re.M)
#: the ranks wait this long for each other at the end of a batch (scenes may take hours)
BATCH_TIMEOUT_S = 7 * 24 * 3600.0
#: seconds a scene past --scene-timeout gets, after SIGTERM, to save its checkpoint and exit before
#: its process group is killed (a step and a checkpoint write of a large model fit in it)
STOP_GRACE_S = 60.0
#: a running scene's first ``running`` line comes this many seconds after it started, the next ones at
#: doubling intervals up to :data:`PROGRESS_MAX_S` (at 1, 3, 7, 15, 25, 35 ... minutes)
PROGRESS_FIRST_S = 60.0
PROGRESS_MAX_S = 600.0
#: the signals to the batch that are passed on to its children (both stop ``nls reconstruct`` at the
#: next step boundary, with a checkpoint)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class SceneResult:
    """The outcome of one scene of a batch."""

    index: int
    scene: str
    outcome: str  # "ok" | "failed" | "timed out" | "stopped"
    status: Optional[str]  # the run folder's, as `nls compare` says it; None without a run folder
    exit_code: Optional[int]
    seconds: float
    run_dir: Optional[str]
    error: str
    log: str
    rank: int = 0
    warnings: list[str] = field(default_factory=list)  # the run's summary.json ``warnings``
    data: Optional[str] = None  # the data it trained on, when the batch gave several (--data repeated)

    @property
    def label(self) -> str:
        """How the console names it: the scene file, ``on`` the data when the batch gave several."""
        return job_label(self.scene, self.data)


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
    data: Optional[str] = None  # --data: every scene file's settings on this data

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
        if self.data:
            cmd += ["--data", self.data]
        return cmd


def _error_of(log_text: str, exit_code: Optional[int], scene: Optional[str] = None) -> str:
    """The child's own ``error: ...`` paragraph, else the tail of its log (a crash, a traceback). The
    scene file the error starts with, when it is ``scene``, is left out: the batch's lines name it."""
    errors = [line[len("error: "):] for line in log_text.splitlines() if line.startswith("error: ")]
    if errors:
        return _without_scene(errors[-1], scene) if scene else errors[-1]
    tail = [line for line in log_text.strip().splitlines() if line.strip()][-3:]
    return f"exit code {exit_code}: " + " | ".join(tail) if tail else f"exit code {exit_code}, no output"


def _without_scene(text: str, scene: str) -> str:
    """``text`` without the ``<scene>: `` it starts with (an error naming its scene file, as given or as an
    absolute path), since the lines that print it name the scene already."""
    for name in dict.fromkeys((scene, str(Path(scene).resolve()))):
        if text.startswith(f"{name}: "):
            return text[len(name) + 2:]
    return text


def job_label(scene: str, data: Optional[str] = None) -> str:
    """``scene``, or ``scene on <data's name>`` for a job of a batch over several data paths."""
    return scene if data is None else f"{scene} on {Path(data).name}"


def log_path(log_dir: Path, index: int, scene: str, data: Optional[str] = None) -> Path:
    """The log file of the scene of 0-based ``index``, numbered as the console shows it: [1] -> 01_<stem>.log
    (``01_<stem>_<data's name>.log`` for a job on one of several data paths)."""
    return log_dir / f"{index + 1:02d}_{Path(scene).stem}{'' if data is None else '_' + Path(data).name}.log"


def _elapsed(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _last_step(metrics: Path) -> Optional[int]:
    """The step of the last complete line of a run's metrics.jsonl (read from its end), None without one."""
    try:
        with open(metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None


def scene_progress(log: Path) -> str:
    """Where a running scene is, from its log and run folder: 'loading its scene', 'training, no step
    logged yet', 'step 400 of 1200', 'trained (1200 steps), rendering and evaluating'."""
    try:
        found = RUN_FOLDER_LINE.findall(log.read_text(errors="replace"))
    except OSError:
        found = []
    if not found:
        return "loading its scene"
    run = Path(found[0].strip())
    step = _last_step(run / "metrics.jsonl")
    try:
        import yaml

        train = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("train") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        train = {}
    steps = train.get("steps") if isinstance(train.get("steps"), int) else None
    budget = f" (or {train['max_seconds']:g} s)" if isinstance(train.get("max_seconds"), (int, float)) else ""
    if step is None:
        return "training, no step logged yet"
    if steps is not None and step >= steps:
        return f"trained ({steps} steps), rendering and evaluating"
    return f"step {step}" + (f" of {steps}{budget}" if steps is not None else "")


def _threads_per_run(cpus: int, parallel: int) -> int:
    """NLS_THREADS when set (each run inherits it), else this machine's cores shared by the runs."""
    from pipeline.build import env_threads

    return env_threads() or max(1, cpus // parallel)


class ChildRuns:
    """The batch's running child processes, each the leader of its own process group.

    Ctrl-C at a terminal reaches only the batch's process group, so :meth:`passing_on_stops` hands
    SIGINT and SIGTERM (and SIGHUP) on to every child's group; once one came, :meth:`start` starts no
    more scenes.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entered when a signal handler runs inside start()
        self._procs: set[subprocess.Popen] = set()
        self.stop_signal: Optional[int] = None

    def start(self, argv: list[str], **kwargs) -> Optional[subprocess.Popen]:
        """``Popen(argv)`` in a new process group; None (nothing started) once the batch is stopping."""
        with self._lock:
            if self.stop_signal is not None:
                return None
            proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # its own process group
            self._procs.add(proc)
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        """Forget ``proc`` (it has exited)."""
        with self._lock:
            self._procs.discard(proc)

    def pass_on(self, signum: int, frame=None) -> None:
        """Signal handler: send ``signum`` to every running child's process group."""
        with self._lock:
            self.stop_signal = signum
            for proc in list(self._procs):
                signal_group(proc, signum)

    def _hang_up(self, signum: int, frame=None) -> None:
        """SIGHUP handler (a closed terminal): the children get it, as they did in the batch's process
        group, and the batch ends by it as before."""
        self.pass_on(signum)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGHUP)

    @contextmanager
    def passing_on_stops(self) -> Iterator["ChildRuns"]:
        """Inside it, SIGINT and SIGTERM to this process go to the children, and so does SIGHUP unless
        it is ignored (nohup); main thread only. The previous handlers are restored on exit."""
        from pipeline.signals import handlers_installed

        handlers = {sig: self.pass_on for sig in STOP_SIGNALS}
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
            handlers[signal.SIGHUP] = self._hang_up
        with handlers_installed(handlers):
            yield self


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process group that ``proc`` leads (nothing when it is gone)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def stop_gracefully(proc: subprocess.Popen, grace_s: float) -> bool:
    """SIGTERM to ``proc``'s group, so ``nls reconstruct`` checkpoints and exits; SIGKILL to the group
    (what the child left running too) after at most ``grace_s`` seconds. True when ``proc`` had to be
    killed."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        killed = False
    except subprocess.TimeoutExpired:
        killed = True
    signal_group(proc, signal.SIGKILL)
    proc.wait()
    return killed


def _note(log: IO[str], message: str) -> None:
    """Append a line of the batch's own to a child's log (the child writes to the same file)."""
    log.write(f"nls batch: {message}\n")
    log.flush()


def run_status(run_dir: Optional[str]) -> tuple[Optional[str], list[str]]:
    """The run folder's status as ``nls compare`` shows it (complete, evaluated, trained, incomplete) and
    the warnings its summary.json keeps; (None, []) without a readable run folder."""
    from pipeline.report.collect import read_run

    if run_dir is None:
        return None, []
    try:
        rec = read_run(Path(run_dir))
    except NLSError:
        return None, []
    return rec.short_status, rec.warnings


def resume_hint(run_dir: Optional[str], opts: BatchOptions) -> str:
    """Where a stopped scene can go on from: its newest checkpoint and the ``nls resume`` command, or
    that it has none."""
    from pipeline.runs import RunDir, plugins_dir_flags

    ck = RunDir(Path(run_dir)).latest_checkpoint() if run_dir else None
    if ck is None:
        return "no checkpoint was written, nothing to resume"
    return f"checkpoint {ck.name}; resume with: nls resume {shlex.quote(run_dir)}{plugins_dir_flags(opts.plugins_dirs)}"


def _stop_error(code: Optional[int], opts: BatchOptions, run_dir: Optional[str], *, timed_out: bool,
                killed: bool, stop_signal: Optional[int]) -> str:
    """The error of a scene that the batch stopped (``--scene-timeout``, or a signal to the batch)."""
    why = (f"--scene-timeout {opts.scene_timeout:g} s" if timed_out
           else "Ctrl-C" if stop_signal == signal.SIGINT else "SIGTERM to nls batch")
    if code is None:
        return f"not started: the batch was stopped ({why})"
    how = f"killed after {why} (still running {STOP_GRACE_S:g} s after SIGTERM)" if killed else f"stopped after {why}"
    return f"{how} ({resume_hint(run_dir, opts)})"


def _run_child(argv: list[str], opts: BatchOptions, log: IO[str], env: dict,
               children: ChildRuns) -> tuple[Optional[int], bool, bool]:
    """Run one child to its end: (exit code, None when not started; timed out; killed)."""
    proc = children.start(argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    if proc is None:
        _note(log, "not started: the batch was stopped")
        return None, False, False
    timed_out = killed = False
    try:
        try:
            proc.wait(timeout=opts.scene_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _note(log, f"--scene-timeout {opts.scene_timeout:g} s reached; SIGTERM sent (a checkpoint is "
                       f"saved at the next step), SIGKILL in {STOP_GRACE_S:g} s if still running")
            killed = stop_gracefully(proc, STOP_GRACE_S)
            if killed:
                _note(log, f"still running {STOP_GRACE_S:g} s after SIGTERM; killed (SIGKILL)")
    finally:
        children.finished(proc)
    return proc.returncode, timed_out, killed


def run_scene(index: int, scene: str, opts: BatchOptions, log_dir: Path, rank: int = 0,
              children: Optional[ChildRuns] = None, data: Optional[str] = None) -> SceneResult:
    """Run one scene in a child process (on ``data``, one of several data paths of the batch, when given); never
    raises for a failure of the scene itself."""
    from dataclasses import replace

    from pipeline.distributed import clean_child_env

    children = children or ChildRuns()
    log = log_path(log_dir, index, scene, data)
    if data is not None:
        opts = replace(opts, data=data)
    env = clean_child_env()  # the child is a single process even when this one is a torchrun rank
    env.setdefault("NLS_THREADS", str(opts.threads))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    argv = opts.command(scene)
    with open(log, "w") as f:
        f.write("$ " + " ".join(argv) + "\n")
        f.flush()
        code, timed_out, killed = _run_child(argv, opts, f, env, children)
    seconds = round(time.perf_counter() - t0, 2)
    text = log.read_text(errors="replace")
    found = RUN_FOLDER_LINE.findall(text)
    run_dir = found[0].strip() if found else None
    if run_dir is not None and not Path(run_dir).is_dir():  # a job refused before training removes its folder
        run_dir = None
    status, kept = run_status(run_dir)
    if code == 0:
        return SceneResult(index, scene, "ok", status, 0, seconds, run_dir, "", str(log), rank, kept, data)
    if timed_out or children.stop_signal is not None:
        error = _stop_error(code, opts, run_dir, timed_out=timed_out, killed=killed, stop_signal=children.stop_signal)
        outcome = "timed out" if timed_out else "stopped"
    else:
        error, outcome = _error_of(text, code, scene), "failed"
    return SceneResult(index, scene, outcome, status, code, seconds, run_dir, error, str(log), rank, kept, data)


def _say_result(res: SceneResult, say) -> None:
    """One console line for a scene that ended."""
    n = f"[{res.index + 1}]"
    if res.outcome == "ok":
        say(f"{n} done    {res.label} in {res.seconds:.0f} s ({res.status}) -> {res.run_dir}")
        for w in res.warnings:  # the run's own warnings (summary.json), else seen only in its log
            say(f"{' ' * len(n)} warning: {w}")
    elif res.outcome == "failed":
        say(f"{n} FAILED  {res.label} (exit code {res.exit_code}): {res.error}  (log: {res.log})")
    else:
        say(f"{n} {res.outcome.upper()}  {res.label}: {res.error}  (log: {res.log})")


def run_scenes(scenes: Sequence[tuple], opts: BatchOptions, jobs: int, log_dir: Path,
               rank: int = 0, say=print) -> list[SceneResult]:
    """Run ``(index, scene)`` pairs (or ``(index, scene, data)``: a job on one of several data paths), ``jobs`` at
    a time, reporting each as it ends; Ctrl-C or SIGTERM stops the running ones (with a checkpoint) and skips the
    rest."""
    total = len(scenes)
    children = ChildRuns()
    running: dict[int, tuple[str, Path, float]] = {}  # index -> (scene, log, time.monotonic() at its start)
    lock = threading.Lock()

    def one(item: tuple) -> SceneResult:
        i, scene, data = (*item, None)[:3]
        log = log_path(log_dir, i, scene, data)
        if children.stop_signal is None:
            say(f"[{i + 1}] started {job_label(scene, data)}  (log: {log})")
        with lock:
            running[i] = (job_label(scene, data), log, time.monotonic())
        try:
            res = run_scene(i, scene, opts, log_dir, rank, children, data)
        finally:
            with lock:
                running.pop(i, None)
        _say_result(res, say)
        return res

    if total == 0:
        return []
    stop = threading.Event()
    monitor = threading.Thread(target=_report_progress, args=(running, lock, stop, say), daemon=True,
                               name="nls-batch-progress")
    monitor.start()
    try:
        with children.passing_on_stops(), ThreadPoolExecutor(max_workers=max(1, min(jobs, total))) as pool:
            return list(pool.map(one, scenes))
    finally:
        stop.set()
        monitor.join()


def _report_progress(running: dict[int, tuple[str, Path, float]], lock: threading.Lock, stop: threading.Event,
                     say) -> None:
    """Until ``stop`` is set: a ``[N] running <scene>: <elapsed>, step S of T`` line for each scene of
    ``running`` that has run :data:`PROGRESS_FIRST_S` seconds, then again at doubling intervals up to
    :data:`PROGRESS_MAX_S` (a scene that trains for hours is not silent, nor does it flood the console)."""
    due: dict[int, tuple[float, float]] = {}  # index -> (when its next line is due, the interval after it)
    while not stop.wait(min(1.0, PROGRESS_FIRST_S / 4)):
        now = time.monotonic()
        with lock:
            items = list(running.items())
        for i, (scene, log, t0) in items:
            when, gap = due.get(i, (t0 + PROGRESS_FIRST_S, PROGRESS_FIRST_S))
            if now >= when and not stop.is_set():
                say(f"[{i + 1}] running {scene}: {_elapsed(now - t0)}, {scene_progress(log)}")
                gap = min(2 * gap, max(PROGRESS_MAX_S, PROGRESS_FIRST_S))
                when = now + gap
            due[i] = (when, gap)


def precheck(scene: str, opts: BatchOptions, host, data: Optional[str] = None) -> Optional[str]:
    """Validate a scene file (on ``data``, else ``opts.data``) as ``nls reconstruct`` would, before any process
    starts (no torch)."""
    from pipeline.config import load_scene

    overrides = list(opts.overrides) + ([f"train.steps={opts.steps}"] if opts.steps is not None else [])
    data = data or opts.data
    try:
        load_scene(Path(scene), host, overrides, data=Path(data) if data else None)
    except NLSError as exc:
        return _without_scene(str(exc), scene)  # the lines that print it name the scene already
    return None


def comparison_table(results: Sequence[SceneResult], out_dir: Path, *, show: bool = True) -> Optional[Path]:
    """The ``nls compare`` table over the finished runs, written to ``compare.md`` (and printed)."""
    from pipeline.compare import compare_runs, print_rich, to_markdown

    runs = [r.run_dir for r in results if r.outcome == "ok" and r.run_dir and Path(r.run_dir).is_dir()]
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


def watch_overrides(args) -> list[str]:
    """The overrides of ``--val-every N``, ``--tensorboard`` and ``--wandb`` (the same flags as ``nls
    reconstruct``'s); a missing tensorboard or wandb package is refused here, before any scene starts."""
    from pipeline.tensorboard_log import check_tensorboard
    from pipeline.wandb_log import check_wandb

    out = [f"train.val_every={args.val_every}"] if args.val_every is not None else []
    if args.tensorboard:
        check_tensorboard("--tensorboard")
        out.append("train.tensorboard=true")
    if args.wandb:
        check_wandb("--wandb")
        out.append("train.wandb=true")
    return out


def cmd_batch(args) -> int:
    """``nls batch``: see the module docstring. Exit code 0 when every scene finished, 130 when the batch
    was stopped (Ctrl-C, SIGTERM), else 1."""
    from pipeline import distributed

    from pipeline.config import parse_override

    info = distributed.from_env()
    jobs = args.jobs
    for text in args.set or []:  # a malformed --set is the command's error, not every scene's
        parse_override(text)
    cpus = os.cpu_count() or 1
    watch = watch_overrides(args)
    given = [d for group in args.data or [] for d in group]  # (--data A B ..., repeatable)
    datas = list(dict.fromkeys(str(Path(d).resolve()) for d in given))
    scene_files = [d for d in given if Path(d).suffix.lower() in (".yaml", ".yml")]
    if scene_files:
        raise NLSError(f"--data {scene_files[0]}: a scene file among the data paths (--data takes every path after "
                       f"it); give the scene files first: nls batch SCENE.yaml ... --data PATH ...")
    # one job per scene file, or per data path and scene file (the scene files' runs on each data in turn)
    jobs_of = [(s, None) for s in args.scenes] if len(datas) < 2 else [(s, d) for d in datas for s in args.scenes]
    opts = BatchOptions(output=args.output, overrides=[*(args.set or []), *watch], steps=args.steps,
                        device=args.device, plugins_dirs=list(args.plugins_dir or []), no_eval=args.no_eval,
                        scene_timeout=args.scene_timeout, data=datas[0] if len(datas) == 1 else None,
                        # runs at once: --jobs, or fewer when there are fewer scenes than jobs
                        threads=_threads_per_run(cpus, min(jobs, len(jobs_of)) * max(1, info.local_world_size)))
    scenes = [s for s, _ in jobs_of]
    data_of = [d for _, d in jobs_of]
    if info.enabled:  # torchrun: one gloo group only to agree on the folder and gather the results
        import torch

        # the ranks meet again only at the end, after scenes of unequal length (torchrun's agent
        # has done the rendezvous already and stops the job if a rank dies)
        os.environ[distributed.TIMEOUT_ENV] = str(max(BATCH_TIMEOUT_S, distributed.timeout_s()))
        info = distributed.setup(torch.device("cpu"), threads=1)
    mine = [(i, s) for i, s in enumerate(scenes) if i % info.world_size == info.rank]
    # a scene file that cannot be valid fails here, before any process starts
    problems = {i: precheck(s, opts, args.host, data_of[i]) for i, s in mine}
    if not info.enabled and all(problems.values()):  # a usage error: no batch folder, exit 2
        for i, s in mine:
            print(f"[{i + 1}] refused {job_label(s, data_of[i])}: {problems[i]}", file=sys.stderr)
        raise NLSError(f"no scene of the batch can start ({'it was' if len(mine) == 1 else f'all {len(mine)} were'} "
                       f"refused, see above); nothing was run")
    root = Path(args.output or "outputs")
    out_dir = distributed.main_creates(lambda: _batch_dir(root), info, lambda p: p, Path)
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = info.tag()

    def say(msg: str) -> None:
        print(f"{tag}{msg}", flush=True)

    if info.is_main:
        say(f"batch of {len(scenes)} scene(s)"
            + (f" ({len(args.scenes)} scene file(s) on each of {len(datas)} data paths)" if len(datas) > 1 else "")
            + f", {min(jobs, len(scenes))} at a time"
            + (f" on each of {info.world_size} ranks" if info.enabled else "")
            + f", {opts.threads} thread(s) per run; logs in {log_dir}")
    results: list[SceneResult] = []
    todo = []
    for i, s in mine:
        problem = problems[i]
        if problem:
            say(f"[{i + 1}] FAILED  {job_label(s, data_of[i])}: {problem}  (refused, not run)")
            results.append(SceneResult(i, s, "failed", None, 2, 0.0, None, problem, "", info.rank, data=data_of[i]))
        else:
            todo.append((i, s, data_of[i]))
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
    """Write batch.json and compare.md, print the outcome; the batch's exit code (0, 1 or 130)."""
    from pipeline.runs import atomic_write_text

    try:
        table = comparison_table(results, out_dir)
    except NLSError as exc:  # a run folder that cannot be read must not hide the batch outcome
        print(f"comparison table skipped: {exc}", file=sys.stderr)
        table = None
    atomic_write_text(out_dir / "batch.json", json.dumps({
        # number: 1-based, as the console's [N] and the log file's NN_ name it (index is 0-based)
        "scenes": [{"number": r.index + 1, **asdict(r)} for r in results], "compare": str(table) if table else None}, indent=2) + "\n")
    done = [r for r in results if r.outcome == "ok"]
    failed = [r for r in results if r.outcome != "ok"]
    print(f"{len(done)} of {len(results)} scene(s) finished; batch folder: {out_dir}"
          + (f"; table: {table}" if table else ""))
    for r in failed:
        print(f"{r.outcome}: {r.label}: {r.error}" + (f" (log: {r.log})" if r.log else ""), file=sys.stderr)
    if any(r.outcome == "stopped" for r in results):
        return 130
    return 0 if not failed else 1


def add_parser(sub, common) -> None:
    """Register ``nls batch`` on the CLI's sub-parsers."""
    from pipeline.cli import int_at_least, positive_seconds

    c = sub.add_parser(
        "batch", parents=[common], help="reconstruct many scenes (in parallel), then one comparison table",
        description="Train every SCENE.yaml in its own `nls reconstruct` process, --jobs at a time, each in its "
        "own run folder; a failing scene is reported and the others go on. Ends with the `nls compare` table "
        "of the finished runs. Under `torchrun --nproc_per_node N -m pipeline.cli batch ...` the scenes are "
        "spread over the ranks (and nodes). Exit code 1 when any scene failed or timed out; 130 after Ctrl-C "
        "(the running scenes stop with a checkpoint, the others are not started).")
    c.add_argument("scenes", metavar="SCENE.yaml", nargs="+", help="scene configs")
    c.add_argument("-j", "--jobs", type=int_at_least(1), default=1, metavar="N",
                   help="scenes trained at the same time (per rank; default: 1); the CPU cores are shared among them")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override applied to every scene")
    c.add_argument("-o", "--output", metavar="DIR", help="runs root (default: each scene's output.root); "
                   "the batch folder goes to DIR/batch/<stamp> (default outputs/batch/<stamp>)")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: each scene's train.device "
                   "(auto: cuda when available, else cpu)")
    c.add_argument("--steps", type=int_at_least(1), metavar="N",
                   help="training steps for every scene (default: each scene's train.steps)")
    c.add_argument("--val-every", type=int_at_least(1), metavar="N",
                   help="validate every run while it trains, every N steps (as nls reconstruct --val-every)")
    c.add_argument("--tensorboard", action="store_true", help="TensorBoard events in every run folder (as nls "
                   "reconstruct --tensorboard): tensorboard --logdir on the runs root shows the runs side by side")
    c.add_argument("--wandb", action="store_true", help="a Weights & Biases run for every run (as nls reconstruct "
                   "--wandb), grouped by scene: W&B's workspace shows the runs side by side")
    c.add_argument("--no-eval", action="store_true", help="stop each run after training")
    c.add_argument("--data", metavar="PATH", nargs="+", action="append",
                   help="train every SCENE.yaml's method and settings on this data (as `nls reconstruct SCENE.yaml "
                   "--data PATH`): methods compared on one scan or capture, e.g. nls batch "
                   "scenes/sample_network_spot.yaml scenes/lipschitz_spot.yaml --data scan.ply. Several paths (--data "
                   "A B ..., or --data repeated) train every SCENE.yaml on each, one run per pair, and the table "
                   "gives each method's mean over them: a benchmark's scenes, e.g. --data /data/dtu/dtu_scan*")
    c.add_argument("--scene-timeout", type=positive_seconds, metavar="S",
                   help="stop a scene after S seconds (default: no limit): it gets SIGTERM, and when it is training it saves a "
                   f"checkpoint and exits (go on with `nls resume RUN`); it is killed if still running "
                   f"{STOP_GRACE_S:g} s later. The batch then exits with 1, as for a failed scene")
    c.set_defaults(func=cmd_batch)
