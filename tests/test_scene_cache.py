"""The rendered-scene cache: reused only while its files are as written, and keyed by a mesh's content."""

from __future__ import annotations

import os
import shutil

import pytest

from plugins.scenes import sources
from plugins.scenes.config import MeshSceneConfig


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _maker(calls: list):
    def make(folder):
        calls.append(folder)
        (folder / "train").mkdir()
        (folder / "train" / "r_0.png").write_bytes(b"view zero")
        (folder / "train" / "r_1.png").write_bytes(b"view one!")
        (folder / "meta.json").write_text("{}")
    return make


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "train" / "r_1.png").unlink(), "train/r_1.png is missing"),
    (lambda f: shutil.copyfile(f / "train" / "r_0.png", f / "train" / "r_1.png"), "train/r_1.png changed"),
    (lambda f: (f / "train" / "r_0.png").write_bytes(b"view"), "train/r_0.png changed"),  # truncated
    (lambda f: (f / sources.MANIFEST).write_text("{"), "cannot be read"),
    (lambda f: (f / "meta.json").unlink(), "meta.json is missing"),  # was made anew and thrown away every run
])
def test_a_damaged_cached_scene_is_made_again_with_a_warning(cache, capsys, damage, why):
    calls: list = []
    first = sources.cached_render("toy", {"a": 1}, _maker(calls))
    assert sources.cached_render("toy", {"a": 1}, _maker(calls)) == first and len(calls) == 1  # reused
    damage(first)
    again = sources.cached_render("toy", {"a": 1}, _maker(calls))
    assert again == first and len(calls) == 2 and sources.cache_damage(again) is None
    assert (again / "train" / "r_1.png").read_bytes() == b"view one!"
    err = capsys.readouterr().err
    assert f"the cached scene {first} is damaged (" in err and why in err and "making it again" in err


def test_a_scene_cached_before_manifests_is_reused(cache):
    calls: list = []
    folder = sources.cached_render("toy", {"a": 2}, _maker(calls))
    (folder / sources.MANIFEST).unlink()
    assert sources.cached_render("toy", {"a": 2}, _maker(calls)) == folder and len(calls) == 1


def test_a_mesh_scene_is_cached_by_the_mesh_content_not_its_time_stamp(cache, tmp_path, monkeypatch):
    """`cp -p` / `rsync -a` keep a file's time stamp: a replaced mesh reused the old mesh's renders."""
    seen = []

    def record(kind, options, make):
        seen.append(options)
        raise RuntimeError("stop here")

    monkeypatch.setattr(sources, "cached_render", record)
    mesh = tmp_path / "m.obj"
    for body in ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "v 0 0 0\nv 2 0 0\nv 0 2 0\nf 1 2 3\n"):
        mesh.write_text(body)
        os.utime(mesh, (1_600_000_000, 1_600_000_000))
        with pytest.raises(RuntimeError, match="stop here"):
            sources.build_mesh_scene(MeshSceneConfig(path=str(mesh)), None)()
    assert seen[0] != seen[1] and seen[0]["sha256"] != seen[1]["sha256"]


def test_the_cache_root_is_absolute_and_an_empty_or_overlong_nls_cache_is_handled(tmp_path, monkeypatch):
    from pipeline.types import DataError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NLS_CACHE", "relcache")
    assert sources.cache_root() == tmp_path / "relcache"  # records made here point at it from anywhere
    monkeypatch.setenv("NLS_CACHE", "")  # empty reads as unset, not as the current folder
    assert sources.cache_root() == sources.Path.home() / ".cache" / "nls"
    monkeypatch.setenv("NLS_CACHE", str(tmp_path / ("c" * 300)))
    with pytest.raises(DataError, match="longer than 255 bytes"):
        sources.cache_root()


def test_cached_scenes_get_mkdirs_mode_and_old_temporary_folders_are_swept(cache):
    """mkdtemp's 0700 shut other users of a shared NLS_CACHE out; a process killed while caching left its
    temporary folder for good."""
    from pipeline.runs import process_umask

    key_folder = sources.cached_render("toy", {"a": 3}, _maker([]))
    assert (key_folder.stat().st_mode & 0o777) == 0o777 & ~process_umask()
    shutil.rmtree(key_folder)
    old, young = key_folder.parent / f".{key_folder.name}.old", key_folder.parent / f".{key_folder.name}.young"
    old.mkdir()
    young.mkdir()
    os.utime(old, (1_600_000_000, 1_600_000_000))
    sources.cached_render("toy", {"a": 3}, _maker([]))
    assert not old.exists() and young.exists()  # a young one may be another process at work
