"""The Pareto frontier and its hypervolume; ties by paired bootstrap; picks at size targets. No I/O."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (every objective minimised)."""
    pts = np.asarray(points, dtype=float)
    keep = []
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts <= p, axis=1) & np.any(pts < p, axis=1))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def hypervolume_2d(points: np.ndarray, reference: Sequence[float]) -> float:
    """Area dominated by ``points`` (both objectives minimised) and bounded by ``reference``."""
    pts = np.asarray(points, dtype=float)
    pts = pts[np.all(pts < np.asarray(reference, dtype=float), axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[non_dominated(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, prev_y = 0.0, float(reference[1])
    for x, y in pts:
        area += (reference[0] - x) * (prev_y - y)
        prev_y = y
    return float(area)


def pick_at_target(sizes: Sequence[float], quality: Sequence[float], target: float) -> int | None:
    """Index of the best quality (lowest) among entries whose size is at or under ``target``."""
    best = None
    for i, (s, q) in enumerate(zip(sizes, quality)):
        if s <= target and (best is None or q < quality[best] or (q == quality[best] and s < sizes[best])):
            best = i
    return best
