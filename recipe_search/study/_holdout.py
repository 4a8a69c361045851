"""Held-out validation: chosen recipes re-scored on a text the search never saw.

A frontier is chosen on the tokens that measured it, so a recipe that was lucky on them looks better than it
is (the winner's curse), most of all on tail statistics. `validate` re-measures recipes through a `Worker` whose
`ScoreSettings` name a second text, and reports each recipe's held-out statistics with 95% intervals from a
bootstrap over whole chunks, beside the search-text figures and their Spearman rank correlation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.kld import bootstrap_ci, paired_bootstrap
from ..core.metrics import TAIL_STATISTICS, statistic_of
from ..core.pareto import spearman
from ..core.recipe import Recipe
from ..core.text import TextSource
from ..engine.worker import Worker
from ..errors import RecipeSearchError

#: the statistics a validation reports, each with its chunk-bootstrap interval
VALIDATED_METRICS = ("kld_mean", *TAIL_STATISTICS)


@dataclass(frozen=True)
class Chosen:
    """A recipe to validate and, when known, its figures on the search text."""

    name: str
    recipe: Recipe
    search_metrics: dict[str, float] | None = None


@dataclass
class Validated:
    """One recipe measured on the held-out text."""

    name: str
    file_bytes: int
    bpw: float
    search_metrics: dict[str, float] | None
    holdout_metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # 95% chunk bootstrap of each VALIDATED_METRICS entry
    kld_tokens: np.ndarray  # held-out per-token KLD, in chunk order
    cached: bool

    def to_dict(self) -> dict:
        return {"name": self.name, "file_bytes": self.file_bytes, "bpw": self.bpw,
                "search": None if self.search_metrics is None else
                {m: self.search_metrics.get(m) for m in VALIDATED_METRICS},
                "holdout": {m: self.holdout_metrics[m] for m in (*VALIDATED_METRICS, "n_tokens")},
                "holdout_ci95": {m: list(v) for m, v in self.intervals.items()}}


def holdout_record(v: Validated, text: TextSource) -> dict:
    """What a written recipe keeps of its validation: the text, each statistic and its interval."""
    return {"text": text.label, "n_tokens": int(v.holdout_metrics["n_tokens"]),
            **{m: v.holdout_metrics[m] for m in VALIDATED_METRICS},
            **{f"{m}_ci95": list(v.intervals[m]) for m in VALIDATED_METRICS}}


def validate(worker: Worker, chosen: Sequence[Chosen], n_boot: int = 1000, seed: int = 0,
             log: Callable[[str], None] = lambda msg: None) -> list[Validated]:
    """Measure each recipe on the worker's (held-out) text; intervals resample whole chunks."""
    per_chunk = worker.reference.n_scored_per_chunk
    out = []
    for c in chosen:
        log(f"measuring {c.name} on {worker.settings.text.label}")
        m = worker.measure(c.recipe)
        tokens = np.asarray(m.kld_tokens, np.float64)
        intervals = {name: bootstrap_ci(tokens, statistic_of(name), per_chunk, n_boot=n_boot, seed=seed)
                     for name in VALIDATED_METRICS}
        out.append(Validated(c.name, m.file_bytes, m.bpw, c.search_metrics, m.metrics, intervals,
                             m.kld_tokens, m.cached))
    return out


def paired_differences(a: Validated, b: Validated, chunk_tokens: int, n_boot: int = 1000,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """Per statistic, the 95% interval of a's minus b's, the same held-out chunks resampled for both
    (an interval above 0: ``a`` is worse)."""
    if len(a.kld_tokens) != len(b.kld_tokens):
        raise RecipeSearchError(f"{a.name} and {b.name} were measured on different tokens")
    return {name: paired_bootstrap(np.asarray(a.kld_tokens, np.float64), np.asarray(b.kld_tokens, np.float64),
                                   statistic_of(name), chunk_tokens, n_boot=n_boot, seed=seed)
            for name in VALIDATED_METRICS}


def rank_agreement(results: Sequence[Validated]) -> dict[str, float | None]:
    """Per metric, the Spearman rank correlation of search-text and held-out figures over the recipes that
    have both (None with fewer than three of them)."""
    out: dict[str, float | None] = {}
    for name in VALIDATED_METRICS:
        pairs = [(r.search_metrics[name], r.holdout_metrics[name]) for r in results
                 if r.search_metrics and r.search_metrics.get(name) is not None]
        out[name] = spearman(*zip(*pairs)) if len(pairs) >= 3 else None
    return out


def text_overlap_warnings(texts: dict[str, TextSource], calibration: Sequence[str] = ()) -> list[str]:
    """A line for each pair of the named texts (e.g. search, held-out) that share bytes, and for each named text
    that overlaps an imatrix calibration dataset (as the imatrix records it: ``FILE`` or ``FILE[a:b]``). Files
    are matched by name (`TextSource.overlaps`), since an imatrix made elsewhere records another directory."""
    items = list(texts.items())
    lines = [f"the {n1} text {t1.label} overlaps the {n2} text {t2.label}"
             for i, (n1, t1) in enumerate(items) for n2, t2 in items[i + 1:] if t1.overlaps(t2)]
    for dataset in calibration:
        try:
            calib = TextSource.parse(dataset)
        except RecipeSearchError:  # a dataset name that is no text spec cannot overlap
            continue
        if calib.path is None:  # an imatrix's dataset names a file; "no file" is not the built-in text
            continue
        lines += [f"the imatrix was computed on {dataset}, which overlaps the {n} text {t.label}"
                  for n, t in items if calib.overlaps(t)]
    return lines
