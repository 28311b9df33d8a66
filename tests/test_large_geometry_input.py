"""Large geometry inputs: repeated points found fast and exactly (as np.unique finds them), and the first
build of a large mesh or point-cloud scene says what it does on stderr while small ones stay silent."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from plugins.scenes import sources
from plugins.scenes.config import GeometryConfig, MeshSceneConfig
from plugins.scenes.repeated_points import first_occurrences, row_keys


def _reference(xyz: np.ndarray) -> np.ndarray:
    """What ``_read_points`` kept before: the sorted first indices of np.unique's distinct rows."""
    return np.sort(np.unique(xyz, axis=0, return_index=True)[1])


def _cloud_with_repeats(seed: int, n: int = 3000) -> np.ndarray:
    """``(n, 3)`` points on a coarse grid (values repeat per axis) with planted repeats and -0.0/0.0 pairs."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-20, 21, size=(n, 3)) / 4.0
    dst, src = rng.choice(n, n // 10, replace=False), rng.choice(n, n // 10)
    a[dst] = a[src]
    zeros = rng.choice(n, n // 20, replace=False)
    a[zeros, rng.integers(0, 3, len(zeros))] = -0.0
    return a


@pytest.mark.parametrize("seed", range(5))
def test_first_occurrences_are_np_uniques(seed):
    a = _cloud_with_repeats(seed)
    got = first_occurrences(a)
    assert len(got) < len(a) and np.array_equal(got, _reference(a))


def test_first_occurrences_of_a_strided_xyz_view_with_normals():
    a = np.concatenate([_cloud_with_repeats(7), np.random.default_rng(7).normal(size=(3000, 3))], 1)
    assert np.array_equal(first_occurrences(a[:, :3]), _reference(a[:, :3]))


def test_negative_zero_is_the_same_point_as_zero_and_the_first_one_is_kept():
    a = np.array([[-0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, -0.0, 2.0], [1.0, 1.0, 1.0], [-0.0, 1.0, 2.0]])
    assert first_occurrences(a).tolist() == [0, 2, 3] == _reference(a).tolist()


def test_all_equal_points_keep_the_first():
    assert first_occurrences(np.full((50, 3), 0.25)).tolist() == [0]


def test_distinct_points_are_all_kept():
    a = np.random.default_rng(3).normal(size=(5000, 3))
    assert np.array_equal(first_occurrences(a), np.arange(5000))


@pytest.mark.parametrize("keys", [
    lambda x: np.zeros(len(x), np.uint64),  # every row collides with every other
    lambda x: (x[:, 0] > 0).astype(np.uint64),  # two keys, each over many distinct rows and some repeats
    lambda x: (np.abs(x).sum(1) * 4).astype(np.uint64) % np.uint64(5),  # five keys (equal rows, equal keys)
], ids=["one-key", "two-keys", "five-keys"])
def test_hash_collisions_never_drop_a_distinct_point(keys):
    a = _cloud_with_repeats(11, 600)
    assert np.array_equal(first_occurrences(a, keys=keys), _reference(a))


def test_a_collision_among_the_real_keys_is_verified():
    """Two distinct points given one key of the real hash, each with a true repeat: both are kept."""
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 2.0, 3.0], [7.0, 8.0, 9.0], [4.0, 5.0, 6.0]])

    def colliding(x):
        k = row_keys(x)
        k[(x == [4.0, 5.0, 6.0]).all(1)] = row_keys(a[:1])[0]  # (4,5,6) hashes as (1,2,3)
        return k

    assert first_occurrences(a, keys=colliding).tolist() == [0, 1, 3]
    assert first_occurrences(a).tolist() == [0, 1, 3]


def test_read_points_leaves_out_repeats_of_an_npy_with_the_same_warning(tmp_path, capsys):
    a = np.concatenate([_cloud_with_repeats(5, 1000), np.zeros((1000, 3))], 1)
    path = tmp_path / "pc.npy"
    np.save(path, a)
    points, normals = sources._read_points(path)
    keep = _reference(a[:, :3])
    assert np.array_equal(points, a[keep, :3]) and normals.shape == (len(keep), 3)
    err = capsys.readouterr().err
    assert f"{1000 - len(keep)} of its 1000 points repeat an earlier point; the repeats are left out" in err
    assert "reading point file" not in err  # small: no status line


# ----------------------------------------------------------------------------- status lines


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tetra(tmp_path):
    """A 4-face mesh file."""
    path = tmp_path / "tetra.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    return path


def _build_mesh_scene(path) -> None:
    cfg = MeshSceneConfig(path=str(path), n_train=2, n_test=1, image_size=8, supersample=1)
    sources.build_mesh_scene(cfg, SimpleNamespace(cfg=SimpleNamespace(name="tetra_scene")))()


def test_a_large_mesh_scenes_first_build_says_what_it_does_and_shows_progress(cache, tetra, monkeypatch, capsys):
    monkeypatch.setattr(sources, "LARGE_MESH_FACES", 3)  # the tetrahedron's 4 faces count as large
    _build_mesh_scene(tetra)
    err = capsys.readouterr().err
    entry = next((cache / "scenes").glob("mesh-*"))
    assert (f"building scene 'tetra_scene' from {tetra} (4 faces): loading the mesh, rendering 3 views; "
            f"cached for next time in {entry}\n") in err
    assert "rendering 3 views of 4 faces 3/3" in err  # the bar's plain line (stderr is not a terminal)
    _build_mesh_scene(tetra)  # from the cache: silent
    assert "building scene" not in capsys.readouterr().err


def test_a_large_file_is_announced_before_it_is_read(cache, tetra, monkeypatch, capsys):
    monkeypatch.setattr(sources, "LARGE_FILE_BYTES", 1)
    _build_mesh_scene(tetra)
    assert f"building scene 'tetra_scene' from {tetra} (0 MB): loading the mesh" in capsys.readouterr().err


def test_a_small_mesh_scene_builds_in_silence(cache, tetra, capsys):
    _build_mesh_scene(tetra)
    assert capsys.readouterr().err == ""


def test_quiet_keeps_the_status_line_and_drops_the_bar(cache, tetra, monkeypatch, capsys):
    from pipeline.mesh import progress_default

    monkeypatch.setattr(sources, "LARGE_MESH_FACES", 3)
    with progress_default(False):
        _build_mesh_scene(tetra)
    err = capsys.readouterr().err
    assert "building scene 'tetra_scene'" in err and "rendering 3 views of" not in err


@pytest.mark.parametrize("limit, said", [(10, True), (None, False)])
def test_a_large_point_cloud_says_what_it_does(cache, tmp_path, monkeypatch, capsys, limit, said):
    if limit is not None:
        monkeypatch.setattr(sources, "LARGE_POINT_COUNT", limit)
    path = tmp_path / "pc.xyz"
    np.savetxt(path, np.random.default_rng(0).normal(size=(200, 3)))
    sources.build_geometry(GeometryConfig(path=str(path)), None)()
    line = f"loading scene 'pc' from {path} (200 points): reading the points, leaving out repeated ones\n"
    assert (line in capsys.readouterr().err) is said


def test_a_large_mesh_geometry_scene_says_what_it_does(cache, tetra, monkeypatch, capsys):
    monkeypatch.setattr(sources, "LARGE_MESH_FACES", 3)
    sources.build_geometry(GeometryConfig(path=str(tetra), n_points=100), None)()
    assert (f"loading scene 'tetra' from {tetra} (4 faces): loading the mesh, sampling 100 surface points; "
            f"cached for next time in {cache / 'geometry'}" in capsys.readouterr().err)
    sources.build_geometry(GeometryConfig(path=str(tetra), n_points=100), None)()
    assert capsys.readouterr().err == ""  # from the cache: nothing to say


def _tetra_scene(tetra, seed: int = 0):
    return sources.build_geometry(GeometryConfig(path=str(tetra), n_points=500, seed=seed), None)()


@pytest.mark.parametrize("suffix", [".obj", ".ply"])  # a .ply is read before it is known to hold a mesh
def test_a_mesh_geometry_scene_is_sampled_once_and_then_read_from_the_cache(cache, tetra, monkeypatch, suffix):
    import trimesh

    if suffix == ".ply":
        tetra = tetra.with_suffix(".ply")
        trimesh.load(str(tetra.with_suffix(".obj")), force="mesh").export(str(tetra))
    first = _tetra_scene(tetra)
    import pipeline.scenes.mesh_render as mesh_render

    def no_load(path, *args, **kwargs):
        raise AssertionError("the mesh was loaded again")

    monkeypatch.setattr(mesh_render, "load_mesh", no_load)
    monkeypatch.setattr(sources, "_read_points", no_load)
    again = _tetra_scene(tetra)
    assert np.array_equal(again.points, first.points) and np.array_equal(again.normals, first.normals)
    assert again.points.dtype == first.points.dtype == np.float32
    assert again.meta == first.meta and again.gt_mesh == first.gt_mesh
    with pytest.raises(AssertionError, match="loaded again"):  # other options: a new entry, sampled anew
        _tetra_scene(tetra, seed=1)


@pytest.mark.parametrize("damage", ["truncate", "delete", "wrong_shape"])
def test_damaged_cached_samples_are_made_again(cache, tetra, damage):
    first = _tetra_scene(tetra)
    (samples,) = (cache / "geometry").glob(f"*/{sources.SURFACE_SAMPLES}")
    if damage == "truncate":
        samples.write_bytes(samples.read_bytes()[:100])
    elif damage == "delete":
        samples.unlink()
    else:
        sources.write_surface_samples(samples, np.zeros((5, 3)), np.zeros((5, 2)), np.eye(4))
    again = _tetra_scene(tetra)
    assert np.array_equal(again.points, first.points) and np.array_equal(again.normals, first.normals)
    assert sources.read_surface_samples(samples) is not None  # written whole again


@pytest.mark.parametrize("quiet", [True, False])
def test_reconstruct_quiet_reaches_the_first_build_of_a_scene(cache, tetra, tmp_path, monkeypatch, capsys, quiet):
    """`nls reconstruct -q`: the first build of a large mesh scene says what it does, without its bar."""
    import copy

    import yaml

    from pipeline.cli import main
    from pipeline.testing import TINY_SCENE

    monkeypatch.setattr(sources, "LARGE_MESH_FACES", 3)  # the tetrahedron counts as large
    data = copy.deepcopy(TINY_SCENE)
    data["scene"] = {"type": "mesh", "path": str(tetra), "n_train": 2, "n_test": 1, "image_size": 8,
                     "supersample": 1}
    scene = tmp_path / "tetra.yaml"
    scene.write_text(yaml.safe_dump(data))
    args = ["reconstruct", str(scene), "--steps", "1", "--no-eval", "--output", str(tmp_path / "runs")]
    assert main(args + (["-q"] if quiet else [])) == 0
    err = capsys.readouterr().err
    assert "building scene 'tiny' from" in err and ("rendering 3 views of 4 faces" in err) is not quiet, err
