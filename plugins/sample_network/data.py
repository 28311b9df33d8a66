"""Data for the ``sample_network`` plugin.

* :func:`build_scan` — the ``scan`` scene source: a raw point cloud (no normals) from a mesh
  (area-uniform samples) or a point-cloud file (.ply/.xyz/.pts/.npy), optionally with gaussian
  noise, random subsampling and a partial-scan crop; the normalised mesh is the ground truth.
* :func:`load_fashion_mnist` — Fashion-MNIST in full (60k train / 10k test).
* :func:`load_mnist_test_split` — the 10k MNIST **test** images (the only MNIST images in
  the shared data) split by this loader into a train part and a test part (seeded, stratified
  by nothing: a random permutation); the 60k MNIST train images are not available offline.
* :func:`load_digits` — scikit-learn's 8×8 digits, only when scikit-learn is installed.

Data locations come from ``pipeline.scenes.data_path`` (``$NLS_DATA`` or ``../shared/data``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from plugins.sample_network.config import ScanConfig

MESH_SUFFIXES = (".obj", ".off", ".stl", ".glb")


# ------------------------------------------------------------------------------ scans


def make_scan(points: np.ndarray, cfg: ScanConfig, rng: np.random.Generator,
              normals: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply crop, subsampling and noise (in that order) to normalised points (P, 3)."""
    pts = np.asarray(points, np.float64)
    d = np.asarray(cfg.crop_dir, np.float64)
    d = d / max(np.linalg.norm(d), 1e-12)
    if cfg.crop == "plane":
        h = pts @ d
        lo = h.min()
        keep = h <= lo + cfg.crop_keep * (h.max() - lo)
        pts = pts[keep]
        normals = normals[keep] if normals is not None else None
    elif cfg.crop == "view":
        if normals is None:
            from pipeline.types import ConfigError

            raise ConfigError("scene.crop = view needs surface normals, which this point file has none of: give "
                              "a mesh, a point file with normals (6 numbers per line), or another crop")
        keep = normals @ d > 0.0
        pts = pts[keep]
    if cfg.subsample is not None and cfg.subsample < len(pts):
        pts = pts[rng.choice(len(pts), cfg.subsample, replace=False)]
    if cfg.noise > 0:
        pts = pts + rng.normal(0.0, cfg.noise * cfg.extent, pts.shape)
    return pts.astype(np.float32)


def build_scan(cfg: ScanConfig, ctx):
    """Build the ``scan`` scene source from its ``scene:`` block (``ScanConfig``): returns a loader
    that, when called, makes the point cloud (:func:`make_scan`) and returns a SceneData."""
    def load():
        import torch
        import trimesh

        from pipeline.runs import atomic_write_bytes, file_sha256
        from pipeline.scenes.mesh_render import load_mesh, normalize_mesh
        from pipeline.types import DataError, SceneData
        from plugins.scenes.sources import _read_points, cache_root, input_frame_record, make_cache_dir, normalize_points

        path = Path(cfg.path)
        if not path.exists():
            raise DataError(f"scene.path {path} does not exist; give a mesh or point-cloud file")
        rng = np.random.default_rng(cfg.seed)
        gt = None
        pts = None if path.suffix.lower() in MESH_SUFFIXES else _read_points(path)
        if pts is None:
            mesh, T = normalize_mesh(load_mesh(path), cfg.extent)
            points, faces = trimesh.sample.sample_surface(mesh, cfg.n_points, seed=cfg.seed)
            normals = mesh.face_normals[faces]
            key = hashlib.sha256(json.dumps([file_sha256(path), cfg.extent]).encode())  # by content, not time
            gt = cache_root() / "scan" / key.hexdigest()[:16] / "gt_mesh.ply"
            if not gt.exists():
                make_cache_dir(gt.parent)
                atomic_write_bytes(gt, mesh.export(file_type="ply"))
        else:
            points, normals = pts
            points, T = normalize_points(points, cfg.extent)
        scan = make_scan(points, cfg, rng, normals)
        if len(scan) < 10:
            raise DataError(f"scan of {path}: only {len(scan)} points left after cropping; raise crop_keep")
        half = 0.5 * cfg.extent + cfg.box_margin
        return SceneData(splits={}, aabb=torch.tensor([-half] * 3 + [half] * 3, dtype=torch.float32),
                         gt_mesh=gt, points=scan, normals=None,
                         meta={"source": "scan", "input": str(path), "normalised_extent": cfg.extent,
                               "input_frame": input_frame_record(T, path), "n_points": int(len(scan)), "noise": cfg.noise, "crop": cfg.crop,
                               "subsample": cfg.subsample})

    return load


# ------------------------------------------------------------------------------ classification


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _folder(name: str) -> Path:
    from pipeline.scenes import data_path
    from pipeline.types import DataError

    p, why = data_path("classify", name)
    if p is None:
        raise DataError(f"classification data {name!r} unavailable: {why}")
    return p


def load_fashion_mnist(split: str = "train"):
    """Fashion-MNIST ``(images float32 (n, 1, 28, 28) in [0, 1], labels int64 (n,))``;
    split ``train`` (60k) or ``test`` (10k)."""
    folder = _folder("fashion-mnist")
    prefix = {"train": "train", "test": "t10k"}[split]
    x = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
    y = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return x, y


def load_mnist_test_split(split: str = "train", train_fraction: float = 0.8, seed: int = 0):
    """MNIST's 10k **test** images split by this loader (random permutation with ``seed``) into
    ``train`` (the first ``train_fraction``) and ``test`` (the rest). The 60k MNIST training
    images are not in the shared data, so figures on this split are not comparable with
    figures on the official MNIST split."""
    folder = _folder("mnist-test")
    x = _read_idx(folder / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
    y = _read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    k = int(round(train_fraction * len(x)))
    sel = perm[:k] if split == "train" else perm[k:]
    return x[sel], y[sel]


def load_digits():
    """scikit-learn's digits (1797 8×8 images) as ``(images (n, 1, 8, 8) in [0, 1], labels)``."""
    try:
        from sklearn.datasets import load_digits as _ld
    except ImportError as exc:
        from pipeline.types import DataError

        raise DataError("scikit-learn is not installed, so its digits data set is unavailable "
                        "(pip install scikit-learn)") from exc
    d = _ld()
    return (d.images.astype(np.float32)[:, None] / 16.0), d.target.astype(np.int64)


def binary_merge(y: np.ndarray, positive: tuple[int, ...]) -> np.ndarray:
    """Labels → {0, 1}: 1 for classes in ``positive`` (a binary merge of classes, §5.1)."""
    return np.isin(y, positive).astype(np.int64)
