"""A pick and the frontier recipes within its target that it cannot be told apart from (the decision's noise)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import yaml
from tiny_studies import STUDY_TOOLS, ffn_attn_recipe, measured_trial

from recipe_search.cli import main
from recipe_search.core.config import StudyConfig
from recipe_search.core.kld import paired_bootstrap, scored_per_chunk
from recipe_search.core.metrics import statistic_of
from recipe_search.core.pareto import parse_targets
from recipe_search.study._selection import select
from recipe_search.study._storage import load_study, storage_url


def test_a_pick_names_the_frontier_recipes_it_ties_within_its_target(synthetic_study, tmp_path, capsys) -> None:
    url = storage_url(None, synthetic_study, None)
    sel = select(load_study(url, None), url, None, parse_targets("5.0bpw,9.0bpw"))
    at_5, at_9 = sel.picks
    twin = sel.candidates[at_5.candidate]
    assert twin.bpw == 4.7  # q4q5: 0.1% below its smaller twin at 4.5 bpw, on other tokens: a tie
    assert [t["bpw"] for t in sel.ties(at_5)] == [4.5]
    assert sel.ties(at_9) == []  # q8's tail is a tenth of the others': told apart from every one
    # what is not listed is told apart: the same paired bootstrap excludes 0 for every other point in the target
    per_chunk = scored_per_chunk(sel.config.ctx)
    for pick in (at_5, at_9):
        c = sel.candidates[pick.candidate]
        listed = {t["trial"] for t in sel.ties(pick)}
        for point in sel.frontier:
            o = sel.candidates[point.candidate]
            if point.candidate == pick.candidate or o.bpw > pick.target.value:
                continue
            lo, hi = paired_bootstrap(c.kld_tokens.astype(np.float64), o.kld_tokens.astype(np.float64),
                                      statistic_of(sel.objective), per_chunk)
            assert (lo <= 0 <= hi) == (o.number in listed), o.bpw
    # the written recipe and the printed picks say it
    out = tmp_path / "picks"
    assert main(["pareto", "--dir", str(synthetic_study), "--targets", "5.0bpw", "--out", str(out)]) == 0
    [written] = out.glob("*.yaml")
    ties = yaml.safe_load(written.read_text())["provenance"]["study"]["ties"]
    assert [t["bpw"] for t in ties] == [4.5] and ties[0]["difference_ci95"][0] <= 0 <= ties[0]["difference_ci95"][1]
    assert "cannot be told apart" in capsys.readouterr().out


def test_of_recipes_tied_on_the_tail_the_pick_is_the_one_with_a_distinctly_lower_mean(dense_model, tmp_path,
                                                                                         capsys) -> None:
    """A tail statistic of a few thousand tokens rests on a handful of them: when it cannot tell the best recipe at
    the target from another that fits, a distinctly lower mean KLD decides, and the recipe says so."""
    rng = np.random.default_rng(2)
    base = rng.exponential(0.1, 48 * 63).astype(np.float32)
    tail = np.argsort(base)[-12:]
    best_tail = base * 4
    steadier = base * 3  # a quarter lower on every token but the tail: the best's values on other tokens, 0.1% higher
    steadier[tail] = best_tail[tail][::-1] * np.float32(1.001)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="dense",
                                directions=["minimize", "minimize"])
    study.set_user_attr("config", StudyConfig(ctx=128, chunks=48, objectives=["size", "kld_p999"]).model_dump_json())
    study.set_user_attr("model", str(dense_model.resolve()))
    study.set_user_attr("objectives", ["size", "kld_p999"])
    study.set_user_attr("tools", STUDY_TOOLS)
    study.add_trial(measured_trial(ffn_attn_recipe("best-tail", "Q4_0", "Q4_0"), 700_000, 4.6, best_tail))
    study.add_trial(measured_trial(ffn_attn_recipe("steadier", "Q4_0", "Q5_0"), 720_000, 4.8, steadier))
    url = storage_url(None, tmp_path, None)
    sel = select(load_study(url, None), url, None, parse_targets("5.0bpw"))
    [pick] = sel.picks
    assert sel.candidates[pick.candidate].bpw == 4.8  # the steadier
    assert pick.instead_of is not None and sel.candidates[pick.instead_of[0]].bpw == 4.6  # the best tail
    assert pick.instead_of[1][1] < 0  # the mean difference's interval lies below 0
    # the mean as the objective picks it directly
    by_mean = select(load_study(url, None), url, "kld_mean", parse_targets("5.0bpw")).picks[0]
    assert by_mean.instead_of is None and sel.candidates[by_mean.candidate].bpw == 4.8
    assert main(["pareto", "--dir", str(tmp_path), "--targets", "5.0bpw", "--out", str(tmp_path / "picks")]) == 0
    [written] = (tmp_path / "picks").glob("*.yaml")
    note = yaml.safe_load(written.read_text())["provenance"]["study"]["instead_of"]
    assert note["bpw"] == 4.6 and note["kld_mean_difference_ci95"][1] < 0
    assert "instead of trial 0" in capsys.readouterr().out
    assert main(["pareto", "--dir", str(tmp_path), "--targets", "5.0bpw", "--out", str(tmp_path / "again"),
                 "--json"]) == 0
    [picked] = json.loads(capsys.readouterr().out)["picks"]
    assert picked["bpw"] == 4.8 and picked["instead_of"]["bpw"] == 4.6


def test_a_tail_that_tells_them_apart_keeps_the_best(dense_model, tmp_path) -> None:
    rng = np.random.default_rng(2)
    base = rng.exponential(0.1, 48 * 63).astype(np.float32)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="dense",
                                directions=["minimize", "minimize"])
    study.set_user_attr("config", StudyConfig(ctx=128, chunks=48, objectives=["size", "kld_p999"]).model_dump_json())
    study.set_user_attr("model", str(dense_model.resolve()))
    study.set_user_attr("tools", STUDY_TOOLS)
    study.add_trial(measured_trial(ffn_attn_recipe("best-tail", "Q4_0", "Q4_0"), 700_000, 4.6, base * 2))
    study.add_trial(measured_trial(ffn_attn_recipe("worse-tail", "Q4_0", "Q5_0"), 720_000, 4.8,
                                   np.where(base > np.quantile(base, 0.99), base * 6, base).astype(np.float32)))
    url = storage_url(None, tmp_path, None)
    [pick] = select(load_study(url, None), url, None, parse_targets("5.0bpw")).picks
    assert pick.instead_of is None
