"""A task's figures for a quant against its base model: accuracies, flips both ways, and continuation
agreement, each with a 95% interval over items.

Differences and means get the paired bootstrap of `kld` with one item a unit: items of a task are
independent draws, so a resample draws items with replacement, the same items for base and quant, which
``chunk_tokens=1`` makes `kld`'s chunk bootstrap. Counts and shares (flips, identical continuations) get
Wilson's score interval instead: a bootstrap of a count of zero has zero width, where Wilson's still says
how many an item sample of this size could have missed (about 3.8 at zero, whatever n).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import RecipeSearchError
from .kld import bootstrap_ci, paired_bootstrap

N_BOOT = 1000
_Z = 1.959963984540054  # the normal 97.5% quantile
_TASK_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def item_mean(x: np.ndarray) -> np.ndarray:
    """The mean over items (the last axis), as the bootstrap functions take a statistic."""
    return x.mean(axis=-1)


def _item_sum(x: np.ndarray) -> np.ndarray:
    return x.sum(axis=-1)


def item_statistic(figure: str) -> Callable[[np.ndarray], np.ndarray]:
    """How a task figure follows from its per-item values (`TaskResult.items`): a count of flips is their sum,
    every other figure (an accuracy, a share, a mean of tokens) their mean."""
    return _item_sum if figure.endswith("_flips_lost") else item_mean


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion, k of n."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"{k} of {n} is not a proportion")
    p, z2 = k / n, _Z * _Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at k = 0 (k = n) the lower (upper) bound is 0 (1) exactly, but not in floating point
    return 0.0 if k == 0 else float(centre - half), 1.0 if k == n else float(centre + half)


def _count_interval(k: int, n: int) -> tuple[float, float]:
    lo, hi = wilson(k, n)
    return lo * n, hi * n


def _check_task(task: str) -> None:
    if not _TASK_NAME.match(task):
        raise RecipeSearchError(f"task name {task!r} must be lower-case letters, digits and '_', a letter first")


def _items(task: str, what: str, values: object, n: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size < 2:
        raise RecipeSearchError(f"{task}: {what} must be one value per item, at least 2 items (got shape "
                                f"{array.shape})")
    if n is not None and array.size != n:
        raise RecipeSearchError(f"{task}: {what} has {array.size} items, the base {n}")
    return array


def _correctness(task: str, side: str, values: object, n: int | None = None) -> np.ndarray:
    array = _items(task, f"{side} correctness", values, n)
    if not np.isin(array, (0, 1)).all():
        raise RecipeSearchError(f"{task}: {side} correctness must be true/false per item")
    return array.astype(bool)


@dataclass(frozen=True)
class TaskFlips:
    """One task scored on the base and on a quant, item by item."""

    task: str
    n: int
    base_acc: float
    quant_acc: float
    acc_diff: float  # quant minus base
    acc_diff_ci95: tuple[float, float]  # paired bootstrap: [0, 0] when no item flips (see the flips' intervals)
    lost: int  # items the base gets right and the quant wrong
    lost_ci95: tuple[float, float]  # in items (Wilson)
    gained: int  # items the base gets wrong and the quant right
    gained_ci95: tuple[float, float]
    lost_items: tuple[int, ...]  # their indices
    gained_items: tuple[int, ...]

    def as_metrics(self) -> dict[str, int | float | list[float]]:
        """Flat metric names for a recipe's ``metrics``: ``<task>_acc``, ``<task>_flips_lost``, ..."""
        t = self.task
        return {f"{t}_n": self.n, f"{t}_acc": self.quant_acc, f"{t}_base_acc": self.base_acc,
                f"{t}_acc_diff": self.acc_diff, f"{t}_acc_diff_ci95": list(self.acc_diff_ci95),
                f"{t}_flips_lost": self.lost, f"{t}_flips_lost_ci95": list(self.lost_ci95),
                f"{t}_flips_gained": self.gained, f"{t}_flips_gained_ci95": list(self.gained_ci95)}

    def summary(self) -> str:
        lo, hi = self.acc_diff_ci95
        return (f"{self.task}: {100 * self.quant_acc:.1f}% vs base {100 * self.base_acc:.1f}% of {self.n} items "
                f"(difference {100 * self.acc_diff:+.1f} pp, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]); "
                f"flips: {self.lost} lost, {self.gained} gained")


def item_flips(task: str, base_correct: object, quant_correct: object) -> TaskFlips:
    """Accuracies, their difference and the flips of one task, from per-item correctness (bools, item order)."""
    _check_task(task)
    base = _correctness(task, "base", base_correct)
    quant = _correctness(task, "quant", quant_correct, base.size)
    b, q = base.astype(np.float64), quant.astype(np.float64)
    lost, gained = base & ~quant, ~base & quant
    return TaskFlips(
        task=task, n=base.size, base_acc=float(b.mean()), quant_acc=float(q.mean()), acc_diff=float(q.mean() - b.mean()),
        acc_diff_ci95=paired_bootstrap(q, b, item_mean, 1, N_BOOT),
        lost=int(lost.sum()), lost_ci95=_count_interval(int(lost.sum()), base.size),
        gained=int(gained.sum()), gained_ci95=_count_interval(int(gained.sum()), base.size),
        lost_items=tuple(int(i) for i in np.flatnonzero(lost)),
        gained_items=tuple(int(i) for i in np.flatnonzero(gained)))


def first_divergence(base_choice: np.ndarray, quant_choice: np.ndarray) -> np.ndarray:
    """Per row, the index of the first position where the two greedy choices differ; the row length where none does."""
    base, quant = np.asarray(base_choice), np.asarray(quant_choice)
    if base.ndim != 2 or base.shape != quant.shape:
        raise RecipeSearchError(f"greedy choices of shapes {base.shape} and {quant.shape}: need two equal [prompts, "
                                "tokens] arrays")
    differ = base != quant
    return np.where(differ.any(axis=1), differ.argmax(axis=1), base.shape[1])


@dataclass(frozen=True)
class ContinuationAgreement:
    """How long a quant's greedy choices follow the base's greedy continuations, prompt by prompt."""

    task: str
    n: int  # prompts
    tokens: int  # continuation length K
    identical: float  # share of prompts whose K choices all equal the base's
    identical_ci95: tuple[float, float]  # Wilson
    agree_tokens: float  # mean tokens to the first divergence (K where none)
    agree_tokens_ci95: tuple[float, float]

    def as_metrics(self) -> dict[str, int | float | list[float]]:
        """Flat metric names: ``<task>_identical``, ``<task>_agree_tokens``, their ``_ci95``, ``_n``, ``_tokens``."""
        t = self.task
        return {f"{t}_n": self.n, f"{t}_tokens": self.tokens, f"{t}_identical": self.identical,
                f"{t}_identical_ci95": list(self.identical_ci95), f"{t}_agree_tokens": self.agree_tokens,
                f"{t}_agree_tokens_ci95": list(self.agree_tokens_ci95)}

    def summary(self) -> str:
        (a, b), (c, d) = self.identical_ci95, self.agree_tokens_ci95
        return (f"{self.task}: {100 * self.identical:.1f}% of {self.n} greedy continuations identical to the base's "
                f"(95% CI [{100 * a:.1f}, {100 * b:.1f}]); first divergence after {self.agree_tokens:.1f} of "
                f"{self.tokens} tokens on average (95% CI [{c:.1f}, {d:.1f}])")


def continuation_agreement(divergence: object, tokens: int, task: str = "continuation") -> ContinuationAgreement:
    """Agreement figures from per-prompt tokens to the first divergence (`first_divergence`), each in 0..tokens."""
    _check_task(task)
    if tokens < 1:
        raise RecipeSearchError(f"{task}: continuation length {tokens} must be at least 1")
    d = _items(task, "tokens to the first divergence", divergence)
    if not np.issubdtype(d.dtype, np.integer) or d.min() < 0 or d.max() > tokens:
        raise RecipeSearchError(f"{task}: tokens to the first divergence must be integers in 0..{tokens}")
    same = (d == tokens).astype(np.float64)
    d = d.astype(np.float64)
    return ContinuationAgreement(
        task=task, n=d.size, tokens=tokens, identical=float(same.mean()),
        identical_ci95=wilson(int(same.sum()), d.size),
        agree_tokens=float(d.mean()),
        agree_tokens_ci95=bootstrap_ci(d, item_mean, 1, N_BOOT))
