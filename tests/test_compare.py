"""`nls compare`: metrics, train time and parameters of runs side by side, checked against each
run's summary.json, and warnings when runs are not comparable."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from tests.conftest import ROOT
from tests.short_runs import killed_run, short_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid"), short_run(tmp_path_factory, "hash_grid")


def test_compare_json_matches_each_summary(runs, nls):
    res = nls("compare", *map(str, runs), "--json", check=True)
    data = json.loads(res.stdout)
    assert "warning" not in res.stderr, res.stderr
    assert data["warnings"] == []
    assert [r["method"] for r in data["runs"]] == ["dense_grid", "hash_grid"]
    table = data["table"]
    sums = [json.loads((r / "summary.json").read_text()) for r in runs]
    for label, s in zip(("dense_grid", "hash_grid"), sums):
        assert table["train_seconds"][label] == s["train_seconds"]
        assert table["parameters"][label] == s["parameters"]
        assert table["step"][label] == s["step"] == 100
        for k, v in s["metrics"].items():
            assert table[k][label] == v, k
    # best marks follow each metric's direction
    psnr = {lab: s["metrics"]["psnr"] for lab, s in zip(("dense_grid", "hash_grid"), sums)}
    assert data["best"]["psnr"] == [max(psnr, key=psnr.get)]
    cd = {lab: s["metrics"]["chamfer_l1"] for lab, s in zip(("dense_grid", "hash_grid"), sums)}
    assert data["best"]["chamfer_l1"] == [min(cd, key=cd.get)]
    assert "n_samples" not in data["best"]  # bookkeeping, no direction


def test_compare_markdown_table(runs, nls):
    res = nls("compare", *map(str, runs), "--markdown", check=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("|")]
    assert lines[0] == "| | dense_grid | hash_grid |"
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:]}
    sums = [json.loads((r / "summary.json").read_text()) for r in runs]
    for k in ("psnr", "ssim", "chamfer_l1", "normal_consistency"):
        vals = [s["metrics"][k] for s in sums]
        want = [f"{v:.4f}" for v in vals]
        best = (min if k.startswith("chamfer") else max)(range(2), key=lambda i: vals[i])
        want[best] = f"**{want[best]}**"
        assert rows[k] == want, (k, rows[k], want)
    assert rows["parameters"] == [f"**{s['parameters']}**" if s["parameters"] == min(x["parameters"] for x in sums)
                                  else str(s["parameters"]) for s in sums]


def test_compare_default_rich_and_html(runs, nls, tmp_path):
    res = nls("compare", *map(str, runs), check=True)
    assert "psnr" in res.stdout and "hash_grid" in res.stdout
    out = tmp_path / "cmp.html"
    nls("compare", *map(str, runs), "--html", "-o", str(out), check=True)
    text = out.read_text()
    assert "<table>" in text and "http://" not in text and "https://" not in text and "<script" not in text


def test_compare_html_shows_the_same_views_and_the_curves_of_every_run(runs, tmp_path):
    """The HTML page holds each shared test view as every run rendered it, titled with the PSNR of that view,
    which for the tiny scene's one evaluated view is the run's psnr metric (up to the 8-bit images it is read
    from), and the runs' training curves on shared axes; runs that evaluated different splits share no view."""
    from pipeline.compare import compare_runs, to_html
    from pipeline.compare_figures import curve_keys, shared_views, views_png
    from pipeline.report.collect import read_run

    facts = [read_run(r) for r in runs]
    split, names, per_run = shared_views(facts)
    assert split == "test" and names == ["r_0"]
    _, scores = views_png("r_0", ["a", "b"], [d["r_0"] for d in per_run])
    for f, score in zip(facts, scores):
        assert score == pytest.approx(f.metrics["psnr"], abs=0.05), (score, f.metrics["psnr"])
    assert curve_keys(facts) == ["loss", "psnr_train"]
    html = to_html(compare_runs(runs))
    assert "Renders of the same views" in html and 'alt="view r_0"' in html and 'alt="training curves"' in html
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["eval"]["split"] = "train"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert shared_views([facts[0], read_run(other)])[0] is None
    assert "the runs evaluated different splits, so no view is shared" in to_html(compare_runs([runs[0], other]))


def test_compare_warns_when_scene_or_eval_settings_differ(runs, nls, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["scene"]["image_size"] = 48
    cfg["eval"]["max_images"] = 2
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = nls("compare", str(runs[0]), str(other), "--json", check=True)
    data = json.loads(res.stdout)
    warnings = data["warnings"]
    assert set(data["best"]) <= {"train_seconds", "parameters"}, data["best"]  # no metric is marked
    assert any("scene settings differ: image_size = 32 (dense_grid" in w and "48 (hash_grid" in w
               for w in warnings), warnings
    assert any("evaluation settings (eval:) differ: max_images = 1" in w for w in warnings), warnings
    assert res.stderr.count("warning:") == len(warnings) == 2

    # on another scene as well: one statement, the settings are not listed one by one
    cfg["name"] = "tiny48"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    s = json.loads((other / "summary.json").read_text())
    s["scene"] = "tiny48"
    (other / "summary.json").write_text(json.dumps(s))
    res = nls("compare", str(runs[0]), str(other), "--json", check=True)
    warnings = json.loads(res.stdout)["warnings"]
    assert len(warnings) == 1 and "different scenes (tiny, tiny48)" in warnings[0], warnings
    assert "no best value is marked" in warnings[0] and json.loads(res.stdout)["best"] == {}


def test_an_evaluator_option_a_run_does_not_record_is_not_a_difference(runs, nls, tmp_path):
    """A run made before an evaluator option existed (its config.yaml lacks the key) compares with one that has
    the option at its default; two runs that both record it and differ are still warned about."""
    older, newer = tmp_path / "older", tmp_path / "newer"
    shutil.copytree(runs[1], older)
    shutil.copytree(runs[0], newer)
    cfg = yaml.safe_load((older / "config.yaml").read_text())
    psnr = next(e for e in cfg["evaluators"] if e["type"] == "psnr")
    assert psnr.pop("object") is False  # (as nls wrote it before psnr had the option)
    (older / "config.yaml").write_text(yaml.safe_dump(cfg))
    warnings = json.loads(nls("compare", str(newer), str(older), "--json", check=True).stdout)["warnings"]
    assert not any("evaluator options differ" in w for w in warnings), warnings
    psnr["object"] = True
    (older / "config.yaml").write_text(yaml.safe_dump(cfg))
    warnings = json.loads(nls("compare", str(newer), str(older), "--json", check=True).stdout)["warnings"]
    assert any("the evaluator options differ: psnr.object = False" in w for w in warnings), warnings


def test_compare_an_unfinished_run(runs, tmp_path_factory, nls):
    killed = killed_run(tmp_path_factory)
    res = nls("compare", str(runs[0]), str(killed), "--json", check=True)
    data = json.loads(res.stdout)
    col = data["runs"][1]["label"]
    assert data["table"]["status"][col] == "incomplete"
    assert data["table"]["psnr"][col] is None
    # parameter count from the checkpoint's optimiser state equals the finished run's count
    assert data["table"]["parameters"][col] == json.loads((runs[0] / "summary.json").read_text())["parameters"]
    assert any("not finished" in w for w in data["warnings"])
    # stopped early, it is not the "fastest" run: only finished runs compete on cost
    assert col not in data["best"].get("train_seconds", []) and col not in data["best"].get("parameters", [])

    # evaluated from its step-50 checkpoint by `nls eval`, it is still an unfinished run
    evaluated = tmp_path_factory.mktemp("killed_eval") / "k"
    shutil.copytree(killed, evaluated)
    nls("eval", str(evaluated), check=True)
    data = json.loads(nls("compare", str(runs[0]), str(evaluated), "--json", check=True).stdout)
    col = data["runs"][1]["label"]
    assert data["table"]["status"][col] == "incomplete" and data["table"]["psnr"][col] is not None
    assert f"not finished, so not marked best: {col} (step 100 of 100, newest checkpoint at step 50)" in data["warnings"], data["warnings"]
    assert all(col not in labs for labs in data["best"].values()), data["best"]
    assert any("from eval.json, written by `nls eval` at step 50" in w for w in data["warnings"]), data["warnings"]


def test_compare_reads_eval_json_of_a_run_trained_without_evaluation(runs, nls, tmp_path):
    """`reconstruct --no-eval` then `nls eval`: no summary.json, the metrics are in eval.json."""
    later = tmp_path / "later"
    shutil.copytree(runs[1], later)
    (later / "summary.json").unlink()
    nls("eval", str(later), check=True)
    ev = json.loads((later / "eval.json").read_text())
    assert ev["step"] == 100 and ev["metrics"]["psnr"] > 0
    res = nls("compare", str(runs[0]), str(later), "--json", check=True)
    data = json.loads(res.stdout)
    col = data["runs"][1]["label"]
    assert data["table"]["status"][col] == "evaluated"
    for k, v in ev["metrics"].items():
        assert data["table"][k][col] == v, k
    assert not any("not finished" in w for w in data["warnings"]), data["warnings"]
    assert "hash_grid: psnr and chamfer results from eval.json, written by `nls eval` at step 100 (the run has " \
           "no summary.json)" in data["warnings"], data["warnings"]
    out = tmp_path / "report.html"
    nls("report", str(later), "-o", str(out), check=True)
    page = out.read_text()
    assert "No final metrics" not in page and "the metrics shown come from eval.json" in page


def test_compare_and_report_merge_nls_eval_on_a_finished_run(runs, nls, tmp_path):
    """`nls eval --set` on a finished run: each evaluator eval.json ran replaces summary.json's
    results of that evaluator whole; its overrides count among the settings compared; an
    override of settings every evaluator reads leaves out the evaluators not run again; an
    eval.json from an earlier step is ignored. Each case is named in a note."""
    done = tmp_path / "evaluated"
    shutil.copytree(runs[1], done)
    summary = json.loads((done / "summary.json").read_text())
    assert "ssim" in summary["metrics"] and "chamfer_l1" in summary["metrics"]

    def compare():
        data = json.loads(nls("compare", str(runs[0]), str(done), "--json", check=True).stdout)
        return {k: v["hash_grid"] for k, v in data["table"].items()}, data["warnings"]

    # 1. the psnr evaluator again, without SSIM: no stale SSIM, chamfer still summary.json's
    nls("eval", str(done), "--set", "evaluators=[{type: psnr, ssim: false}]", check=True)
    ev = json.loads((done / "eval.json").read_text())
    assert ev["config"]["evaluators"] == [{"type": "psnr", "ssim": False, "color_correct": "none",
                                            "object": False}]  # resolved
    table, warnings = compare()
    assert table["psnr"] == ev["metrics"]["psnr"] and table["ssim"] is None
    assert table["chamfer_l1"] == summary["metrics"]["chamfer_l1"] and table["status"] == "complete"
    assert "the evaluator options differ: psnr.ssim = True (dense_grid), False (hash_grid), so no metric is " \
           "marked best" in warnings, warnings
    assert not any("evaluators differ" in w or "chamfer." in w for w in warnings), warnings
    assert "hash_grid: psnr results from eval.json, written by `nls eval` at step 100 with --set " \
           "evaluators=[{type: psnr, ssim: false}]" in warnings, warnings
    names = list(compare()[0])  # bookkeeping numbers come after the metrics
    assert names.index("n_images") > names.index("normal_consistency"), names
    out = tmp_path / "report.html"
    nls("report", str(done), "-o", str(out), "--no-model", check=True)
    page = out.read_text()
    assert "psnr (eval.json)" in page and "chamfer_l1 (eval.json)" not in page and ">ssim<" not in page
    assert "eval_renders/test/" in page  # the renders that PSNR was computed from
    assert "Where the metrics come from: psnr results from eval.json" in page

    # 2. an eval.* override: chamfer's summary.json results were taken with other settings
    nls("eval", str(done), "--set", "evaluators=[{type: psnr}]", "--set", "eval.max_images=2", check=True)
    ev = json.loads((done / "eval.json").read_text())
    table, warnings = compare()
    assert table["n_images"] == 2 != summary["metrics"]["n_images"] and table["chamfer_l1"] is None
    assert any("max_images = 1 (dense_grid), 2 (hash_grid)" in w for w in warnings), warnings
    assert "the evaluators differ: chamfer only in dense_grid" in warnings, warnings
    assert "hash_grid: summary.json's chamfer results are not shown: they were taken before eval.json's " \
           "--set eval.max_images=2" in warnings, warnings

    # 2b. a finer ray step (renderer.samples_per_ray) is such a setting too
    ev["overrides"] = ["evaluators=[{type: psnr}]", "renderer.samples_per_ray=512"]
    (done / "eval.json").write_text(json.dumps(ev))
    table, warnings = compare()
    assert table["psnr"] == ev["metrics"]["psnr"] and table["chamfer_l1"] is None
    assert "hash_grid: summary.json's chamfer results are not shown: they were taken before eval.json's " \
           "--set renderer.samples_per_ray=512" in warnings, warnings

    # 3. written before the run was resumed and trained on
    ev["step"] = 50
    (done / "eval.json").write_text(json.dumps(ev))
    table, warnings = compare()
    assert table["psnr"] == summary["metrics"]["psnr"] and table["chamfer_l1"] == summary["metrics"]["chamfer_l1"]
    assert not any("max_images" in w for w in warnings), warnings
    assert any("eval.json was written at step 50, before the run was trained on to step 100; its metrics "
               "are not shown" in w for w in warnings), warnings


def test_compare_names_damaged_json_and_unique_labels(runs, nls, tmp_path):
    """A summary.json cut off by a crash is named as such; one run given twice gets two labels."""
    cut = tmp_path / "cut"
    shutil.copytree(runs[1], cut)
    (cut / "summary.json").write_text('{"metrics": {"psnr": 3')
    data = json.loads(nls("compare", str(runs[0]), str(cut), "--json", check=True).stdout)
    assert "hash_grid: summary.json is not valid JSON (damaged or cut off), so it was not read" in data["warnings"]
    assert data["table"]["status"]["hash_grid"] == "trained"  # its final checkpoint is there
    out = tmp_path / "r.html"
    nls("report", str(cut), "-o", str(out), "--no-model", check=True)
    assert "summary.json: the file is not valid JSON" in out.read_text()
    data = json.loads(nls("compare", str(runs[0]), str(runs[0]), "--json", check=True).stdout)
    assert [r["label"] for r in data["runs"]] == [f"dense_grid/{runs[0].name}#1", f"dense_grid/{runs[0].name}#2"]
    assert len(data["table"]["psnr"]) == 2
    assert any(w.startswith("the same run folder is given more than once") for w in data["warnings"])


def test_compare_output_paths(runs, nls, tmp_path):
    res = nls("compare", *map(str, runs), "--markdown", "-o", str(tmp_path / "new" / "c.md"), check=True)
    assert (tmp_path / "new" / "c.md").read_text().startswith("| |"), res.stderr
    (tmp_path / "afile").write_text("x")
    res = nls("compare", *map(str, runs), "--html", "-o", str(tmp_path / "afile" / "c.html"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "afile is a file, not a folder" in res.stderr, res.stderr


def test_compare_warnings_group_runs_and_name_a_missing_evaluator_once(runs, nls, tmp_path):
    copies = []
    for i in range(2):
        other = tmp_path / f"other{i}"
        shutil.copytree(runs[1], other)
        cfg = yaml.safe_load((other / "config.yaml").read_text())
        cfg["evaluators"].append({"type": "extra_eval", "n": 5, "alpha": 0.1, "seed": 3})
        cfg["eval"]["max_images"] = 2
        (other / "config.yaml").write_text(yaml.safe_dump(cfg))
        copies.append(other)
    data = json.loads(nls("compare", str(runs[0]), *map(str, copies), "--json", check=True).stdout)
    ws = data["warnings"]
    ev = [w for w in ws if w.startswith("the evaluators differ")]
    assert ev == ["the evaluators differ: extra_eval only in hash_grid/other0, hash_grid/other1"], ws
    assert not any("extra_eval.n" in w or "extra_eval.alpha" in w for w in ws), ws  # no option-by-option list
    # runs sharing a value are named together after it, not one value per run
    assert any("max_images = 1 (dense_grid), 2 (hash_grid/other0, hash_grid/other1)" in w for w in ws), ws


def test_compare_warns_when_runs_of_one_method_label_differ_in_components(runs, nls, tmp_path):
    """A hash-grid run of a scene file saying `method: dense_grid` (`--set field.type=hash_grid`)
    is labelled dense_grid like the dense run: a warning names the runs and their field types."""
    relabelled = tmp_path / "relabelled"
    shutil.copytree(runs[1], relabelled)
    for name, load, dump in (("config.yaml", yaml.safe_load, yaml.safe_dump), ("summary.json", json.loads, json.dumps)):
        data = load((relabelled / name).read_text())
        data["method"] = "dense_grid"
        (relabelled / name).write_text(dump(data))
    data = json.loads(nls("compare", str(runs[0]), str(relabelled), "--json", check=True).stdout)
    a, b = (r["label"] for r in data["runs"])
    assert (a, b) == (f"dense_grid/{runs[0].name}", "dense_grid/relabelled")
    assert "runs labelled 'dense_grid' (config.yaml's method:) are made of different components, so the label " \
           f"does not tell them apart: field.type = 'dense_grid' ({a}), 'hash_grid' ({b})" in data["warnings"], \
        data["warnings"]
    data = json.loads(nls("compare", *map(str, runs), "--json", check=True).stdout)  # labels differ: no warning
    assert not any("made of different components" in w for w in data["warnings"]), data["warnings"]


def test_compare_output_format_follows_the_extension(runs, nls, tmp_path):
    """`-o FILE` alone writes the format of FILE's extension (Markdown for others); a format flag wins,
    with a note when the extension suggests another."""
    for name in ("c.html", "c.HTM"):
        nls("compare", *map(str, runs), "-o", str(tmp_path / name), check=True)
        assert (tmp_path / name).read_text().startswith("<!DOCTYPE html>"), name
    nls("compare", *map(str, runs), "-o", str(tmp_path / "c.json"), check=True)
    assert json.loads((tmp_path / "c.json").read_text())["table"]["psnr"]
    for name in ("c.md", "c.txt", "c.out"):
        nls("compare", *map(str, runs), "-o", str(tmp_path / name), check=True)
        assert (tmp_path / name).read_text().startswith("| | dense_grid | hash_grid |"), name
    res = nls("compare", *map(str, runs), "--markdown", "-o", str(tmp_path / "m.html"), check=True)
    assert (tmp_path / "m.html").read_text().startswith("| |")
    assert f"note: writing Markdown to {tmp_path / 'm.html'} as --markdown asks, although its extension .html " \
           f"suggests HTML" in res.stderr, res.stderr
    from pipeline.compare import output_format

    assert output_format("rich", None) == output_format(None, None) == "rich"
    assert output_format("json", None) == "json" and output_format("html", tmp_path / "x.out") == "html"


def test_compare_json_run_status_is_the_tables_status_name(runs, tmp_path_factory, nls):
    """`runs[].status` is the table's status name (complete / evaluated / trained / incomplete); the
    sentence that explains it is `runs[].status_detail`."""
    killed = killed_run(tmp_path_factory)
    data = json.loads(nls("compare", str(runs[0]), str(killed), "--json", check=True).stdout)
    done, stopped = data["runs"]
    assert (done["status"], stopped["status"]) == ("complete", "incomplete")
    for r in data["runs"]:
        assert r["status"] == data["table"]["status"][r["label"]]
    assert re.fullmatch(r"complete: trained to step (\d+) of \1 and evaluated \(summary.json\)", done["status_detail"]), done
    assert stopped["status_detail"].startswith("incomplete: no summary.json; trained to step 100 of 100"), stopped


def test_compare_piped_marks_the_best_visibly(runs, nls):
    out = nls("compare", *map(str, runs), check=True).stdout  # stdout is a pipe here
    assert "best marked *" in out and "*" in out.split("best marked *", 1)[1]


def test_compare_errors(nls, tmp_path):
    res = nls("compare", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = nls("compare", "a", "--json", "--markdown")
    assert res.returncode == 2 and "not allowed with argument" in res.stderr


def test_metric_directions_and_bookkeeping_names():
    """Which rows get a best mark and which are listed after the metrics as bookkeeping."""
    from pipeline.report.collect import better, is_bookkeeping

    assert [better(m) for m in ("psnr", "ssim", "fscore@0.01", "chamfer_l1", "chamfer_l2_surface", "lpips")] == \
        ["higher", "higher", "higher", "lower", "lower", "lower"]
    for m in ("n_images", "n_samples", "certify_n_points", "chamfer_l1_floor", "mesh_level", "scale", "sdf_slices"):
        assert is_bookkeeping(m) and better(m) is None, m
    for m in ("psnr", "chamfer_l1", "certify_within_ci", "sdf_min"):
        assert not is_bookkeeping(m), m


def test_compare_warns_when_budgets_or_extractor_settings_differ(runs, nls, tmp_path):
    """Training budgets differ: no best time. Extractor options differ within one method (between
    methods the extractor is part of the method, so that is not warned about)."""
    other = tmp_path / "budget"
    shutil.copytree(runs[1], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    res = cfg["extractor"]["resolution"]
    cfg["train"]["steps"] = 200
    cfg["extractor"]["resolution"] = res + 16
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    data = json.loads(nls("compare", str(runs[1]), str(other), "--json", check=True).stdout)
    a, b = (r["label"] for r in data["runs"])
    ws = data["warnings"]
    assert f"the training budgets differ, so train_seconds is not marked: train.steps = 100 ({a}), 200 ({b})" in ws, ws
    assert "train_seconds" not in data["best"] and "parameters" in data["best"]
    assert f"the extractor settings differ: resolution = {res} ({a}), {res + 16} ({b}), so no metric is marked " \
           f"best" in ws, ws
    assert "psnr" not in data["best"] and "chamfer_l1" not in data["best"]
    data = json.loads(nls("compare", str(runs[0]), str(other), "--json", check=True).stdout)
    assert not any("extractor" in w for w in data["warnings"]), data["warnings"]


def test_compare_warns_when_nls_eval_changed_the_ray_step(runs, nls, tmp_path):
    """A run scored with a finer ray step (`nls eval --set renderer.samples_per_ray=N`) than the run it
    is compared with: named, and no metric marked best. Both scored at that step: no warning. Runs
    trained with different ray steps: the step is part of each run, not warned about."""
    finer = tmp_path / "finer"
    shutil.copytree(runs[1], finer)
    nls("eval", str(finer), "--set", "renderer.samples_per_ray=128", check=True)
    data = json.loads(nls("compare", str(runs[0]), str(finer), "--json", check=True).stdout)
    assert "the ray sampling at evaluation differs (`nls eval --set renderer.*`): renderer.samples_per_ray = " \
           "64 (dense_grid), 128 (hash_grid), so no metric is marked best" in data["warnings"], data["warnings"]
    assert "psnr" not in data["best"] and "parameters" in data["best"]

    both = tmp_path / "both"
    shutil.copytree(runs[0], both)
    nls("eval", str(both), "--set", "renderer.samples_per_ray=128", check=True)
    data = json.loads(nls("compare", str(both), str(finer), "--json", check=True).stdout)
    assert not any("ray sampling" in w for w in data["warnings"]), data["warnings"]
    assert "psnr" in data["best"]

    trained = tmp_path / "trained"
    shutil.copytree(runs[1], trained)
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    cfg["renderer"]["samples_per_ray"] = 128
    (trained / "config.yaml").write_text(yaml.safe_dump(cfg))
    data = json.loads(nls("compare", str(runs[0]), str(trained), "--json", check=True).stdout)
    assert not any("ray sampling" in w for w in data["warnings"]), data["warnings"]


def test_runs_record_their_ground_truth_and_code_and_compare_checks_the_ground_truth(runs, nls, tmp_path):
    """scene.json keeps the GT mesh's sha256 and summary.json the git commit; two runs scored against
    different ground truths (same config otherwise) are warned about and get no best values."""
    import subprocess

    from pipeline.runs import file_sha256

    scene = json.loads((runs[0] / "scene.json").read_text())
    assert scene["gt_mesh_sha256"] == file_sha256(scene["gt_mesh"]) and len(scene["gt_mesh_sha256"]) == 64
    source = json.loads((runs[0] / "summary.json").read_text())["versions"]["source"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if head.returncode == 0:  # a git checkout (CI clones one)
        assert source["commit"] == head.stdout.strip() and isinstance(source["dirty"], bool)
    other = tmp_path / "other"
    shutil.copytree(runs[0], other)
    (other / "scene.json").write_text(json.dumps({**scene, "gt_mesh_sha256": "f" * 64}))
    data = json.loads(nls("compare", str(runs[0]), str(other), "--json", check=True).stdout)
    assert any(w.startswith("the ground-truth meshes differ") and w.endswith("so no metric is marked best")
               for w in data["warnings"]), data["warnings"]
    assert not data["best"].get("chamfer_l1"), data["best"]


def test_other_scene_sources_over_one_ground_truth_compare_their_geometry(runs, nls, tmp_path):
    """Two scene sources over one GT mesh (e.g. the mesh rendered into images and the same mesh as a point
    scan): the geometry metrics are ranked, the image metrics are not; an eval: difference that changes only
    the renders (supersample) keeps the geometry ranked as well."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[0], b)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["scene"] = {**cfg["scene"], "type": "scan", "n_points": 1000}
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = json.loads((b / "summary.json").read_text())
    for ev, key in (("chamfer", "chamfer_l1"), ("psnr", "psnr")):  # b: worse geometry, better images
        summary["metrics"][key] += 1.0
        summary["evaluators"][ev][key] += 1.0
    (b / "summary.json").write_text(json.dumps(summary))
    data = json.loads(nls("compare", str(a), str(b), "--json", check=True).stdout)
    warning = next(w for w in data["warnings"] if w.startswith("the scene sources differ"))
    assert "1 other scene setting(s) with them" in warning and "geometry metrics are comparable" in warning
    assert warning.endswith("so no image metric is marked best")
    label_a = data["runs"][0]["label"]
    assert data["best"]["chamfer_l1"] == [label_a] and "psnr" not in data["best"], data["best"]
    cfg = yaml.safe_load((a / "config.yaml").read_text())
    cfg["eval"] = {**cfg["eval"], "supersample": 2}  # as rs_sdf's image scenes evaluate
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))  # same scene again, a render-only eval difference
    data = json.loads(nls("compare", str(a), str(b), "--json", check=True).stdout)
    assert any(w.startswith("the evaluation settings (eval:) differ") and w.endswith("no image metric is marked best")
               for w in data["warnings"]), data["warnings"]
    assert data["best"]["chamfer_l1"] == [label_a] and "psnr" not in data["best"], data["best"]


def test_each_method_s_mean_over_scenes_is_marked_best_only_over_the_same_scenes():
    """method_means: a mean where every run of the method has the metric, the best by the metric's direction when
    every method ran on the same scenes, none without runs of one method on two scenes."""
    from types import SimpleNamespace

    from pipeline.compare import method_means

    def run(method, scene, **metrics):
        return SimpleNamespace(method=method, name=scene, trained=True, metrics=metrics)

    runs = [run("a", "s1", psnr=20.0, chamfer_l1=4.0), run("a", "s2", psnr=24.0, chamfer_l1=2.0),
            run("b", "s1", psnr=21.0, chamfer_l1=1.0), run("b", "s2", psnr=22.0)]
    m = method_means(runs, {})
    rows = dict(m.rows)
    assert m.methods == ["a", "b"] and m.scenes == [["s1", "s2"], ["s1", "s2"]]
    assert rows["psnr"] == [22.0, 21.5] and rows["chamfer_l1"] == [3.0, None]  # (b has no chamfer on s2)
    assert m.best == {"psnr": {0}}  # (chamfer_l1: one mean, nothing to rank it against)
    assert method_means(runs[:3], {}).best == {}  # (b on s1 only: means over other scenes are not ranked)
    assert method_means([runs[0], runs[2]], {}) is None  # (no method on two scenes)
