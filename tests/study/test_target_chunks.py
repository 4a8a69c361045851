"""Tokens where the decision is: trials near a size target scored on more chunks and picked on the chunks they
share, trials far from every target stopped early unless on track for the frontier."""

from __future__ import annotations

import numpy as np
import optuna
from tiny_studies import STUDY_TOOLS, ffn_attn_recipe, measured_trial

from recipe_search.core.config import StudyConfig
from recipe_search.study._early_stopping import FinishedPoint, chunk_plan, far_decision, prune_decision
from recipe_search.study._selection import picked_recipe, select

PER_CHUNK = 63  # ctx 128


def test_plan_scores_trials_near_a_target_longer() -> None:
    config = StudyConfig(ctx=128, chunks=4, target_bpw=[4.0])
    assert config.extra_chunks == 4 and config.reference_chunks == 8 and config.score_settings().more_chunks == 4
    assert chunk_plan(config, 3.95, 0, None).chunks == 8 and not chunk_plan(config, 3.95, 0, None).far
    assert chunk_plan(config, 3.5, 0, None).chunks == 4 and chunk_plan(config, 3.5, 0, None).far
    assert chunk_plan(config, 4.05, 0, None).far  # over the target: it cannot be picked there
    none = StudyConfig(ctx=128, chunks=4)
    assert none.extra_chunks == 0 and chunk_plan(none, 3.95, 0, None) == chunk_plan(none, 1.0, 0, None)
    assert not chunk_plan(none, 1.0, 0, None).far and none.score_settings().more_chunks == 0
    assert StudyConfig(chunks=4, target_bpw=[4.0], chunks_near_target=4).extra_chunks == 0  # turned off
    budget = StudyConfig(ctx=128, chunks=4, max_gpu_bytes=1000, chunks_near_target=6)
    assert chunk_plan(budget, 5.0, 0, {"gpu": 990, "cpu": 0}).chunks == 6
    assert chunk_plan(budget, 5.0, 0, {"gpu": 500, "cpu": 0}).far


def test_far_trials_stop_unless_on_track() -> None:
    """Far from every target, a trial whose forecast from a bound closer to its running mean is beaten stops; one
    the optimistic rule would keep because its mean is uncertain is among them."""
    rng = np.random.default_rng(0)
    done = [FinishedPoint(100, 0.05, {"kld_p99": 0.25})]
    somewhat_worse = rng.exponential(0.065, 2 * PER_CHUNK) * np.repeat([0.3, 1.7], PER_CHUNK)  # two unlike chunks
    assert prune_decision(somewhat_worse, 150, done) is None  # it may still reach the frontier
    assert far_decision(somewhat_worse, 150, done) is not None
    assert far_decision(rng.exponential(0.03, 2 * PER_CHUNK), 150, done) is None  # on track
    assert far_decision(somewhat_worse, 90, done) is None  # nothing finished at its size or smaller


def test_pick_made_on_the_chunks_near_trials_share(tmp_path) -> None:
    """Two trials near the target, scored on twice the study's chunks: trial 0 is best on the stored statistic of
    the study's chunks, trial 1 on all the chunks both have, and is picked; its recipe carries the statistics of
    all its chunks."""
    rng = np.random.default_rng(2)
    base = rng.exponential(0.1, 8 * PER_CHUNK).astype(np.float32)
    lucky = base * np.float32(1.2)
    head = lucky[:4 * PER_CHUNK]
    head[np.argsort(head)[-8:]] *= np.float32(0.2)  # its worst tokens of the first four chunks came out light
    better = base * np.float32(0.9)
    study = optuna.create_study(directions=["minimize", "minimize"])
    config = StudyConfig(ctx=128, chunks=4, target_bpw=[5.0], objectives=["size", "kld_p99"])
    study.set_user_attr("config", config.model_dump_json())
    study.set_user_attr("model", str(tmp_path / "dense.gguf"))
    study.set_user_attr("tools", STUDY_TOOLS)
    for name, bpw, kld in (("a", 4.9, lucky), ("b", 4.95, better)):
        trial = measured_trial(ffn_attn_recipe(name, "Q4_0", "Q5_0"), int(bpw * 150_000), bpw, kld)
        trial.user_attrs["metrics"]["kld_p99"] = float(np.quantile(kld[:4 * PER_CHUNK], 0.99))  # of `chunks`
        study.add_trial(trial)
    metrics = [t.user_attrs["metrics"]["kld_p99"] for t in study.trials]
    assert metrics[0] < metrics[1]  # the stored statistics alone would pick trial 0
    sel = select(study, "sqlite://", "kld_p99", config.size_targets())
    assert sel.picks[0].candidate == 1
    recipe = picked_recipe(sel, sel.picks[0], None, STUDY_TOOLS)
    assert recipe.metrics is not None and recipe.metrics["scored_chunks"]["chunks"] == 8
    assert recipe.metrics["scored_chunks"]["kld_p99"] == float(np.quantile(better.astype(np.float64), 0.99))
