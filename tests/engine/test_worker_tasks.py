"""A worker given a task checker: each measured recipe is scored on its tasks, and the estimate counts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_search.core.config import StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.space import build_space
from recipe_search.core.text import ScoreSettings
from recipe_search.core.text_tasks import ClozeSettings, ContinuationSettings
from recipe_search.engine.task_check import TaskChecker, TaskSpec
from recipe_search.engine.trial_cost import NIGHT_S, Rates, estimate
from recipe_search.engine.worker import Worker

CLOZE = ClozeSettings(items=8, passage_tokens=24)
CONTINUATION = ContinuationSettings(prompts=6, prompt_tokens=16, new_tokens=8)


@pytest.fixture(scope="module")
def prose(prose_file: Path) -> Path:
    return prose_file


def _checker(model: Path, prose: Path, cache: Path) -> TaskChecker:
    specs = [TaskSpec("cloze", str(prose)), TaskSpec("continuation", f"{prose}[0:0.5]")]
    return TaskChecker(model, specs, cache, threads=2, cloze=CLOZE, continuation=CONTINUATION)


@pytest.mark.llama
def test_measured_recipe_carries_its_task_figures(dense_model, prose, tmp_path) -> None:
    """The figures in a measurement are those of the recipe's own quant against the base, and a measurement made
    without the tasks (cached under the same recipe) is not reused for them."""
    cache = tmp_path / "cache"
    recipe = uniform_recipe("Q2_K")
    plain = Worker(dense_model, ScoreSettings(ctx=128, chunks=2), cache, tmp_path / "work").measure(recipe)
    assert "cloze_acc" not in plain.metrics
    check = _checker(dense_model, prose, cache)
    worker = Worker(dense_model, ScoreSettings(ctx=128, chunks=2), cache, tmp_path / "work", tasks=check)
    m = worker.measure(recipe, out=tmp_path / "q2k.gguf")
    assert not m.cached and m.metrics["kld_mean"] == pytest.approx(plain.metrics["kld_mean"])
    expected = {k: v for r in check.score_all(tmp_path / "q2k.gguf") for k, v in r.figures_as_numbers().items()}
    assert expected and {k: m.metrics[k] for k in expected} == expected
    assert expected["continuation_identical"] < 1  # Q2_K of a tiny model: not the base itself
    assert m.seconds["task_cloze"] > 0 and m.seconds["task_continuation"] > 0
    assert m.task_items["cloze_acc"].mean() == pytest.approx(m.metrics["cloze_acc"])
    assert m.task_items["continuation_agree_tokens"].mean() == pytest.approx(m.metrics["continuation_agree_tokens"])
    again = worker.measure(recipe)
    assert again.cached and again.metrics == m.metrics
    assert again.task_items.keys() == m.task_items.keys()
    assert all((again.task_items[k] == m.task_items[k]).all() for k in m.task_items)


def test_task_tokens_without_a_model(dense_model, prose, tmp_path) -> None:
    check = _checker(dense_model, prose, tmp_path)
    cloze, continuation = check.specs
    assert check.eval_tokens(cloze) == 8 * (24 + 1)
    assert check.eval_tokens(continuation) == 6 * (16 + 8)
    other = TaskChecker(dense_model, [cloze], tmp_path, cloze=ClozeSettings(items=9, passage_tokens=24))
    assert other.identity() != TaskChecker(dense_model, [cloze], tmp_path, cloze=CLOZE).identity()


def test_estimate_adds_each_task_to_every_trial(qwen35_model) -> None:
    inv = read_inventory(qwen35_model)
    space = build_space(StudyConfig(), inv, has_imatrix=False)
    rates = Rates({t.name: 1e3 for p in space.parameters for t in p.ladder}, 1e6, 1e7, 1e-4, 1e9, "test")
    plain = estimate(inv, rates, 4096, space, experts_used=2)
    est = estimate(inv, rates, 4096, space, experts_used=2, task_tokens={"cloze": 8192, "continuation": 2048})
    cpu = est.phases["cpu"]
    assert cpu["task cloze"] == pytest.approx(cpu["load"] + 2 * cpu["evaluation"])
    assert cpu["task continuation"] == pytest.approx(cpu["load"] + cpu["evaluation"] / 2)
    warm = plain.trials_per_night["cpu"]["trial_s_warm"] + cpu["task cloze"] + cpu["task continuation"]
    assert est.trials_per_night["cpu"]["trial_s_warm"] == pytest.approx(warm)
    assert est.trials_per_night["cpu"]["all_warm"] == pytest.approx(NIGHT_S / warm)
    assert est.task_tokens == {"cloze": 8192, "continuation": 2048}
