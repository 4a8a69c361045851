"""Pareto selection: frontier and hypervolume by hand, ties by paired bootstrap, targets, written recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from exported import llama_quantize_reads
from tiny_studies import STUDY_TOOLS, ffn_attn_recipe

from recipe_search.cli import main
from recipe_search.core.inventory import read_inventory
from recipe_search.core.metrics import statistic_of
from recipe_search.core.pareto import (
    frontier_2d,
    hypervolume_2d,
    neighbour_tests,
    non_dominated,
    parse_target,
    parse_targets,
    pick_at_target,
    pick_on_shared_chunks,
)
from recipe_search.core.recipe import load_recipe
from recipe_search.errors import RecipeSearchError
from recipe_search.study._selection import select
from recipe_search.study._storage import load_study, storage_url


# -- pure ------------------------------------------------------------------------------------------
def test_non_dominated_and_frontier_order() -> None:
    pts = np.array([[3, 4], [1, 5], [2, 3], [4, 1], [2, 3.5], [5, 1]])
    # (3,4) by (2,3); (2,3.5) by (2,3); (5,1) by (4,1)
    assert sorted(non_dominated(pts).tolist()) == [1, 2, 3]
    assert frontier_2d(pts[:, 0], pts[:, 1]).tolist() == [1, 2, 3]
    assert frontier_2d([], []).tolist() == []
    # equal points dominate neither each other
    assert sorted(non_dominated(np.array([[1, 1], [1, 1], [2, 2]])).tolist()) == [0, 1]


def test_hypervolume_by_hand() -> None:
    # staircase (1,3), (2,1) under reference (4,4): 3*1 + 2*2
    assert hypervolume_2d(np.array([[1, 3], [2, 1]]), (4, 4)) == pytest.approx(7.0)
    # a dominated point and one beyond the reference add nothing
    assert hypervolume_2d(np.array([[1, 3], [2, 1], [3, 3], [5, 0]]), (4, 4)) == pytest.approx(7.0)
    assert hypervolume_2d(np.array([[5, 5]]), (4, 4)) == 0.0


def test_pick_at_target() -> None:
    sizes, quality = [1.0, 2.0, 3.0, 2.5], [5.0, 3.0, 1.0, 3.0]
    assert pick_at_target(sizes, quality, 2.6) == 1  # 2.0 and 2.5 tie on quality: the smaller wins
    assert pick_at_target(sizes, quality, 3.0) == 2  # at the target counts
    assert pick_at_target(sizes, quality, 0.5) is None


@pytest.mark.parametrize("text, kind, value, label", [
    ("4.0bpw", "bpw", 4.0, "4.00bpw"), ("3.5BPW", "bpw", 3.5, "3.50bpw"),
    ("20GiB", "bytes", 20 * 2**30, "20GiB"), ("900MiB", "bytes", 900 * 2**20, "900MiB"),
    ("1.5GB", "bytes", 1.5e9, "1.5GB"), ("123456789", "bytes", 123456789, "123456789B"),
])
def test_parse_target(text, kind, value, label) -> None:
    t = parse_target(text)
    assert (t.kind, t.value, t.label) == (kind, pytest.approx(value), label)


@pytest.mark.parametrize("bad", ["4.5", "abc", "0bpw", "-1GiB", "20 parsecs", ""])
def test_bad_targets(bad) -> None:
    with pytest.raises(RecipeSearchError, match="target"):
        parse_targets(bad)


def test_target_picks_by_bpw_or_bytes() -> None:
    bpw, nbytes, quality = [3.0, 4.0, 5.0], [300, 400, 500], [3.0, 2.0, 1.0]
    assert parse_target("4.2bpw").pick(bpw, nbytes, quality) == 1
    assert parse_target("500").pick(bpw, nbytes, quality) == 2
    assert parse_target("299").pick(bpw, nbytes, quality) is None


def test_ties_by_paired_bootstrap() -> None:
    rng = np.random.default_rng(0)
    base = rng.exponential(0.05, 5000)
    twin = base * rng.normal(1.0, 0.02, 5000)  # the same tokens, a little noise
    better = base * 0.5
    tokens = [base, twin, better, base[:100]]
    # frontier by size: base (smallest), twin, better
    tests = neighbour_tests([0, 1, 2], tokens, statistic_of("kld_p999"), 250, n_boot=400)
    assert tests[0].tie and tests[0].low <= 0 <= tests[0].high
    assert not tests[1].tie and tests[1].low > 0  # the larger point is better beyond the interval
    assert (tests[1].smaller, tests[1].larger) == (1, 2)
    mean_tests = neighbour_tests([0, 2], tokens, statistic_of("kld_mean"), 250, n_boot=400)
    assert not mean_tests[0].tie
    # different tokens, no statistic (a metric without per-token values), or not two whole chunks: no test
    assert neighbour_tests([3, 0], tokens, statistic_of("kld_p999"), 250) == [None]
    assert neighbour_tests([0, 2], tokens, None, 250) == [None]
    assert neighbour_tests([0, 1], [base, None], statistic_of("kld_p999"), 250) == [None]
    assert neighbour_tests([0, 1], tokens, statistic_of("kld_p999"), 2500) != [None]  # two chunks: testable
    assert neighbour_tests([0, 1], tokens, statistic_of("kld_p999"), 5000) == [None]  # one chunk: not
    assert neighbour_tests([0, 1], tokens, statistic_of("kld_p999"), 2000) == [None]  # 5000 tokens are not whole chunks of 2000


def test_trials_scored_on_more_chunks_are_compared_on_the_chunks_both_have() -> None:
    """A recipe near a size target scored longer is tested against its neighbour, and can win the pick, on the
    chunks the two share; with as many chunks everywhere the pick is the best by its own statistic."""
    rng = np.random.default_rng(0)
    first = rng.exponential(0.05, 4 * 250)
    longer = np.concatenate([first * 0.5, rng.exponential(0.05, 4 * 250)])  # 8 chunks; better on the 4 shared
    test = neighbour_tests([0, 1], [first, longer], statistic_of("kld_p99"), 250, n_boot=400)[0]
    assert test is not None and not test.tie and test.low > 0
    sizes = [100.0, 110.0, 105.0]
    worse = np.concatenate([first * 1.5, first])
    # trial 0 is best on every trial's own stored statistic; trial 1, longer, beats it on the chunks both have
    assert pick_on_shared_chunks(0, [1, 2], [first, longer, worse], "kld_p99", 250, sizes) == 1
    assert pick_on_shared_chunks(0, [2], [first, longer, worse], "kld_p99", 250, sizes) == 0
    assert pick_on_shared_chunks(0, [1], [first, longer, worse], "ppl_ratio", 250, sizes) == 0  # no statistic
    assert pick_on_shared_chunks(0, [], [first], "kld_p99", 250, sizes) == 0


def test_near_a_target() -> None:
    """Near: fits the target and leaves less than the band of it unused (per-device bytes together)."""
    t = parse_target("4.0bpw")
    assert t.near(3.9, 0, None, 0.03) and t.near(4.0, 0, None, 0.03)
    assert not t.near(3.8, 0, None, 0.03) and not t.near(4.01, 0, None, 0.03)
    devices = parse_target("100B-gpu+100B-cpu")
    assert devices.near(0, 0, {"gpu": 100, "cpu": 95}, 0.03) and not devices.near(0, 0, {"gpu": 100, "cpu": 80}, 0.03)
    assert not devices.near(0, 0, {"gpu": 101, "cpu": 99}, 0.03)


# -- a synthetic study on the dense model (tests/tiny_studies.py, the `synthetic_study` fixture) --------
def test_select_frontier_ties_and_picks(synthetic_study) -> None:
    url = storage_url(None, synthetic_study, None)
    sel = select(load_study(url, None), url, None, parse_targets("5.0bpw,1000000,1bpw"), n_boot=300)
    assert sel.objective == "kld_p999" and len(sel.candidates) == 4  # the duplicate and the pruned are out
    assert sel.counts["pruned"] == 1 and sel.counts["duplicates"] == 1
    names = [sel.candidates[p.candidate].name for p in sel.frontier]
    assert names == ["uniform-Q4_0", "trial-1", "uniform-Q5_0", "uniform-Q8_0"]
    assert [p.distinct for p in sel.frontier] == [None, False, True, True]
    assert [sel.status(p) for p in sel.frontier] == ["smallest", "tie with #0", "distinct from #1", "distinct from #2"]
    picked = [None if p.candidate is None else sel.candidates[p.candidate].name for p in sel.picks]
    assert picked == ["trial-1", "uniform-Q5_0", None]


@pytest.mark.slow
@pytest.mark.llama  # quantizes the picked recipe
def test_pareto_writes_usable_recipes_and_respects_force(synthetic_study, dense_model, tmp_path, capsys) -> None:
    out = tmp_path / "recipes"
    args = ["pareto", "--dir", str(synthetic_study), "--targets", "5.0bpw,1000000,1bpw", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "tie with #0" in printed.out and "nothing measured fits" in printed.out
    stem = dense_model.stem
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{stem}-1000000B-kld_p999.yaml", f"{stem}-5.00bpw-kld_p999.yaml"]

    path = out / f"{stem}-5.00bpw-kld_p999.yaml"
    recipe = load_recipe(path)
    inv = read_inventory(dense_model)
    assert recipe.name == path.stem
    assert (recipe.model.architecture, recipe.model.tensor_count) == (inv.arch, len(inv.tensors))
    assert recipe.metrics["bpw"] == 4.7 and recipe.metrics["file_bytes"] == 720_000
    lo, hi = recipe.metrics["kld_p999_ci95"]
    assert lo <= recipe.metrics["kld_p999"] <= hi
    prov = recipe.provenance
    assert prov["study"]["trial"] == 1 and prov["study"]["target"] == "5.00bpw"
    assert prov["study"]["frontier"].startswith("tie with trial 0")
    assert (prov["scoring"]["ctx"], prov["scoring"]["chunks"], prov["scoring"]["imatrix"]) == (128, 48, None)
    assert prov["tools"] == STUDY_TOOLS  # the versions that measured the study, not the ones reading it
    assert [r.model_dump() for r in recipe.rules] == [r.model_dump() for r in ffn_attn_recipe("x", "Q4_0", "Q5_0").rules]

    # immediately usable: export and quantize take it as it is
    exported = tmp_path / "types.txt"
    assert main(["export", str(path), "-o", str(exported)]) == 0
    assert ("^(blk\\.\\d+\\.)?attn_q\\.weight$", recipe.rules[3].ggml_type) in llama_quantize_reads(exported.read_text())
    quant = tmp_path / "q.gguf"
    assert main(["quantize", str(dense_model), str(path), "-o", str(quant)]) == 0
    types = {t.name: t.ggml_type.name for t in read_inventory(quant).tensors}
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["blk.0.ffn_up.weight"] == "Q4_0"
    capsys.readouterr()

    # an existing file is kept without --force: one line naming it, nothing rewritten
    before = path.read_text()
    path.write_text(before + "# edited\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"recipe-search: error: {path}: exists already (use --force to replace it)"
    assert path.read_text().endswith("# edited\n")
    assert main([*args, "--force"]) == 0
    assert path.read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_pareto_json_and_objective(synthetic_study, tmp_path, capsys) -> None:
    assert main(["pareto", "--dir", str(synthetic_study), "--objective", "kld_mean", "--targets", "6bpw",
                 "--out", str(tmp_path / "r"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["objective"] == "kld_mean" and data["measured"] == 4
    assert [f["name"] for f in data["frontier"]][-1] == "uniform-Q8_0"
    assert data["picks"][0]["name"] == "uniform-Q5_0" and data["picks"][0]["recipe"].endswith("6.00bpw-kld_mean.yaml")
    written = yaml.safe_load(Path(data["picks"][0]["recipe"]).read_text())
    assert written["provenance"]["study"]["objective"] == "kld_mean"


def test_pareto_errors(synthetic_study, tmp_path, capsys) -> None:
    assert main(["pareto", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "no study database here" in capsys.readouterr().err
    assert main(["pareto", "--dir", str(synthetic_study), "--objective", "kld_p42"]) == 2
    assert "objective 'kld_p42' is not among the measured metrics" in capsys.readouterr().err
    assert main(["pareto", "--dir", str(synthetic_study), "--study", "other"]) == 2
    assert "no study 'other'" in capsys.readouterr().err
    assert main(["pareto", "--dir", str(synthetic_study), "--targets", "4.5"]) == 2
    assert "say 4.5bpw" in capsys.readouterr().err
