"""Textured and simplified meshes for ``nls export`` (:mod:`pipeline.texture`): texels rasterised exactly, an
analytic colour field baked and read back from .glb and .obj, seams kept through welding, decimation to a face
count on a sphere, and the CLI's options and refusals."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import trimesh

from pipeline.mesh import export_mesh, read_back_watertight, weld_for_format
from pipeline.system import FieldChain
from pipeline.types import NLSError
from tests.short_runs import short_run

pytest.importorskip("xatlas", reason="xatlas (the export extra) is not installed")
pytest.importorskip("fast_simplification", reason="fast-simplification (the export extra) is not installed")

from pipeline.texture import bake_texture, decimate, rasterize  # noqa: E402

R = 0.3


class PositionColour(torch.nn.Module):
    """A sphere of radius R whose colour is its position shifted into [0, 1]: rgb = x + 0.5."""

    def forward(self, x, d=None):
        out = {"sdf": x.norm(dim=-1) - R}
        if d is not None:
            out["rgb"] = (x + 0.5).clamp(0, 1)
        return out


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` (H, W, C) at ``uv`` (N, 2), origin at the bottom left, texel centres at
    ((c + 0.5) / W, 1 - (r + 0.5) / H): scipy's map_coordinates, independent of the code under test."""
    from scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    rows, cols = (1 - uv[:, 1]) * h - 0.5, uv[:, 0] * w - 0.5
    return np.stack([map_coordinates(image[..., c], [rows, cols], order=1, mode="nearest")
                     for c in range(image.shape[2])], 1)


def test_rasterize_covers_each_texel_centre_inside_a_face_once():
    """Two triangles splitting the square [0.1, 0.9]^2 of UV space: every texel whose centre lies in the square is
    covered exactly once (texel centres on the diagonal go to one face), none outside it, and the barycentric
    coordinates give back each texel's centre."""
    uvs = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    size = 40
    texel, owner, bary = rasterize(uvs, faces, size)
    rows, cols = np.divmod(texel, size)
    centre_u, centre_v = (cols + 0.5) / size, 1 - (rows + 0.5) / size
    inside = [(r, c) for r in range(size) for c in range(size)
              if 0.1 <= (c + 0.5) / size <= 0.9 and 0.1 <= 1 - (r + 0.5) / size <= 0.9]
    assert len(np.unique(texel)) == len(texel) == len(inside) == 32 * 32
    back = np.einsum("tk,tkc->tc", bary, uvs[faces[owner]])
    assert np.allclose(back, np.stack([centre_u, centre_v], 1), atol=1e-9)


@pytest.mark.parametrize("ext", [".glb", ".obj"])
def test_a_baked_texture_reads_back_the_field_colour(tmp_path, ext):
    """The colour field x + 0.5 baked into a 256 texture on a sphere's mesh, written and read back: at the vertices
    and at random points inside the faces (their UVs interpolated) the texture gives the colour at that point
    to within 0.5/255 on average and 4/255 at most (measured: 0.2 and 1.9 at the vertices; from 8-bit rounding,
    the bilinear lookup, and texels filled from the nearest covered one at chart borders); no texel is left
    black."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=R)
    baked = bake_texture(mesh, FieldChain(PositionColour()), "cpu", 256, name="ball", ext=ext)
    assert 0.4 < baked.metadata["texture"]["covered"] < 1
    path = export_mesh(baked, tmp_path / f"ball{ext}")
    if ext == ".obj":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ball.mtl", "ball.obj", "ball.png"]
        assert "Kd 1.00000000 1.00000000 1.00000000" in (tmp_path / "ball.mtl").read_text()
    back = trimesh.load(path, force="mesh")
    assert isinstance(back.visual, trimesh.visual.TextureVisuals) and len(back.faces) == len(mesh.faces)
    assert not back.is_watertight and read_back_watertight(path)  # cut at the seams; the surface is closed
    mat = back.visual.material
    image = np.asarray(mat.baseColorTexture if hasattr(mat, "baseColorTexture") else mat.image, np.float64)[..., :3]
    assert image.shape == (256, 256, 3) and image.min() > 0.15 * 255
    got = _sample(image / 255, back.visual.uv)
    err = np.abs(got - (np.asarray(back.vertices) + 0.5))
    assert err.mean() < 0.5 / 255 and err.max() < 4 / 255, (err.mean() * 255, err.max() * 255)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, len(back.faces), 2000)
    w = rng.dirichlet(np.ones(3), 2000)
    points = np.einsum("nk,nkc->nc", w, np.asarray(back.vertices)[back.faces[faces]])
    uv = np.einsum("nk,nkc->nc", w, back.visual.uv[back.faces[faces]])
    err = np.abs(_sample(image / 255, uv) - (points + 0.5))
    assert err.mean() < 0.5 / 255 and err.max() < 4 / 255, (err.mean() * 255, err.max() * 255)


def test_welding_keeps_a_textured_meshs_seams():
    """Vertices at one place with different UVs (the seams of the atlas) stay apart when a mesh is welded for its
    format; without a texture they merge, as before."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=R)
    baked = bake_texture(mesh, FieldChain(PositionColour()), "cpu", 64)
    assert len(baked.vertices) > len(mesh.vertices)  # cut along the seams
    assert len(weld_for_format(baked, ".glb").vertices) == len(baked.vertices)
    plain = trimesh.Trimesh(baked.vertices, baked.faces, process=False)
    assert len(weld_for_format(plain, ".glb").vertices) == len(mesh.vertices)


def test_decimation_reaches_the_face_count_and_stays_on_the_surface():
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=R)  # 20480 faces
    small = decimate(sphere, 2000)
    assert 1900 <= len(small.faces) <= 2000 and small.is_watertight
    assert np.abs(np.linalg.norm(small.vertices, axis=1) - R).max() < 0.01 * R
    assert decimate(sphere, 50000) is sphere  # already fewer faces


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return short_run(tmp_path_factory, "dense_grid")


def test_export_simplifies_and_textures_a_trained_run(run, tmp_path, nls):
    """`nls export --faces 3000 --texture 128` on a trained run writes a .glb of about 3000 faces with a 128 x 128
    texture, whose colour at the vertices is the field's (as --colors bakes it, within the texture's sampling)."""
    out = tmp_path / "small.glb"
    res = nls("export", str(run), "-o", str(out), "--faces", "3000", "--texture", "128", "--up", "y", check=True)
    assert "(simplified from" in res.stdout and "a 128 x 128 texture" in res.stdout, res.stdout
    back = trimesh.load(out, force="mesh")
    assert 2800 <= len(back.faces) <= 3000
    image = np.asarray(back.visual.material.baseColorTexture, np.float64)[..., :3] / 255
    assert image.shape == (128, 128, 3)
    coloured = tmp_path / "coloured.ply"
    nls("export", str(run), "-o", str(coloured), "--faces", "3000", "--colors", check=True)
    ref = trimesh.load(coloured, force="mesh")
    from pipeline.metrics import nearest_distances

    d, i = nearest_distances(back.vertices, ref.vertices)
    assert np.median(d) < 1e-6  # the same simplified mesh, cut into charts
    err = np.abs(_sample(image, back.visual.uv) - np.asarray(ref.visual.vertex_colors, np.float64)[i, :3] / 255)
    print(f"texture against vertex colours: median {np.median(err) * 255:.2f}/255")
    assert np.median(err) < 0.015, np.median(err)


def test_export_refuses_what_cannot_hold_a_texture(run, tmp_path, nls, monkeypatch):
    res = nls("export", str(run), "-o", str(tmp_path / "m.ply"), "--texture", "256")
    assert res.returncode == 2 and "--texture: .ply files keep no texture" in res.stderr
    res = nls("export", str(run), "-o", str(tmp_path / "m.glb"), "--texture", "256", "--colors")
    assert res.returncode == 2 and "--texture and --colors both colour the mesh" in res.stderr
    assert not list(tmp_path.iterdir())
    from pipeline.texture import check_tool

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xatlas" else real(name, *a))
    with pytest.raises(NLSError, match=r"--texture needs the xatlas package.*pip install '.\[export\]'"):
        check_tool("--texture")


def test_the_export_benchmarks_fidelity_measure_is_exact_where_the_colour_is(tmp_path):
    """`bench.py export` scores a file's colour against the field's at random surface points. The colour x + 0.5
    is linear in position, so vertex colours interpolated across the faces reproduce it up to 8-bit rounding,
    as the texture does: both score above 45 dB (8-bit rounding alone gives ~59 dB); a texture darkened by 10 %
    scores what that error gives analytically, 25.5 dB."""
    import importlib.util as iu
    from pathlib import Path

    from pipeline.mesh import bake_vertex_colors

    spec = iu.spec_from_file_location("bench_export", Path(__file__).parents[1] / "scripts/benchmarks/export.py")
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    chain = FieldChain(PositionColour())
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=R)
    coloured = mesh.copy()
    bake_vertex_colors(coloured, chain, "cpu", linear=True)
    textured = bake_texture(mesh, chain, "cpu", 256, name="t")
    scores = {name: bench._fidelity(export_mesh(m, tmp_path / f"{name}.glb"), chain, "cpu", 20000)
              for name, m in (("vertex", coloured), ("texture", textured))}
    assert min(scores.values()) > 45, scores
    picture = textured.visual.material.baseColorTexture
    textured.visual.material.baseColorTexture = picture.point(lambda v: round(v * 0.9))
    # the error is 0.1 (x + 0.5), whose mean square on the sphere is 0.01 (0.25 + R^2 / 3)
    expected = -10 * np.log10(0.01 * (0.25 + R ** 2 / 3))
    dark = bench._fidelity(export_mesh(textured, tmp_path / "dark.glb"), chain, "cpu", 20000)
    assert dark == pytest.approx(expected, abs=0.15), (dark, expected)


def _mesh_ctx(tmp_path, chain, mesh, images, cameras):
    """A minimal evaluation context: a 'test' split of ``images`` seen by ``cameras``, a white background, the
    field ``chain`` and ``mesh`` as the run's extracted mesh."""
    from types import SimpleNamespace

    from pipeline.types import PosedImages

    split = PosedImages(torch.tensor(np.stack(images)), cameras, names=[f"v{i}" for i in range(len(images))])
    return SimpleNamespace(split=None, cfg=SimpleNamespace(eval=SimpleNamespace(split="test", every=1, max_images=None)),
                           scene=SimpleNamespace(splits={"test": split}, background=(1.0, 1.0, 1.0)),
                           system=SimpleNamespace(chain=chain), device="cpu", mesh=lambda: mesh,
                           renders_root=tmp_path, progress=False)


def test_mesh_psnr_scores_the_coloured_mesh_against_the_images(tmp_path):
    """Images of a finely tessellated sphere coloured x + 0.5 (unlit, on white, from 3 cameras round it): the
    mesh_psnr evaluator bakes the same colour onto a coarser mesh of the sphere and scores above 40 dB with vertex
    colours and with a texture (the silhouettes differ by the tessellation), and a field whose colour is 10 % too
    dark scores what that error gives; the first views are written as mesh render | ground truth."""
    from pipeline.mesh_views import mesh_image
    from pipeline.scenes.mesh_render import look_at
    from pipeline.types import Cameras
    from plugins.ngp.config import MeshPSNRConfig
    from plugins.ngp.evaluate import MeshRenderMetrics

    fine = trimesh.creation.icosphere(subdivisions=6, radius=R)
    fine.visual.vertex_colors = np.concatenate([np.round((fine.vertices + 0.5) * 255), np.full((len(fine.vertices), 1), 255)], 1).astype(np.uint8)
    eyes = [[1.2, 0.0, 0.3], [0.0, -1.2, 0.5], [-0.8, 0.8, -0.4]]
    c2w = torch.tensor(np.stack([look_at(np.array(e)) for e in eyes]), dtype=torch.float32)
    f = torch.full((3,), 60.0)
    cams = Cameras(c2w, f, f, torch.full((3,), 32.0), torch.full((3,), 32.0), 64, 64)
    # drawn as anti-aliased images are, 2 x 2 rays a pixel (the evaluator's default)
    images = [mesh_image(fine, cams, i, (1.0, 1.0, 1.0), supersample=2).astype(np.float32) for i in range(3)]
    for i, eye in enumerate(eyes):  # the sphere's silhouette: the disc of radius f tan(asin(R / |eye|))
        im = mesh_image(fine, cams, i, (1.0, 1.0, 1.0))  # (one ray a pixel: covered or not)
        disc = np.pi * (60.0 * np.tan(np.arcsin(R / np.linalg.norm(eye)))) ** 2
        assert abs((im < 1).any(-1).sum() - disc) < 0.04 * disc, ((im < 1).any(-1).sum(), disc)
    coarse = trimesh.creation.icosphere(subdivisions=4, radius=R)
    chain = FieldChain(PositionColour())
    scores = {}
    for colors in ("vertex", "texture"):
        cfg = MeshPSNRConfig(colors=colors, texture_size=256)
        scores[colors] = MeshRenderMetrics(cfg)(_mesh_ctx(tmp_path / colors, chain, coarse, images, cams))
    print({k: round(v["mesh_psnr"], 2) for k, v in scores.items()})
    assert all(s["mesh_psnr"] > 40 and s["mesh_ssim"] > 0.99 for s in scores.values()), scores
    assert scores["texture"]["mesh_texture_size"] == 256 and scores["vertex"]["mesh_texture_size"] == 0
    assert sorted(p.name for p in (tmp_path / "texture" / "mesh_test").iterdir()) == ["v0.png", "v1.png", "v2.png"]
    aliased = MeshRenderMetrics(MeshPSNRConfig(supersample=1, save_images=0))(
        _mesh_ctx(tmp_path / "aliased", chain, coarse, images, cams))
    print("one ray a pixel:", round(aliased["mesh_psnr"], 2))
    assert aliased["mesh_psnr"] < scores["vertex"]["mesh_psnr"] - 3  # its hard edges against the images' soft ones

    class Darker(PositionColour):
        def forward(self, x, d=None):
            out = super().forward(x, d)
            if d is not None:
                out["rgb"] = out["rgb"] * 0.9
            return out

    cfg = MeshPSNRConfig(colors="vertex", save_images=0)
    dark = MeshRenderMetrics(cfg)(_mesh_ctx(tmp_path / "dark", FieldChain(Darker()), coarse, images, cams))
    # its error is 0.1 of the true colour where the sphere covers a pixel: the PSNR of the fine sphere drawn 10 %
    # darker (anti-aliased alike) against the images
    darker = fine.copy()
    darker.visual.vertex_colors = np.concatenate([np.round((fine.vertices + 0.5) * 0.9 * 255),
                                                  np.full((len(fine.vertices), 1), 255)], 1).astype(np.uint8)
    mse = np.mean([(mesh_image(darker, cams, i, (1.0, 1.0, 1.0), supersample=2) - images[i]) ** 2 for i in range(3)])
    assert dark["mesh_psnr"] == pytest.approx(-10 * np.log10(mse), abs=0.3), (dark, -10 * np.log10(mse), scores)


def test_a_run_evaluated_with_mesh_psnr_reports_its_mesh_renders(tmp_path, nls):
    """Training's evaluation with mesh_psnr: the summary holds the mesh's PSNR beside the field's (the tiny run's
    short training leaves the mesh far below the field), renders/mesh_test/ its images, and the report shows them
    as the evaluator's."""
    import copy
    import json

    import yaml

    from pipeline.report import build_report
    from pipeline.testing import TINY_SCENE

    scene = copy.deepcopy(TINY_SCENE)
    scene["evaluators"] = [{"type": "psnr"}, {"type": "mesh_psnr", "colors": "texture", "texture_size": 64}]
    scene["extractor"]["level"] = 1.0  # the density of so short a run stays low
    scene["train"].update(steps=60, grid_warmup=20)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(scene))
    nls("reconstruct", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "runs"), "-q", check=True)
    (summary,) = (tmp_path / "runs").glob("*/*/*/summary.json")
    m = json.loads(summary.read_text())["metrics"]
    assert 5 < m["mesh_psnr"] < m["psnr"] and m["mesh_texture_size"] == 64, m
    assert [p.name for p in (summary.parent / "renders" / "mesh_test").iterdir()] == ["r_0.png"]
    html = build_report(summary.parent, use_model=False, progress=False).read_text()
    assert "Images of the mesh_psnr evaluator" in html and "the coloured mesh drawn unlit | ground truth" in html
