"""Drawing a coloured mesh from a scene's cameras (:mod:`pipeline.mesh_views`), against exact coverage."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from pipeline.mesh_views import mesh_image
from pipeline.types import Cameras


def _half_plane_scene(edge_px: float):
    """A camera at the origin looking down -z (8 x 6 pixels, f = 4, principal point at the centre) and a red
    square at z = -1 covering every ray whose pixel x-coordinate exceeds ``edge_px``."""
    f, w, h = 4.0, 8, 6
    x0 = (edge_px - w / 2) / f  # the edge's x on the plane z = -1
    verts = np.array([[x0, -5, -1], [5, -5, -1], [5, 5, -1], [x0, 5, -1]], float)
    mesh = trimesh.Trimesh(verts, [[0, 1, 2], [0, 2, 3]], process=False)
    mesh.visual.vertex_colors = np.tile([255, 0, 0, 255], (4, 1)).astype(np.uint8)
    cams = Cameras(torch.eye(4, dtype=torch.float64)[None], torch.tensor([f]), torch.tensor([f]),
                   torch.tensor([w / 2]), torch.tensor([h / 2]), w, h)
    return mesh, cams


def test_supersampling_averages_the_sub_pixels_a_mesh_edge_splits():
    """An edge through pixel column 3 at x = 3.4: one ray per pixel centre (x = 3.5) gives that column all mesh;
    2 x 2 sub-pixels (x = 3.25, 3.75) exactly half of each, 3 x 3 (x = 3 1/6, 3 1/2, 3 5/6) two thirds mesh; the
    other columns are unchanged."""
    mesh, cams = _half_plane_scene(3.4)
    red, white = np.array([1.0, 0, 0]), np.ones(3)
    one = mesh_image(mesh, cams, 0, white)
    assert np.allclose(one[:, :3], white) and np.allclose(one[:, 3:], red)
    for s, hit in ((2, 1 / 2), (3, 2 / 3)):
        image = mesh_image(mesh, cams, 0, white, supersample=s)
        assert np.allclose(image[:, 3], hit * red + (1 - hit) * white), s
        assert np.allclose(image[:, :3], white) and np.allclose(image[:, 4:], red), s
