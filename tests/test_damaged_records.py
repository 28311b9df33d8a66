"""Run records that are valid JSON/YAML but of the wrong shape (or not readable at all): `nls report`,
`nls compare` and `nls resume` name the file, the field and what it should hold, never a traceback.

One finished 6-step run of the tiny scene is made per module (~4 s); every test damages a copy."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_nls

DIR = object()  #: damage(): replace the file by a folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from pipeline.testing import TINY_SCENE

    root = tmp_path_factory.mktemp("damaged_records")
    scene = root / "tiny.yaml"
    scene.write_text(yaml.safe_dump(TINY_SCENE))
    run_nls("reconstruct", str(scene), "--output", str(root / "runs"), "-q", check=True)
    return next((root / "runs").glob("tiny/*/*/summary.json")).parent


@pytest.fixture
def damaged(run, tmp_path) -> Path:
    """A copy of the run, to damage."""
    dst = tmp_path / "damaged"
    shutil.copytree(run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


@pytest.fixture
def no_figures(monkeypatch):
    """Reports without the training curves and the render panels (matplotlib figures: most of a
    report's time), for the tests of the records these do not read."""
    import pipeline.report.figures as figures

    monkeypatch.setattr(figures, "curves_png", lambda log: None)
    monkeypatch.setattr(figures, "comparison_png", lambda *images, **options: b"")


def damage(folder: Path, name: str, content) -> None:
    """Replace the run's file ``name``: JSON of a dict or list, text, bytes, or a folder (DIR)."""
    p = folder / name
    if content is DIR:
        p.unlink()
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(json.dumps(content))


def nls(capsys, *args: str) -> tuple[int, str, str]:
    """``pipeline.cli.main(args)`` in this process: (exit code, stdout, stderr); never a traceback."""
    from pipeline.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, out, err


def compare(capsys, run: Path, other: Path) -> tuple[dict, str]:
    """`nls compare RUN OTHER --json`: ({row: value of OTHER}, stderr)."""
    rc, out, err = nls(capsys, "compare", str(run), str(other), "--json")
    assert rc == 0, err
    data = json.loads(out)
    label = next(r["label"] for r in data["runs"] if r["path"] == str(other))
    return {row: vals[label] for row, vals in data["table"].items()}, err


def report(capsys, folder: Path, out: Path) -> tuple[str, str]:
    """`nls report FOLDER --no-model`: (the page's visible text, stderr)."""
    rc, _, err = nls(capsys, "report", str(folder), "--no-model", "-q", "-o", str(out))
    assert rc == 0, err
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", out.read_text())).split()), err


# -- metrics.jsonl --------------------------------------------------------------------------------

NOT_RECORDS = {"list": "[1]", "number": "5", "string": '"text"', "text step": '{"step": "x", "loss": 1.0}',
               "null step": '{"step": null, "time": "late"}', "not utf-8": b"\xff\xfe{}"}


@pytest.mark.parametrize("line", NOT_RECORDS.values(), ids=NOT_RECORDS.keys())
def test_metrics_lines_that_are_not_records_are_skipped_by_report_and_compare(run, damaged, line, capsys, tmp_path,
                                                                             request):
    """A metrics.jsonl line that is not a JSON object is skipped like a line cut by a kill; a record
    whose step or time is not a number counts for neither (the run has no summary.json here, so its
    step and time come from the log). The curves are drawn only where the line has a value to plot."""
    if b"loss" not in (line if isinstance(line, bytes) else line.encode()):
        request.getfixturevalue("no_figures")
    (damaged / "summary.json").unlink()
    with open(damaged / "metrics.jsonl", "ab") as f:
        f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    table, _ = compare(capsys, run, damaged)
    assert table["step"] == 6
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert table["train_seconds"] == last["time"]
    text, _ = report(capsys, damaged, tmp_path / "r.html")
    assert "trained to step 6 of 6" in text


@pytest.mark.parametrize("line", [*NOT_RECORDS.values(), '{"step": true}', '{"step": 2.5}', '{"loss": 1.0}'],
                         ids=[*NOT_RECORDS.keys(), "bool step", "fraction step", "no step"])
def test_read_metrics_keeps_json_objects_and_truncate_keeps_integer_steps(tmp_path, line):
    """read_metrics gives only the JSON objects; truncate_metrics_after keeps the records whose step is
    an integer up to the checkpoint's (a record without one cannot be placed, so it is dropped)."""
    from pipeline.runs import RunDir

    run = RunDir(tmp_path)
    good = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(2, line if isinstance(line, bytes) else line.encode())
    run.metrics_path.write_bytes(b"\n".join(lines) + b"\n")
    records = run.read_metrics()
    assert all(isinstance(r, dict) for r in records)
    assert [r for r in records if isinstance(r.get("step"), int) and not isinstance(r["step"], bool)
            and r in good] == good
    run.truncate_metrics_after(3)
    assert run.metrics_path.read_text().splitlines() == [json.dumps(r) for r in good[:3]]


@pytest.mark.parametrize("line", ["[1]", '{"step": "x"}'], ids=["list", "text step"])
def test_resume_of_a_run_with_damaged_metrics(damaged, line, capsys):
    """`nls resume` from the step-3 checkpoint: the damaged line goes with the lines past the checkpoint,
    and training logs steps 4 to 6 again."""
    (damaged / "summary.json").unlink()
    for p in sorted((damaged / "checkpoints").glob("ckpt_*"))[2:]:  # keep step 3 only
        p.unlink()
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    rc, _, err = nls(capsys, "resume", str(damaged), "--no-eval", "-q")
    assert rc == 0, err
    rows = [json.loads(t) for t in (damaged / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


# -- summary.json -------------------------------------------------------------------------------

@pytest.mark.usefixtures("no_figures")
def test_the_report_lists_the_warnings_the_run_gave(run, damaged, capsys, tmp_path):
    text, _ = report(capsys, run, tmp_path / "quiet.html")
    assert "Warnings the run gave" not in text  # the tiny scene gives none
    summary = json.loads((damaged / "summary.json").read_text())
    assert summary["warnings"] == []
    summary["warnings"] = ["train.steps = 20 ends within phase 1 <V untrained>"]
    damage(damaged, "summary.json", summary)
    text, _ = report(capsys, damaged, tmp_path / "r.html")
    assert "Warnings the run gave" in text and "ends within phase 1 <V untrained>" in text  # escaped: not a tag
    rc, out, _ = nls(capsys, "compare", str(run), str(damaged), "--json")
    assert rc == 0 and [r["warnings"] for r in json.loads(out)["runs"]] == [[], summary["warnings"]]


@pytest.mark.usefixtures("no_figures")
@pytest.mark.parametrize("field, value, message, row", [
    ("step", "abc", "summary.json: step is 'abc', not an integer, so it is ignored", "step"),
    ("train_seconds", "fast", "summary.json: train_seconds is 'fast', not a number, so it is ignored", None),
    ("parameters", "many", "summary.json: parameters is 'many', not an integer, so it is ignored", "parameters"),
    ("evaluators", [1], "summary.json: evaluators is [1], not a mapping, so it is ignored", "psnr"),
    ("evaluators", {"psnr": 5}, "summary.json: evaluators.psnr is 5, not a mapping, so it is ignored", None),
    ("metrics", [1, 2], "summary.json: metrics is [1, 2], not a mapping, so it is ignored", "psnr"),
    ("load_average", ["a"], "summary.json: load_average is ['a'], not a list of numbers, so it is ignored", None),
    ("warnings", "oops", "summary.json: warnings is 'oops', not a list, so it is ignored", None),
    ("warnings", ["ok", 3], "summary.json: warnings[1] is 3, not a string, so it is ignored", None),
], ids=["step", "train_seconds", "parameters", "evaluators list", "evaluator entry", "metrics list",
        "load_average", "warnings", "warning entry"])
def test_summary_fields_of_the_wrong_type_are_named_and_left_out(run, damaged, field, value, message, row,
                                                                  capsys, tmp_path):
    """The field is treated as absent (the value then comes from elsewhere: the checkpoint, the log,
    summary.json's other copy of the metrics) and named in compare's warnings and in the report."""
    summary = json.loads((damaged / "summary.json").read_text())
    summary[field] = value
    damage(damaged, "summary.json", summary)
    table, err = compare(capsys, run, damaged)
    assert message in err, err
    original, _ = compare(capsys, run, run)
    if row:
        assert table[row] == original[row] is not None
    text, err = report(capsys, damaged, tmp_path / "r.html")
    assert message in err and message in text, err


@pytest.mark.usefixtures("no_figures")
@pytest.mark.parametrize("content, why", [
    ('{"metrics": {"psnr": 3', "is not valid JSON (damaged or cut off)"),
    ([1, 2], "holds a list, not a JSON object"),
    ("\"complete\"", "holds a string, not a JSON object"),
    (DIR, "is a directory, not a file"),
], ids=["cut off", "list", "string", "folder"])
def test_a_summary_that_cannot_be_read_is_named_for_what_it_is(run, damaged, content, why, capsys, tmp_path):
    """The page header and status say what is true of the file (not "no summary.json"), and so do
    compare's warnings."""
    damage(damaged, "summary.json", content)
    table, err = compare(capsys, run, damaged)
    assert f"summary.json {why}, so it was not read" in err, err
    assert table["status"] == "trained" and table["step"] == 6
    text, err = report(capsys, damaged, tmp_path / "r.html")
    assert f"summary.json {why}, so it was not read" in err
    assert f"trained, final metrics unknown: summary.json {why}; step 6 of 6" in text
    assert f"summary.json: the file {why}" in text
    assert "no summary.json" not in text and "trained with --no-eval" not in text


# -- eval.json ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("no_figures")
@pytest.mark.parametrize("fields, message", [
    ({"overrides": 5}, "eval.json: overrides is 5, not a list, so it is ignored"),
    ({"evaluators": "x"}, "eval.json: evaluators is 'x', not a mapping, so it is ignored"),
    ({"overrides": ["nokey"]}, "eval.json: overrides[0] is 'nokey', not a --set KEY=VALUE override, so it is "
                               "ignored"),
    ({"overrides": ["eval.max_images=1"], "config": {"evaluators": 5}},
     "psnr results from eval.json, written by `nls eval` at step 6 with --set eval.max_images=1"),
], ids=["overrides not a list", "evaluators not a mapping", "override without =", "config evaluators"])
def test_eval_json_fields_of_the_wrong_type_are_named_and_left_out(run, damaged, fields, message, capsys,
                                                                   tmp_path):
    """An eval.json override that is no KEY=VALUE is named as eval.json's, not as a --set the user gave."""
    damage(damaged, "eval.json", {"step": 6, "overrides": [], "evaluators": {"psnr": {"psnr": 1.0}}, **fields})
    _, err = compare(capsys, run, damaged)
    assert message in err and "--set 'nokey'" not in err, err
    text, err = report(capsys, damaged, tmp_path / "r.html")
    assert message in text and "--set 'nokey'" not in err, err


@pytest.mark.usefixtures("no_figures")
def test_an_evaluator_eval_json_skipped_is_not_called_a_result(run, damaged, capsys):
    damage(damaged, "eval.json", {"step": 6, "overrides": [], "evaluators": {
        "psnr": {"psnr": 1.0}, "chamfer": {"skipped": "extract_mesh: empty level set"}}})
    _, err = compare(capsys, run, damaged)
    assert "psnr results from eval.json, written by `nls eval` at step 6 (it skipped chamfer)" in err, err


# -- config.yaml --------------------------------------------------------------------------------

@pytest.mark.usefixtures("no_figures")
@pytest.mark.parametrize("change, message", [
    ({"train": [1]}, "config.yaml: train is [1], not a mapping, so it is ignored"),
    ({"train": {"steps": "many"}}, "config.yaml: train.steps is 'many', not an integer, so it is ignored"),
    ({"evaluators": 5}, "config.yaml: evaluators is 5, not a list, so it is ignored"),
    ({"reference": [1]}, "config.yaml: reference is [1], not a mapping, so it is ignored"),
], ids=["train", "train.steps", "evaluators", "reference"])
def test_config_blocks_of_the_wrong_type_are_named_and_left_out(run, damaged, change, message, capsys, tmp_path):
    cfg = yaml.safe_load((damaged / "config.yaml").read_text())
    cfg.update(change)
    damage(damaged, "config.yaml", yaml.safe_dump(cfg))
    _, err = compare(capsys, run, damaged)
    assert message in err, err
    text, err = report(capsys, damaged, tmp_path / "r.html")
    assert message in err and message in text, err


@pytest.mark.parametrize("content, message", [
    ("", "config.yaml is empty, so the run cannot be described"),
    ("\n# nothing\n", "config.yaml is empty, so the run cannot be described"),
    (DIR, "config.yaml is a directory, not a file"),
    (b"name: \xff\n", "config.yaml is not UTF-8 text"),
    ("name: x\nwhen: 2020-13-45\n", "config.yaml is not valid YAML (month must be in 1..12)"),
    ("name: x\nname: y\n", "config.yaml is not valid YAML (key 'name' appears twice (lines 1 and 2))"),
], ids=["empty", "comment only", "folder", "not utf-8", "impossible date", "repeated key"])
def test_a_config_that_cannot_be_read_is_one_clear_error(run, damaged, content, message, capsys, tmp_path):
    """Without its config the run cannot be described: compare and report stop with an error naming
    the file (compare does not list every setting as differing from None)."""
    damage(damaged, "config.yaml", content)
    for args in (["compare", str(run), str(damaged), "--json"],
                 ["report", str(damaged), "--no-model", "-q", "-o", str(tmp_path / "r.html")]):
        rc, out, err = nls(capsys, *args)
        assert rc == 2 and f"error: {damaged / message}" in err, err
        assert "= None" not in err and not out


# -- plugins.json and scene.json ------------------------------------------------------------------

@pytest.mark.usefixtures("no_figures")
@pytest.mark.parametrize("name, content, message", [
    ("plugins.json", {"plugins": [1, {"version": "1"}]}, "plugins.json: plugins[0] is 1, not a mapping, so it is "
                                                         "ignored"),
    ("plugins.json", {"components": {"field:dense_grid": "x"}},
     "plugins.json: components.field:dense_grid is 'x', not a mapping, so it is ignored"),
    ("scene.json", [1], "scene.json holds a list, not a JSON object, so it was not read"),
], ids=["plugins entry", "components entry", "scene list"])
def test_plugin_and_scene_records_of_the_wrong_type(run, damaged, name, content, message, capsys, tmp_path):
    damage(damaged, name, content)
    _, err = compare(capsys, run, damaged)
    assert message in err, err
    text, err = report(capsys, damaged, tmp_path / "r.html")
    assert message in err and message in text, err
