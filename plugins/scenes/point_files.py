"""Telling a point-cloud file from a mesh file without reading it: the suffix, and for a .ply its header.

``nls reconstruct FILE`` picks a scene from the file alone (``nls_scene_type_for_path``), so this must be
cheap for a file of any size: a .ply's header is plain text at its start, whatever its body's encoding,
and says how many faces follow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

#: suffixes of files that hold points only, as data paths (``.txt``, which ``_read_points`` also reads when
#: a scene file names it, is left out: a text file given as data is too often something else)
POINT_FILE_SUFFIXES = (".xyz", ".pts", ".npy")

#: a .ply header longer than this is not read (real headers are a few hundred bytes)
MAX_PLY_HEADER = 1 << 16


def ply_element_counts(path: Path) -> Optional[dict[str, int]]:
    """``{element name: count}`` from the header of the .ply at ``path`` (e.g. ``{"vertex": 35947,
    "face": 69451}``), or None when the file cannot be read or does not start with a .ply header."""
    try:
        with open(path, "rb") as f:
            head = f.read(MAX_PLY_HEADER)
    except OSError:
        return None
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return None
    counts: dict[str, int] = {}
    for line in head[:end].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "element" and words[2].isdigit():
            counts[words[1]] = int(words[2])
    return counts


def is_point_cloud_file(path: Path) -> bool:
    """Whether ``path`` is a file of points without faces: a ``.xyz``/``.pts``/``.npy`` file, or a ``.ply``
    whose header declares vertices and no faces (none, or a face element of 0)."""
    path = Path(path)
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in POINT_FILE_SUFFIXES:
        return True
    if suffix != ".ply":
        return False
    counts = ply_element_counts(path)
    return bool(counts and counts.get("vertex", 0) > 0 and counts.get("face", 0) == 0)
