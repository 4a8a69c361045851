"""Held-out validation: overlap warnings, rank correlation, re-scoring recipes and a study's frontier on a second text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from tiny_models import english_text

from recipe_search.cli import main
from recipe_search.core.config import StudyConfig
from recipe_search.core.metrics import TAIL_STATISTICS
from recipe_search.core.pareto import spearman
from recipe_search.core.recipe import load_recipe, uniform_recipe
from recipe_search.core.text import TextSource
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.worker import Worker
from recipe_search.study._holdout import Chosen, rank_agreement, text_overlap_warnings, validate
from recipe_search.study._records import Measurement, TrialRecord

pytestmark = pytest.mark.llama  # imports recipe_search.study._holdout and the worker, which load libllama

CTX, CHUNKS = 128, 4


@pytest.fixture(scope="module")
def holdout_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "held.txt"
    path.write_text(english_text(24_000, seed=7), encoding="utf-8")
    return path


def test_overlap_warnings_name_each_overlapping_pair(tmp_path) -> None:
    wiki = tmp_path / "wiki.test.raw"
    texts = {"search": TextSource(wiki, 0.0, 0.12), "held-out": TextSource(wiki, 0.12, 0.24)}
    assert text_overlap_warnings(texts, ["/elsewhere/wiki.test.raw[0.24:0.4]", "not a file[x:y]"]) == []
    lines = text_overlap_warnings({**texts, "held-out": TextSource(wiki, 0.1, 0.2)}, ["other/wiki.test.raw[0.15:0.3]"])
    assert lines == ["the search text wiki.test.raw[0:0.12] overlaps the held-out text wiki.test.raw[0.1:0.2]",
                     ("the imatrix was computed on other/wiki.test.raw[0.15:0.3], which overlaps the held-out text "
                      "wiki.test.raw[0.1:0.2]")]
    # the built-in text against itself overlaps; a file never overlaps the built-in text
    assert len(text_overlap_warnings({"search": TextSource(), "held-out": TextSource()})) == 1
    assert text_overlap_warnings({"search": TextSource(), "held-out": TextSource(wiki)}) == []


def test_spearman_closed_forms() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) against (1.5, 1.5, 3, 4): Pearson of the ranks
    x, y = np.array([1, 2, 3, 4.0]), np.array([1.5, 1.5, 3, 4])
    assert spearman([1, 2, 3, 4], [5, 5, 7, 9]) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert np.isnan(spearman([1, 2, 3], [2, 2, 2]))


def test_validate_rescores_on_the_held_out_text(dense_model, holdout_file, tmp_path) -> None:
    cache = tmp_path / "cache"
    search = Worker(dense_model, ScoreSettings(ctx=CTX, chunks=CHUNKS), cache, cache / "work")
    recipes = [uniform_recipe(t) for t in ("Q8_0", "Q4_0", "Q2_K")]
    chosen = [Chosen(r.name, r, search.measure(r).metrics) for r in recipes]
    held = Worker(dense_model, ScoreSettings(text=TextSource(holdout_file), ctx=CTX, chunks=CHUNKS), cache,
                  cache / "work")
    results = validate(held, chosen, n_boot=200)
    assert [r.name for r in results] == [r.name for r in recipes]
    assert held.reference.meta["text"] == "held.txt"
    for r, c in zip(results, chosen):
        assert r.holdout_metrics["n_tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
        assert r.holdout_metrics["kld_mean"] != c.search_metrics["kld_mean"]  # another text, other numbers
        assert all(lo < hi for lo, hi in r.intervals.values())
        assert r.intervals["kld_mean"][0] <= r.holdout_metrics["kld_mean"] <= r.intervals["kld_mean"][1]
    assert results[0].holdout_metrics["kld_mean"] < results[2].holdout_metrics["kld_mean"]
    agreement = rank_agreement(results)
    assert agreement["kld_mean"] == pytest.approx(1.0)  # Q8_0 < Q4_0 < Q2_K on both texts
    again = validate(held, chosen[:1], n_boot=200)
    assert again[0].cached and again[0].intervals == results[0].intervals  # the measurement cache, same seed


def _trial(recipe, metrics: dict, tokens: np.ndarray) -> optuna.trial.FrozenTrial:
    record = TrialRecord(-1, result_key=recipe.name, recipe_yaml=recipe.to_yaml(),
                         measurement=Measurement(int(metrics["file_bytes"]), metrics["bpw"], metrics, tokens, {}, {}))
    return optuna.trial.create_trial(values=[float(metrics["file_bytes"]), metrics["kld_p999"]], params={},
                                     distributions={}, user_attrs=record.to_attrs())


def test_validate_and_pareto_on_a_study(dense_model, holdout_file, tmp_path, capsys) -> None:
    """A study measured on the built-in text; `validate --dir` re-scores its frontier, `pareto` records both."""
    cache = tmp_path / "cache"
    search = Worker(dense_model, ScoreSettings(ctx=CTX, chunks=CHUNKS), cache, cache / "work")
    directory = tmp_path / "study"
    directory.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{directory / 'study.db'}", study_name="s",
                                directions=["minimize", "minimize"])
    config = StudyConfig(ctx=CTX, chunks=CHUNKS, holdout_text=str(holdout_file))
    study.set_user_attr("config", config.model_dump_json())
    study.set_user_attr("model", str(dense_model.resolve()))
    study.set_user_attr("objectives", ["size", "kld_p999"])
    for t in ("Q8_0", "Q4_0", "Q2_K"):
        m = search.measure(uniform_recipe(t))
        study.add_trial(_trial(uniform_recipe(t), {"file_bytes": m.file_bytes, "bpw": m.bpw, **m.metrics},
                               m.kld_tokens))
    env_cache = ["--cache-dir", str(cache)]
    assert main(["validate", "--dir", str(directory), "--json", "--n-boot", "100", *env_cache]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["holdout_text"] == "held.txt" and out["n_tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
    assert [r["name"] for r in out["recipes"]] == ["trial-2", "trial-1", "trial-0"]  # the frontier by size
    assert out["spearman"]["kld_mean"] == pytest.approx(1.0)
    for r in out["recipes"]:
        lo, hi = r["holdout_ci95"]["kld_mean"]
        assert lo <= r["holdout"]["kld_mean"] <= hi and r["search"]["kld_mean"] is not None

    # recipe files: the picks `pareto` writes carry the held-out figures beside the search-text ones
    picks = tmp_path / "recipes"
    monkey_cache = pytest.MonkeyPatch()
    monkey_cache.setenv("RECIPE_SEARCH_CACHE", str(cache))
    try:
        assert main(["pareto", "--dir", str(directory), "--targets", "9bpw", "--out", str(picks)]) == 0
    finally:
        monkey_cache.undo()
    printed = capsys.readouterr().out
    assert "held-out held.txt" in printed
    (written,) = list(picks.iterdir())
    recipe = load_recipe(written)
    h = recipe.metrics["holdout"]
    assert h["text"] == "held.txt" and h["n_tokens"] == CHUNKS * (CTX - 1 - CTX // 2)
    assert h["kld_p999_ci95"][0] <= h["kld_p999_ci95"][1] and "kld_p999" in recipe.metrics
    # a recipe file validates the same way, its stored search figures beside the held-out ones
    assert main(["validate", str(written), "--model", str(dense_model), "--holdout-text", str(holdout_file),
                 "--ctx", str(CTX), "--chunks", str(CHUNKS), "--json", "--n-boot", "100", *env_cache]) == 0
    again = json.loads(capsys.readouterr().out)["recipes"][0]
    assert again["holdout"]["kld_p999"] == pytest.approx(h["kld_p999"])
    assert again["search"]["kld_p999"] == pytest.approx(recipe.metrics["kld_p999"])
    # and as a table: every column heading stands apart, above its own column
    assert main(["validate", str(written), "--model", str(dense_model), "--holdout-text", str(holdout_file),
                 "--ctx", str(CTX), "--chunks", str(CHUNKS), "--n-boot", "100", *env_cache]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.startswith("recipe"))
    labels = [w for m in TAIL_STATISTICS for w in (f"search {m}", f"held-out {m} [95%]")]
    assert re.split(r"\s{2,}", head.strip()) == ["recipe", "size", "bpw", *labels]
    row = lines[lines.index(head) + 1]
    start = len("recipe")
    for m in TAIL_STATISTICS:  # each search figure ends where its heading ends
        value = f"{recipe.metrics[m]:.4g}"
        end = row.index(value, start) + len(value)
        assert end == head.index(f"search {m}") + len(f"search {m}")
        start = end


def test_validate_needs_a_text_and_something_to_validate(capsys) -> None:
    assert main(["validate", "--holdout-text", "x.txt"]) == 2
    assert "nothing to validate" in capsys.readouterr().err
