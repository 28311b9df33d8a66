"""The JIT kernel loader: a build killed mid-way (its torch ``lock`` file left behind) no longer makes every
later load wait forever, and a load that waits for another process's build says so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cpp_kernels import TORCH_BUILD_LOCK, build_guard

ROOT = Path(__file__).resolve().parents[1]


def test_build_guard_removes_the_lock_of_a_killed_build(tmp_path):
    (tmp_path / TORCH_BUILD_LOCK).write_text("")
    with pytest.warns(RuntimeWarning, match=f"removed {tmp_path / TORCH_BUILD_LOCK}, left by a killed build of the k kernel"):
        with build_guard(tmp_path, "the k kernel"):
            assert not (tmp_path / TORCH_BUILD_LOCK).exists()


def test_build_guard_waits_for_another_builder_and_says_so(tmp_path, capfd):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(tmp_path / '.nls_build.flock')!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(1.5)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with build_guard(tmp_path, "the k kernel"):
        waited = time.monotonic() - t0
    holder.wait(timeout=30)
    assert waited > 0.5
    assert f"nls: waiting for another process that is building the k kernel in {tmp_path}" in capfd.readouterr().err


def test_a_kernel_whose_last_build_was_killed_still_loads(tmp_path):
    """The real hash-grid kernel, built into a fresh folder holding the lock file of a killed build: it used to
    wait for that lock for ever (every later nls command that needed the kernel hung without a word)."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    code = ("import torch, plugins.ngp.hashgrid as hg\n"
            "from pipeline.cpp_kernels import extension_dir\n"
            "tag = ''.join(c if c.isalnum() else '_' for c in torch.__version__)\n"
            "d = extension_dir(f'nls_hashgrid_cpu_{tag}'); d.mkdir(parents=True); (d / 'lock').write_text('')\n"
            "print('loaded', hg._KERNEL.load())")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the kernel load waited for the stale build lock (no result in 240 s)")
    assert "loaded True" in proc.stdout, proc.stderr[-2000:]
    assert "left by a killed build of the hash-grid CPU kernel" in proc.stderr
