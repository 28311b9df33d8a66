"""Read and write ``.binvox`` voxel files (Patrick Min's format, used by ShapeNet / 3D-R2N2).

Layout: an ASCII header ::

    #binvox 1
    dim D D D
    translate tx ty tz
    scale s
    data

followed by run-length-encoded bytes ``(value, count)`` with ``value`` in {0, 1} and
``1 <= count <= 255``. Voxels are stored with y varying fastest, then z, then x ("xzy"
order), so the decoded run reshapes to ``[x, z, y]``; we return ``[x, y, z]``. A voxel
``(i, j, k)`` covers the world cube starting at ``translate + scale * (i, j, k) / D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.types import DataError

__all__ = ["Voxels", "read_binvox", "write_binvox"]


@dataclass
class Voxels:
    """occ: (D, D, D) bool indexed [x, y, z]; translate: (3,) float; scale: float (world size of the grid)."""

    occ: np.ndarray
    translate: np.ndarray
    scale: float


def _header_line(fh, path: Path, what: str) -> str:
    line = fh.readline()
    if not line:
        raise DataError(f"binvox file {path}: truncated header, expected the {what!r} line")
    try:
        return line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DataError(f"binvox file {path}: the {what!r} header line is not ASCII "
                        f"(not a binvox file?)") from None


def read_binvox(path) -> Voxels:
    """Decode ``path``; raises DataError naming the file and the fault for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"binvox file {path} does not exist")
    with open(path, "rb") as fh:
        magic = _header_line(fh, path, "#binvox 1")
        if not magic.startswith("#binvox"):
            raise DataError(f"binvox file {path}: first line is {magic[:40]!r}, expected '#binvox 1'")
        dims = translate = scale = None
        while True:
            line = _header_line(fh, path, "data")
            if line == "data":
                break
            key, _, rest = line.partition(" ")
            try:
                vals = [float(v) for v in rest.split()]
            except ValueError:
                raise DataError(f"binvox file {path}: cannot parse header line {line!r}") from None
            if key == "dim" and len(vals) == 3:
                dims = tuple(int(v) for v in vals)
            elif key == "translate" and len(vals) == 3:
                translate = np.asarray(vals, np.float64)
            elif key == "scale" and len(vals) == 1:
                scale = vals[0]
            else:
                raise DataError(f"binvox file {path}: unexpected header line {line!r} "
                                f"(valid: dim D D D, translate x y z, scale s, data)")
        raw = np.frombuffer(fh.read(), dtype=np.uint8)
    if dims is None or min(dims) < 1:
        raise DataError(f"binvox file {path}: header has no valid 'dim' line")
    if len(raw) % 2:
        raise DataError(f"binvox file {path}: run-length data has an odd number of bytes ({len(raw)}); "
                        f"the file is truncated or corrupt")
    values, counts = raw[0::2], raw[1::2]
    if (values > 1).any() or (counts == 0).any():
        raise DataError(f"binvox file {path}: run-length data holds values other than 0/1 or empty runs; corrupt")
    total = int(counts.sum(dtype=np.int64))
    if total != int(np.prod(dims)):
        raise DataError(f"binvox file {path}: run-length data decodes to {total} voxels, but dim "
                        f"{dims[0]}x{dims[1]}x{dims[2]} needs {int(np.prod(dims))}; truncated or corrupt")
    occ = np.repeat(values.astype(bool), counts).reshape(dims).transpose(0, 2, 1)
    return Voxels(np.ascontiguousarray(occ), translate if translate is not None else np.zeros(3),
                  float(scale) if scale is not None else 1.0)


def write_binvox(path, occ: np.ndarray, translate=(0.0, 0.0, 0.0), scale: float = 1.0) -> Path:
    """Write a ``(D, D, D)`` boolean grid indexed ``[x, y, z]`` as binvox (the inverse of :func:`read_binvox`)."""
    path = Path(path)
    occ = np.asarray(occ, bool)
    if occ.ndim != 3:
        raise DataError(f"write_binvox: need a 3-D grid, got shape {occ.shape}")
    flat = occ.transpose(0, 2, 1).reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(flat)]]))
    pairs = []
    for v, n in zip(flat[starts], lengths):
        while n > 0:
            c = min(int(n), 255)
            pairs += [int(v), c]
            n -= c
    d = occ.shape
    header = (f"#binvox 1\ndim {d[0]} {d[1]} {d[2]}\ntranslate {translate[0]:g} {translate[1]:g} "
              f"{translate[2]:g}\nscale {scale:g}\ndata\n")
    path.write_bytes(header.encode("ascii") + bytes(pairs))
    return path
