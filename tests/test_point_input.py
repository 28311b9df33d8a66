"""Point files with repeated or coincident points: a clear error or a warning, never a crash of libigl."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pipeline.types import DataError
from plugins.scenes.sources import _read_points
from tests.conftest import ROOT


def _sphere(n: int = 500) -> np.ndarray:
    p = np.random.default_rng(0).normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def test_repeated_points_are_left_out_with_a_warning(tmp_path, capsys):
    pts = _sphere()
    path = tmp_path / "dup.xyz"
    np.savetxt(path, np.concatenate([pts, pts[:3]]))
    points, normals = _read_points(path)
    assert normals is None and len(points) == len(pts)
    assert np.array_equal(points, np.loadtxt(path)[:len(pts)])  # the first of each, in file order
    assert "3 of its 503 points repeat an earlier point" in capsys.readouterr().err


@pytest.mark.parametrize("rows", [[[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3]] * 5])
def test_a_single_point_or_coincident_points_are_refused(tmp_path, rows):
    path = tmp_path / "same.xyz"
    np.savetxt(path, np.array(rows))
    with pytest.raises(DataError, match=f"point file {path}: all {len(rows)} points coincide"):
        _read_points(path)


def test_point_winding_numbers_survive_a_repeated_point():
    """libigl's point-cloud winding numbers segfaulted (exit 139, no message) on one repeated point; merged
    first (areas summed), the numbers are those of the cloud without the repeat. Run in a child process, so a
    regression fails this test instead of killing the test run."""
    code = """
import numpy as np
from plugins.lipschitz.labels import estimate_areas, winding_numbers_points
p = np.random.default_rng(0).normal(size=(3000, 3)); p /= np.linalg.norm(p, axis=1, keepdims=True)
a = estimate_areas(p)
q = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
plain = winding_numbers_points(p, p, a, q)
again = winding_numbers_points(np.concatenate([p, p[:1]]), np.concatenate([p, p[:1]]),
                               np.concatenate([a, [0.0]]), q)
assert np.allclose(plain, again, atol=1e-12), (plain, again)
assert abs(plain[0] - 1) < 0.02 and abs(plain[1]) < 0.02, plain
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def test_crop_view_on_a_point_file_without_normals_is_a_config_error(tmp_path):
    from pipeline.types import ConfigError
    from plugins.sample_network.config import ScanConfig
    from plugins.sample_network.data import build_scan

    path = tmp_path / "pts.xyz"
    np.savetxt(path, _sphere())
    with pytest.raises(ConfigError, match="scene.crop = view needs surface normals"):
        build_scan(ScanConfig(path=str(path), crop="view"), None)()


def test_an_inverted_scene_box_is_refused_naming_the_key():
    from pydantic import ValidationError

    from plugins.scenes.config import BlenderConfig

    with pytest.raises(ValidationError, match="each min below its max"):
        BlenderConfig(path="x", aabb=[1, 1, 1, -1, -1, -1])


def test_a_warning_given_twice_prints_once(capsys):
    from pipeline import notices

    notices.reset()
    notices.warn("the same thing")
    notices.warn("the same thing")
    assert capsys.readouterr().err.count("warning: the same thing") == 1 and notices.kept() == ["the same thing"]
    notices.reset()


def test_a_ply_without_vertices_is_called_empty_not_a_mesh_without_faces(tmp_path):
    """A .ply whose header declares 0 vertices is neither a point cloud nor a mesh: the error says what it holds."""
    from pipeline.scenes.mesh_render import load_mesh

    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\n"
                     "end_header\n")
    with pytest.raises(DataError, match=r"empty.ply is empty: 0 vertices and 0 faces, so neither a mesh nor a point "
                                        r"cloud"):
        load_mesh(empty)
