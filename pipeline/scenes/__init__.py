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
    p = repo_root().parent / "shared" / "data"
    return p if p.is_dir() else None


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


__all__ = ["DATA_ENV", "data_root", "data_path", "repo_root"]
