"""The tail means (conditional value at risk) of per-token KLD: worked by hand, and as metrics."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_search.core.kld import TokenStats, bootstrap_ci, summarize, tail_mean
from recipe_search.core.metrics import BY_NAME, OBJECTIVES, TAIL_STATISTICS, statistic_of, token_statistic


def test_tail_mean_by_hand() -> None:
    kld = np.arange(1000, dtype=np.float32)  # 0 .. 999
    assert tail_mean(kld, 0.999) == 999.0  # the worst 1 token
    assert tail_mean(kld, 0.99) == pytest.approx(np.mean(np.arange(990, 1000)))  # the worst 10
    assert tail_mean(np.arange(1500, dtype=np.float32), 0.999) == pytest.approx(1498.5)  # ceil(1.5) = 2 tokens
    shuffled = np.random.default_rng(0).permutation(kld)
    assert tail_mean(shuffled, 0.99) == tail_mean(kld, 0.99)
    rows = np.stack([kld, kld * 2])
    assert tail_mean(rows, 0.99).tolist() == pytest.approx([994.5, 1989.0])  # along the last axis


def test_tail_means_are_objectives_with_intervals() -> None:
    assert {"kld_cvar99", "kld_cvar999"} <= set(OBJECTIVES) and {"kld_cvar99", "kld_cvar999"} <= set(TAIL_STATISTICS)
    rng = np.random.default_rng(1)
    kld = rng.exponential(0.05, 20 * 63).astype(np.float32)
    p_base = rng.random(kld.size).astype(np.float32)
    p_quant = p_base + rng.normal(0, 0.01, kld.size).astype(np.float32)
    stats = TokenStats(kld=kld.astype(np.float64), p_base=p_base, p_quant=p_quant, delta_p=p_quant - p_base,
                       same_top=np.ones(kld.size, bool), nll_base=rng.random(kld.size).astype(np.float32),
                       nll_quant=rng.random(kld.size).astype(np.float32))
    summary = summarize(stats)
    for name in ("kld_cvar99", "kld_cvar999"):
        level = BY_NAME[name].statistic[1]  # type: ignore[index]
        assert getattr(summary, name) == pytest.approx(float(tail_mean(np.sort(kld), level)))
        assert token_statistic(name, kld) == pytest.approx(getattr(summary, name))
        lo, hi = bootstrap_ci(kld, statistic_of(name), 63)
        assert lo < getattr(summary, name) < hi
    # the mean of the worst 0.1% is at least the 99.9th percentile, and at most the maximum
    assert summary.kld_p999 <= summary.kld_cvar999 <= summary.kld_max
    assert summary.kld_p99 <= summary.kld_cvar99 <= summary.kld_cvar999
