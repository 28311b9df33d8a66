"""Marching-cubes extraction against analytic fields; mesh / point-cloud export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from pipeline.mesh import MESH_FORMATS, export_mesh, export_point_cloud, extract_mesh, field_to_grid, grid_to_mesh
from pipeline.types import NLSError

BOX = [-1, -1, -1, 1, 1, 1]
RES = 48
VOXEL = 2 / (RES - 1)
RADIUS = 0.6


def sphere_sdf(p):
    return p.norm(dim=-1) - RADIUS


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere_sdf, BOX, RES, 0.0, chunk=5000)  # several chunks


def _check_sphere(m, r=RADIUS, centre=(0, 0, 0)):
    assert m.is_watertight and m.is_winding_consistent
    rad = np.linalg.norm(m.vertices - np.asarray(centre), axis=1)
    assert np.abs(rad - r).max() < VOXEL
    assert m.volume > 0  # outward normals: positive signed volume
    assert abs(m.volume / (4 / 3 * math.pi * r ** 3) - 1) < 0.02
    # normals point away from the centre
    out = np.einsum("ij,ij->i", m.face_normals, m.triangles_center - np.asarray(centre))
    assert (out > 0).mean() > 0.99


def test_sdf_sphere(sphere_mesh):
    _check_sphere(sphere_mesh)
    assert sphere_mesh.metadata["level"] == 0.0


def test_offcentre_box_bbox_mapping():
    c = torch.tensor([0.3, -0.2, 0.1])
    m = extract_mesh(lambda p: (p - c).norm(dim=-1) - 0.4, [-0.5, -1, -0.7, 1.2, 0.6, 0.9],
                     40, 0.0)
    # vertices in world coordinates: centred where the field says
    assert np.allclose(m.vertices.mean(0), c.numpy(), atol=0.02)
    assert m.volume > 0


def test_density_above_convention():
    density = lambda p: torch.exp(-((p.norm(dim=-1) / RADIUS) ** 2))  # noqa: E731
    m = extract_mesh(density, BOX, RES, math.exp(-1.0), inside="above")
    _check_sphere(m)
    # the same field read with the wrong convention has inverted orientation
    m2 = extract_mesh(density, BOX, RES, math.exp(-1.0), inside="below")
    assert m2.volume < 0


def test_numpy_returning_field_and_column_output():
    m = extract_mesh(lambda p: (p.norm(dim=-1, keepdim=True) - RADIUS).numpy(), BOX, 32, 0.0)
    assert m.is_watertight


def test_empty_level_set_message():
    with pytest.raises(NLSError) as e:
        extract_mesh(sphere_sdf, BOX, 17, 5.0)  # odd: the centre (-0.6) is a grid point
    msg = str(e.value)
    assert "empty level set" in msg and "level 5 " in msg and "[-0.6, " in msg
    assert "range" in msg and "e.g." in msg
    mid = msg.split("e.g. ")[1].split(" ")[0]  # the middle of the range, with the options that set it
    assert f"--level {mid}`" in msg and f"--set extractor.level={mid}`" in msg, msg


def test_nan_field():
    def f(p):
        v = sphere_sdf(p)
        v[::7] = float("nan")
        return v

    with pytest.raises(NLSError, match="NaN"):
        extract_mesh(f, BOX, 16, 0.0)


def test_bad_arguments():
    with pytest.raises(NLSError, match="inside"):
        extract_mesh(sphere_sdf, BOX, 16, 0.0, inside="outside")
    with pytest.raises(NLSError, match="bbox"):
        extract_mesh(sphere_sdf, [1, 1, 1, -1, -1, -1], 16, 0.0)
    with pytest.raises(NLSError, match="resolution"):
        extract_mesh(sphere_sdf, BOX, 1, 0.0)
    with pytest.raises(NLSError, match="expected"):
        extract_mesh(lambda p: p, BOX, 8, 0.0)
    with pytest.raises(NLSError, match="expected"):  # the narrow-band path checks shapes too
        extract_mesh(lambda p: p, BOX, 8, 0.0, lipschitz=1.0)


@pytest.mark.parametrize("ext", MESH_FORMATS)
def test_export_roundtrip(tmp_path, sphere_mesh, ext):
    path = export_mesh(sphere_mesh, tmp_path / "deep" / "er" / f"mesh{ext}")
    assert path.is_file()
    back = trimesh.load(path, force="mesh")
    back.merge_vertices()
    assert len(back.faces) == len(sphere_mesh.faces)
    assert np.allclose(back.bounds, sphere_mesh.bounds, atol=1e-5)
    assert abs(back.volume - sphere_mesh.volume) < 1e-4  # orientation survives


def test_export_errors(tmp_path, sphere_mesh):
    with pytest.raises(NLSError) as e:
        export_mesh(sphere_mesh, tmp_path / "m.xyz")
    assert ".ply" in str(e.value) and ".glb" in str(e.value) and "m.xyz" in str(e.value)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(NLSError) as e:
        export_mesh(sphere_mesh, blocker / "sub" / "m.ply")
    assert "file.txt" in str(e.value)


def test_export_point_cloud(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3)).astype(np.float32)
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    p = export_point_cloud(torch.from_numpy(pts), tmp_path / "pc" / "cloud.ply", normals=nrm)
    raw = p.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    assert b"element vertex 100" in head and b"property float nz" in head
    data = np.frombuffer(body, "<f4").reshape(100, 6)
    assert np.array_equal(data[:, :3], pts) and np.allclose(data[:, 3:], nrm)
    back = trimesh.load(p)
    assert np.allclose(np.asarray(back.vertices), pts)
    with pytest.raises(NLSError, match="valid"):
        export_point_cloud(pts, tmp_path / "cloud.obj")
    with pytest.raises(NLSError, match=r"\(P, 3\)"):
        export_point_cloud(pts[:, :2], tmp_path / "c.ply")


def _two_spheres(p):
    a = (p - torch.tensor([0.1, 0.0, 0.0])).norm(dim=-1) - 0.3
    b = (p - torch.tensor([-0.3, 0.2, 0.1])).norm(dim=-1) - 0.12
    return torch.minimum(a, b)


@pytest.mark.parametrize("scale, res", [(1.0, 64), (1.0, 101), (3.0, 80)])
def test_narrow_band_grid_matches_dense_grid_near_the_level_set(scale, res):
    """The narrow-band grid has the dense grid's signs everywhere and its exact values in every
    cell the level set crosses, so marching cubes gives the same mesh. scale 3 breaks the
    given bound (1): the coarse-grid slope check must raise it."""
    from pipeline.mesh import field_to_grid_narrow

    box = [-0.55, -0.5, -0.5, 0.5, 0.52, 0.5]
    f = lambda p: scale * _two_spheres(p)
    dense = field_to_grid(f, box, res)
    narrow, st = field_to_grid_narrow(f, box, res, 0.0, 1.0)
    assert np.array_equal(np.sign(dense), np.sign(narrow))
    near = np.abs(dense) < scale * 2.0 * (1.07 / (res - 1))
    assert np.array_equal(dense[near], narrow[near])
    assert st["fine_evals"] + st["coarse_evals"] < st["dense_evals"]
    assert st["lipschitz_used"] >= 0.99 * scale
    a, b = grid_to_mesh(dense, box, 0.0), grid_to_mesh(narrow, box, 0.0)
    assert np.allclose(np.sort(a.vertices, 0), np.sort(b.vertices, 0))
    m = extract_mesh(f, box, res, 0.0, lipschitz=1.0)
    assert len(m.faces) == len(a.faces)


def test_narrow_band_rejects_bad_bounds():
    from pipeline.mesh import field_to_grid_narrow

    with pytest.raises(NLSError, match="lipschitz"):
        field_to_grid_narrow(_two_spheres, BOX, 32, 0.0, 0.0)
    with pytest.raises(NLSError, match="stride"):
        field_to_grid_narrow(_two_spheres, BOX, 32, 0.0, 1.0, stride=0)


def test_watertightness_is_that_of_the_file_as_read_back(tmp_path):
    """A box whose faces do not share vertices is not watertight in memory; written and read
    back (trimesh merges coincident vertices) it is. `nls export` reports the file's property."""
    import trimesh

    from pipeline.mesh import export_mesh, read_back_watertight

    box = trimesh.creation.box()
    box.unmerge_vertices()
    assert not box.is_watertight
    for ext in ("ply", "obj", "stl"):
        assert read_back_watertight(export_mesh(box, tmp_path / f"box.{ext}")), ext
    torn = trimesh.creation.box()
    torn.update_faces(np.arange(len(torn.faces)) != 0)  # one face removed: a hole
    assert not read_back_watertight(export_mesh(torn, tmp_path / "torn.ply"))


def test_empty_level_set_of_a_constant_field_suggests_moving_the_box():
    with pytest.raises(NLSError) as e:
        extract_mesh(lambda p: torch.zeros(len(p)), BOX, 17, 0.0)
    msg = str(e.value)
    assert "ranges over [0, 0]" in msg and "constant there" in msg and "e.g." not in msg


UNIT = [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("inside", ["below", "above"])
def test_close_caps_a_shape_that_leaves_the_box_with_the_box_faces(inside):
    """A half-space through the unit box closes to exactly half the box; a ball of radius 0.6 (beyond the
    faces, inside the corners) closes to the ball-box intersection (volume from the faces' spherical caps)."""
    s = 1.0 if inside == "below" else -1.0
    half = extract_mesh(lambda p: s * (p[:, 0] + 0.1 * p[:, 1]), UNIT, 33, 0.0, inside=inside, close=True)
    assert half.is_watertight and half.is_winding_consistent
    assert half.volume == pytest.approx(0.5, abs=1e-6)  # x < -0.1 y: half the box by symmetry
    assert np.all(half.vertices >= -0.5) and np.all(half.vertices <= 0.5)
    r, h = 0.6, 0.1  # six caps of height h = r - 0.5 cut off by the faces (they do not overlap at r < sqrt(0.5))
    exact = 4 / 3 * math.pi * r ** 3 - 6 * math.pi * h ** 2 * (3 * r - h) / 3
    ball = extract_mesh(lambda p: s * (p.norm(dim=-1) - r), UNIT, 64, 0.0, inside=inside, close=True)
    assert ball.is_watertight and ball.volume == pytest.approx(exact, rel=3e-3)
    assert ball.metadata["closed_at_box"] and ball.metadata["resolution"] == [64, 64, 64]
    open_ball = extract_mesh(lambda p: s * (p.norm(dim=-1) - r), UNIT, 64, 0.0, inside=inside)
    assert not open_ball.is_watertight and not open_ball.metadata["closed_at_box"]


def test_close_leaves_a_shape_inside_the_box_unchanged(sphere_mesh):
    closed = extract_mesh(sphere_sdf, BOX, RES, 0.0, chunk=5000, close=True)
    assert np.allclose(np.sort(closed.vertices, 0), np.sort(sphere_mesh.vertices, 0), atol=1e-6)
    assert len(closed.faces) == len(sphere_mesh.faces)


@pytest.mark.parametrize("quantity", ["sdf", "occupancy"])
def test_marching_cubes_extractor_close_option(quantity):
    """``extractor.close`` reaches both the streamed path (sdf) and the sampled-grid path (occupancy with
    fill_interior): a ball that pokes out of the unit box is meshed closed, and open without it."""
    from plugins.ngp.config import MarchingCubesConfig
    from plugins.ngp.extract import MarchingCubes

    def chain(x, d):
        r = x.norm(dim=-1)
        return {"sdf": r - 0.6, "occupancy": torch.sigmoid((0.6 - r) * 50)}

    for close in (True, False):
        mc = MarchingCubes(MarchingCubesConfig(resolution=40, quantity=quantity, close=close), {quantity}, UNIT)
        assert mc.extract(chain).is_watertight == close


def test_shape_meshes_are_closed_like_their_voxel_ground_truth():
    """R2N2 shapes fill the unit box: the decoders' meshes (``nls infer``, ``shape_iou``'s Chamfer) are capped
    at the box, as ``voxels_to_mesh`` caps the ground truth."""
    from plugins.shapes.collection import voxels_to_mesh
    from plugins.shapes.evaluate import shape_mesh

    class Field(torch.nn.Module):  # an occupancy decoder whose shape is the slab |z| < 0.25 across the box
        contour = ("occupancy", 0.5, "above")

        def point_outputs(self, x, e):  # (1,N,3), (1,E) -> {occupancy (1,N)}
            return {"occupancy": torch.sigmoid((0.25 - x[..., 2].abs()) * 100)}

    m = shape_mesh(Field(), torch.zeros(1, 4), 33)
    vox = np.zeros((32, 32, 32), bool)
    vox[:, :, 8:24] = True  # the same slab in voxels
    gt = voxels_to_mesh(vox)
    assert m.is_watertight and gt.is_watertight
    assert m.volume == pytest.approx(gt.volume, rel=0.02) and gt.volume == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("ext", [".ply", ".obj"])
def test_an_export_stopped_while_encoding_keeps_the_previous_file(tmp_path, sphere_mesh, monkeypatch, ext):
    """trimesh opens (truncates) the target before it encodes: a kill during the encode left a 0-byte file
    in place of a good mesh. The encode now happens in memory, then an atomic rename."""
    import trimesh.exchange.export as exporters

    path = export_mesh(sphere_mesh, tmp_path / f"m{ext}")
    before = path.read_bytes()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(exporters._mesh_exporters, ext[1:], stopped)
    with pytest.raises(KeyboardInterrupt):
        export_mesh(sphere_mesh, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_query_chunk_takes_the_fields_cpu_hint_and_the_grid_is_the_same():
    """MLP fields sample grids on CPU in small chunks (their activations stay in cache: 2.7x on lipschitz's
    SLL field); other devices and fields without a hint keep the default. The grid does not depend on it."""
    import types

    import torch

    from pipeline.mesh import DEFAULT_CHUNK, field_to_grid, query_chunk
    from plugins.lipschitz.sll import LipschitzSDF
    from plugins.sample_network.config import MLPSDFConfig
    from plugins.sample_network.fields import MLPSDF

    torch.manual_seed(0)
    sll = LipschitzSDF(depth=4, width=32)
    chain = types.SimpleNamespace(field=sll)
    assert query_chunk(chain, "cpu") == 2 ** 13 == LipschitzSDF.cpu_query_chunk == MLPSDF.cpu_query_chunk
    assert query_chunk(chain, torch.device("cuda")) == DEFAULT_CHUNK
    assert query_chunk(types.SimpleNamespace(field=torch.nn.Linear(3, 1)), "cpu") == DEFAULT_CHUNK
    assert query_chunk(object(), "cpu") == DEFAULT_CHUNK
    for field in (sll, MLPSDF(MLPSDFConfig())):
        fn = lambda x, f=field: f(x)["sdf"]  # noqa: E731
        with torch.no_grad():
            small = field_to_grid(fn, BOX, 24, chunk=query_chunk(types.SimpleNamespace(field=field), "cpu"))
        big = field_to_grid(fn, BOX, 24, chunk=DEFAULT_CHUNK)  # bit-identical here; float sums may differ elsewhere
        assert np.allclose(small, big, rtol=0, atol=1e-6), type(field).__name__
