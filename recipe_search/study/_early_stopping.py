"""Early stopping: a trial cut after a few chunks when even an optimistic forecast of its KLD statistics
is beaten by a finished recipe of the same size or smaller."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from ..core.config import StudyConfig
from ..core.kld import TokenStats
from ..core.metrics import BY_NAME, FORECAST
from ..errors import StopScoring
from ._records import TrialRecord, record_pruned

MIN_CHUNKS_BEFORE_PRUNING = 2


@dataclass(frozen=True)
class FinishedPoint:
    """What the early-stopping rule knows of a finished trial: its size, mean KLD and KLD objectives."""

    file_bytes: int
    kld_mean: float
    objectives: dict[str, float]


def prune_decision(running_kld: np.ndarray, size: int, done: list[FinishedPoint], z: float = 3.0) -> str | None:
    """Stop when even an optimistic forecast of the trial's objectives is beaten by a finished recipe
    of the same size or smaller.

    The forecast takes the lower confidence bound of the running mean KLD (never a partial
    percentile) times the smallest objective/mean ratio any finished trial showed, so a recipe whose
    tail is unusually light for its mean is not cut. Objectives other than KLD statistics cannot be
    forecast that way, so with one of them in ``done`` nothing is ever stopped."""
    n = len(running_kld)
    if n < 2 or not done or any(o not in FORECAST for o in done[0].objectives):
        return None
    mean = float(running_kld.mean())
    lower = mean - z * float(running_kld.std(ddof=1)) / math.sqrt(n)
    if lower <= 0:
        return None
    forecast = {o: lower * min(d.objectives[o] / d.kld_mean for d in done if d.kld_mean > 0)
                for o in done[0].objectives}
    for d in done:
        if d.file_bytes <= size and all(v < forecast[o] for o, v in d.objectives.items()):
            shown = ", ".join(f"{o} >= {forecast[o]:.4g} vs {v:.4g}" for o, v in d.objectives.items())
            return f"mean KLD {mean:.4g} (lower bound {lower:.4g}): {shown} of a recipe of <= size"
    return None


def finished_point(record: TrialRecord, objectives: list[str]) -> FinishedPoint:
    return FinishedPoint(record.file_bytes, float(record.metrics["kld_mean"]),
                         {o: float(record.metrics[BY_NAME[o].metric_key]) for o in objectives[1:]})


def chunk_pruner(study: optuna.Study, size: int, trial: optuna.Trial, config: StudyConfig) -> Callable[[int, TokenStats], None]:
    done = [finished_point(r, config.objectives) for r in map(TrialRecord.from_trial,
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if r.measurement is not None]

    def on_chunk(i: int, stats: TokenStats) -> None:
        if i + 1 < MIN_CHUNKS_BEFORE_PRUNING or i + 1 >= config.chunks:  # stopping after the last chunk saves nothing
            return
        why = prune_decision(stats.kld, size, done)
        if why:
            record_pruned(trial, f"after chunk {i + 1}: {why}", float(stats.kld.mean()))
            raise StopScoring(why)

    return on_chunk
