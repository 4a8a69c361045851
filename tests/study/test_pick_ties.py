"""A pick and the frontier recipes within its target that it cannot be told apart from (the decision's noise)."""

from __future__ import annotations

import numpy as np
import yaml

from recipe_search.cli import main
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
