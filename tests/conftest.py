"""Shared test setup: caches inside the project, fresh plugin hosts, CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLS_CACHE", str(ROOT / ".cache" / "nls"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["pipeline.testing"]

if os.environ.get("NLS_THREADS", "").strip().isdigit():  # scripts/test.sh sets it to 1 under several workers
    import torch

    torch.set_num_threads(int(os.environ["NLS_THREADS"]))


def run_nls(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline.cli ARGS`` in a subprocess (the same code as the ``nls`` script)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"nls {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


HEAVY_MODULES = ("torch", "nerfacc", "trimesh", "skimage", "scipy")


def cli_in_fresh_python(args: list[str]) -> tuple[object, str, list[str]]:
    """Run ``pipeline.cli.main(args)`` in a new interpreter: (its return value or SystemExit code,
    its stdout, the modules of :data:`HEAVY_MODULES` it imported)."""
    code = textwrap.dedent(f'''
        import sys, io, json, contextlib
        from pipeline.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                rc = main({args!r})
            except SystemExit as e:
                rc = e.code
        heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
        print(json.dumps([rc, buf.getvalue(), heavy]))
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    rc, stdout, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return rc, stdout, heavy


@pytest.fixture
def nls():
    return run_nls


@pytest.fixture
def tiny_scene(tmp_path):
    """Write the tiny smoke-test scene to a YAML file and return (path, dict)."""
    import copy

    import yaml

    from pipeline.testing import TINY_SCENE

    def make(**overrides):
        data = copy.deepcopy(TINY_SCENE)
        for k, v in overrides.items():
            data[k] = v
        p = tmp_path / "tiny.yaml"
        p.write_text(yaml.safe_dump(data))
        return p
    return make
