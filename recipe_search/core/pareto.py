"""The Pareto frontier and its hypervolume; ties by paired chunk bootstrap; picks at size targets. No I/O."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import RecipeSearchError
from .kld import paired_bootstrap, shared_chunks
from .metrics import TOKEN_STATISTICS, statistic_of

_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TARGET = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)\s*$", re.IGNORECASE)


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Indices of the points no other point dominates (every objective minimised)."""
    pts = np.asarray(points, dtype=float)
    keep = []
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts <= p, axis=1) & np.any(pts < p, axis=1))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def hypervolume_2d(points: np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
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


def frontier_2d(sizes: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """Indices of the non-dominated (size, quality) points, both minimised, by increasing size."""
    pts = np.column_stack([np.asarray(sizes, dtype=float), np.asarray(quality, dtype=float)])
    if len(pts) == 0:
        return np.array([], dtype=int)
    idx = non_dominated(pts)
    return idx[np.lexsort((pts[idx, 1], pts[idx, 0]))]


def pick_at_target(sizes: Sequence[float], quality: Sequence[float], target: float) -> int | None:
    """Index of the best quality (lowest) among entries whose size is at or under ``target``."""
    best = None
    for i, (s, q) in enumerate(zip(sizes, quality)):
        if s <= target and (best is None or q < quality[best] or (q == quality[best] and s < sizes[best])):
            best = i
    return best


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        same = values == v
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of paired values (ties get mean ranks); NaN when either side is constant."""
    x, y = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if len(x) != len(y) or len(x) < 2:
        raise RecipeSearchError("a rank correlation needs two or more pairs")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# -- targets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A size budget: bits per weight (``4.0bpw``), bytes (``20GiB``, ``900MiB``, ``123456789``), or bytes per
    device (``24GiB-gpu+64GiB-cpu``: ``devices`` holds each device's limit, ``value`` their sum)."""

    kind: Literal["bpw", "bytes", "devices"]
    value: float
    label: str  # as file names carry it: ``4.00bpw``, ``20GiB``, ``123456789B``, ``24GiB-gpu+64GiB-cpu``
    devices: tuple[tuple[str, float], ...] = ()

    def fits(self, bpw: float, file_bytes: float, device_bytes: dict[str, int] | None = None) -> bool:
        """Whether a recipe of this size is at or under the budget (without per-device bytes, no device budget fits)."""
        if self.kind == "devices":
            return device_bytes is not None and all(device_bytes[d] <= limit for d, limit in self.devices)
        return (bpw if self.kind == "bpw" else file_bytes) <= self.value

    def near(self, bpw: float, file_bytes: float, device_bytes: dict[str, int] | None, band: float) -> bool:
        """Whether a recipe of this size fits the budget and leaves less than ``band`` of it (a fraction) unused:
        the recipes a pick at this target chooses between (per-device bytes count together)."""
        if not self.fits(bpw, file_bytes, device_bytes):
            return False
        if self.kind == "devices":
            assert device_bytes is not None
            used: float = sum(device_bytes[d] for d, _ in self.devices)
        else:
            used = bpw if self.kind == "bpw" else file_bytes
        return used >= (1.0 - band) * self.value

    def pick(self, bpw: Sequence[float], file_bytes: Sequence[float], quality: Sequence[float],
             device_bytes: Sequence[dict[str, int] | None] | None = None) -> int | None:
        """The best (lowest) quality at or under this budget."""
        if self.kind != "devices":
            return pick_at_target(bpw if self.kind == "bpw" else file_bytes, quality, self.value)
        devices = device_bytes or [None] * len(quality)
        fitting = [i for i in range(len(quality)) if self.fits(bpw[i], file_bytes[i], devices[i])]
        return min(fitting, key=lambda i: (quality[i], file_bytes[i]), default=None)


def parse_byte_size(text: str) -> int:
    """``24GiB``, ``900MiB``, ``1.5GB`` or a whole byte count, as bytes."""
    target = parse_target(text)
    if target.kind != "bytes":
        raise RecipeSearchError(f"{text!r} is not a byte size (use e.g. 24GiB, 900MiB or a byte count)")
    return int(target.value)


def parse_target(text: str) -> Target:
    """``4.0bpw`` -> bits per weight; ``20GiB``/``900MiB``/``1.5GB``/``123456789`` (an integer) -> bytes;
    ``24GiB-gpu+64GiB-cpu`` (either part alone too) -> bytes per device."""
    if "-" in text:
        return _device_target(text)
    m = _TARGET.match(text)
    unit = m["unit"].lower() if m else ""
    if not m or (unit and unit != "bpw" and unit not in _BYTE_UNITS):
        raise RecipeSearchError(f"bad size target {text!r} (use e.g. 4.0bpw, 20GiB, 900MiB or a byte count)")
    number = float(m["num"])
    if number <= 0:
        raise RecipeSearchError(f"size target {text!r} is not positive")
    if unit == "bpw":
        return Target("bpw", number, f"{number:.2f}bpw")
    if not unit:
        if "." in m["num"]:
            raise RecipeSearchError(f"size target {text!r}: say 4.5bpw for bits per weight, or give whole bytes")
        return Target("bytes", number, f"{int(number)}B")
    canonical = {"b": "B", "kb": "KB", "mb": "MB", "gb": "GB", "tb": "TB",
                 "kib": "KiB", "mib": "MiB", "gib": "GiB", "tib": "TiB"}[unit]
    return Target("bytes", number * _BYTE_UNITS[unit], f"{number:g}{canonical}")


def _device_target(text: str) -> Target:
    limits: dict[str, float] = {}
    labels = []
    for part in text.split("+"):
        size, _, device = part.strip().rpartition("-")
        if device.lower() not in ("gpu", "cpu") or not size or device.lower() in limits:
            raise RecipeSearchError(f"bad device target {text!r} (use e.g. 24GiB-gpu+64GiB-cpu, or one of the two)")
        t = parse_target(size)
        if t.kind != "bytes":
            raise RecipeSearchError(f"device target {text!r}: {size!r} is not a byte size")
        limits[device.lower()] = t.value
        labels.append(f"{t.label}-{device.lower()}")
    return Target("devices", sum(limits.values()), "+".join(labels), tuple(limits.items()))


def parse_targets(text: str) -> list[Target]:
    """A comma-separated list of targets, e.g. ``3.0bpw,4.0bpw,20GiB``."""
    targets = [parse_target(part) for part in text.split(",") if part.strip()]
    if not targets:
        raise RecipeSearchError(f"no size target in {text!r}")
    return targets


# -- ties ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NeighbourTest:
    """Paired chunk bootstrap of a frontier point against the next smaller one on the same tokens:
    the interval of statistic(smaller) − statistic(larger); positive means the larger point is better."""

    smaller: int  # candidate index
    larger: int
    low: float
    high: float
    level: float

    @property
    def tie(self) -> bool:
        return self.low <= 0.0 <= self.high


def neighbour_tests(order: Sequence[int], values: Sequence[np.ndarray | None],
                    statistic: Callable[[np.ndarray], np.ndarray] | None, unit: int, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> list[NeighbourTest | None]:
    """For each frontier point after the first (``order``: candidate indices by increasing size), the test
    against its smaller neighbour on the units both were scored on: ``statistic`` of their per-token KLD
    resampled in whole chunks of ``unit`` tokens, or of their per-item task values (``unit`` 1). None where there
    is no statistic, or the two points' values are missing, not whole units, or share fewer than two."""
    out: list[NeighbourTest | None] = []
    for a, b in itertools.pairwise(order):
        ta, tb = values[a], values[b]
        if ta is not None and tb is not None and not (len(ta) % unit or len(tb) % unit):
            ta, tb = shared_chunks(ta, tb, unit)
        else:
            ta = tb = None
        if statistic is None or ta is None or tb is None or len(ta) < 2 * unit:
            out.append(None)
            continue
        lo, hi = paired_bootstrap(np.asarray(ta, dtype=np.float64), np.asarray(tb, dtype=np.float64), statistic,
                                  unit, n_boot=n_boot, level=level, seed=seed)
        out.append(NeighbourTest(int(a), int(b), lo, hi, level))
    return out


def pick_on_shared_chunks(first: int, contenders: Sequence[int], tokens: Sequence[np.ndarray | None], metric: str,
                          chunk_tokens: int, sizes: Sequence[float]) -> int:
    """The pick among ``first`` (the best on every trial's own statistics) and the ``contenders`` (recipes near
    the target, scored on more chunks): each pair compared on the statistic of the chunks both were scored on,
    the one that beats the most others wins (ties: the earlier in ``[first, *contenders]``). Without per-token
    values for ``first`` or a statistic of them, ``first``."""
    group = [first, *(c for c in contenders if c != first and tokens[c] is not None)]
    if metric not in TOKEN_STATISTICS or tokens[first] is None or len(group) == 1:
        return first
    statistic = statistic_of(metric)
    wins = dict.fromkeys(group, 0)
    for a, b in itertools.combinations(group, 2):
        ta, tb = shared_chunks(np.asarray(tokens[a], np.float64), np.asarray(tokens[b], np.float64), chunk_tokens)
        qa, qb = float(statistic(ta)), float(statistic(tb))
        wins[a if (qa, sizes[a]) <= (qb, sizes[b]) else b] += 1
    return max(group, key=lambda c: wins[c])  # max keeps the first of equals
