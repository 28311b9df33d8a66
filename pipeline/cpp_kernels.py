"""JIT-built C++ CPU kernels: one loader for every plugin's ``csrc/*.cpp``.

A kernel source registers its ops with ``TORCH_LIBRARY(<namespace>, m)``; :class:`CppKernel`
builds it once per torch version with ``torch.utils.cpp_extension.load`` into
``$TORCH_EXTENSIONS_DIR`` (else ``<repo>/.cache/torch_extensions``, else ``~/.cache/nls``) and
then finds the ops under ``torch.ops.<namespace>``. Loading never raises: a failed build is
recorded in :meth:`CppKernel.status`, warned about once, and callers use their pure-PyTorch path.
Every kernel can be switched off with an environment variable (``NLS_<NAME>_KERNEL=0``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

OFF_VALUES = ("0", "false", "no", "off")


def extension_dir(name: str) -> Path:
    """Build folder of extension ``name``."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        root = Path(env)
    else:
        repo = Path(__file__).resolve().parents[1]
        if (repo / "pyproject.toml").exists() or (repo / ".git").exists():
            root = repo / ".cache" / "torch_extensions"
        else:
            root = Path.home() / ".cache" / "nls" / "torch_extensions"
    return root / name


def host_cpu_tag() -> str:
    """8 hex digits that change with the CPU's instruction-set extensions (the ``flags`` of
    /proc/cpuinfo, else the processor name): a ``-march=native`` build cached in a shared folder is then
    never loaded on a CPU that lacks its instructions (that would be SIGILL, not a catchable error)."""
    import hashlib
    import platform

    ident = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                ident += " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


#: torch's build lock in an extension folder: a build killed before its cleanup leaves it, and every later
#: ``load`` of that folder then waits for it forever
TORCH_BUILD_LOCK = "lock"


@contextmanager
def build_guard(build_dir: Path, what: str):
    """Hold an exclusive ``flock`` on ``build_dir/.nls_build.flock`` (released by the OS even when the process
    is killed) around torch's build. Holding it, no nls process is building in ``build_dir``, so a torch
    :data:`TORCH_BUILD_LOCK` file found there was left by a killed build: it is removed with a warning
    instead of making torch wait for it forever. A wait for another process's build is announced."""
    import fcntl

    with open(build_dir / ".nls_build.flock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"nls: waiting for another process that is building {what} in {build_dir} (once per machine "
                  f"and torch version, about 10-30 s)", file=sys.stderr, flush=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:  # no locks on this filesystem: leave torch's own lock alone
            yield
            return
        stale = build_dir / TORCH_BUILD_LOCK
        if stale.exists():
            stale.unlink(missing_ok=True)
            warnings.warn(f"nls: removed {stale}, left by a killed build of {what}; building it again",
                          RuntimeWarning, stacklevel=3)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class CppKernel:
    """A lazily built C++ op library.

    namespace: the ``TORCH_LIBRARY`` namespace of the source (ops appear as ``torch.ops.<namespace>``).
    source: path of the ``.cpp`` file. probe: an op name that must exist after loading.
    env: environment variable that disables the kernel when set to 0/false/no/off.
    cflags: extra compiler flags (the build always uses ``-O3 -fopenmp``).
    title: what messages call it, e.g. "the hash-grid CPU kernel (hash_grid and dense_grid fields)".
    """

    def __init__(self, namespace: str, source: Path, probe: str, env: str, cflags: tuple[str, ...] = (),
                 title: str = ""):
        self.namespace, self.source, self.probe, self.env = namespace, Path(source), probe, env
        self.title = title or f"the C++ kernel {namespace}"
        self.cflags = tuple(cflags)
        self._lock = threading.Lock()
        self._state: dict = {"tried": False, "ok": False, "error": None, "seconds": None}

    @property
    def ops(self):
        """``torch.ops.<namespace>``, where the kernel's ops appear once loaded."""
        return getattr(torch.ops, self.namespace)

    def load(self, verbose: bool = False) -> bool:
        """Build (first call, ~10-30 s) and load; True when the ops are usable."""
        if self._state["tried"]:
            return self._state["ok"]
        with self._lock:
            if self._state["tried"]:
                return self._state["ok"]
            t0 = time.perf_counter()
            try:
                if os.environ.get(self.env, "1").strip().lower() in OFF_VALUES:
                    raise RuntimeError(f"disabled by {self.env}=0")
                if not self.source.exists():
                    raise RuntimeError(f"source not found: {self.source}")
                if not hasattr(torch.ops, self.namespace) or not hasattr(self.ops, self.probe):
                    from torch.utils.cpp_extension import load

                    tag = "".join(c if c.isalnum() else "_" for c in torch.__version__)
                    name = f"{self.namespace}_cpu_{tag}"
                    if "-march=native" in self.cflags:  # code for this CPU only: one build per instruction set
                        name += f"_{host_cpu_tag()}"
                    build_dir = extension_dir(name)
                    build_dir.mkdir(parents=True, exist_ok=True)
                    with build_guard(build_dir, self.title):
                        load(name=name, sources=[str(self.source)], build_directory=str(build_dir),
                             extra_cflags=["-O3", "-fopenmp", *self.cflags], extra_ldflags=["-fopenmp"],
                             is_python_module=False, verbose=verbose)
                getattr(self.ops, self.probe)  # raises if registration failed
                self._state.update(ok=True, error=None)
            except Exception as exc:  # one-time build: any failure means "use the torch path"
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())
                if len(msg) > 300:
                    msg = msg[:300] + "..."
                self._state.update(ok=False, error=msg)
                warnings.warn(f"nls: {self.title} is unavailable ({msg}); using the pure-PyTorch path",
                              RuntimeWarning, stacklevel=2)
            finally:
                self._state["tried"] = True
                self._state["seconds"] = time.perf_counter() - t0
            return self._state["ok"]

    def status(self) -> dict:
        """``{"tried", "ok", "error", "seconds"}`` of the build/load (``seconds``: load time)."""
        return dict(self._state)
