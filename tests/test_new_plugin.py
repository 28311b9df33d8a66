"""`nls new-plugin` makes an installable package whose own test passes and that nls picks up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline.testing import TINY_SCENE


def test_new_plugin_installs_lists_and_runs(tmp_path, nls):
    res = nls("new-plugin", "sparsity", "--dir", str(tmp_path), check=True)
    pkg = tmp_path / "nls-sparsity"
    assert pkg.is_dir() and "pip install -e" in res.stdout and "check it:    nls plugins sparsity " in res.stdout
    # install into a private target folder (not the project venv), found through PYTHONPATH
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, text=True)
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    data = json.loads(nls("plugins", "--json", env=env, check=True).stdout)
    plugin = next(p for p in data if p["name"] == "sparsity")
    assert plugin["source"].startswith("entry point of nls-sparsity")
    assert plugin["components"][0]["name"] == "sparsity_opacity"
    assert plugin["components"][0]["description"].startswith("weight x mean rendered opacity")
    (shown,) = json.loads(nls("plugins", "sparsity", "--json", env=env, check=True).stdout)["plugins"]  # as next steps say
    assert [c["name"] for c in shown["components"]] == ["sparsity_opacity"] and "weight" in shown["components"][0]["options"]
    # its generated test passes
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                          capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "3 passed" in test.stdout, test.stdout  # registration, the loss value, and a short training
    assert (pkg / "README.md").read_text().startswith("# nls-sparsity\n")
    # and a short reconstruction uses it
    scene = dict(TINY_SCENE, losses=[{"type": "photometric"}, {"type": "sparsity_opacity", "weight": 0.01}])
    p = tmp_path / "scene.yaml"
    p.write_text(yaml.safe_dump(scene))
    nls("reconstruct", str(p), "--output", str(tmp_path / "runs"), "-q", "--no-eval", env=env, check=True)
    run = next((tmp_path / "runs").glob("*/*/*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/1_sparsity_opacity" in r for r in rows)
    # NLS_LOAD_PLUGINS="" switches third-party plugins off
    off = json.loads(nls("plugins", "--json", env={**env, "NLS_LOAD_PLUGINS": ""}, check=True).stdout)
    assert "sparsity" not in [p["name"] for p in off]


@pytest.mark.parametrize("name", ["abc_", "a__b", "x" * 65])
def test_new_plugin_names_that_make_no_valid_package_name_are_refused(tmp_path, name):
    """nls-abc- (from abc_) is not a valid project name for pip, and a 300-character name is too long a path."""
    from pipeline.scaffold import new_plugin
    from pipeline.types import NLSError

    with pytest.raises(NLSError, match="must start with a lowercase letter"):
        new_plugin(name, tmp_path)
    assert not list(tmp_path.iterdir())


def test_new_plugin_rejects_bad_names(tmp_path, nls):
    proc = nls("new-plugin", "Bad-Name", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "must start with a lowercase letter" in proc.stderr
    proc = nls("new-plugin", "ngp", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "'ngp' is a built-in plugin's" in proc.stderr and not list(tmp_path.iterdir())
