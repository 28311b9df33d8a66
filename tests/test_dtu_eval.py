"""DTU's point-cloud evaluation (:mod:`pipeline.dtu_eval`, the ``dtu`` evaluator) and ``nls eval RUN --mesh FILE``.

No DTU scan is in the data folder, so the benchmark's files are written here in its layout (``Points/stl/``,
``ObsMask/ObsMask<scan>_10.mat``, ``ObsMask/Plane<scan>.mat``) for shapes whose distances are known: a plane scanned
on a fine grid and a mesh a known height above it, with floaters in and out of the observed region and scan points
under the table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.dtu_eval import (_greedy_independent, evaluate_mesh, load_reference, reference_files, sample_surface,
                               scan_number, thin)
from pipeline.types import DataError, NLSError

#: the mesh's height above the scanned plane (mm)
LIFT = 1.0


def _square(x0, x1, y0, y1, z) -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def _join(*parts) -> tuple[np.ndarray, np.ndarray]:
    vs, fs, n = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def _grid(x0, x1, step, z) -> np.ndarray:
    g = np.arange(x0, x1 + step / 2, step)
    x, y = np.meshgrid(g, g, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)


def write_dtu(root: Path, scan: int, points: np.ndarray, *, observed_below_x: float = 15.0,
              plane=(0.0, 0.0, 1.0, 2.0), bb=((-1.0, -1.0, -5.0), (25.0, 25.0, 40.0))) -> dict:
    """DTU's evaluation files of ``scan`` under ``root``: ``points`` as the scan, a 1 mm mask over the box ``bb``
    observed where x <= ``observed_below_x``, and ``plane`` (P . (p, 1) > 0 above)."""
    import trimesh
    from scipy.io import savemat

    files = reference_files(root, scan)
    files["points"].parent.mkdir(parents=True, exist_ok=True)
    files["obs_mask"].parent.mkdir(parents=True, exist_ok=True)
    trimesh.PointCloud(points).export(files["points"])
    bb = np.asarray(bb, np.float64)
    shape = np.round((bb[1] - bb[0]) / 1.0).astype(int) + 1
    mask = np.zeros(shape, np.uint8)
    mask[: int(round(observed_below_x - bb[0, 0])) + 1] = 1
    savemat(files["obs_mask"], {"ObsMask": mask, "BB": bb, "Res": np.array([[1.0]])})
    savemat(files["plane"], {"P": np.asarray(plane, np.float64).reshape(4, 1)})
    return files


def _scan() -> np.ndarray:
    """The plane z = 0 over [0, 10]^2 on a 0.05 mm grid, and 10k points of the table 3 mm under it."""
    return np.concatenate([_grid(0, 10, 0.05, 0.0), _grid(0, 10, 0.1, -3.0)])


def _mesh() -> tuple[np.ndarray, np.ndarray]:
    """The square LIFT above the scan, a floater 5 mm up outside the observed region (x > 15) and one 30 mm up
    (beyond the outlier distance) inside it."""
    return _join(_square(0, 10, 0, 10, LIFT), _square(20, 22, 20, 22, 5.0), _square(2, 4, 2, 4, 30.0))


def test_the_parallel_rounds_keep_what_the_sequential_greedy_keeps():
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(3)
    pts = rng.random((2000, 3))
    pairs = cKDTree(pts).query_pairs(0.06, output_type="ndarray")
    priority = rng.permutation(len(pts))
    partners = [[] for _ in pts]
    for i, j in pairs:
        partners[i].append(j)
        partners[j].append(i)
    state = np.zeros(len(pts), int)
    for i in np.argsort(priority):
        if state[i] == 0:
            state[i] = 1
            for j in partners[i]:
                state[j] = max(state[j], 2)
    assert np.array_equal(_greedy_independent(len(pts), pairs, priority), state == 1)


@pytest.mark.parametrize("slab", [50, 1_000_000])
def test_thinning_leaves_no_pair_within_the_radius_and_no_point_far_from_a_kept_one(slab):
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(4)
    pts = rng.random((3000, 3)) * [1.0, 1.0, 0.05]
    pts = np.concatenate([pts, pts[:100]])  # (repeated points)
    kept = thin(pts, 0.05, slab=slab)
    d, _ = cKDTree(kept).query(kept, k=2)
    assert d[:, 1].min() > 0.05
    assert cKDTree(kept).query(pts)[0].max() <= 0.05 + 1e-12  # (maximal: every dropped point had a kept partner)


def test_the_lattice_samples_lie_on_their_triangles_and_reach_every_edge_from_the_first_corner():
    v = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.7, 0.0]])
    pts = sample_surface(v, np.array([[0, 1, 2]]), 0.2)
    assert np.allclose(pts[:, 2], 0) and (pts[:, :2] >= -1e-12).all() and (pts[:, 0] / 1.0 + pts[:, 1] / 0.7
                                                                           <= 1 + 1e-9).all()
    on_x = np.sort(pts[np.isclose(pts[:, 1], 0), 0])
    assert on_x[0] == 0 and on_x[-1] == pytest.approx(1) and np.diff(on_x).max() <= 0.2 + 1e-12
    assert len(pts) == 5 + 4 + 3 + 2 + 1 + 1  # (n1 = 5, n2 = 4: j <= 4 (1 - i/5) for i = 0..5)


def test_accuracy_and_completeness_of_a_mesh_a_known_height_above_the_scan(tmp_path):
    """Accuracy LIFT (the floater outside the observed region left out, the one past 20 mm an outlier), completeness
    LIFT (the table's points under the plane left out): each within what the scan's and the samples' spacing add."""
    ref = load_reference(**write_dtu(tmp_path, 24, _scan()))
    v, f = _mesh()
    res = evaluate_mesh(v, f, ref)
    assert LIFT <= res["dtu_accuracy"] <= np.hypot(LIFT, 0.05 / np.sqrt(2)) + 1e-9
    assert LIFT <= res["dtu_completeness"] <= np.hypot(LIFT, 0.3)
    assert res["dtu_overall"] == pytest.approx((res["dtu_accuracy"] + res["dtu_completeness"]) / 2)
    assert res["dtu_accuracy_outliers"] == pytest.approx(4 / 104, abs=0.01)  # (by area: the far floater's share)
    assert res["dtu_scan_points"] == 201 * 201 and res["dtu_completeness_outliers"] == 0
    # what each rule leaves out counts without it: the mask, the plane
    everywhere = load_reference(**write_dtu(tmp_path / "all", 24, _scan(), observed_below_x=30))
    assert evaluate_mesh(v, f, everywhere)["dtu_accuracy"] > LIFT + 0.2
    no_table = load_reference(**write_dtu(tmp_path / "table", 24, _scan(), plane=(0, 0, 1, 10)))
    assert evaluate_mesh(v, f, no_table)["dtu_completeness"] > LIFT + 0.4


def test_a_mesh_in_another_frame_and_faulty_files_are_named(tmp_path):
    from scipy.io import savemat

    files = write_dtu(tmp_path, 24, _scan())
    ref = load_reference(**files)
    v, f = _mesh()
    with pytest.raises(NLSError, match="no point of the mesh lies in the scan's observed region .*DTU's world frame"):
        evaluate_mesh(v / 100.0 - 5.0, f, ref)
    savemat(files["plane"], {"Q": np.zeros((4, 1))})
    with pytest.raises(DataError, match=r"Plane24.mat: no variable P \(has Q\)"):
        load_reference(**files)
    files["plane"].unlink()
    with pytest.raises(DataError, match="DTU plane: no file .*Plane24.mat"):
        load_reference(**files)
    assert scan_number("dtu_scan24") == 24 and scan_number("scan_024") == 24 and scan_number("lego") is None


def test_the_evaluator_moves_the_run_s_mesh_into_the_scan_s_frame_and_finds_the_files(tmp_path, monkeypatch):
    """The ``dtu`` evaluator on a run's mesh: the mesh in the run's frame (the world mesh through a similarity
    to_run) scores as the world mesh does, with the files found from $NLS_DTU and the scene folder's name."""
    import trimesh

    from plugins.ngp.config import DTUConfig
    from plugins.ngp.evaluate import DTUMetrics

    write_dtu(tmp_path / "dtu", 37, _scan())
    v, f = _mesh()
    to_run = np.diag([0.01, 0.01, 0.01, 1.0])
    to_run[:3, :3] = to_run[:3, :3] @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    to_run[:3, 3] = [0.3, -0.2, 0.1]
    mesh = trimesh.Trimesh(v, f, process=False)
    mesh.apply_transform(to_run)
    ctx = SimpleNamespace(scene=SimpleNamespace(meta={"root": str(tmp_path / "dtu_scan37"),
                                                      "input_frame": {"to_run": to_run.tolist()}}),
                          cfg=None, mesh=lambda: mesh, progress=False)
    monkeypatch.setenv("NLS_DTU", str(tmp_path / "dtu"))
    got = DTUMetrics(DTUConfig())(ctx)
    want = evaluate_mesh(v, f, load_reference(**reference_files(tmp_path / "dtu", 37)))
    assert got["dtu_accuracy"] == pytest.approx(want["dtu_accuracy"], abs=1e-6)
    assert got["dtu_completeness"] == pytest.approx(want["dtu_completeness"], abs=1e-3)
    monkeypatch.delenv("NLS_DTU")
    with pytest.raises(NLSError, match=r"neither the evaluator's root nor \$NLS_DTU"):
        DTUMetrics(DTUConfig())(ctx)
    ctx.scene.meta["root"] = str(tmp_path / "lego")
    with pytest.raises(NLSError, match="'lego' names no scan"):
        DTUMetrics(DTUConfig(root=str(tmp_path / "dtu")))(ctx)


def test_nls_eval_mesh_scores_another_method_s_mesh_with_the_run_s_evaluators(nls, tmp_path_factory, tmp_path):
    """nls eval RUN --mesh FILE: the run's chamfer evaluator scores the file (the run's own mesh scores as the run
    did; the scene's ground truth, written by nls export --dataset, at its sampling floor and 0 by exact distances), its JSON reads as a
    column of nls compare, and the psnr evaluator is left out with the reason; a missing file is named."""
    from tests.short_runs import short_run

    run = short_run(tmp_path_factory, "dense_grid")
    own = json.loads((run / "summary.json").read_text())["metrics"]
    mesh = run / json.loads((run / "summary.json").read_text())["mesh"]
    done = nls("eval", str(run), "--mesh", str(mesh), "-o", str(tmp_path / "own.json"), "-q", check=True)
    assert "scoring the mesh only; psnr" in done.stderr
    scored = json.loads((tmp_path / "own.json").read_text())
    assert scored["mesh_from"] == str(mesh.resolve()) and set(scored["evaluators"]) == {"chamfer"}
    assert scored["metrics"]["chamfer_l1"] == pytest.approx(own["chamfer_l1"], rel=1e-6)
    nls("export", str(run), "--dataset", "-o", str(tmp_path / "data"), "-q", check=True)
    nls("eval", str(run), "--mesh", str(tmp_path / "data" / "gt_mesh.ply"), "--mesh-frame", "run", "-o",
        str(tmp_path / "gt.json"), "--set", "evaluators=[{type: chamfer, floor: true}]", "-q", check=True)
    metrics = json.loads((tmp_path / "gt.json").read_text())["metrics"]
    gt = metrics["chamfer_l1"]
    assert gt == pytest.approx(metrics["chamfer_l1_floor"], rel=0.1) and gt < own["chamfer_l1"]
    assert metrics["chamfer_l1_surface"] < 0.01  # (exact distances from one surface's samples to itself)
    table = json.loads(nls("compare", str(run), str(tmp_path / "gt.json"), "--json", check=True).stdout)
    assert [r["label"] for r in table["runs"]] == ["dense_grid", "mesh:gt_mesh.ply"]
    assert table["runs"][1]["status"] == "scored" and table["table"]["chamfer_l1"]["mesh:gt_mesh.ply"] == gt
    bad = nls("eval", str(run), "--mesh", str(tmp_path / "none.ply"), "-o", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "--mesh" in bad.stderr and "does not exist" in bad.stderr


def test_a_given_mesh_in_the_input_s_coordinates_is_moved_into_the_run_s_frame(tmp_path):
    import trimesh

    from pipeline.external_mesh import GivenMesh, mesh_only

    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    box.export(tmp_path / "box.ply")
    T = np.diag([0.5, 0.5, 0.5, 1.0])
    T[:3, 3] = [1.0, -2.0, 0.25]
    scene = SimpleNamespace(meta={"input_frame": {"to_run": T.tolist()}})
    moved = GivenMesh(None, scene, None, None, "cpu", mesh_from=tmp_path / "box.ply").mesh()
    assert np.allclose(moved.vertices, box.vertices * 0.5 + T[:3, 3])
    kept = GivenMesh(None, scene, None, None, "cpu", mesh_from=tmp_path / "box.ply", mesh_frame="run").mesh()
    assert np.allclose(kept.vertices, box.vertices)
    assert mesh_only([{"mesh", "gt_mesh"}]) and mesh_only([{"mesh"}]) and not mesh_only([{"mesh", "images"}])
    assert not mesh_only([{"render", "images", "gt_mesh"}]) and not mesh_only([])


def test_nls_eval_mesh_with_the_dtu_evaluator_on_a_run_of_an_idr_folder(nls, tiny_scene, tmp_path):
    """A run on an IDR / NeuS folder whose world frame is 40x the normalised one: a sphere 1 mm outside the scanned
    sphere of radius 20, given in world coordinates, scores accuracy and completeness of 1 mm through nls eval --mesh
    with the dtu evaluator (files found under root from the folder's name), and a cut to the masks' visual hull
    takes faces out before scoring; given as if in the run's frame it lies
    outside the observed region, and the evaluator is skipped with the reason."""
    import trimesh

    from tests.test_neus_scene import _cameras, _similarity, _write_neus

    rng = np.random.default_rng(6)
    Ks, c2w = _cameras(rng, 4)
    S = _similarity(rng, 40.0)
    _write_neus(tmp_path / "dtu_scan3", Ks, c2w, S, size=(32, 32), rng=rng)
    nls("reconstruct", str(tiny_scene()), "--data", str(tmp_path / "dtu_scan3"), "--steps", "2", "--no-eval",
        "--output", str(tmp_path / "runs"), "-q", check=True)
    run = next((tmp_path / "runs").rglob("scene.json")).parent
    centre = S[:3, 3]
    n = 150_000  # (a Fibonacci sphere: the scan's points ~0.2 mm apart)
    k = np.arange(n) + 0.5
    z, phi = 1 - 2 * k / n, np.pi * (1 + 5 ** 0.5) * k
    unit = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], axis=1)
    write_dtu(tmp_path / "dtu", 3, centre + 20 * unit, observed_below_x=1e9, plane=(0, 0, 1, 1e6),
              bb=(centre - 30, centre + 30))
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=21.0)
    sphere.apply_translation(centre)
    sphere.export(tmp_path / "neus_mesh.ply")
    dtu = f"evaluators=[{{type: dtu, root: {tmp_path / 'dtu'}}}]"
    done = nls("eval", str(run), "--mesh", str(tmp_path / "neus_mesh.ply"), "--set", dtu, "-q", check=True)
    assert "dtu_overall" in done.stdout
    record = json.loads((run / "eval_neus_mesh.json").read_text())
    metrics = record["metrics"]
    assert record["metric_better"]["dtu_overall"] == "lower" and record["metric_notes"]["dtu_overall"].startswith("mm")
    # (the icosphere's faces lie up to ~0.01 mm inside its radius; the scan's points are ~0.2 mm apart)
    assert 0.99 <= metrics["dtu_accuracy"] <= 1.01 and 0.99 <= metrics["dtu_completeness"] <= 1.05
    cut = f"evaluators=[{{type: dtu, root: {tmp_path / 'dtu'}, visual_hull: 0}}]"  # (the masks: random pixels)
    nls("eval", str(run), "--mesh", str(tmp_path / "neus_mesh.ply"), "--set", cut, "-o", str(tmp_path / "cut.json"),
        "-q", check=True)
    hull = json.loads((tmp_path / "cut.json").read_text())["metrics"]
    assert 0 < hull["dtu_hull_dropped_faces"] < len(sphere.faces) and hull["dtu_samples"] < metrics["dtu_samples"]
    assert 0.99 <= hull["dtu_accuracy"] <= 1.01 and hull["dtu_completeness"] > metrics["dtu_completeness"]
    wrong = nls("eval", str(run), "--mesh", str(tmp_path / "neus_mesh.ply"), "--mesh-frame", "run", "--set", dtu,
                "-o", str(tmp_path / "wrong.json"))
    assert wrong.returncode == 1 and "no point of the mesh lies in the scan's observed region" in wrong.stderr
