"""Hints of scene-file errors and their listings: an unknown key names the command that lists the
block's options, ``nls plugins --config`` lists ``reference:``, ``${NLS_DATA}`` never expands a ``$`` of the
data root's own path, dangling output and cache links name their target, and ``nls eval`` of a run in
training says which step it scored."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from pipeline.config import expand_vars, load_scene
from pipeline.testing import TINY_SCENE
from pipeline.types import ConfigError, DataError, NLSError


def write(tmp_path, data, name="scene.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def problems(tmp_path, host, **blocks) -> str:
    """The ConfigError text of TINY_SCENE with ``blocks`` replaced."""
    with pytest.raises(ConfigError) as err:
        load_scene(write(tmp_path, {**TINY_SCENE, **blocks}), host)
    return str(err.value)


# -- 1. an unknown key names where the block's options are listed --------------------------------------

def test_unknown_keys_of_a_core_block_name_nls_plugins_config_once(tmp_path, nls_host):
    text = problems(tmp_path, nls_host, train={**TINY_SCENE["train"], "stpes": 3, "batch_ray": 8})
    first, second = text.splitlines()[1:]  # the file's order: batch_ray, stpes
    assert first.startswith("  - train.batch_ray: unknown key; valid keys here: steps, batch_rays"), first
    assert first.endswith(", refine_poses, pose_lr, refine_focal, focal_lr, focal_per_camera (each with its type and help: `nls plugins --config`)."), first
    assert second.startswith("  - train.stpes: unknown key; valid keys here: ") and "nls plugins" not in second


def test_unknown_keys_of_components_name_the_listing_of_the_component(tmp_path, nls_host, capsys):
    from pipeline.plugins_list import print_name

    text = problems(tmp_path, nls_host, field={**TINY_SCENE["field"], "featurs": 8},
                    losses=[{"type": "photometric", "wieght": 1}], reference={"psnr": {"value": 30, "paper": "x"}})
    assert "field.featurs: unknown key; valid keys here: resolution, features" in text
    assert "(each with its type and help: `nls plugins dense_grid`)" in text
    assert "losses.0.wieght: unknown key" in text and "`nls plugins photometric`" in text
    assert re.search(r"reference\.psnr\.paper: unknown key; valid keys here: value, source \(each with its type "
                     r"and help: `nls plugins --config`\)", text), text
    # the named command lists the block's component with its options
    assert print_name(nls_host, "photometric") == 0
    out = capsys.readouterr().out
    assert "loss photometric options:" in out and "field dense_grid" not in out


# -- 2. nls plugins --config lists reference: ----------------------------------------------------------

def test_config_listing_shows_the_reference_block(capsys):
    from pipeline.config import ReferenceValue
    from pipeline.plugins_list import print_config

    assert print_config() == 0
    out = capsys.readouterr().out
    assert "train:, eval:, output: and reference: blocks" in " ".join(out.split())
    assert "reference: options (ReferenceValue)" in out
    lines = [line.strip() for line in out.splitlines()]
    for head, name in (("value: float = (required)", "value"), ("source: str = ''", "source")):
        assert lines[lines.index(head) + 1] == ReferenceValue.model_fields[name].description


# -- 3. ${NLS_DATA} with the default root: a `$` in the root's own path stays ----------------------------

def test_a_dollar_in_the_default_data_root_is_not_expanded(tmp_path, monkeypatch):
    import pipeline.scenes as scenes

    checkout = tmp_path / "$work" / "main"
    (tmp_path / "$work" / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(scenes, "repo_root", lambda: checkout)
    monkeypatch.delenv("NLS_DATA", raising=False)
    monkeypatch.setenv("work", "/elsewhere")
    monkeypatch.setenv("SUB", "lego")
    assert expand_vars("${NLS_DATA}/nerf/$SUB") == f"{tmp_path}/$work/shared/data/nerf/lego"


# -- 4. dangling links as --output and NLS_CACHE ----------------------------------------------------------

@pytest.mark.parametrize("target, why", [
    ("gone", "{link} is a symbolic link to gone (leading to {tmp}/gone), which does not exist"),
    ("hop", "{link} is a symbolic link to hop (leading to {tmp}/gone), which does not exist"),
    ("loop", "{link} is a symbolic link to loop, which leads into a loop of symbolic links"),
])
def test_a_dangling_output_or_cache_link_names_what_is_missing(tmp_path, target, why):
    """A relative link, or one to another dangling link, named only its own target (which may exist, as a
    link); a loop of links was reported as "File exists"."""
    from pipeline.runs import check_writable
    from plugins.scenes.sources import make_cache_dir

    (tmp_path / "hop").symlink_to("gone")
    (tmp_path / "loop").symlink_to("loop")
    link = tmp_path / "runs"
    link.symlink_to(target)
    why = why.format(link=link, tmp=tmp_path)
    with pytest.raises(NLSError, match=re.escape(why)):
        check_writable(link)
    with pytest.raises(DataError, match=re.escape(why)):
        make_cache_dir(link / "scenes")


def test_reconstruct_names_a_dangling_output_link_and_its_target(nls, tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    proc = nls("reconstruct", str(write(tmp_path, TINY_SCENE)), "--output", str(link), "--steps", "1", "-q")
    assert proc.returncode == 2 and "File exists" not in proc.stderr
    assert f"{link} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in proc.stderr


# -- 5. nls eval of a run in training ---------------------------------------------------------------------

def test_eval_of_a_run_in_training_names_the_step_it_scored(tiny_scene, tmp_path, capsys):
    """Regression guard: open_run (pipeline/commands/run_loading.py) already says so for eval, render and export."""
    from pipeline.cli import main
    from pipeline.runs import RunDir

    assert main(["reconstruct", str(tiny_scene()), "--output", str(tmp_path / "runs"), "-q", "--no-eval"]) == 0
    run = RunDir.open(next((tmp_path / "runs").glob("tiny/dense_grid/*")))
    step = int(run.load_checkpoint()["step"])
    capsys.readouterr()
    with run.training_lock():  # as the process training it holds it
        assert main(["eval", str(run.path), "-q", "-o", str(tmp_path / "e.json")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "being trained" in line] == [
        f"note: {run.path} is being trained (pid {os.getpid()}); this uses its newest checkpoint, step {step} of 6"]
