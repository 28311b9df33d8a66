"""Run folders, atomic checkpoints and resume.

Layout of one run (``outputs/<scene>/<method>/<timestamp>/``)::

    config.yaml     resolved config (yaml.safe_load reads it back)
    plugins.json    plugin names and versions, and which plugin supplied each component
    cmd.txt         the command line that made the run (one line per invocation: ``cd <cwd> && nls ...``)
    metrics.jsonl   one JSON object per logged step
    summary.json    final metrics, wall time, device, versions
    warnings.json   warnings given while loading and training, as of the newest checkpoint (when any)
    checkpoints/    ckpt_<step>.pt (+ .sha256), written atomically; the newest two are kept
    renders/        test renders, side-by-sides, videos (made when something is rendered)
    meshes/         exported meshes (made when a mesh is exported)
    kept/<option>   copies the scene source asked the run to keep (``SceneData.meta["keep"]``), given back as
                    ``scene.<option>`` when the run is loaded again (a photos scene's SfM model)
"""

from __future__ import annotations

import datetime as _dt
import functools
import glob
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.types import CheckpointError, NLSError

CKPT_GLOB = "ckpt_*.pt"
#: the warnings a run gave while it loaded and trained, as of its newest checkpoint (summary.json repeats
#: them with those of the evaluation); read by compare and report for runs without summary.json
WARNINGS_RECORD = "warnings.json"
#: each training image's learned colour transform as of the newest checkpoint (``train.exposure``)
EXPOSURE_RECORD = "exposure.json"
#: each training camera's learned pose correction and refined pose as of the newest checkpoint (``train.refine_poses``)
POSES_RECORD = "poses.json"


@functools.lru_cache(maxsize=None)
def process_umask() -> int:
    """The process's umask. Read once: the only way to read it is to set it, which would briefly change
    it for every thread."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """0o666 less the process umask: the mode ``open()`` would give a new file."""
    return 0o666 & ~process_umask()


#: a temporary folder (scene cache) older than this was left by a killed process; a younger one may be another
#: process at work
STALE_TEMP_SECONDS = 24 * 3600
#: the same for the temporary file of :func:`atomic_write_bytes`, which lives for one write
STALE_TEMP_FILE_SECONDS = 3600


def sweep_stale_temps(folder: Path, pattern: str, max_age: float = STALE_TEMP_SECONDS) -> None:
    """Delete the files and folders of ``folder`` matching the glob ``pattern`` whose last change is more than
    ``max_age`` seconds ago: temporaries of processes that were killed before they could remove them."""
    import shutil
    import time

    for tmp in Path(folder).glob(pattern):
        try:
            if time.time() - tmp.lstat().st_mtime > max_age:
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and rename.

    The file gets the usual mode of a new file (umask applied), not mkstemp's 0600, so run
    folders on a shared filesystem stay readable. An OS error is raised as NLSError naming
    ``path``; the temp file is removed, and temp files of ``path`` that killed writers left (older than
    :data:`STALE_TEMP_FILE_SECONDS`) are swept.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise NLSError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise NLSError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    sweep_stale_temps(path.parent, f".{glob.escape(path.name)}.*.tmp", STALE_TEMP_FILE_SECONDS)


def atomic_write_image(path: Path, image, **kwargs) -> None:
    """Encode ``image`` (an array imageio takes; ``kwargs`` go to its writer) in the format of ``path``'s
    suffix, in memory, and write it with :func:`atomic_write_bytes`: a killed or failed write leaves the
    previous file, never an empty or half-written image, and an OS error is an NLSError naming ``path``."""
    import imageio.v3 as iio

    atomic_write_bytes(path, iio.imwrite("<bytes>", image, extension=Path(path).suffix, **kwargs))


def atomic_save_npy(path: Path, array) -> None:
    """``numpy.save`` of ``array`` to ``path`` through :func:`atomic_write_bytes`."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entry list, so a rename into it survives a power loss (best effort: some
    filesystems refuse to open a folder for this)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path``; an OS error (a full disk, a read-only folder) is raised as
    NLSError naming ``path``."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as exc:
        raise NLSError(f"cannot append to {path}: {exc.strerror or exc}") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, through :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def mkdir_failure(exc: OSError, folder: Path) -> str:
    """Why creating ``folder`` failed, for a message: a dangling symbolic link on the way is named with
    its target (mkdir reports it only as "File exists"), and the missing path that target leads to when
    it is relative or another link, or the loop of links it leads into; else the OS error's text."""
    for part in (Path(folder), *Path(folder).parents):
        if part.is_symlink() and not part.exists():
            target, missing = os.readlink(part), os.path.realpath(part)
            if os.path.islink(missing):  # realpath stops at a loop of links: nothing is missing
                return f"{part} is a symbolic link to {target}, which leads into a loop of symbolic links"
            leads = f" (leading to {missing})" if missing != target else ""
            return f"{part} is a symbolic link to {target}{leads}, which does not exist"
    return exc.strerror or str(exc)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a ``mkdir -p`` would build on)."""
    while not path.exists():
        path = path.parent
    return path


def _write_probe(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises the OSError when that is refused."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    os.close(fd)
    os.unlink(tmp)


def check_writable(root: Path) -> None:
    """Fail early, with the path, when runs cannot be written under ``root``."""
    root = Path(root)
    probe = _nearest_existing(root)
    if not probe.is_dir():
        raise NLSError(f"output folder {root}: {probe} exists and is not a directory. "
                       f"Choose another --output.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NLSError(f"output folder {root} is not writable ({probe} denies writing). "
                       f"Choose a writable --output or fix the permissions.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_probe(root)
    except OSError as exc:
        raise NLSError(f"output folder {root} is not writable: {mkdir_failure(exc, root)}. "
                       f"Choose a writable --output.") from None


def check_output_file(path: Path, what: str = "output") -> Path:
    """Make ``path``'s folder and fail early, naming it, when ``path`` cannot be written as a file.

    Called before any expensive work so that a bad ``-o/--output`` loses nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise NLSError(f"cannot write {what} to {path}: it is a directory. Give a file name.")
    probe = _nearest_existing(path.parent)
    if not probe.is_dir():
        raise NLSError(f"cannot write {what} to {path}: {probe} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NLSError(f"cannot create folder {path.parent} for {what} {path}: "
                       f"{mkdir_failure(e, path.parent)}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise NLSError(f"cannot write {what} to {path}: {path.parent} is not writable")
    try:  # a real probe: access() says yes for root, and for folders such as /proc
        _write_probe(path.parent)
    except OSError as exc:
        raise NLSError(f"cannot write {what} to {path}: {exc.strerror or exc}") from None
    return path


def runs_below_hint(folder: Path, limit: int = 5) -> str:
    """'; the runs below it: A, B (newest first) ...' for the run folders (holding config.yaml) up to two levels
    under ``folder`` (``outputs/<scene>`` or ``outputs/<scene>/<method>``), or '' when there are none."""
    try:
        found = [p.parent for depth in ("*/config.yaml", "*/*/config.yaml") for p in folder.glob(depth)]
    except OSError:
        return ""
    if not found:
        return ""
    found.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0.0, reverse=True)
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return f"; the runs below it, newest first: {', '.join(str(p) for p in found[:limit])}{more}"


class RunDir:
    """A run folder. Create with :meth:`create` (new run) or :meth:`open` (existing)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # -- paths ----------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    plugins_path = property(lambda self: self.path / "plugins.json")
    ckpt_dir = property(lambda self: self.path / "checkpoints")
    renders_dir = property(lambda self: self.path / "renders")
    meshes_dir = property(lambda self: self.path / "meshes")

    @classmethod
    def create(cls, root: Path, scene: str, method: str, *, stamp: Optional[str] = None) -> "RunDir":
        """Make a new run folder ``<root>/<scene>/<method>/<stamp>`` (``-2``, ``-3``, ... appended when
        taken; ``stamp`` defaults to the current time) with an empty ``checkpoints/``."""
        root = Path(root)
        check_writable(root)
        stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = root / _safe(scene) / _safe(method)
        base.mkdir(parents=True, exist_ok=True)
        path, i = base / stamp, 1
        while True:  # mkdir, not exists(): runs started at the same second (nls batch) get their own
            try:
                path.mkdir()
                break
            except FileExistsError:
                i += 1
                path = base / f"{stamp}-{i}"
        (path / "checkpoints").mkdir()  # renders/ and meshes/ appear with their first file
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        """An existing run folder; raises NLSError when ``path`` is not a folder holding ``config.yaml``."""
        path = Path(path)
        if path.is_file():
            raise NLSError(f"{path} is a file, not a run folder. Give a folder made by `nls reconstruct` "
                           f"(outputs/<scene>/<method>/<timestamp>).")
        if not path.is_dir():
            raise NLSError(f"run folder {path} does not exist. Give a folder made by `nls reconstruct` "
                           f"(outputs/<scene>/<method>/<timestamp>).")
        if not (path / "config.yaml").exists():
            raise NLSError(f"{path} is not a run folder: it has no config.yaml. Give a folder made by "
                           f"`nls reconstruct`{runs_below_hint(path)}.")
        return cls(path)

    # -- records --------------------------------------------------------------------
    def record_command(self, argv: Optional[list[str]] = None) -> None:
        """Append ``argv`` (default: ``nls`` and this process's arguments) to ``cmd.txt`` as one
        shell-quoted line that runs it again from anywhere: ``cd <working directory> && <argv>``
        (relative paths in ``argv`` are relative to that folder). Not atomic."""
        argv = argv if argv is not None else ["nls", *sys.argv[1:]]
        _append_line(self.path / "cmd.txt", command_line(argv))

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as indented JSON to the run's file ``name``, atomically; returns its path."""
        p = self.path / name
        atomic_write_text(p, json.dumps(data, indent=2, sort_keys=False, default=json_default) + "\n")
        return p

    def keep_scene_files(self, keep: Any) -> None:
        """Copy what the scene source asked to keep (``{option: file or folder}``, ``SceneData.meta["keep"]``)
        into ``kept/<option>``, each atomically (a temp copy renamed); entries that are not a name and an
        existing path are skipped."""
        import shutil

        if not isinstance(keep, dict):
            return
        for option, source in keep.items():
            source = Path(str(source))
            if not (isinstance(option, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", option) and source.exists()):
                continue
            (self.path / "kept").mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.path / "kept", prefix=f".{option}.")) / option
            (shutil.copytree if source.is_dir() else shutil.copyfile)(source, tmp)
            os.replace(tmp, self.path / "kept" / option)
            os.rmdir(tmp.parent)

    def kept_scene_overrides(self) -> list[str]:
        """``scene.<option>=<path>`` for every copy in ``kept/`` (:meth:`keep_scene_files`), to load the scene
        with them."""
        kept = self.path / "kept"
        names = sorted(p.name for p in kept.iterdir() if not p.name.startswith(".")) if kept.is_dir() else []
        return [f"scene.{name}={json.dumps(str(kept / name))}" for name in names]

    def read_json(self, name: str) -> Optional[dict]:
        """The JSON object in the run's file ``name``; None when the file is missing or cannot be read as
        one (:func:`json_record` says why)."""
        return json_record(self.path / name)[0]

    def log_metrics(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl`` as one JSON line (not atomic)."""
        _append_line(self.metrics_path, json.dumps(record, default=json_default))

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` ([] without it): the lines that hold a JSON object. A line
        that is not valid UTF-8 or JSON (cut by a kill), or that holds another JSON value (a list, a
        number), is skipped. Raises NLSError naming the file when it cannot be read at all (a folder,
        no permission)."""
        path = self.metrics_path
        if not path.exists():
            return []
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NLSError(f"cannot read {path}: {exc.strerror or exc}") from None
        out = []
        for line in data.splitlines():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # a line cut by a kill
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so steps never repeat.

        metrics.jsonl is rewritten with the records of :meth:`read_metrics` whose ``step`` is an
        integer no larger than ``step``. A record without an integer step (missing, null, text, a
        bool, a fraction) cannot be placed before or after the checkpoint, so it is dropped as well,
        as are the lines :meth:`read_metrics` skips: every line of the rewritten file is a record that
        training logged at or before ``step``."""
        def kept(r: dict) -> bool:
            s = r.get("step")
            return isinstance(s, int) and not isinstance(s, bool) and s <= step

        rows = [r for r in self.read_metrics() if kept(r)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- checkpoints ----------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """The ``checkpoints/ckpt_*.pt`` files, sorted by name (oldest step first)."""
        return sorted(self.ckpt_dir.glob(CKPT_GLOB))

    def save_checkpoint(self, state: dict, step: int, keep: int = 2) -> Path:
        """Atomically write ``ckpt_<step>.pt`` and its sha256; keep the newest ``keep``."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getbuffer()  # a view: getvalue() copied the whole checkpoint (100 MB for csg_dense) once more
        path = self.ckpt_dir / f"ckpt_{step:08d}.pt"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest() + "\n")
        try:
            atomic_write_bytes(path, data)
        except BaseException:  # e.g. a full disk: no digest of a checkpoint that never landed
            path.with_suffix(".pt.sha256").unlink(missing_ok=True)
            raise
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".pt.sha256").unlink(missing_ok=True)
        # leftovers of a process killed mid-save: a digest whose checkpoint never landed, temp files
        for digest in self.ckpt_dir.glob("ckpt_*.pt.sha256"):
            if not digest.with_suffix("").exists():
                digest.unlink(missing_ok=True)
        for tmp in self.ckpt_dir.glob(".ckpt_*.tmp"):
            tmp.unlink(missing_ok=True)
        return path

    def training_lock(self, enabled: bool = True):
        """Hold ``.lock`` in the run folder (an exclusive ``flock``, released when the process ends, even
        by SIGKILL) while this process trains and evaluates the run; a second ``nls resume`` of the same
        folder meanwhile raises NLSError instead of interleaving checkpoints and metrics."""
        if not enabled:
            return contextlib.nullcontext()
        return exclusive_lock(self.path / ".lock", lambda pid: (
            f"{self.path} is being trained by another nls process (pid {pid}); wait for it to finish, or "
            f"stop it, then run this again"), "trains this run")

    def trainer_pid(self) -> Optional[str]:
        """The pid of the process that holds :meth:`training_lock` now, or None when the run is not being
        trained (or locks are not available here)."""
        import fcntl

        try:
            with open(self.path / ".lock") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return f.read().strip() or "?"
                except OSError:
                    return None
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        except OSError:
            return None
        return None

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest ``checkpoints/ckpt_*.pt``, or None."""
        ck = self.checkpoints()
        return ck[-1] if ck else None

    def load_checkpoint(self, path: Optional[Path] = None, map_location: str = "cpu") -> dict:
        """Load and verify ``path`` (default: the newest checkpoint) with
        :func:`load_checkpoint_file`; raises CheckpointError when the run has none."""
        path = path or self.latest_checkpoint()
        if path is None:
            raise CheckpointError(f"run {self.path} has no checkpoint in {self.ckpt_dir}; "
                                  f"start a new run with `nls reconstruct {self.config_path} --output "
                                  f"{self.path.parents[2]}` (beside this one).")
        return load_checkpoint_file(path, map_location, self.checkpoints())


@contextmanager
def exclusive_lock(path: Path, busy: Callable[[str], str], doing: str, *, remove: bool = False):
    """Hold an exclusive ``flock`` on ``path`` (released when the process ends, even by SIGKILL), with this
    process's pid in it; when another process holds it, NLSError ``busy(its pid)``. On a filesystem without
    locks (some network mounts) it warns that nothing stops another process that ``doing`` at once.
    ``remove``: delete ``path`` when done (the lock is then re-checked to be on the file at ``path``, so a
    process that opened the removed file cannot hold a stale lock beside a new one)."""
    import fcntl

    while True:
        try:
            f = open(path, "a+")
        except OSError as exc:
            raise NLSError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise NLSError(busy(holder)) from None
        except OSError as exc:
            f.close()
            print(f"warning: cannot lock {path} ({exc.strerror or exc}); make sure no other process {doing} "
                  f"at the same time", file=sys.stderr)
            yield
            return
        if not remove or _same_file(f, path):
            break
        f.close()  # the file was removed by its last holder after we opened it: lock the new one
    with f:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _same_file(f, path: Path) -> bool:
    """Whether the open file ``f`` is the file now at ``path``."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


def file_sha256(path) -> Optional[str]:
    """Hex sha256 of a file's bytes (None when it cannot be read): records which input a run used."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def source_version() -> dict:
    """The code a run was made with, when nls runs from a git checkout: ``{"commit": sha, "dirty":
    bool}`` (dirty: tracked files changed since the commit); ``{}`` without git or a checkout."""
    import subprocess

    from pipeline.scenes import repo_root

    root = repo_root()
    if not (root / ".git").exists():
        return {}
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout.strip()
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def plugins_dir_flags(dirs) -> str:
    """``' --plugins-dir D'`` (shell-quoted) for each folder of ``dirs``: what a printed follow-up command
    (``nls resume RUN ...``) needs so that it runs as copied."""
    return "".join(f" --plugins-dir {shlex.quote(str(d))}" for d in dirs)


def command_line(argv: list[str], cwd: Optional[str] = None) -> str:
    """``argv`` as one shell line run from ``cwd`` (default: this process's working directory):
    ``cd <cwd> && <argv>``, shell-quoted; ``argv`` alone when the working directory is gone."""
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError:  # deleted meanwhile
            return shlex.join(argv)
    return f"cd {shlex.quote(cwd)} && {shlex.join(argv)}"


def load_checkpoint_file(path: Path, map_location: str = "cpu", siblings: list[Path] = ()) -> dict:
    """Load and verify a checkpoint; corrupt or truncated files raise :class:`CheckpointError`."""
    import torch

    path = Path(path)
    older = [p for p in siblings if p != path and p.name < path.name]

    def hint() -> str:  # only on failure: it reads and hashes the older checkpoint
        return _fallback_hint(path, older[-1] if older else None)

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}.") from None
    digest_file = path.with_suffix(".pt.sha256")
    if digest_file.exists():
        try:
            want = digest_file.read_text().strip()
        except OSError as exc:  # e.g. pruned meanwhile by the process training this run
            raise CheckpointError(f"{digest_file} cannot be read ({exc.strerror or exc}); if a process is "
                                  f"training this run and pruned it, run the command again") from None
        if not re.fullmatch(r"[0-9a-f]{64}", want):
            raise CheckpointError(f"{digest_file} is not a sha256 digest (64 hex digits), so {path.name} "
                                  f"cannot be verified. If the checkpoint is known to be good, delete "
                                  f"{digest_file.name} to load it unverified.{hint()}")
        if hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({len(data)} bytes; "
                                  f"its sha256 does not match {digest_file.name}).{hint()}")
    import io

    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be loaded "
                              f"({type(exc).__name__}).{hint()}") from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not an nls checkpoint (missing 'step'/'model').{hint()}")
    return state


def _fallback_hint(path: Path, older: Optional[Path]) -> str:
    """The advice after ``path`` fails to load: fall back on ``older`` only when its digest verifies."""
    if older is None:
        return " Start a new run with `nls reconstruct`."
    digest = older.with_suffix(".pt.sha256")
    try:
        intact = (not digest.exists()
                  or file_sha256(older) == digest.read_text().strip())
    except OSError:
        intact = False
    if intact:
        return f" An older checkpoint exists ({older.name}): delete {path.name} to resume from it."
    return (f" The older checkpoint {older.name} is damaged too (its sha256 does not match); "
            f"start a new run with `nls reconstruct`.")


def _safe(name: str) -> str:
    """``name`` as one folder name: characters other than letters, digits, ``-``, ``_`` and ``.`` become
    ``_``, and leading dots too, so ``.`` and ``..`` cannot leave the runs root."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
    stripped = safe.lstrip(".")
    return "_" * (len(safe) - len(stripped)) + stripped if safe else "unnamed"


def _kind_of(v: Any) -> str:
    """What a JSON value is, in words: 'a list', 'a string', 'a number', 'true or false', 'null'."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true or false"
    if isinstance(v, (int, float)):
        return "a number"
    return "a string" if isinstance(v, str) else "a list"


def os_reason(exc: OSError) -> str:
    """Why a file could not be opened, in words: 'is a directory, not a file' or 'cannot be read (...)'."""
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot be read ({exc.strerror or exc})"


def json_record(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """The JSON object of a run's record ``path`` and None, or None and why it could not be read
    ("is not valid JSON (damaged or cut off)", "holds a list, not a JSON object", ...). (None, None)
    when the file does not exist."""
    if not path.exists():
        return None, None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "is not UTF-8 text (damaged)"
    except OSError as exc:
        return None, os_reason(exc)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None, "is not valid JSON (damaged or cut off)"
    if not isinstance(data, dict):
        return None, f"holds {_kind_of(data)}, not a JSON object"
    return data, None


def json_default(o: Any) -> Any:
    """JSON form of what ``json`` cannot write: tensors and numpy arrays or scalars through ``tolist``
    (a number when 0-d, else nested lists), anything else as text."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)
