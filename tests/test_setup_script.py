"""scripts/setup.sh installs only when asked for extras that are not installed yet (with a fake venv)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for .venv/bin/python: imports succeed once "installed", and every pip call is logged.
FAKE_PYTHON = """#!/usr/bin/env bash
here="$(cd "$(dirname "$0")/../.." && pwd)"
if [ "$1" = "-c" ]; then [ -f "$here/installed" ]; exit $?; fi
echo "$*" >> "$here/pip.log"
touch "$here/installed"
"""


def _setup(root: Path, extras: str) -> list[str]:
    """Run the copied setup.sh with ``extras``; the pip calls it made."""
    log = root / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", "scripts/setup.sh", extras], cwd=root, check=True, capture_output=True, text=True,
                   env={**os.environ, "PYTHON": "false"})
    return log.read_text().splitlines() if log.exists() else []


def _fake_checkout(root: Path) -> None:
    """setup.sh and pyproject.toml copied into ``root``, with the fake .venv python."""
    (root / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    py = root / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE_PYTHON)
    py.chmod(0o755)


def test_setup_reinstalls_only_for_missing_extras(tmp_path):
    _fake_checkout(tmp_path)
    first = _setup(tmp_path, "test,viewer")  # what test.sh asks for
    assert first[0].startswith("-m pip install -q torch==") and first[1] == "-m pip install -q -e .[test,viewer]"
    assert _setup(tmp_path, "") == []  # demo.sh: no extras, nothing to install
    assert _setup(tmp_path, "test") == []  # a subset of what is installed
    assert _setup(tmp_path, "test,viewer") == []
    # a new extra installs the union, so the earlier ones stay
    assert _setup(tmp_path, "gpu") == ["-m pip install -q -e .[gpu,test,viewer]"]
    assert _setup(tmp_path, "viewer") == []


def test_nls_torch_index_is_passed_to_pip_as_the_index(tmp_path, monkeypatch):
    _fake_checkout(tmp_path)
    monkeypatch.setenv("NLS_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
    calls = _setup(tmp_path, "")
    assert calls[0] == "-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert calls[1] == "-m pip install -q -e ."


def test_an_old_install_under_the_name_nls_is_removed_first(tmp_path):
    """The distribution was renamed from nls (taken on PyPI by another project): setup removes this
    project's old dist of that name, and leaves an unrelated "nls" alone."""
    _fake_checkout(tmp_path)
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    meta = site / "nls-0.1.0.dist-info" / "METADATA"
    meta.parent.mkdir(parents=True)
    meta.write_text("Metadata-Version: 2.1\nName: nls\nVersion: 0.2.0\nSummary: NLS: Non-Linear Schrodinger\n")
    assert _setup(tmp_path, "")[-1] == "-m pip install -q -e ."
    assert not any("uninstall" in c for c in (tmp_path / "pip.log").read_text().splitlines())
    (tmp_path / "installed").unlink()
    for stamp in (tmp_path / ".venv").glob(".nls-setup-*"):
        stamp.unlink()
    meta.write_text("Metadata-Version: 2.1\nName: nls\nVersion: 0.1.0\nSummary: Neural level sets: reconstruct\n")
    calls = _setup(tmp_path, "")
    assert calls.index("-m pip uninstall -q -y nls") < calls.index("-m pip install -q -e .")
