"""Scene sources: loaders that turn files on disk into :class:`pipeline.types.SceneData`.

The location of real data is never hard-coded: :func:`data_root` reads the ``NLS_DATA``
environment variable and otherwise falls back to ``<repo>/../shared/data`` when that exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

#: Environment variable naming the root of the real data sets (``nerf/lego``, ``meshes``, ...).
DATA_ENV = "NLS_DATA"
#: ``downscale: auto`` loads images at the least whole factor that brings their longer side within this many pixels
#: (:func:`pipeline.scenes.blender.resolve_downscale`)
AUTO_MAX_SIDE = 1600


def repo_root() -> Path:
    """The project root (the folder holding ``pipeline/``)."""
    return Path(__file__).resolve().parents[2]


def data_root() -> Optional[Path]:
    """Root folder of the real data, or ``None`` when none is available.

    ``$NLS_DATA`` wins when set (returned only if it is an existing directory);
    otherwise ``<repo>/../shared/data`` when it exists.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    p = default_data_root()
    return p if p.is_dir() else None


def default_data_root() -> Path:
    """``<repo>/../shared/data``, the data root when ``$NLS_DATA`` is not set (it may not exist)."""
    return repo_root().parent / "shared" / "data"


def data_path(*parts: str) -> tuple[Optional[Path], str]:
    """``(path, reason)``: the data file/folder ``parts`` under :func:`data_root`, or
    ``(None, why it is unavailable)`` — convenient for ``pytest.skip(reason)``."""
    root = data_root()
    if root is None:
        env = os.environ.get(DATA_ENV)
        if env:
            return None, f"${DATA_ENV}={env} is not a directory"
        return None, (f"no data root: set ${DATA_ENV} or provide "
                      f"{repo_root().parent / 'shared' / 'data'}")
    p = root.joinpath(*parts)
    if not p.exists():
        return None, f"{p} not found under data root {root}"
    return p, ""


def missing_path_message(path: str) -> Optional[str]:
    """Why the scene path ``path`` (variables already expanded) cannot be used, or None when it exists:
    the folder a relative path was resolved against, the data root and where it came from when the
    path lies under it, and the nearest names in the deepest folder that exists."""
    import difflib

    p = Path(path).expanduser()
    if p.exists():
        return None
    parts = ["no such file or folder"]
    if not p.is_absolute():
        parts.append(f"({p.resolve()}: relative to the current folder {Path.cwd()})")
    root = data_root()
    if root is not None and p.resolve().is_relative_to(root.resolve()):
        whence = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default data root ../shared/data"
        parts.append(f"(the data root {root} is {whence})")
    parent = p.resolve()
    while not parent.exists():
        missing, parent = parent.name, parent.parent
    if parent.is_dir():
        names = sorted(c.name for c in parent.iterdir() if not c.name.startswith("."))
        near = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
        if near:
            parts.append(f"; did you mean {', '.join(str(parent / n) for n in near)}?")
        elif names:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            parts.append(f"; {parent} holds {shown}")
    return " ".join(parts).replace(" ;", ";")


__all__ = ["DATA_ENV", "data_root", "data_path", "missing_path_message", "repo_root"]
