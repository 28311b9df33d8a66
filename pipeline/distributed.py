"""Multi-process training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m pipeline.cli reconstruct SCENE.yaml`` starts N copies of the
CLI; each finds its place from the variables torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins one process
group: **gloo** on CPU, **NCCL** on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). Without
those variables everything here is a no-op and a run is the ordinary single process.

Rules the rest of the pipeline follows (see :class:`pipeline.train.Trainer`):

* every rank builds the same model from the same seed; ``DistributedDataParallel`` broadcasts
  rank 0's parameters and averages gradients, so each rank's loss must be the *mean* over its
  share of the global batch (``train.batch_items`` or ``train.batch_rays`` items in all);
* per-item randomness must come from the item index, never from the global RNG, so that a
  rank draws the same numbers for an item as a single process would;
* only rank 0 writes (run folder, ``metrics.jsonl``, checkpoints, renders, ``summary.json``);
  it creates the run folder and broadcasts its path;
* every collective runs under a timeout (``NLS_DIST_TIMEOUT`` seconds, default 600), and a
  failed collective (a peer died, hung or timed out) becomes an :class:`NLSError` that says
  so, instead of a hang or a deep traceback; torchrun then ends the job and names the rank.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Optional, TypeVar

from pipeline.types import ConfigError, NLSError

if TYPE_CHECKING:  # torch stays out of cheap imports
    import torch

T = TypeVar("T")

#: seconds a rank waits for the others in the rendezvous and in any collective
TIMEOUT_ENV = "NLS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
#: variables torchrun sets for its workers; a child run started from a rank must not inherit them
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")

RESUME_HINT = ("resume it with `nls resume {run}`, or with any number of processes: "
               "`torchrun --nproc_per_node N -m pipeline.cli resume {run}`")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job. ``world_size == 1``: a plain single process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        """Whether several processes take part (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    def tag(self) -> str:
        """``"[rank R/W] "`` to prefix messages with when enabled, else ``""``."""
        return f"[rank {self.rank}/{self.world_size}] " if self.enabled else ""


SINGLE = DistInfo()


def _env_int(env: dict, key: str, default: Optional[int]) -> Optional[int]:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {key}={value!r} must be an integer (torchrun sets it; "
                          f"unset it to run a single process)") from None


def from_env(env: Optional[dict] = None) -> DistInfo:
    """Read the process layout from torchrun's variables (none set: a single process)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    if world is None or world <= 1:
        return SINGLE
    rank = _env_int(env, "RANK", None)
    if rank is None or not 0 <= rank < world:
        raise ConfigError(f"WORLD_SIZE={world} is set but RANK={env.get('RANK')!r} is not in 0..{world - 1}. "
                          f"Launch with torchrun, which sets both, or unset WORLD_SIZE for one process.")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} is not: the processes have "
                          f"nowhere to meet. Launch with torchrun (it sets them), e.g. "
                          f"`torchrun --nproc_per_node {world} -m pipeline.cli reconstruct SCENE.yaml`.")
    local = _env_int(env, "LOCAL_RANK", rank)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    return DistInfo(world, rank, local, local_world)


def timeout_s(env: Optional[dict] = None) -> float:
    """The rendezvous/collective timeout from ``NLS_DIST_TIMEOUT`` (seconds)."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def current() -> DistInfo:
    """The layout of the process group this process has joined (``SINGLE`` when none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    info = from_env()
    return DistInfo(dist.get_world_size(), dist.get_rank(), info.local_rank, info.local_world_size,
                    dist.get_backend())


def rank_device(device: "torch.device", info: Optional[DistInfo] = None) -> "torch.device":
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; CPU is unchanged."""
    import torch

    info = from_env() if info is None else info
    if not info.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise NLSError(f"{info.tag()}LOCAL_RANK={info.local_rank} needs GPU {info.local_rank}, but this node has "
                       f"{count} CUDA device(s). Start at most {count} processes per node "
                       f"(torchrun --nproc_per_node {count}) or train on CPU (--device cpu, gloo).")
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


def setup(device: "torch.device", *, threads: Optional[int] = None) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA).

    Also gives each process its share of the CPU cores unless ``threads``/``NLS_THREADS`` say
    otherwise. A rendezvous that does not complete within the timeout is a clear error.
    """
    import torch
    import torch.distributed as dist

    info = from_env()
    if not info.enabled:
        return SINGLE
    if dist.is_initialized():
        return current()
    if threads is None and not os.environ.get("NLS_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a stuck collective aborts, not hangs
    limit = timeout_s()
    try:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=limit), **kwargs)
    except Exception as exc:  # DistStoreError / DistNetworkError / RuntimeError from the C++ side
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise NLSError(
            f"{info.tag()}rendezvous failed: not all {info.world_size} processes met at {where} within "
            f"{limit:.0f} s ({type(exc).__name__}: {_first_line(exc)}). Check that every node was started "
            f"with the same --nnodes/--nproc_per_node and --rdzv_endpoint (or --master_addr/--master_port), "
            f"that the port is reachable, or raise {TIMEOUT_ENV}.") from None
    return current()


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tidy
            pass


def leave_worker(code: int) -> NoReturn:
    """End a non-main rank whose work is done: flush, then exit without interpreter finalization.

    A gloo worker thread frees each finished collective's tensors a moment after the caller has
    seen it complete, and freeing a tensor that has a Python object needs the GIL. When the main
    thread is already finalizing, the worker is stopped inside that (noexcept) destructor and the
    process aborts: "terminate called without an active exception", SIGABRT, about once in 25
    two-rank runs under load (seen in a core dump: ``ProcessGroupGloo::runLoop`` ->
    ``~AsyncAllreduceWork`` -> ``decref_pyobject`` -> ``take_gil`` -> ``pthread_exit``). A group
    that DDP has held stays alive after ``destroy_process_group``, so destroying it does not join
    those threads. Non-main ranks write no files (rank 0 owns the run folder), so skipping
    finalization loses nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextmanager
def collective(what: str, *, run_dir: Any = None, step: Optional[int] = None) -> Iterator[None]:
    """Turn a failed collective (dead or hung peer, timeout) into one clear :class:`NLSError`."""
    try:
        yield
    except NLSError:
        raise
    except RuntimeError as exc:  # torch.distributed.DistError is a RuntimeError
        info = current()
        if not (info.enabled and _looks_distributed(exc)):
            raise  # a bug in a component, not a communication failure: keep its traceback
        at = f" at step {step}" if step is not None else ""
        run = f" Run folder: {run_dir}; {_resume_hint(Path(run_dir))}." if run_dir is not None else ""
        raise NLSError(f"{info.tag()}lost contact with the other processes while {what}{at} "
                       f"({_first_line(exc)}). Another rank died, hung or timed out: torchrun's failure "
                       f"report names it.{run}") from None


def _resume_hint(run_dir: Path) -> str:
    """How to go on with ``run_dir`` after a lost peer: the resume (with the ``--plugins-dir`` folders its
    plugins came from) when it has a checkpoint, else that there is nothing to resume."""
    if not any((run_dir / "checkpoints").glob("ckpt_*.pt")):
        return "it has no checkpoint yet, so there is nothing to resume: train it again with nls reconstruct"
    from pipeline.runs import json_record, plugins_dir_flags

    plugins = json_record(run_dir / "plugins.json")[0] or {}
    dirs = dict.fromkeys(str(Path(p["source"]).parent) for p in plugins.get("plugins") or []
                         if isinstance(p, dict) and str(p.get("source", "")).endswith(".py"))
    return RESUME_HINT.format(run=f"{run_dir}{plugins_dir_flags(dirs)}")


def _looks_distributed(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        k in text for k in ("gloo", "nccl", "connection", "timed out", "timeout", "processgroup", "broken pipe"))


def broadcast_object(obj: T, info: DistInfo, what: str = "sharing the run folder") -> T:
    """Rank 0's ``obj`` on every rank (pickled)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if info.is_main else None]
    with collective(what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def main_creates(make: Callable[[], T], info: DistInfo, path_of: Callable[[T], Any],
                 open_: Callable[[Any], T]) -> T:
    """Rank 0 runs ``make()`` (e.g. creates the run folder); the others get ``open_(path)``.

    So every rank agrees on the run folder, and only one creates it.
    """
    if not info.enabled:
        return make()
    made = make() if info.is_main else None
    path = broadcast_object(str(path_of(made)) if info.is_main else None, info)
    return made if info.is_main else open_(path)


def flatten_dict(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "l": [2]} -> {"a.b": 1, "l.0": 2}`` (for naming differing keys)."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten_dict(v, f"{prefix}{k}."))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            out.update(flatten_dict(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = data
    return out


def config_digest(data: dict) -> str:
    """The first 16 hex digits of the sha256 of ``data`` as sorted-key JSON (other values as ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same_config(data: dict, info: DistInfo, what: str = "resolved config") -> None:
    """Refuse to train when the ranks disagree on the config (or plugin versions).

    Every rank contributes its flattened ``data``; all ranks raise the same :class:`ConfigError`
    naming the keys that differ from rank 0 and the values on each side.
    """
    if not info.enabled:
        return
    import torch.distributed as dist

    mine = flatten_dict(data)
    gathered: list = [None] * info.world_size
    with collective(f"comparing the {what} across ranks"):
        dist.all_gather_object(gathered, (config_digest(mine), mine))
    ref_digest, ref = gathered[0]
    diffs = []
    for r, (digest, theirs) in enumerate(gathered):
        if digest == ref_digest:
            continue
        for key in sorted(set(ref) | set(theirs)):
            if ref.get(key, "<missing>") != theirs.get(key, "<missing>"):
                diffs.append(f"{key}: rank 0 has {ref.get(key, '<missing>')!r}, rank {r} has "
                             f"{theirs.get(key, '<missing>')!r}")
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigError(f"{info.tag()}the {info.world_size} processes disagree on the {what}: {shown}. "
                          f"Every rank must run the same scene file, --set overrides and plugin versions "
                          f"(on several nodes: the same checkout and data paths).")


def all_reduce_mean(values: "torch.Tensor", info: DistInfo, *, what: str = "averaging metrics",
                    step: Optional[int] = None, run_dir: Any = None) -> "torch.Tensor":
    """Mean over ranks of a 1-D float tensor (returned unchanged for a single process)."""
    if not info.enabled:
        return values
    import torch
    import torch.distributed as dist

    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    buf = values.detach().to(device=where, dtype=torch.float64, copy=True)
    with collective(what, step=step, run_dir=run_dir):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / info.world_size).to(values.device)


def clean_child_env(env: Optional[dict] = None) -> dict:
    """A copy of ``env`` without torchrun's variables, for single-process child runs."""
    env = dict(os.environ if env is None else env)
    for k in TORCHRUN_ENV:
        env.pop(k, None)
    return env


class LauncherWatch:
    """Tells whether the torchrun agent that started this process is gone.

    torchrun starts its workers in sessions of their own, so a launcher killed with SIGKILL (or lost with
    its terminal) takes no worker with it: they would train on unseen, holding the cores or GPUs. The
    agent is a worker's parent; when it dies the worker is re-parented, and :meth:`gone` turns true.
    The trainer then stops at a step boundary with a checkpoint, as for SIGTERM. A process that torchrun
    did not start (no ``TORCHELASTIC_RUN_ID``) is never watched: its parent is a shell or ``nohup``.
    """

    def __init__(self, env: Optional[dict] = None):
        env = os.environ if env is None else env
        #: the launcher's pid, noted at start (None: not a torchrun worker)
        self.pid: Optional[int] = os.getppid() if env.get("TORCHELASTIC_RUN_ID") else None

    def gone(self) -> bool:
        """Whether this process was started by torchrun and its launcher has died since."""
        return self.pid is not None and os.getppid() != self.pid


def launch_argv(info: DistInfo) -> Optional[list[str]]:
    """The command line to record in ``cmd.txt``: the torchrun launch under torchrun, else None."""
    if not info.enabled:
        return None
    nodes = max(1, info.world_size // max(1, info.local_world_size))
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={info.local_world_size}", "-m", "pipeline.cli",
            *sys.argv[1:]]


def log(info: DistInfo, message: str) -> None:
    """Print to stderr on rank 0 only."""
    if info.is_main:
        print(message, file=sys.stderr)
