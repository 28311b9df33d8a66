"""Single-sheet meshes of unsigned distance fields (pipeline.udf_mesh, the udf_marching_cubes extractor),
checked against analytic UDFs: an open square patch, a sphere and two parallel discs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.mesh import extract_mesh
from pipeline.types import NLSError
from pipeline.udf_mesh import extract_udf_mesh, near_surface_cubes, udf_grid_to_mesh

BOX = [-0.5] * 3 + [0.5] * 3
HALF = 0.3  # the patch is [-HALF, HALF]^2 x {0}


def patch_udf(x: torch.Tensor) -> torch.Tensor:
    q = torch.stack([(x[:, 0].abs() - HALF).clamp(min=0), (x[:, 1].abs() - HALF).clamp(min=0), x[:, 2]], -1)
    return q.norm(dim=-1)


def sphere_udf(x: torch.Tensor) -> torch.Tensor:
    return (x.norm(dim=-1) - 0.35).abs()


def boundary_edges(mesh) -> int:
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts == 1).sum())


@pytest.mark.parametrize("res", [48, 96])
def test_open_patch_gives_one_sheet_of_the_right_area(res):
    m = extract_udf_mesh(patch_udf, BOX, res)
    h = 1.0 / (res - 1)
    parts = m.split(only_watertight=False)
    assert max(len(p.faces) for p in parts) >= 0.995 * len(m.faces)  # one sheet (a stray trimmed border face at most)
    assert abs(m.area - (2 * HALF) ** 2) < 4 * (2 * HALF) * h, m.area  # one sheet; a shell would be ~2x
    assert float(patch_udf(torch.as_tensor(m.vertices, dtype=torch.float32)).max()) < 1.0 * h
    # inside the patch the sheet lies on the plane z = 0 (exact crossing for a plane)
    v = m.vertices[(np.abs(m.vertices[:, :2]) < HALF - 2 * h).all(1)]
    assert len(v) > 100 and np.abs(v[:, 2]).max() < 1e-5
    # the only open border is the patch's own: about its perimeter over the voxel size
    assert boundary_edges(m) < 2.0 * 4 * (2 * HALF) / h


def test_two_sheet_shell_of_plain_marching_cubes_is_avoided():
    res = 64
    shell = extract_mesh(patch_udf, BOX, res, 0.02)
    sheet = extract_udf_mesh(patch_udf, BOX, res)
    assert shell.area > 1.8 * sheet.area  # the iso-0.02 shell has two faces, the UDF mesh one


def test_closed_surface_is_watertight_consistently_wound_and_encloses_the_ball():
    m = extract_udf_mesh(sphere_udf, BOX, 64)
    assert m.is_watertight and m.is_winding_consistent
    assert abs(abs(m.volume) - 4 / 3 * math.pi * 0.35 ** 3) < 2e-3
    assert float(sphere_udf(torch.as_tensor(m.vertices, dtype=torch.float32)).max()) < 1e-3


def test_offset_min_recovers_a_shifted_field():
    """An unsigned hKR field is about d - margin: offset 'min' meshes its minimum sheet like the UDF."""
    a = extract_udf_mesh(sphere_udf, BOX, 48)
    b = extract_udf_mesh(lambda x: sphere_udf(x) - 0.01, BOX, 48, offset="min")
    assert abs(a.area - b.area) < 1e-3 * a.area


def test_two_parallel_discs_give_two_sheets_and_no_medial_sheet():
    """Between two sheets the UDF has a ridge (its gradient also flips there); the descent test keeps
    that medial plane out of the mesh."""
    def discs(x):
        r = (x[:, :2].norm(dim=-1) - 0.3).clamp(min=0)
        return torch.minimum(torch.hypot(r, x[:, 2] - 0.05), torch.hypot(r, x[:, 2] + 0.05))

    m = extract_udf_mesh(discs, BOX, 64, threshold=0.2)  # threshold wide enough to reach the medial plane
    z = m.vertices[:, 2]
    assert np.abs(np.abs(z) - 0.05).max() < 0.02
    assert (np.abs(z) < 0.02).sum() == 0
    assert len(m.split(only_watertight=False)) == 2


def test_clear_errors():
    vals = np.ones((8, 8, 8))
    with pytest.raises(NLSError, match="no cube"):
        udf_grid_to_mesh(vals, lambda p: np.zeros((len(p), 3)), BOX)
    with pytest.raises(NLSError, match="NaN"):
        udf_grid_to_mesh(np.full((8, 8, 8), np.nan), lambda p: np.zeros((len(p), 3)), BOX)
    with pytest.raises(NLSError, match="offset"):
        udf_grid_to_mesh(vals, lambda p: np.zeros((len(p), 3)), BOX, offset="lowest")


def test_near_surface_cubes_selects_cubes_with_all_corners_below():
    v = np.ones((4, 4, 4))
    v[1:3, 1:3, 1:3] = 0.0
    assert near_surface_cubes(v, 0.5).tolist() == [[1, 1, 1]]


def test_extractor_component_through_a_field_chain():
    from plugins.ngp.config import UdfMarchingCubesConfig
    from plugins.ngp.extract import UdfMarchingCubes

    ex = UdfMarchingCubes(UdfMarchingCubesConfig(resolution=48), {"sdf"}, BOX)
    m = ex.extract(lambda x, d: {"sdf": sphere_udf(x) - 0.005})
    assert m.is_watertight and abs(m.area - 4 * math.pi * 0.35 ** 2) < 0.02
    with pytest.raises(NLSError, match="produces only"):
        UdfMarchingCubes(UdfMarchingCubesConfig(quantity="density"), {"sdf"}, BOX).quantity()


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [-2e-6, 2e-6])
def test_a_patch_through_the_grid_nodes_keeps_its_area_and_places_vertices_on_it(axis, shift):
    """A sheet a hair off the grid nodes puts vertices on cube corners: they are the corners (not a
    voxel further along x), and neighbouring cubes weld there; 2e-6 above or below gives the same sheet."""
    res, z0 = 49, shift

    def plane_patch(x: torch.Tensor) -> torch.Tensor:
        others = [a for a in range(3) if a != axis]
        q = torch.stack([(x[:, others[0]].abs() - HALF).clamp(min=0), (x[:, others[1]].abs() - HALF).clamp(min=0),
                         x[:, axis] - z0], -1)
        return q.norm(dim=-1)

    m = extract_udf_mesh(plane_patch, BOX, res)
    h = 1.0 / (res - 1)
    assert abs(m.area - (2 * HALF) ** 2) < 4 * (2 * HALF) * h, m.area
    assert float(plane_patch(torch.as_tensor(m.vertices, dtype=torch.float32)).max()) < h
    assert m.edges_unique_length.max() < math.sqrt(3) * h * 1.01  # within one cube: no edge spans two voxels


def test_tiled_marching_cubes_meshes_only_the_cubes():
    """Corners clamped to -1e-9 tau next to the spacer: only each cube's own two faces are kept (the
    spacer cells' crossings land on 1.0 in float32 and used to be kept too)."""
    from pipeline.udf_mesh import CORNERS, _tiled_marching_cubes

    one = np.array([[0.35 if c[2] == 0 else -1e-9 for c in CORNERS]])
    for k in (1, 8, 30):
        verts, faces, cube = _tiled_marching_cubes(np.repeat(one, k, 0))
        assert len(faces) == 2 * k and np.bincount(cube[faces[:, 0]], minlength=k).tolist() == [2] * k
        assert np.allclose(verts[:, 2], 1.0, atol=1e-6)
