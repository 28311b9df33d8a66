"""Repeated points of a point cloud, found exactly and fast: each row's float bits hashed to one uint64, one
sort of the keys, and an exact comparison of the rows that share a key (``np.unique(axis=0)`` sorts the
rows themselves: 4M points take ~5 s and ~360 MB above the array, against ~0.35 s and ~125 MB here)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def _mix64(h: "np.ndarray") -> "np.ndarray":
    """splitmix64's finaliser applied in place to ``h`` (P,) uint64 (wrapping arithmetic); returns ``h``."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def row_keys(xyz: "np.ndarray") -> "np.ndarray":
    """``(P,)`` uint64 hash of the bits of each row of ``xyz`` (P, 3) float64, -0.0 counted as 0.0, so equal
    rows get equal keys (unequal rows almost always different ones)."""
    h = np.zeros(len(xyz), np.uint64)
    for j in range(xyz.shape[1]):
        h ^= (xyz[:, j] + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0; one column at a time
        _mix64(h)
    return h


def _runs_of_equal_keys(keys: "np.ndarray") -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """``(rows, run, head)`` of the rows whose key in ``keys`` (P,) another row shares: ``rows`` (Q,) grouped
    by key, ``run`` (Q,) the index of each one's group, ``head`` (R,) the earliest row of each group."""
    order = np.argsort(keys)  # not stable: each group's earliest row is found by a minimum instead
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    shared = np.zeros(len(keys), bool)
    shared[1:] = same
    shared[:-1] |= same
    rows, rk = order[shared], sk[shared]
    new_run = np.ones(len(rk), bool)
    new_run[1:] = rk[1:] != rk[:-1]
    run = np.cumsum(new_run) - 1
    head = np.minimum.reduceat(rows, np.flatnonzero(new_run)) if len(rows) else rows
    return rows, run, head


def _rows_equal(xyz: "np.ndarray", i: "np.ndarray", j: "np.ndarray") -> "np.ndarray":
    """``(Q,)`` bool: row ``i[k]`` of ``xyz`` (P, 3) equals row ``j[k]`` exactly (-0.0 equals 0.0); column by
    column, 2.5x faster than comparing gathered rows."""
    equal = np.ones(len(i), bool)
    for c in range(xyz.shape[1]):
        col = xyz[:, c]
        equal &= col[i] == col[j]
    return equal


def first_occurrences(xyz: "np.ndarray", keys: Callable[["np.ndarray"], "np.ndarray"] = row_keys) -> "np.ndarray":
    """``(U,)`` ascending indices of the first occurrence of each distinct row of ``xyz`` (P, 3) float64
    without NaN (-0.0 equals 0.0): ``np.sort(np.unique(xyz, axis=0, return_index=True)[1])``, from a hash
    ``keys(xyz)`` (P,) uint64 and one sort of it (4M points: ~5 s and 360 MB above the array -> ~0.35 s and
    125 MB). Rows that share a key are compared exactly with the group's earliest row; a group that holds
    distinct rows (a hash collision) is resolved by ``np.unique``, so a distinct point is never dropped."""
    rows, run, head = _runs_of_equal_keys(keys(xyz))
    equal = _rows_equal(xyz, rows, head[run])
    collided = np.isin(run, run[~equal])
    repeats = [rows[(rows != head[run]) & ~collided]]
    if collided.any():
        mixed = np.sort(rows[collided])  # file order, so np.unique's index is the first occurrence
        _, first = np.unique(xyz[mixed], axis=0, return_index=True)
        repeats.append(np.delete(mixed, first))
    keep = np.ones(len(xyz), bool)
    keep[np.concatenate(repeats)] = False
    return np.flatnonzero(keep)
