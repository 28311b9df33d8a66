"""Procedural scene shapes and the geometry source's cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plugins.scenes import shapes


@pytest.mark.parametrize("name", ["sphere", "box", "torus", "cylinder_x", "csg"])
def test_shapes_take_any_leading_shape(name):
    """(N, 3) and (A, B, 3) give the same values, reshaped: the SDFs index the last axis only."""
    fn = getattr(shapes, name)
    x = torch.rand(4, 5, 3) - 0.5
    assert torch.equal(fn(x), fn(x.reshape(-1, 3)).reshape(4, 5))


def test_shapes_against_analytic_distances():
    p = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(shapes.sphere(p[:2]), torch.tensor([-0.4, 0.1]))
    assert torch.allclose(shapes.box(p[:2]), torch.tensor([-0.3, 0.2]))
    assert torch.allclose(shapes.torus(torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])), torch.tensor([-0.12, 0.18]))
    assert torch.allclose(shapes.cylinder_x(torch.tensor([[7.0, 0.0, 0.5]])), torch.tensor([0.4]))


def test_a_point_file_geometry_scene_leaves_no_cache_folder(tmp_path, monkeypatch):
    from plugins.scenes.config import GeometryConfig
    from plugins.scenes.sources import build_geometry

    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    pts = np.random.default_rng(0).normal(size=(200, 3))
    np.savetxt(tmp_path / "pc.xyz", pts)
    scene = build_geometry(GeometryConfig(path=str(tmp_path / "pc.xyz")), None)()
    assert scene.points.shape == (200, 3)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name, content, why", [
    ("junk.ply", bytes(range(200)), "Not a ply file"),
    ("pts.xyz", b"hello\n", "could not convert string"),
    ("pickled.npy", b"\x93NUMPY" + bytes(100), "ValueError"),
    ("ragged.xyz", b"1 2 3\n4 5\n", "number of columns changed"),
])
def test_a_damaged_point_file_is_a_data_error_naming_it(tmp_path, name, content, why):
    from pipeline.types import DataError
    from plugins.scenes.config import GeometryConfig
    from plugins.scenes.sources import build_geometry

    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"cannot read point file {tmp_path / name}: .*{why}"):
        build_geometry(GeometryConfig(path=str(tmp_path / name)), None)()


def test_a_scene_cache_that_is_a_file_is_a_data_error_naming_nls_cache(tmp_path, monkeypatch):
    from pipeline.types import DataError
    from plugins.scenes.config import ProceduralConfig
    from plugins.scenes.sources import build_procedural

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "afile"))
    with pytest.raises(DataError, match=r"cannot use the scene cache .*afile \(NLS_CACHE\).*writable folder"):
        build_procedural(ProceduralConfig(shape="sphere", n_train=2, n_test=1, image_size=8), None)()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "100000"])
def test_a_bad_nls_threads_is_one_clear_error(monkeypatch, value):
    """100000 threads made torch segfault with no message (exit 139)."""
    from pipeline.build import env_threads, max_threads, setup_threads
    from pipeline.types import NLSError

    monkeypatch.setenv("NLS_THREADS", value)
    with pytest.raises(NLSError, match=rf"NLS_THREADS = '{value}': give a whole number of CPU threads in 1\.\.\d+"):
        env_threads()
    with pytest.raises(NLSError, match=r"train.threads = 100000: give a whole number of CPU threads in 1\.\."):
        setup_threads(100000)
    monkeypatch.setenv("NLS_THREADS", str(max_threads()))
    assert env_threads() == max_threads() >= 64
    monkeypatch.setenv("NLS_THREADS", " 3 ")
    assert env_threads() == 3
    monkeypatch.delenv("NLS_THREADS")
    assert env_threads() is None


def test_an_object_running_out_of_the_training_views_is_warned_about(capsys):
    import types

    import torch

    from plugins.scenes.sources import views_cut_off, warn_if_cut_off

    alphas = torch.zeros(3, 16, 16, 1)
    alphas[0, 4:12, 4:12] = 1  # inside the frame
    alphas[1, 0:6, 5:9] = 1  # touches the top row
    alphas[2, 5:9, 10:16] = 0.4  # partial coverage at the right edge: not counted
    assert views_cut_off(alphas) == 1
    split = type("Split", (), {"alphas": alphas, "__len__": lambda self: 3})()
    scene = types.SimpleNamespace(splits={"train": split})
    warn_if_cut_off(scene)
    assert "warning: the object runs out of the image in 1 of 3 training views" in capsys.readouterr().err
