"""Evaluation metrics: numpy (or torch) in, python floats out.

* :func:`psnr`, :func:`ssim` for images in [0, 1].
* :func:`chamfer` following the project's protocol: normalise the ground truth
  so its bounding box spans at most 1 and is centred, apply the same transform to the
  reconstruction, sample 30k area-uniform points on each, CD-L1 =
  ½(mean d(gt→rec) + mean d(rec→gt)) and CD-L2 with d², both ×10³; plus normal
  consistency and F-score@τ (τ in the normalised frame).
* :func:`chamfer_floor`: the same metric between two independent samplings of the ground
  truth — the lowest figure any reconstruction can reach at that sample count.
* :func:`chamfer_to_surface`: the same samples with exact distances to the other mesh's
  surface (libigl), which has no sampling floor; a companion figure, not the protocol.

Nearest neighbours use pykdtree (scipy's cKDTree as fallback): O(N log N), never O(N²).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from pipeline.types import NLSError

__all__ = ["psnr", "ssim", "chamfer", "chamfer_floor", "chamfer_to_surface", "nearest_distances",
           "point_to_surface_distances",
           "CHAMFER_FRAME"]

CHAMFER_FRAME = "gt-normalised (bbox max side 1, centred)"


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- images


def _pixel_mask(metric: str, mask, shape: tuple) -> Optional[np.ndarray]:
    """``mask`` (H, W) of the pixels that count, as bool, checked against an image of ``shape`` (H, W[, C]); None
    for None. NLSError when it is another size or keeps no pixel."""
    if mask is None:
        return None
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask).astype(bool)
    if m.shape != tuple(shape[:2]):
        raise NLSError(f"{metric}: the mask is {m.shape}, the images {tuple(shape[:2])} (H, W)")
    if not m.any():
        raise NLSError(f"{metric}: the mask keeps no pixel")
    return m


def psnr(pred, gt, mask=None) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (any matching shapes). With ``mask`` (H, W) bool,
    over the pixels it keeps (images (H, W[, C])). ``inf`` for identical images."""
    p, g = _np(pred), _np(gt)
    if p.shape != g.shape:
        raise NLSError(f"psnr: shapes differ: pred {p.shape} vs gt {g.shape}")
    if p.size == 0:
        raise NLSError("psnr: empty images")
    m = _pixel_mask("psnr", mask, p.shape)
    if m is not None:
        p, g = p[m], g[m]
    _check_unit_range("psnr", p, g)
    mse = float(np.mean((p - g) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def color_corrected(pred, gt, kind: str = "affine", mask=None) -> np.ndarray:
    """``pred (H, W, 3)`` through the colour transform that brings it closest to ``gt`` in least squares, clipped
    to [0, 1]: ``gain``, one factor per channel (exposure and white balance), or ``affine``, a 3x3 matrix and an
    offset. For scoring renders against photos whose exposure the field cannot know (a held-out photo's own);
    the transform is fitted on the pixels it is then scored on (``mask`` (H, W) bool: those it keeps), 3 or 12
    numbers against H x W pixels."""
    p, g = _np(pred).astype(np.float64), _np(gt).astype(np.float64)
    if p.shape != g.shape or p.shape[-1] != 3:
        raise NLSError(f"color_corrected: pred {p.shape} and gt {g.shape} must both be (..., 3)")
    m = _pixel_mask("color_corrected", mask, p.shape)
    x, y = p.reshape(-1, 3), g.reshape(-1, 3)
    fit = slice(None) if m is None else m.reshape(-1)
    if kind == "gain":
        out = x * ((x[fit] * y[fit]).sum(0) / np.maximum((x[fit] * x[fit]).sum(0), 1e-12))
    elif kind == "affine":
        design = np.concatenate([x, np.ones((len(x), 1))], 1)  # (P, 4)
        out = design @ np.linalg.lstsq(design[fit], y[fit], rcond=None)[0]
    else:
        raise NLSError(f"color_corrected: kind {kind!r}; use gain or affine")
    return np.clip(out, 0.0, 1.0).reshape(p.shape)


#: how far outside [0, 1] an image may stray (float round-off) before psnr/ssim refuse it
_RANGE_TOL = 1e-3


def _check_unit_range(metric: str, *images: np.ndarray) -> None:
    """NLSError when an image is not finite or not in [0, 1]: a PSNR of 8-bit (0..255) values would read
    ~48 dB too low, of values above 1 it has no peak to refer to, and NaN gives NaN."""
    for name, img in zip(("pred", "gt"), images):
        bad = int(np.size(img) - np.count_nonzero(np.isfinite(img)))
        if bad:
            raise NLSError(f"{metric}: {name} has {bad} NaN or inf value(s); images must be finite and in [0, 1]")
        lo, hi = float(img.min()), float(img.max())
        if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
            hint = " (8-bit values? divide by 255)" if hi > 2.0 else ""
            raise NLSError(f"{metric}: {name} has values in [{lo:.4g}, {hi:.4g}]; images must be in [0, 1]{hint}")


def ssim(pred, gt, *, gaussian: bool = True, mask=None) -> float:
    """Structural similarity of two ``(H, W, 3)`` (or ``(H, W)``) images in [0, 1].

    ``gaussian=True`` (default) is the variant of the NeRF papers: Gaussian weights with
    sigma 1.5 (11x11 window) and population covariance; ``False`` is skimage's default 7x7
    uniform window with sample covariance. With ``mask`` (H, W) bool, the mean of the SSIM map over the pixels
    it keeps, less the map's border as skimage leaves it out (their windows still see the pixels left out).
    """
    from skimage.metrics import structural_similarity

    p, g = _np(pred), _np(gt)
    if p.shape != g.shape:
        raise NLSError(f"ssim: shapes differ: pred {p.shape} vs gt {g.shape}")
    if p.ndim not in (2, 3):
        raise NLSError(f"ssim: expected (H, W, C) or (H, W) images, got shape {p.shape}")
    _check_unit_range("ssim", p, g)
    win = 11 if gaussian else 7
    if min(p.shape[:2]) < win:
        raise NLSError(f"ssim: images of {p.shape[1]}x{p.shape[0]} pixels are smaller than "
                       f"the {win}x{win} window")
    kw = dict(data_range=1.0)
    if p.ndim == 3:
        kw["channel_axis"] = -1
    if gaussian:
        kw.update(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    m = _pixel_mask("ssim", mask, p.shape)
    if m is None:
        return float(structural_similarity(p, g, **kw))
    _, full = structural_similarity(p, g, full=True, **kw)
    full = full.mean(-1) if full.ndim == 3 else full
    pad = (win - 1) // 2  # (skimage's mean leaves out the map's border, where windows reach past the image)
    inner = np.zeros_like(m)
    inner[pad:-pad, pad:-pad] = m[pad:-pad, pad:-pad]
    if not inner.any():
        raise NLSError(f"ssim: the mask keeps no pixel {pad} or more pixels inside the image's border")
    return float(full[inner].mean())


# --------------------------------------------------------------------------- geometry


def nearest_distances(query: np.ndarray, ref: np.ndarray):
    """Euclidean distance from each query point to its nearest ``ref`` point, and its index."""
    q = np.ascontiguousarray(query, dtype=np.float64)
    r = np.ascontiguousarray(ref, dtype=np.float64)
    try:
        from pykdtree.kdtree import KDTree

        d, i = KDTree(r).query(q, k=1)
    except ImportError:  # pragma: no cover - pykdtree is a listed dependency
        from scipy.spatial import cKDTree

        d, i = cKDTree(r).query(q, k=1)
    return np.asarray(d, np.float64).reshape(-1), np.asarray(i, np.int64).reshape(-1)


def _is_mesh(x) -> bool:
    return hasattr(x, "faces") and hasattr(x, "vertices")


def _bounds(x) -> np.ndarray:
    """(2, 3) bounding box of a mesh (the vertices its faces use) or a point set."""
    if _is_mesh(x):
        faces = np.asarray(x.faces)
        pts = _np(x.vertices)
        if faces.size:  # a mask, not np.unique's sort (0.2 s on a 350k-face mesh): the same vertices
            used = np.zeros(len(pts), dtype=bool)
            used[faces.ravel()] = True
            pts = pts[used]
    else:
        pts = _as_points(x, "gt")
    return np.stack([pts.min(0), pts.max(0)])


def _as_points(x, name: str) -> np.ndarray:
    if hasattr(x, "vertices") and not hasattr(x, "faces"):  # trimesh.PointCloud
        x = x.vertices
    p = _np(x)
    if p.ndim != 2 or p.shape[1] != 3:
        raise NLSError(f"chamfer: {name} points must be (P, 3), got shape {p.shape}")
    if len(p) == 0:
        raise NLSError(f"chamfer: {name} is an empty point set")
    if not np.isfinite(p).all():
        raise NLSError(f"chamfer: {name} has non-finite coordinates")
    return p


def _sample(x, n: int, rng: np.random.Generator, name: str, T_scale: float,
            T_shift: np.ndarray):
    """(points (n', 3), normals (n', 3) or None) in the normalised frame."""
    if _is_mesh(x):
        import trimesh

        if len(x.faces) == 0:
            raise NLSError(f"chamfer: {name} mesh has no faces")
        v = _np(x.vertices) * T_scale + T_shift
        if not np.isfinite(v).all() and not np.isfinite(v[np.unique(np.asarray(x.faces))]).all():  # as _bounds:
            # unused vertices do not count (the unique() only when some vertex is not finite)
            raise NLSError(f"chamfer: {name} mesh has non-finite vertices")
        m = trimesh.Trimesh(vertices=v, faces=np.asarray(x.faces), process=False)
        areas = m.area_faces
        total = float(areas.sum())
        if not total > 0:
            raise NLSError(f"chamfer: {name} mesh has zero surface area")
        # area-uniform: face by area, then a uniform point in the triangle
        face = rng.choice(len(areas), size=n, p=areas / total)
        r1, r2 = rng.random(n), rng.random(n)
        s = np.sqrt(r1)
        tri = m.vertices[m.faces[face]]
        pts = ((1 - s)[:, None] * tri[:, 0] + (s * (1 - r2))[:, None] * tri[:, 1]
               + (s * r2)[:, None] * tri[:, 2])
        nrm = m.face_normals[face]
        return pts, nrm
    p = _as_points(x, name) * T_scale + T_shift
    if len(p) > n:
        p = p[rng.choice(len(p), size=n, replace=False)]
    return p, None


def _samples_in_frame(rec, gt, n_samples: int, seed: int, normalize_by_gt: bool):
    """``((gt points, normals), (rec points, normals), n, scale, shift, frame)``: ``n_samples``
    samples on each, in the frame ``x * scale + shift`` where the GT's bounding box is centred with
    largest side 1 (when ``normalize_by_gt``), from independent random streams derived from ``seed``."""
    n = int(n_samples)
    if n < 1:
        raise NLSError(f"chamfer: n_samples must be >= 1, got {n_samples!r}")
    if normalize_by_gt:
        lo, hi = _bounds(gt)
        side = float((hi - lo).max())
        if not side > 0:
            raise NLSError("chamfer: the ground truth has a zero-size bounding box")
        scale = 1.0 / side
        shift = -scale * 0.5 * (lo + hi)
        frame = CHAMFER_FRAME
    else:
        scale, shift, frame = 1.0, np.zeros(3), "input frame (not normalised)"
    rng_gt, rng_rec = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))
    return (_sample(gt, n, rng_gt, "gt", scale, shift), _sample(rec, n, rng_rec, "rec", scale, shift),
            n, scale, shift, frame)


def chamfer(rec, gt, *, n_samples: int = 30000, seed: int = 0, normalize_by_gt: bool = True,
            fscore_taus: Sequence[float] = (0.01,)) -> dict:
    """Chamfer distance, normal consistency and F-score between a reconstruction and the
    ground truth (trimesh meshes or ``(P, 3)`` point arrays), by the project's protocol.

    The ground truth's bounding box is centred and scaled so its largest side is 1 (when
    ``normalize_by_gt``); the same transform is applied to ``rec``. ``n_samples``
    area-uniform samples are drawn on each mesh (point sets with more points are
    subsampled), with independent random streams derived from ``seed`` — so
    ``chamfer(gt, gt)`` measures the sampling floor, not 0.

    Returns (python floats):
        ``chamfer_l1``: ½(mean d(gt→rec) + mean d(rec→gt)) ×10³;
        ``chamfer_l2``: the same with squared distances ×10³;
        ``accuracy_l1`` / ``completeness_l1``: mean d(rec→gt) / d(gt→rec) ×10³;
        ``normal_consistency``: mean |cos| between each sample's normal and its nearest
        neighbour's, averaged over both directions (only when both are meshes);
        ``fscore@τ``, ``precision@τ`` (rec samples within τ of gt), ``recall@τ``;
        ``n_samples`` (the requested count), ``n_rec``, ``n_gt``, ``scale`` (normalisation
        factor applied), ``frame``.

    Example:
        >>> chamfer(rec_mesh, gt_mesh)["chamfer_l1"]   # ≈ 4 for a perfect 30k result
    """
    taus = [float(t) for t in fscore_taus]
    if any(not (t > 0) for t in taus):
        raise NLSError(f"chamfer: fscore_taus must be positive, got {list(fscore_taus)}")
    (pg, ng), (pr, nr), n, scale, _, frame = _samples_in_frame(rec, gt, n_samples, seed, normalize_by_gt)

    d_gr, i_gr = nearest_distances(pg, pr)  # gt -> rec (completeness)
    d_rg, i_rg = nearest_distances(pr, pg)  # rec -> gt (accuracy)
    out: dict = {
        "chamfer_l1": float(0.5 * (d_gr.mean() + d_rg.mean()) * 1e3),
        "chamfer_l2": float(0.5 * ((d_gr ** 2).mean() + (d_rg ** 2).mean()) * 1e3),
        "accuracy_l1": float(d_rg.mean() * 1e3),
        "completeness_l1": float(d_gr.mean() * 1e3),
    }
    if ng is not None and nr is not None:
        c1 = np.abs(np.einsum("ij,ij->i", ng, nr[i_gr]))
        c2 = np.abs(np.einsum("ij,ij->i", nr, ng[i_rg]))
        out["normal_consistency"] = float(0.5 * (c1.mean() + c2.mean()))
    keys = [f"{t:g}" for t in taus]
    if len(set(keys)) < len(keys):
        raise NLSError(f"chamfer: F-score thresholds {list(taus)} name the same key twice at 6 significant digits")
    for t in taus:
        prec = float((d_rg < t).mean())
        rec_ = float((d_gr < t).mean())
        f = 0.0 if prec + rec_ == 0 else 2 * prec * rec_ / (prec + rec_)
        key = f"{t:g}"
        out[f"fscore@{key}"] = float(f)
        out[f"precision@{key}"] = prec
        out[f"recall@{key}"] = rec_
    out.update({"n_samples": n, "n_rec": int(len(pr)), "n_gt": int(len(pg)),
                "scale": float(scale), "frame": frame})
    return out


def point_to_surface_distances(points: np.ndarray, mesh, scale: float = 1.0,
                               shift: Optional[np.ndarray] = None) -> np.ndarray:
    """(P,) exact Euclidean distance from each of ``points`` (P, 3) to the surface of ``mesh`` taken in the frame
    ``x * scale + shift`` (libigl ``point_mesh_squared_distance``); ``points`` are already in that frame."""
    import igl

    v = np.ascontiguousarray(_np(mesh.vertices) * scale + (0.0 if shift is None else shift), dtype=np.float64)
    f = np.ascontiguousarray(np.asarray(mesh.faces), dtype=np.int64)
    d2 = igl.point_mesh_squared_distance(np.ascontiguousarray(points, dtype=np.float64), v, f)[0]
    return np.sqrt(np.maximum(d2, 0.0))


def chamfer_to_surface(rec, gt, *, n_samples: int = 30000, seed: int = 0, normalize_by_gt: bool = True) -> dict:
    """Chamfer-L1/L2 (×10³) with exact point-to-surface distances: the same frame and samples as
    :func:`chamfer`, but each sample's distance is to the *other mesh's surface* (libigl
    ``point_mesh_squared_distance``), not to its nearest sample. It has no sampling floor
    (``chamfer_to_surface(gt, gt)`` is 0 up to rounding) and never exceeds :func:`chamfer` for the
    same ``seed``, sample by sample. Not the project's protocol: a companion figure that measures the
    geometry rather than the sampling. Both inputs must be meshes.

    Returns ``chamfer_l1``, ``chamfer_l2``, ``accuracy_l1`` (rec→gt), ``completeness_l1``
    (gt→rec), ``n_samples``, ``scale``, ``frame``.
    """
    for name, m in (("rec", rec), ("gt", gt)):
        if not _is_mesh(m):
            raise NLSError(f"chamfer_to_surface: {name} must be a mesh (vertices and faces), "
                           f"got {type(m).__name__}")
    (pg, _), (pr, _), n, scale, shift, frame = _samples_in_frame(rec, gt, n_samples, seed, normalize_by_gt)

    d_gr = point_to_surface_distances(pg, rec, scale, shift)
    d_rg = point_to_surface_distances(pr, gt, scale, shift)
    return {"chamfer_l1": float(0.5 * (d_gr.mean() + d_rg.mean()) * 1e3),
            "chamfer_l2": float(0.5 * ((d_gr ** 2).mean() + (d_rg ** 2).mean()) * 1e3),
            "accuracy_l1": float(d_rg.mean() * 1e3), "completeness_l1": float(d_gr.mean() * 1e3),
            "n_samples": n, "scale": float(scale), "frame": frame + ", point-to-surface"}


def chamfer_floor(gt, n_samples: int = 30000, *, seed: int = 0, fscore_taus: Sequence[float] = (0.01,),
                  rec_points: Optional[int] = None) -> dict:
    """:func:`chamfer` between two independent samplings of ``gt``: the floor that no
    reconstruction can beat at this sample count (≈ 4 ×10³-units CD-L1 at 30k on typical
    closed models).

    ``rec_points``: the floor of a reconstruction given as that many points (fewer than
    ``n_samples``, e.g. the converged points of a level-set sampler): ``gt`` sampled at
    ``rec_points`` against ``gt`` at ``n_samples``. Sparser points sit further from the GT's
    samples, so this floor is higher (≈ 5.5 at 10k against 30k where the 30k floor is ≈ 4).
    More than ``n_samples`` points are subsampled to ``n_samples``, as :func:`chamfer` subsamples
    such a reconstruction, so the floor is then the ``n_samples`` one (``n_rec`` says so)."""
    if rec_points is None:
        res = chamfer(gt, gt, n_samples=n_samples, seed=seed, fscore_taus=fscore_taus)
    else:
        rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(3)[2])  # a stream chamfer does not use
        pts, _ = _sample(gt, int(rec_points), rng, "gt", 1.0, np.zeros(3))
        res = chamfer(pts, gt, n_samples=n_samples, seed=seed, fscore_taus=fscore_taus)
    res["what"] = "floor: two independent samplings of the ground truth"
    return res
