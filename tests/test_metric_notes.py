"""What each metric measures: the notes evaluators declare (``register(..., metrics=...)``), recorded by a
run beside its values and shown by ``nls eval``, ``nls compare``, ``nls report`` and ``nls plugins``."""

import json
import shutil
from types import SimpleNamespace

import pytest

from pipeline.components import Registrar
from pipeline.metric_notes import (GROUND_TRUTH, chamfer_notes, direction_mark, note_for, run_metric_better,
                                   run_metric_notes)
from pipeline.testing import assert_metrics_noted, plugin_host
from pipeline.types import PluginError
from tests.short_runs import short_run


def test_a_note_key_ending_in_at_covers_the_metrics_it_starts():
    notes = {"fscore@": "F-score at {at}", "fscore@0.5": "its own note", "iou": "IoU"}
    assert note_for("iou", notes) == "IoU"
    assert note_for("fscore@0.01", notes) == "F-score at 0.01"
    assert note_for("fscore@0.5", notes) == "its own note"  # an exact key before a pattern
    assert note_for("fscore@", notes) is None and note_for("psnr", notes) is None


def test_chamfer_notes_name_their_frame_reference_and_prefixed_siblings():
    plain = chamfer_notes(**GROUND_TRUTH)
    assert plain["chamfer_l1"].startswith("×10³ in the GT's frame") and "mesh→GT and GT→mesh" in plain["chamfer_l1"]
    fit = chamfer_notes("fit_", frame="the points' frame", ref="points", ref_samples="input points")
    assert set(fit) == {f"fit_{k}" for k in plain}
    assert fit["fit_chamfer_l2"] == "×10³: fit_chamfer_l1 with squared distances"  # names the metric beside it
    assert note_for("fit_recall@0.02", fit) == "share of the input points within 0.02 of the mesh"


def test_direction_marks_follow_the_comparison_rules():
    assert [direction_mark(m) for m in ("psnr", "chamfer_l1", "fit_chamfer_l1", "n_samples", "trace_hit_rate")] \
        == ["↑", "↓", "↓", "", ""]


class _Choice:
    def __init__(self, name, metrics):
        self.name = name
        self.component = type("C", (), {"metrics": tuple((k, v, None) for k, v in metrics.items())})()


def test_a_later_evaluator_reporting_a_name_takes_its_note_or_none():
    """The flat metrics keep the later evaluator's value, so its note (or no note) goes with it."""
    first = _Choice("a", {"chamfer_l1": "A's", "iou": "A's iou"})
    results = {"a": {"chamfer_l1": 1.0, "iou": 0.5, "frame": "text, not a metric"},
               "b": {"chamfer_l1": 2.0}, "c": {"skipped": "no mesh"}}
    assert run_metric_notes([first, _Choice("b", {"chamfer_l1": "B's"}), _Choice("c", {})], results) == \
        {"chamfer_l1": "B's", "iou": "A's iou"}
    assert run_metric_notes([first, _Choice("b", {})], results) == {"iou": "A's iou"}


def test_register_refuses_metrics_outside_evaluators_and_of_the_wrong_kind():
    reg = Registrar("mine", "evaluator")
    reg("good", "m:f", metrics={"iou": "intersection\n   over union", "err": {"note": "mean error", "better": "lower"}})
    assert reg.collected[0].metrics == (("iou", "intersection over union", None), ("err", "mean error", "lower"))
    assert reg.collected[0].as_dict()["metrics"] == {"iou": "intersection over union", "err": "mean error"}
    assert reg.collected[0].as_dict()["better"] == {"err": "lower"}
    for bad in (["iou"], {"iou": ""}, {"iou": 3}, {"": "x"}, {"e": {"note": "x", "better": "smaller"}},
                {"e": {"better": "lower"}}, {"e": {"note": "x", "unit": "m"}}):
        with pytest.raises(PluginError, match="metrics= must map each metric name to a note"):
            reg("bad", "m:f", metrics=bad)
    with pytest.raises(PluginError, match="a loss has no metrics"):
        Registrar("mine", "loss")("l", "m:f", metrics={"x": "y"})


def test_every_builtin_evaluator_says_what_its_metrics_are():
    host = plugin_host()
    evaluators = [c for c in host.components("evaluator")]
    assert len(evaluators) >= 10
    assert [c.name for c in evaluators if not c.metrics] == []


def test_the_builtin_evaluators_error_metrics_say_which_way_is_better():
    """Metrics whose names the general rules (report.collect.better) do not know, declared where they are
    registered: ↓ for the errors, ↑ for agreement, and none where neither is better (1 is ideal, a rate of
    something else); counts stay bookkeeping."""
    from pipeline.report.collect import better, is_bookkeeping

    results = {"distance_quality": {"dist_mean_abs_err": 0.1, "dist_max_over_near": 0.0, "dist_over_rate": 0.0,
                                    "dist_grad_mean": 1.0},
               "sphere_trace": {"trace_overshoot_rate": 0.0, "trace_max_penetration": 0.0, "trace_hit_rate": 0.5,
                                "trace_steps_per_ray": 9.0},
               "certify_check": {"certify_radius_abs_diff": 0.01, "certify_within_ci": 1.0,
                                 "certify_abstain_rate": 0.1},
               "level_set_points": {"level_set_chamfer_l1": 5.0, "level_set_mean_abs_residual": 1e-3,
                                    "level_set_n_points": 100}}
    host = plugin_host()
    choices = [SimpleNamespace(name=n, component=host.component("evaluator", n)) for n in results]
    declared = run_metric_better(choices, results)
    assert declared == {"dist_mean_abs_err": "lower", "dist_max_over_near": "lower", "dist_over_rate": "lower",
                        "trace_overshoot_rate": "lower", "trace_max_penetration": "lower",
                        "certify_radius_abs_diff": "lower", "certify_within_ci": "higher",
                        "level_set_chamfer_l1": "lower", "level_set_mean_abs_residual": "lower"}
    assert all(better(m) is None for m in declared)  # (the general rules alone would mark none of them)
    assert [direction_mark(m, declared) for m in ("dist_mean_abs_err", "certify_within_ci", "trace_hit_rate")] == \
        ["↓", "↑", ""]
    assert is_bookkeeping("level_set_n_points") and is_bookkeeping("level_set_chamfer_l1_floor")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid")


def test_a_run_records_and_shows_the_notes(run, tmp_path, nls):
    """summary.json holds a note for each metric; `nls eval` prints them with the direction marks, eval.json
    records them, and `nls compare --markdown` lists them under its table."""
    summary = json.loads((run / "summary.json").read_text())
    assert_metrics_noted(summary)
    assert summary["metric_notes"]["psnr"].startswith("dB") and "×10³" in summary["metric_notes"]["chamfer_l1"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    res = nls("eval", str(copy), "-q", env={"COLUMNS": "200"}, check=True)
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("│ psnr "))
    assert "↑" in row and "dB" in row, res.stdout
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("│ n_samples "))
    assert "↑" not in row and "↓" not in row and "points sampled" in row
    assert_metrics_noted(json.loads((copy / "eval.json").read_text()))
    md = nls("compare", str(run), str(copy), "--markdown", check=True).stdout
    assert f"- `chamfer_l1` ↓: {summary['metric_notes']['chamfer_l1']}" in md
    assert "- `n_samples`" not in md  # counts are left out of the legend


def test_a_run_from_before_notes_were_recorded_gets_those_its_evaluators_declare(run, tmp_path, nls):
    """A run without metric_notes (made before runs recorded them) is shown with the notes its evaluators declare
    now; one whose evaluator no plugin registers (any more) is shown without."""
    from pipeline.report.collect import read_run

    summary = json.loads((run / "summary.json").read_text())
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    old = {k: v for k, v in summary.items() if k != "metric_notes"}
    (copy / "summary.json").write_text(json.dumps(old))
    assert read_run(copy).metric_notes == summary["metric_notes"]
    md = nls("compare", str(copy), "--markdown", check=True).stdout
    assert "| psnr |" in md and f"- `psnr` ↑: {summary['metric_notes']['psnr']}" in md
    old["evaluators"] = {"gone_evaluator": old["evaluators"]["psnr"]}
    (copy / "summary.json").write_text(json.dumps(old))
    assert read_run(copy).metrics and read_run(copy).metric_notes == {}


def test_a_direction_an_evaluator_declares_decides_the_best_run(run, tmp_path, nls):
    """A plugin's metric of a name nls does not know (``my_err``) gets ↓ and a best mark in `nls compare` when its
    evaluator declared ``better: lower``, and neither when it did not."""
    runs = []
    for k, err in enumerate((3.0, 2.0)):
        copy = tmp_path / f"r{k}"
        shutil.copytree(run, copy)
        summary = json.loads((copy / "summary.json").read_text())
        summary["evaluators"]["mine"] = {"my_err": err}
        summary["metrics"]["my_err"] = err
        summary["metric_notes"]["my_err"] = "mean error, mm"
        summary["metric_better"] = {"my_err": "lower"}
        (copy / "summary.json").write_text(json.dumps(summary))
        runs.append(copy)
    data = json.loads(nls("compare", *map(str, runs), "--json", check=True).stdout)
    assert data["best"]["my_err"] == [data["runs"][1]["label"]] and data["better_is"] == {"my_err": "lower"}
    md = nls("compare", *map(str, runs), "--markdown", check=True).stdout
    assert "- `my_err` ↓: mean error, mm" in md
    for copy in runs:
        summary = json.loads((copy / "summary.json").read_text())
        summary["metric_better"] = {}
        (copy / "summary.json").write_text(json.dumps(summary))
    data = json.loads(nls("compare", *map(str, runs), "--json", check=True).stdout)
    assert "my_err" not in data["best"]
