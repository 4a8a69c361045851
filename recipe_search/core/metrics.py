"""The one table of what a trial measures: names, labels, directions, per-token statistics, and which
of them a study may optimise, the early-stopping rule may forecast and the surrogate predicts.

Task figures (see `engine.task_check`) are metrics of a trial only in a study whose config lists the task:
each names the task kind it comes from, and a study optimises it only where the config's ``tasks`` give that kind.

Every other list of metric names (the study config's objectives, the plots' labels, the frontier's
tie tests, the surrogate) is derived from `METRICS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .kld import tail_mean


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    direction: Literal["minimize", "maximize"] = "minimize"
    #: where a measurement keeps it: ``metrics[key]``, ``speed[key]``, or the file size / bpw
    key: str | None = None
    #: the per-token KLD statistic behind it: "mean", "max", a quantile in (0, 1), or ("tail", level): the mean of
    #: the worst 1 - level of tokens (conditional value at risk); None: not one
    statistic: Literal["mean", "max"] | float | tuple[Literal["tail"], float] | None = None
    objective: bool = False  # a study may optimise it
    forecast: bool = False  # the early-stopping rule can bound it from the running mean KLD
    surrogate: bool = False  # the sensitivity surrogate predicts it
    task: str | None = None  # the task kind (a `tasks` spec's KIND) whose figure it is; None: KLD scoring's

    @property
    def metric_key(self) -> str:
        return self.key or self.name


METRICS: tuple[Metric, ...] = (
    Metric("size", "file size (bytes)", objective=True),
    Metric("bpw", "bits per weight", objective=True),
    Metric("kld_p999", "99.9% KLD", statistic=0.999, objective=True, forecast=True, surrogate=True),
    Metric("kld_p99", "99% KLD", statistic=0.99, objective=True, forecast=True, surrogate=True),
    Metric("kld_cvar999", "mean KLD of the worst 0.1%", statistic=("tail", 0.999), objective=True, forecast=True),
    Metric("kld_cvar99", "mean KLD of the worst 1%", statistic=("tail", 0.99), objective=True, forecast=True),
    Metric("kld_p95", "95% KLD", statistic=0.95),
    Metric("kld_p90", "90% KLD", statistic=0.90),
    Metric("kld_median", "median KLD", statistic=0.5),
    Metric("kld_mean", "mean KLD", statistic="mean", objective=True, forecast=True, surrogate=True),
    Metric("kld_max", "maximum KLD", statistic="max", surrogate=True),
    Metric("ppl_ratio", "PPL(Q)/PPL(base)", objective=True),
    Metric("same_top", "same top token (fraction)", "maximize", objective=True),
    Metric("dp_rms", "RMS Δp"),
    Metric("speed", "generation speed (tokens/s)", "maximize", key="tg_tokens_per_s", objective=True),
    # task figures, named as `TaskResult` writes them (``<kind>_acc`` with the kind's '-' as '_')
    *(m for kind in ("hellaswag", "winogrande", "multiple-choice", "cloze") for m in (
        Metric(f"{kind.replace('-', '_')}_acc", f"{kind} accuracy", "maximize", objective=True, task=kind),
        Metric(f"{kind.replace('-', '_')}_flips_lost", f"{kind} items lost (right in base, wrong in quant)",
               objective=True, task=kind))),
    Metric("continuation_identical", "greedy continuations identical to the base's (fraction)", "maximize",
           objective=True, task="continuation"),
    Metric("continuation_agree_tokens", "mean tokens to the first divergence from the base", "maximize",
           objective=True, task="continuation"),
)
BY_NAME = {m.name: m for m in METRICS}

#: names a study config may list as objectives (the first is always size or bpw)
OBJECTIVES = tuple(m.name for m in METRICS if m.objective)
#: objective -> the task kind it needs in the study config's ``tasks``
TASK_OBJECTIVES = {m.name: m.task for m in METRICS if m.objective and m.task is not None}
SIZE_OBJECTIVES = ("size", "bpw")
#: objectives to maximise; everything else is minimised
MAXIMISE = frozenset(m.name for m in METRICS if m.direction == "maximize")
#: objectives the early-stopping rule can bound from the running mean KLD
FORECAST = frozenset(m.name for m in METRICS if m.forecast)
#: what the sensitivity surrogate predicts (and can allocate for)
SURROGATE_METRICS = tuple(m.name for m in METRICS if m.surrogate)
#: metrics that are statistics of the per-token KLD (they get per-token tests and intervals)
TOKEN_STATISTICS = tuple(m.name for m in METRICS if m.statistic is not None)
#: the tail statistics (percentiles and tail means) whose chunk-bootstrap interval a pick or a score records
TAIL_STATISTICS = ("kld_p99", "kld_p999", "kld_cvar99", "kld_cvar999")
#: axis titles of the plots
LABELS = {m.name: m.label for m in METRICS}


def direction(name: str) -> Literal["minimize", "maximize"]:
    return BY_NAME[name].direction


def token_statistic(name: str, kld: np.ndarray) -> np.ndarray:
    """The statistic ``name`` of per-token KLD along the last axis (a quantile interpolates at f·(N−1), as
    llama-perplexity's percentile does and numpy's default quantile does; a tail mean is `kld.tail_mean`)."""
    stat = BY_NAME[name].statistic
    if stat == "mean":
        return np.mean(kld, axis=-1)
    if stat == "max":
        return np.max(kld, axis=-1)
    if stat is None:
        raise ValueError(f"{name} is not a statistic of per-token KLD")
    if isinstance(stat, tuple):
        return tail_mean(kld, stat[1])
    return np.quantile(kld, stat, axis=-1)


def statistic_of(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """`token_statistic` for one metric, as the bootstrap functions take it."""
    if BY_NAME[name].statistic is None:
        raise ValueError(f"{name} is not a statistic of per-token KLD")
    return functools.partial(token_statistic, name)
