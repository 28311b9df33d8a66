"""Input faults of the shape-collection scene sources (r2n2, shape_families): object folders without a
binvox, all-empty binvox files, shape_iou splits the scene lacks, damaged shape_families cache entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import notices
from pipeline.scenes import data_path
from pipeline.types import ConfigError, DataError
from plugins.shapes.binvox import write_binvox
from plugins.shapes.config import R2N2Config, ShapeFamiliesConfig

R2N2, R2N2_WHY = data_path("shapenet_r2n2")


def cube(lo: int = 8, hi: int = 24) -> np.ndarray:
    """A 32^3 grid with a solid cube in ``[lo, hi)^3``."""
    occ = np.zeros((32, 32, 32), bool)
    occ[lo:hi, lo:hi, lo:hi] = True
    return occ


def make_object(folder: Path, views: int = 2, occ: np.ndarray | None = None) -> Path:
    """A tiny object folder in the R2N2 layout: ``views`` 16x16 RGBA views, metadata and a binvox."""
    import imageio.v3 as iio

    render = folder / "rendering"
    render.mkdir(parents=True)
    img = np.zeros((16, 16, 4), np.uint8)
    img[4:12, 4:12] = (200, 60, 60, 255)
    for i in range(views):
        iio.imwrite(render / f"{i:02d}.png", img)
    (render / "rendering_metadata.txt").write_text("0 30 0 0.8 25\n" * views)
    write_binvox(folder / "model.binvox", cube() if occ is None else occ, (-0.5, -0.5, -0.5), 1.0)
    return folder


def r2n2_cfg(root: Path, **kw) -> R2N2Config:
    """Options for the tiny synthetic objects (2 views: view 1 is val and test)."""
    return R2N2Config(path=str(root), views=2, val_views=[1], test_views=[1], image_size=16, n_points=16,
                      surface_points=100, **kw)


def load_r2n2_scene(cfg: R2N2Config):
    """The SceneData of ``cfg``, built without a run config (no evaluator checks)."""
    from plugins.shapes.dataset import build_r2n2

    return build_r2n2(cfg, None)()


# -- 1. object folders without model.binvox -------------------------------------------------------

def test_object_folder_without_binvox_is_named_not_left_out(tmp_path):
    from plugins.shapes.r2n2 import find_objects

    make_object(tmp_path / "a")
    (make_object(tmp_path / "b") / "model.binvox").unlink()
    assert [f.name for f in find_objects(tmp_path)] == ["a", "b"]
    with pytest.raises(DataError, match="no model.binvox") as err:
        load_r2n2_scene(r2n2_cfg(tmp_path))
    assert str(tmp_path / "b") in str(err.value) and "scene.objects" in str(err.value)
    # leaving it out on purpose still works
    assert load_r2n2_scene(r2n2_cfg(tmp_path, objects=["a"])).meta["objects"] == ["a"]


def test_real_r2n2_object_without_binvox_is_named(tmp_path):
    if R2N2 is None:
        pytest.skip(f"R2N2 data not available: {R2N2_WHY}")
    root = tmp_path / "r2n2"
    shutil.copytree(R2N2, root)
    victim = sorted(p.parent for p in root.rglob("model.binvox"))[1]
    (victim / "model.binvox").unlink()
    with pytest.raises(DataError, match="no model.binvox") as err:
        load_r2n2_scene(R2N2Config(path=str(root), image_size=16, n_points=16, surface_points=100))
    assert str(victim) in str(err.value)


# -- 4. an all-empty binvox ------------------------------------------------------------------------

def test_empty_binvox_is_a_data_error_naming_the_file(tmp_path):
    make_object(tmp_path / "a")
    make_object(tmp_path / "hollow", occ=np.zeros((32, 32, 32), bool))
    with pytest.raises(DataError, match="no occupied voxel") as err:
        load_r2n2_scene(r2n2_cfg(tmp_path))
    assert str(tmp_path / "hollow" / "model.binvox") in str(err.value)


# -- 2. shape_iou splits, checked before training ------------------------------------------------------

def scene_file(tmp_path: Path, root: Path, evaluator: dict, **scene) -> Path:
    """A tiny cond_mlp scene on the synthetic objects under ``root`` with one shape_iou ``evaluator``."""
    data = {"name": "shapes_input", "method": "cond_mlp",
            "scene": {"type": "r2n2", "path": str(root), "views": 2, "val_views": [1], "test_views": [1],
                      "image_size": 16, "n_points": 16, "surface_points": 100, **scene},
            "field": {"type": "cond_mlp", "width": 2, "blocks": 1, "fc_layers": 1, "hidden": 8, "layers": 1},
            "losses": [{"type": "point_occupancy_ce"}],
            "evaluators": [{"type": "shape_iou", **evaluator}],
            "train": {"steps": 1, "batch_items": 1}}
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def load_scene_of(path: Path, host, overrides: tuple[str, ...] | list[str] = ()):
    """Validate the scene file ``path`` with ``overrides`` and load its scene as ``nls reconstruct`` does."""
    from pipeline.build import load_scene_data
    from pipeline.config import load_scene

    return load_scene_data(load_scene(path, host, list(overrides)), "cpu", list(overrides))


def test_shape_iou_split_the_scene_lacks_is_a_config_error(tmp_path, nls_host):
    make_object(tmp_path / "data" / "a")
    path = scene_file(tmp_path, tmp_path / "data", {"split": "valid"})
    with pytest.raises(ConfigError) as err:
        load_scene_of(path, nls_host)
    msg = str(err.value)
    assert str(path) in msg and "evaluators.0.split = 'valid'" in msg
    assert "train (1 item), val (1 item), test (1 item)" in msg


def test_shape_iou_on_an_empty_split_is_a_config_error(tmp_path, nls_host):
    """split_by=objects with one object leaves test empty (test needs 3 objects)."""
    make_object(tmp_path / "data" / "a")
    path = scene_file(tmp_path, tmp_path / "data", {"split": "test"}, split_by="objects")
    with pytest.raises(ConfigError) as err:
        load_scene_of(path, nls_host)
    msg = str(err.value)
    assert "evaluators.0.split = 'test'" in msg and "split 'test' of the scene is empty" in msg
    assert "split_by=objects" in msg
    assert load_scene_of(path, nls_host, ("evaluators.0.split=train",)).datasets["train"]  # a split with items


def test_shape_iou_bad_split_fails_before_training_with_exit_2(tmp_path, nls):
    make_object(tmp_path / "data" / "a")
    path = scene_file(tmp_path, tmp_path / "data", {"split": "test"})
    proc = nls("reconstruct", str(path), "--output", str(tmp_path / "runs"), "-q", "--device", "cpu",
               "--set", "evaluators.0.split=valid", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "evaluators.0.split = 'valid'" in proc.stderr and "Traceback" not in proc.stderr
    assert f"--set evaluators.0.split=valid (on {path})" in proc.stderr, proc.stderr  # the --set is blamed
    assert not list((tmp_path / "runs").glob("*/*/*"))  # no run was started


# -- 3. damaged shape_families cache entries ----------------------------------------------------------

TINY_FAMILIES = dict(families=["chair"], per_family=1, views=1, render_size=16, fine_resolution=32, image_size=16,
                     n_points=16, surface_points=100)


@pytest.fixture(scope="module")
def families_template(tmp_path_factory):
    """A generated cache of the tiny families, made once and copied for each test."""
    from plugins.shapes.collection import families_folder

    cache = tmp_path_factory.mktemp("families_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLS_CACHE", str(cache))
        folder = families_folder(ShapeFamiliesConfig(**TINY_FAMILIES))
    return cache, folder.relative_to(cache)


@pytest.fixture
def families_cache(families_template, tmp_path, monkeypatch):
    """The entry folder in a fresh copy of the template cache, with its manifest removed: an entry cached
    before manifests, which the scene cache reuses as it is."""
    cache, rel = families_template
    shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / rel / ".manifest.json").unlink(missing_ok=True)
    return tmp_path / "cache" / rel


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE = {
    "deleted_occupancy": lambda f: (f / "objects" / "chair_000" / "occupancy_fine.npy").unlink(),
    "truncated_occupancy": lambda f: truncate(f / "objects" / "chair_000" / "occupancy_fine.npy"),
    "deleted_splits": lambda f: (f / "splits.json").unlink(),
    "truncated_splits": lambda f: truncate(f / "splits.json", 10),
    "truncated_mesh": lambda f: truncate(f / "objects" / "chair_000" / "gt_mesh.ply", 200),
}
FILES = {"deleted_occupancy": "occupancy_fine.npy", "truncated_occupancy": "occupancy_fine.npy",
         "deleted_splits": "splits.json", "truncated_splits": "splits.json", "truncated_mesh": "gt_mesh.ply"}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_families_entry_names_the_file_and_the_entry(families_cache, damage):
    from plugins.shapes.collection import read_families_entry

    DAMAGE[damage](families_cache)
    with pytest.raises(DataError) as err:
        read_families_entry(families_cache, ShapeFamiliesConfig(**TINY_FAMILIES))
    msg = str(err.value)
    assert FILES[damage] in msg and f"cache entry {families_cache}" in msg and "deleted to be rebuilt" in msg


@pytest.mark.parametrize("damage", ["deleted_occupancy", "truncated_splits"])
def test_damaged_families_entry_is_rebuilt_with_a_warning(families_cache, damage, capsys):
    from plugins.shapes.dataset import build_families

    notices.reset()
    DAMAGE[damage](families_cache)
    scene = build_families(ShapeFamiliesConfig(**TINY_FAMILIES), None)()
    assert scene.meta["folder"] == str(families_cache) and len(scene.datasets["train"]) == 1
    assert (families_cache / "objects" / "chair_000" / "occupancy_fine.npy").is_file()
    assert json.loads((families_cache / "splits.json").read_text())["train"] == ["chair_000"]
    assert "is damaged, rebuilding it" in capsys.readouterr().err
    assert any(FILES[damage] in m for m in notices.kept())
    assert not [p for p in families_cache.parent.iterdir() if "damaged" in p.name]  # the old entry is gone


@pytest.mark.parametrize("text, needle", [
    ("10 20 0 0.8 25\n10 20 0 0.8\n", "line 2: 4 numbers, expected 5"),
    ("10 20 0 0.8 25\n10 x 0 0.8 25\n", "line 2: '10 x 0 0.8 25' holds a non-numeric entry"),
    (b"\xff\xfe\x00binary", "is not text"),
])
def test_r2n2_metadata_faults_name_the_line(tmp_path, text, needle):
    """A row of the wrong length was reported as 'non-numeric entries'; a binary file was a bare
    UnicodeDecodeError (exit 1)."""
    from plugins.shapes.r2n2 import read_metadata

    path = tmp_path / "rendering_metadata.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=f"R2N2 metadata {path}.*{needle}"):
        read_metadata(path, 2)
