"""``nls new-plugin NAME``: a pip-installable plugin package that registers one component; without
installing it, ``--plugins-dir nls-NAME/nls_NAME`` loads it (see :func:`next_steps`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from pipeline.runs import mkdir_failure
from pipeline.types import NLSError

PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "nls-{dash}"
version = "0.1.0"
description = "An nls plugin: {name}"
requires-python = ">=3.10"
# nls's distribution: install it from its repository first (pip install -e <nls checkout>); it is not
# on PyPI (PyPI's "nls" is an unrelated package)
dependencies = ["neural-level-sets"]

[project.entry-points.nls]
{name} = "nls_{name}.plugin"

[tool.setuptools.packages.find]
include = ["nls_{name}*"]
'''

PLUGIN = '''"""nls plugin ``{name}``: registers one loss term, ``{name}_opacity``.

It penalises mean rendered opacity (a sparsity prior that empties space the images do not
need). Replace it with your own component; see `nls plugins --all` for the stages.
"""

from pydantic import Field

from pipeline.components import ComponentConfig
from pipeline.hookspecs import hookimpl

__version__ = "0.1.0"


class OpacityConfig(ComponentConfig):
    """Options of ``{name}_opacity``."""

    weight: float = Field(1e-3, ge=0, description="loss weight")


def build(cfg: OpacityConfig, ctx):
    def loss(batch, out, system):  # out["opacity"]: (R, 1) rendered opacity
        return cfg.weight * out["opacity"].mean()

    import torch

    class Loss(torch.nn.Module):
        def forward(self, batch, out, system):
            return loss(batch, out, system)

    return Loss()


@hookimpl
def nls_register_losses(register):
    register("{name}_opacity", build, config=OpacityConfig, consumes=[{{"render"}}],
             description="weight x mean rendered opacity: pushes empty space towards transparent")
'''

TEST = '''"""Tests of the {name} plugin, using nls's fixtures for plugin authors."""

import json
import math

import torch
import yaml

from pipeline.cli import main
from pipeline.testing import TINY_SCENE, plugin_host
from nls_{name} import plugin


def test_registers_component():
    host = plugin_host(("{name}", plugin))
    comp = host.component("loss", "{name}_opacity")
    assert comp.plugin == "{name}"


def test_loss_value():
    host = plugin_host(("{name}", plugin))
    comp = host.component("loss", "{name}_opacity")
    loss = comp.build(comp.config_class()(weight=2.0), None)
    out = {{"opacity": torch.full((8, 1), 0.25)}}
    assert abs(float(loss({{}}, out, None)) - 0.5) < 1e-6


def test_trains_the_tiny_scene_with_it(tmp_path):
    """A few steps of nls's tiny procedural scene with the loss. nls finds the plugin through its
    entry point, so install the package first (pip install -e .)."""
    scene = dict(TINY_SCENE, losses=[{{"type": "photometric"}}, {{"type": "{name}_opacity", "weight": 0.01}}])
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(scene))
    rc = main(["reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--no-eval"])
    assert rc == 0, "nls reconstruct failed (see its error above; is the package installed?)"
    run = next((tmp_path / "runs").glob("*/*/*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    values = [r["loss/1_{name}_opacity"] for r in rows if "loss/1_{name}_opacity" in r]
    assert values and all(math.isfinite(v) for v in values)
'''


def new_plugin(name: str, parent: Path) -> Path:
    """Write the plugin package ``<parent>/nls-<name>/`` (pyproject.toml, ``nls_<name>/plugin.py``, a
    test, README.md) and return its folder; an invalid, built-in or existing name raises NLSError."""
    # the package name nls-<name with - for _> must be a valid project name: no trailing or doubled _
    if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name) or len(name) > 64:
        raise NLSError(f"plugin name {name!r} must start with a lowercase letter, use only a-z, 0-9 and single _ "
                       f"between them (not at the end), and have at most 64 characters")
    from pipeline.plugins import DEFAULT_PLUGINS

    taken = sorted(n for n, _ in DEFAULT_PLUGINS)
    if name in taken:
        raise NLSError(f"plugin name {name!r} is a built-in plugin's (taken: {', '.join(taken)}); "
                       f"two plugins with one name cannot load together. Choose another name")
    root = Path(parent) / f"nls-{name.replace('_', '-')}"
    if root.exists():
        raise NLSError(f"{root} already exists; choose another name or --dir")
    pkg = root / f"nls_{name}"
    try:
        (root / "tests").mkdir(parents=True)
        pkg.mkdir()
    except OSError as exc:
        raise NLSError(f"cannot create {root}: {mkdir_failure(exc, root / 'tests')}") from None
    (root / "pyproject.toml").write_text(PYPROJECT.format(name=name, dash=name.replace("_", "-")))
    (pkg / "__init__.py").write_text(f'"""nls plugin {name}."""\n')
    (pkg / "plugin.py").write_text(PLUGIN.format(name=name))
    (root / "tests" / f"test_{name}.py").write_text(TEST.format(name=name))
    (root / "README.md").write_text(f"# {root.name}\n\nAn nls plugin. It needs the nls pipeline (distribution "
                                    f"`neural-level-sets`) installed from its repository in the same environment; "
                                    f"it is not on PyPI, whose `nls` is an unrelated package. Install with "
                                    f"`pip install -e .`, "
                                    f"check with `nls plugins {name}`, test with `pytest`.\n\nTo try it without "
                                    f"installing, give nls its package folder (from this folder):\n\n"
                                    f"```bash\nnls reconstruct SCENE.yaml --plugins-dir {pkg.name}\n```\n\n"
                                    f"It loads `{pkg.name}/plugin.py` as plugin `{name}`, the name the entry "
                                    f"point gives it once installed (the tests need it installed).\n\n"
                                    f"Use it in a scene:\n\n"
                                    f"```yaml\nlosses:\n  - type: photometric\n  - type: {name}_opacity\n"
                                    f"    weight: 0.001\n```\n")
    return root


def next_steps(name: str, root: Path) -> str:
    """What to do with the package ``root`` that :func:`new_plugin` wrote for plugin ``name``, as
    ``nls new-plugin`` prints it: install it, or use it without installing (``--plugins-dir`` on its
    package folder, which loads ``nls_<name>/plugin.py`` as plugin ``name``), and check it."""
    pkg = Path(root) / f"nls_{name}"
    q = shlex.quote
    return (f"created plugin package {root}\n"
            f"install it:  pip install -e {q(str(root))}\n"
            f"or use it without installing:  nls reconstruct SCENE.yaml --plugins-dir {q(str(pkg))}\n"
            f"check it:    nls plugins {q(name)}   and   pytest {q(str(root))}")
