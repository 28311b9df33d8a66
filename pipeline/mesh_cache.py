"""Meshes extracted from a run's checkpoint, kept in its folder so that ``nls eval``, ``nls export`` and the
final evaluation of ``nls reconstruct`` mesh the field once per checkpoint and extraction.

An entry is ``meshes/extracted/<key[:16]>.npz``: ``vertices`` (V, 3) float64 and ``faces`` (F, 3) int64 as
the extractor returned them (lossless, so metrics are bit-identical whether a mesh was extracted or read
back), its ``metadata`` as JSON text and the full ``key``. The key (:func:`pipeline.evaluate.mesh_key`)
hashes the newest checkpoint's sha256, the extractor's options, the ``resolution``, ``level`` and ``bbox``
of the call and the device kind. The cache thus assumes an extractor's mesh depends on nothing else, which
holds for the built-in ones; an extractor that is not deterministic opts out with a class attribute
``cache_meshes = False``. A mesh whose metadata is not plain JSON (it would not read back equal) is not
kept, nor one with colours or attributes, nor one over :data:`MAX_ENTRY_BYTES`. Only the :data:`KEEP_MESHES` most recently used entries stay; a
damaged entry is ignored (and replaced), and a run folder that cannot be written keeps no cache.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.types import NLSError

#: the run's folder of extracted meshes, one ``<key>.npz`` each
EXTRACTED = Path("meshes") / "extracted"
#: how many extracted meshes a run keeps (the most recently written or reused), so run folders do not grow
#: without bound: an entry takes about 72 bytes a vertex (31 MB for rs_sdf_csg_hash_baseline at 256^3)
KEEP_MESHES = 2
#: a mesh whose entry would be larger than this is not kept (a 1024^3 export of 8M vertices would take 0.6 GB
#: of the run folder, twice over); 256 MB holds about 3.5M vertices
MAX_ENTRY_BYTES = 256 * 2 ** 20
#: hex digits of the key in an entry's file name (the full key is stored in it and checked on reading)
NAME_DIGITS = 16


def entry_path(run, key: str) -> Path:
    """``<run>/meshes/extracted/<key[:NAME_DIGITS]>.npz``."""
    return run.path / EXTRACTED / f"{key[:NAME_DIGITS]}.npz"


def load_mesh(run, key: str):
    """The mesh stored under ``key`` as a new ``trimesh.Trimesh`` (``process=False``: nothing merged) with
    its own copy of the metadata, or None when there is none or it is damaged. A hit becomes the most
    recently used entry."""
    import trimesh

    path = entry_path(run, key)
    try:
        with np.load(path, allow_pickle=False) as z:
            if bytes(z["key"]).decode() != key:
                return None
            vertices, faces = z["vertices"], z["faces"]
            metadata = json.loads(bytes(z["metadata"]).decode())
    except Exception:  # absent, cut off or damaged: numpy and zipfile raise many types
        return None
    if not _valid(vertices, faces, metadata):
        return None
    _touch(path)
    return trimesh.Trimesh(vertices=vertices, faces=faces, metadata=metadata, process=False)


def _valid(vertices: np.ndarray, faces: np.ndarray, metadata: Any) -> bool:
    """Whether ``vertices`` (V, 3) float64, ``faces`` (F, 3) int64 indexing them and a ``metadata`` dict
    are what :func:`store_mesh` writes."""
    ok = (vertices.dtype == np.float64 and vertices.ndim == 2 and vertices.shape[1] == 3
          and faces.dtype == np.int64 and faces.ndim == 2 and faces.shape[1] == 3 and isinstance(metadata, dict))
    return ok and (faces.size == 0 or 0 <= int(faces.min()) <= int(faces.max()) < len(vertices))


def store_mesh(run, key: str, mesh, metadata: dict) -> Optional[Path]:
    """Write ``mesh``'s vertices and faces with ``metadata`` under ``key`` atomically and keep the
    :data:`KEEP_MESHES` most recently used entries; the path, or None when the entry would not hold the
    mesh (``metadata`` not plain JSON, colours or attributes), would be over :data:`MAX_ENTRY_BYTES`, or the
    run folder cannot be written."""
    from pipeline.runs import atomic_write_bytes

    text = exact_json(metadata)
    if text is None or has_more(mesh) or 24 * (len(mesh.vertices) + len(mesh.faces)) > MAX_ENTRY_BYTES:
        return None
    buf = io.BytesIO()
    np.savez(buf, key=np.frombuffer(key.encode(), dtype=np.uint8),
             vertices=np.asarray(mesh.vertices, dtype=np.float64), faces=np.asarray(mesh.faces, dtype=np.int64),
             metadata=np.frombuffer(text.encode(), dtype=np.uint8))
    path = entry_path(run, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getbuffer())
    except (OSError, NLSError):
        return None
    prune(path.parent, KEEP_MESHES)
    return path


def has_more(mesh) -> bool:
    """Whether ``mesh`` holds more than vertices, faces and metadata: colours, a texture, attributes."""
    visual = getattr(mesh, "visual", None)
    return (getattr(visual, "kind", None) is not None or bool(getattr(mesh, "vertex_attributes", None))
            or bool(getattr(mesh, "face_attributes", None)))


def exact_json(metadata: dict) -> Optional[str]:
    """``metadata`` as JSON text when it reads back equal (plain numbers, text, lists and dicts), else None."""
    try:
        text = json.dumps(metadata, allow_nan=True)
        return text if json.loads(text) == metadata else None
    except (TypeError, ValueError):  # numpy values, tuples, an array compared elementwise
        return None


def prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest (by modification time) ``*.npz`` of ``folder``."""
    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    for old in sorted(folder.glob("*.npz"), key=mtime, reverse=True)[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def _touch(path: Path) -> None:
    """Make ``path`` the most recently used entry (nothing when the folder is read-only)."""
    try:
        os.utime(path)
    except OSError:
        pass
