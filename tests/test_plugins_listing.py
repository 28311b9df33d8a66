"""`nls plugins` output: `--config` lists the scene file's train:, eval:, output: and reference: keys (they were
learnt only from a misspelt key's error), and piped listings are narrow, honour COLUMNS and carry no
trailing spaces (they were 200 columns wide, 114 of 130 lines padded with spaces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.config import EvalConfig, OutputConfig, ReferenceValue, TrainConfig
from tests.conftest import ROOT, cli_in_fresh_python

BLOCKS = {"train": TrainConfig, "eval": EvalConfig, "output": OutputConfig, "reference": ReferenceValue}


def piped(*args: str, columns: str | None = None) -> subprocess.CompletedProcess:
    """``nls ARGS`` with stdout a pipe, ``COLUMNS`` unset or set to ``columns``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "plugins", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_config_json_lists_every_key_of_the_scene_blocks_with_default_type_and_help():
    proc = piped("--config", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data) == ["train", "eval", "output", "reference"]
    for key, cls in BLOCKS.items():
        block = data[key]
        assert block["class"] == cls.__name__ and f"`{key}:`" in block["description"], block
        assert list(block["options"]) == list(cls.model_fields), key
        for name, f in cls.model_fields.items():
            o = block["options"][name]
            default = "(required)" if f.is_required() else f.get_default(call_default_factory=True)
            default = default.model_dump() if hasattr(default, "model_dump") else default
            assert o["default"] == default and o["help"] == (f.description or ""), (key, name, o)
    assert data["train"]["options"]["batch_rays"]["type"] == "int"
    assert data["train"]["options"]["max_seconds"]["type"] == "Optional[float]"


def test_config_text_lists_them_as_all_lists_component_options():
    """Each block under its key, each option as ``name: type = default`` with its help below it."""
    proc = piped("--config", columns="200")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key, cls in BLOCKS.items():
        assert f"{key}: options ({cls.__name__})" in out, key
    lines = [line.strip() for line in out.splitlines()]
    batch = lines.index("batch_rays: int = 4096")
    assert lines[batch + 1] == TrainConfig.model_fields["batch_rays"].description
    assert "max_seconds: Optional[float] = None" in lines and "root: str = outputs" in lines
    assert "--set train.steps=500" in out
    for cls in BLOCKS.values():
        for name in cls.model_fields:
            assert any(line.startswith(f"{name}: ") for line in lines), name


def test_config_loads_no_heavy_module():
    rc, listing, heavy = cli_in_fresh_python(["plugins", "--config"])
    assert (rc, "batch_rays: int = 4096" in listing, heavy) == (0, True, [])


@pytest.mark.parametrize("extra", [["--all"], ["--hook", "losses"]])
def test_config_with_a_plugin_filter_is_refused(extra):
    proc = piped("--config", *extra)
    assert proc.returncode == 2 and "--config lists the scene file's train:, eval:, output: and reference: keys on its own" \
        in proc.stderr, proc.stderr


def test_help_names_config():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "plugins", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert "--config" in proc.stdout and "train:, eval:, output: and reference:" in " ".join(proc.stdout.split())


@pytest.mark.parametrize("args", [[], ["--all"], ["--config"], ["--hook", "losses", "--all"]])
def test_piped_output_is_120_columns_without_trailing_spaces(args):
    from pipeline.plugins_list import PIPED_WIDTH

    assert PIPED_WIDTH == 120
    proc = piped(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) > 10
    assert max(len(line) for line in lines) <= 120
    padded = [line for line in lines if line != line.rstrip()]
    assert not padded, padded[:3]
    assert proc.stdout.endswith("\n") and "…" not in proc.stdout


@pytest.mark.parametrize("args", [[], ["--all"], ["--config"]])
def test_piped_output_honours_columns(args):
    proc = piped(*args, columns="100")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert not [line for line in lines if line != line.rstrip()]
    wide = piped(*args, columns="300").stdout.splitlines()
    assert max(len(line) for line in wide) > 120  # COLUMNS is followed both ways, not only capped


def test_piped_width_takes_columns_only_when_it_is_a_positive_number(monkeypatch):
    from pipeline.console import piped_width
    from pipeline.plugins_list import PIPED_WIDTH

    for value, width in (("100", 100), ("", PIPED_WIDTH), ("abc", PIPED_WIDTH), ("0", PIPED_WIDTH)):
        monkeypatch.setenv("COLUMNS", value)
        assert piped_width(PIPED_WIDTH) == width, value
    monkeypatch.delenv("COLUMNS")
    assert piped_width(PIPED_WIDTH) == PIPED_WIDTH


def test_print_plugins_into_captured_stdout_has_no_trailing_spaces(capsys, monkeypatch, nls_host):
    from pipeline.plugins_list import print_config, print_plugins

    monkeypatch.delenv("COLUMNS", raising=False)
    assert print_plugins(nls_host, show_all=True) == 0 and print_config() == 0
    lines = capsys.readouterr().out.splitlines()
    assert "batch_rays: int = 4096" in [line.strip() for line in lines]
    assert max(len(line) for line in lines) <= 120
    assert not [line for line in lines if line != line.rstrip()]


def test_every_core_config_key_has_help():
    """`nls plugins --config` shows each key's description; none of train:, eval:, output: may leave it empty."""
    from pipeline.plugins_list import config_data

    empty = [f"{block}.{k}" for block, d in config_data().items() for k, o in d["options"].items() if not o["help"]]
    assert not empty, f"keys without a description: {empty}"
