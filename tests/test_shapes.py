"""Shape datasets: binvox reader, R2N2 layout errors, procedural families, point sampling, datasets."""

from __future__ import annotations

import shutil

import igl
import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.scenes import data_path
from pipeline.types import DataError
from plugins.shapes.binvox import read_binvox, write_binvox
from plugins.shapes.config import R2N2Config, ShapeFamiliesConfig
from plugins.shapes.dataset import item_seed, occupancy_at, sample_boundary_points

R2N2, R2N2_WHY = data_path("shapenet_r2n2")


def need_r2n2():
    if R2N2 is None:
        pytest.skip(f"R2N2 data not available: {R2N2_WHY}")


# -- binvox ---------------------------------------------------------------------------------

def test_binvox_index_order_is_xzy(tmp_path):
    """A hand-written file: voxel (x=1, y=0, z=1) of a 2^3 grid is run position x*4 + z*2 + y = 6."""
    p = tmp_path / "one.binvox"
    p.write_bytes(b"#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n" + bytes([0, 6, 1, 1, 0, 1]))
    v = read_binvox(p)
    expected = np.zeros((2, 2, 2), bool)
    expected[1, 0, 1] = True
    assert (v.occ == expected).all()


def test_binvox_roundtrip_and_long_runs(tmp_path):
    rng = np.random.default_rng(0)
    occ = rng.random((32, 32, 32)) < 0.3
    occ[:, :10] = True  # runs longer than 255 are split
    p = write_binvox(tmp_path / "r.binvox", occ, (-0.5, -0.5, -0.5), 1.0)
    v = read_binvox(p)
    assert (v.occ == occ).all() and np.allclose(v.translate, -0.5) and v.scale == 1.0


@pytest.mark.parametrize("payload,msg", [
    (b"#binvox 1\ndim 2 2 2\ndata\n" + bytes([0, 6, 1]), "odd number"),
    (b"#binvox 1\ndim 2 2 2\ndata\n" + bytes([0, 6, 1, 1]), "decodes to 7 voxels"),
    (b"#binvox 1\ndim 2 2 2\ndata\n" + bytes([7, 8]), "values other than 0/1"),
    (b"PK\x03\x04garbage\n", "expected '#binvox 1'"),
    (b"#binvox 1\ndim 2 2 2\n", "truncated header"),
])
def test_corrupt_binvox_is_a_clear_error(tmp_path, payload, msg):
    p = tmp_path / "bad.binvox"
    p.write_bytes(payload)
    with pytest.raises(DataError, match=msg) as err:
        read_binvox(p)
    assert str(p) in str(err.value)


def test_real_r2n2_binvox_matches_trimesh_reader():
    need_r2n2()
    from trimesh.exchange.binvox import load_binvox

    for f in sorted(R2N2.rglob("model.binvox")):
        v = read_binvox(f)
        with open(f, "rb") as fh:
            ref = load_binvox(fh)
        assert v.occ.shape == (32, 32, 32) and 0 < v.occ.mean() < 0.2
        assert (np.asarray(ref.encoding.dense) == v.occ).all(), f
        assert np.allclose(ref.transform[:3, 3], v.translate, atol=1e-6)


# -- R2N2 layout errors ------------------------------------------------------------------------

@pytest.fixture
def r2n2_copy(tmp_path):
    need_r2n2()
    src = sorted(p.parent for p in R2N2.rglob("model.binvox"))[0]
    dst = tmp_path / "r2n2" / src.name
    shutil.copytree(src, dst)
    return dst


def test_r2n2_missing_view(r2n2_copy):
    from plugins.shapes.r2n2 import read_object

    (r2n2_copy / "rendering" / "07.png").unlink()
    with pytest.raises(DataError, match=r"missing view\(s\) 07.png"):
        read_object(r2n2_copy)


def test_r2n2_metadata_with_wrong_line_count(r2n2_copy):
    from plugins.shapes.r2n2 import read_object

    meta = r2n2_copy / "rendering" / "rendering_metadata.txt"
    meta.write_text("\n".join(meta.read_text().splitlines()[:23]) + "\n")
    with pytest.raises(DataError, match="has 23 lines but the object has 24 views"):
        read_object(r2n2_copy)


def test_r2n2_corrupt_binvox_through_the_scene_source(r2n2_copy):
    from plugins.shapes.dataset import build_r2n2

    (r2n2_copy / "model.binvox").write_bytes(b"#binvox 1\ndim 32 32 32\ndata\n" + bytes([0, 255, 1]))
    with pytest.raises(DataError, match="model.binvox"):
        build_r2n2(R2N2Config(path=str(r2n2_copy.parent)), None)()


def test_r2n2_split_by_objects_ignores_the_view_lists(r2n2_copy):
    """With split_by=objects the val/test view lists are unused, so defaults beyond a 4-view object are fine."""
    from plugins.shapes.dataset import build_r2n2

    render = r2n2_copy / "rendering"
    for png in sorted(render.glob("*.png"))[4:]:
        png.unlink()
    meta = render / "rendering_metadata.txt"
    meta.write_text("\n".join(meta.read_text().splitlines()[:4]) + "\n")
    cfg = dict(path=str(r2n2_copy.parent), views=4, image_size=32, n_points=64)
    scene = build_r2n2(R2N2Config(split_by="objects", **cfg), None)()
    assert len(scene.datasets["train"]) == 4
    with pytest.raises(DataError, match="view index 20 is outside 0..3"):
        build_r2n2(R2N2Config(split_by="views", **cfg), None)()


def test_r2n2_scene_splits_by_view():
    need_r2n2()
    from plugins.shapes.dataset import build_r2n2

    scene = build_r2n2(R2N2Config(path=str(R2N2), image_size=32, n_points=256), None)()
    tr, te = scene.datasets["train"], scene.datasets["test"]
    assert len(tr) == 5 * 20 and len(te) == 5 * 2
    assert {v for _, v in te.items} == {22, 23} and not {v for _, v in tr.items} & {20, 21, 22, 23}
    item = tr[3]
    assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["points"].shape == (256, 3) and item["voxels"].shape == (32, 32, 32)


# -- point sampling --------------------------------------------------------------------------

def test_boundary_sampler_distribution():
    """Gaussian part ~ N(surface point, sigma^2 I); uniform part: 10% of the points, U[-0.5, 0.5]^3."""
    n, sigma = 20000, 0.158
    surface = torch.tensor([[0.1, -0.2, 0.05], [0.1, -0.2, 0.05]])
    pts = sample_boundary_points(surface, n, sigma, 0.1, 0.5, torch.Generator().manual_seed(0))
    n_u = 2000
    gauss, uni = pts[: n - n_u], pts[n - n_u:]
    z = ((gauss - surface[0]) / sigma).numpy()
    for k in range(3):
        assert stats.kstest(z[:, k], "norm").pvalue > 1e-3
        assert stats.kstest(uni[:, k].numpy(), "uniform", args=(-0.5, 1.0)).pvalue > 1e-3
    assert abs(float(np.var(z)) - 1.0) < 0.05
    # a wrong variance is detected by the same test
    assert stats.kstest(z[:, 0] * 1.2, "norm").pvalue < 1e-3


def test_occupancy_lookup_matches_analytic_sphere():
    R = 64
    c = -0.5 + (torch.arange(R) + 0.5) / R
    g = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1)
    grid = g.norm(dim=-1) < 0.3
    pts = (torch.rand(5000, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 1.2
    lab = occupancy_at(pts, grid)
    truth = (pts.norm(dim=-1) < 0.3).float() * (pts.abs() <= 0.5).all(-1).float()
    far = ((pts.norm(dim=-1) - 0.3).abs() > 2.0 / R)  # away from the voxelised boundary
    assert torch.equal(lab[far], truth[far])


# -- procedural families ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def families_scene():
    from plugins.shapes.dataset import build_families

    cfg = ShapeFamiliesConfig(families=["chair", "airplane"], per_family=2, image_size=32, n_points=512,
                              fine_resolution=64, render_size=64, views=4)
    return build_families(cfg, None)(), cfg


def test_families_layout_and_ground_truth(families_scene):
    from plugins.shapes.collection import families_folder
    from plugins.shapes.r2n2 import read_object
    from pipeline.scenes.mesh_render import load_mesh

    scene, cfg = families_scene
    folder = families_folder(cfg)
    coll = scene.datasets["train"].collection
    assert len(coll.names) == 4
    train_objs = {o for o, _ in scene.datasets["train"].items}
    test_objs = {o for o, _ in scene.datasets["test"].items}
    assert train_objs and test_objs and not train_objs & test_objs  # unseen shapes
    for i, name in enumerate(coll.names):
        ob = read_object(folder / "objects" / name, views=4)  # the R2N2 reader reads our layout
        assert ob.images.shape == (4, 64, 64, 4) and ob.metadata.shape == (4, 5)
        mesh = load_mesh(folder / "objects" / name / "gt_mesh.ply")
        assert mesh.is_watertight
        # the mesh and the fine occupancy grid describe the same solid: winding numbers (libigl) of
        # random points agree with the grid labels (thin wings/legs make the boundary band count)
        q = np.random.default_rng(i).uniform(-0.5, 0.5, (20000, 3))
        inside = igl.fast_winding_number(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64),
                                         q) > 0.5
        lab = occupancy_at(torch.from_numpy(q).float(), coll.labels[i]).numpy() > 0.5
        assert (inside == lab).mean() > 0.99, name
        assert (inside & lab).sum() > 0.8 * inside.sum(), name
        # coarse voxels agree with the fine grid away from the boundary (a 2x2x2 pooled check)
        fine = coll.labels[i].float().reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5))
        sure = (fine == 0) | (fine == 1)
        assert torch.equal(coll.vox[i][sure], fine[sure] > 0.5)


def test_item_seeds_are_distinct_across_splits_and_keep_the_measured_ones():
    # the seeds behind the published figures (items below 100003) are unchanged
    assert [item_seed(5, "val", i) for i in (0, 7)] == [5 * 1_000_003 + 100_003, 5 * 1_000_003 + 100_003 + 7]
    # the old formula gave train item 100003 + j the seed of val item j (and val of test)
    for seed in (0, 5, -3):
        seen = {}
        for split in ("train", "val", "test"):
            for i in [*range(0, 40), *range(100_000, 100_040), *range(200_000, 200_040), 10**7]:
                s = item_seed(seed, split, i)
                assert s not in seen, (seed, split, i, seen.get(s))
                seen[s] = (split, i)
                torch.Generator().manual_seed(s)  # a seed torch takes


def test_items_are_deterministic_and_world_size_independent(families_scene):
    from pipeline.train import DatasetBatches

    scene, _ = families_scene
    ds = scene.datasets["train"]
    a, b = ds[3], ds[3]
    assert torch.equal(a["points"], b["points"]) and torch.equal(a["occ"], b["occ"])
    one = DatasetBatches(ds, 4, seed=7, device=torch.device("cpu"))
    two = [DatasetBatches(ds, 4, seed=7, device=torch.device("cpu"), world_size=2, rank=r) for r in (0, 1)]
    for _ in range(3):
        full = one.next()
        parts = [t.next() for t in two]
        assert torch.equal(full["points"], torch.cat([p["points"] for p in parts]))
        assert torch.equal(full["object"], torch.cat([p["object"] for p in parts]))


def test_missing_r2n2_folder_is_a_clear_error(tmp_path):
    from plugins.shapes.dataset import build_r2n2

    with pytest.raises(DataError, match="does not exist"):
        build_r2n2(R2N2Config(path=str(tmp_path / "nope")), None)()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no object folders found"):
        build_r2n2(R2N2Config(path=str(tmp_path / "empty")), None)()


def test_voxel_ce_names_a_decoder_grid_that_does_not_match_the_voxels():
    import types

    from pipeline.types import NLSError
    from plugins.shapes.config import VoxelCEConfig, VoxelDecoderConfig
    from plugins.shapes.decoders import build_voxel_decoder
    from plugins.shapes.losses import build_voxel_ce

    torch.manual_seed(0)
    system = types.SimpleNamespace(chain=types.SimpleNamespace(field=None))
    batch = {"image": torch.rand(2, 3, 64, 64), "voxels": (torch.rand(2, 32, 32, 32) > 0.5).float()}
    loss = build_voxel_ce(VoxelCEConfig(), None)
    system.chain.field = build_voxel_decoder(VoxelDecoderConfig(resolution=16), None)
    with pytest.raises(NLSError, match=r"\(16, 16, 16\) grid does not match the scene's \(32, 32, 32\) voxels; "
                                       "set field.resolution to 32"):
        loss(batch, {}, system)
    system.chain.field = build_voxel_decoder(VoxelDecoderConfig(resolution=32), None)
    assert torch.isfinite(loss(batch, {}, system))


@pytest.mark.parametrize("layout", ["grey", "grey_alpha", "rgb", "rgba", "grey16"])
def test_images_of_every_png_layout_load_as_rgba8(tmp_path, layout):
    """Grey+alpha used to fail inside prepare_images, and 16-bit images kept only their low byte (mid-grey
    32768 read as 0)."""
    import imageio.v3 as iio

    from plugins.shapes.r2n2 import to_rgba8

    grey = np.full((4, 5), 128, np.uint8)
    alpha = np.full((4, 5), 200, np.uint8)
    arrays = {"grey": grey, "grey_alpha": np.stack([grey, alpha], -1), "rgb": np.stack([grey] * 3, -1),
              "rgba": np.stack([grey] * 3 + [alpha], -1), "grey16": grey.astype(np.uint16) * 257}
    iio.imwrite(tmp_path / "im.png", arrays[layout])
    out = to_rgba8(iio.imread(tmp_path / "im.png"), "im.png")
    assert out.dtype == np.uint8 and out.shape == (4, 5, 4)
    assert (out[..., :3] == 128).all()
    assert (out[..., 3] == (200 if "alpha" in layout or "rgba" in layout else 255)).all()
