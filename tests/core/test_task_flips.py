"""Flips, accuracies and continuation agreement with their paired bootstrap intervals, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_search.core.kld import paired_bootstrap
from recipe_search.core.task_flips import continuation_agreement, first_divergence, item_flips, wilson
from recipe_search.errors import RecipeSearchError

Z2 = 1.959963984540054 ** 2


def test_flips_by_hand() -> None:
    base = [True, True, False, False, True, True]
    quant = [True, False, True, False, False, True]
    f = item_flips("cloze", base, quant)
    assert (f.n, f.base_acc, f.quant_acc) == (6, 4 / 6, 3 / 6)
    assert f.acc_diff == pytest.approx(-1 / 6)
    assert (f.lost, f.lost_items, f.gained, f.gained_items) == (2, (1, 4), 1, (2,))
    lo, hi = f.acc_diff_ci95
    assert lo < f.acc_diff < hi and lo >= -1 and hi <= 1
    assert f.lost_ci95 == pytest.approx((6 * wilson(2, 6)[0], 6 * wilson(2, 6)[1]))
    assert 0 < f.gained_ci95[0] < 1 < f.gained_ci95[1] < 6
    # the interval is the paired item bootstrap of kld, one item a unit
    q, b = np.array(quant, float), np.array(base, float)
    assert f.acc_diff_ci95 == paired_bootstrap(q, b, lambda x: x.mean(axis=-1), 1, 1000)
    assert f.as_metrics() == {
        "cloze_n": 6, "cloze_acc": 0.5, "cloze_base_acc": 4 / 6, "cloze_acc_diff": f.acc_diff,
        "cloze_acc_diff_ci95": list(f.acc_diff_ci95), "cloze_flips_lost": 2, "cloze_flips_lost_ci95": list(f.lost_ci95),
        "cloze_flips_gained": 1, "cloze_flips_gained_ci95": list(f.gained_ci95)}
    assert f.summary().startswith("cloze: 50.0% vs base 66.7% of 6 items (difference -16.7 pp, 95% CI [")
    assert f.summary().endswith("flips: 2 lost, 1 gained")
    assert item_flips("cloze", base, quant) == f  # deterministic


def test_no_flips_no_spread() -> None:
    same = np.array([1, 0, 1, 1, 0], dtype=bool)
    f = item_flips("hellaswag", same, same.copy())
    assert (f.acc_diff, f.acc_diff_ci95, f.lost, f.gained) == (0.0, (0.0, 0.0), 0, 0)
    # no flips among 5 items still allows z^2 n / (n + z^2) of them, about 2.2
    assert f.lost_ci95 == f.gained_ci95 == (0.0, pytest.approx(5 * Z2 / (5 + Z2)))
    assert set(f.as_metrics()) >= {"hellaswag_acc", "hellaswag_flips_lost"}


@pytest.mark.parametrize(("args", "message"), [
    (("cloze", [True], [True]), "at least 2 items"),
    (("cloze", [True, False], [True, False, True]), "quant correctness has 3 items, the base 2"),
    (("cloze", [1, 2], [1, 0]), "base correctness must be true/false"),
    (("Cloze", [1, 0], [1, 0]), "task name 'Cloze'"),
    (("cloze", [[1, 0]], [[1, 0]]), "one value per item"),
])
def test_flips_bad_input(args, message: str) -> None:
    with pytest.raises(RecipeSearchError, match=message):
        item_flips(*args)


def test_wilson_by_hand() -> None:
    assert wilson(0, 100) == (0.0, pytest.approx(Z2 / (100 + Z2)))
    assert wilson(100, 100) == (pytest.approx(100 / (100 + Z2)), 1.0)
    lo, hi = wilson(50, 100)  # centre 0.5; half-width z / (1 + z^2/n) * sqrt(1/400 + z^2/40000)
    assert (lo + hi) / 2 == pytest.approx(0.5) and hi - lo == pytest.approx(2 * 1.96 / (1 + Z2 / 100) * (
        0.0025 + Z2 / 40000) ** 0.5, rel=1e-3)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_continuation_agreement_by_hand() -> None:
    base = np.array([[5, 6, 7, 8], [5, 6, 7, 8], [1, 2, 3, 4]])
    quant = np.array([[5, 6, 7, 8], [5, 9, 7, 8], [0, 2, 3, 4]])
    d = first_divergence(base, quant)
    assert d.tolist() == [4, 1, 0]
    a = continuation_agreement(np.array([4, 1, 0, 4]), 4)
    assert (a.n, a.tokens, a.identical, a.agree_tokens) == (4, 4, 0.5, 2.25)
    assert a.identical_ci95[0] <= 0.5 <= a.identical_ci95[1] and a.agree_tokens_ci95[0] <= 2.25 <= a.agree_tokens_ci95[1]
    assert a.as_metrics() == {"continuation_n": 4, "continuation_tokens": 4, "continuation_identical": 0.5,
                              "continuation_identical_ci95": list(a.identical_ci95),
                              "continuation_agree_tokens": 2.25,
                              "continuation_agree_tokens_ci95": list(a.agree_tokens_ci95)}
    assert "50.0% of 4 greedy continuations identical" in a.summary()
    full = continuation_agreement(np.full(3, 4), 4)
    assert (full.identical, full.identical_ci95, full.agree_tokens_ci95) == (1.0, wilson(3, 3), (4.0, 4.0))
    assert full.identical_ci95[0] == pytest.approx(3 / (3 + Z2))
    with pytest.raises(RecipeSearchError, match="integers in 0..4"):
        continuation_agreement(np.array([5, 1]), 4)
    with pytest.raises(RecipeSearchError, match="equal"):
        first_divergence(base, quant[:, :3])
