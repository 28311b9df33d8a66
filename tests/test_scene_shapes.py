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
