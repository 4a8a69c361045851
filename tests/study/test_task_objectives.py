"""Task figures as study objectives: names and directions, bad configs, a study on the tiny model, --estimate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from recipe_search.cli import main
from recipe_search.core.config import StudyConfig
from recipe_search.core.metrics import BY_NAME, TASK_OBJECTIVES
from recipe_search.core.pareto import neighbour_tests
from recipe_search.core.task_flips import continuation_agreement, item_flips
from recipe_search.engine.task_check import TASK_KINDS, TaskResult, TaskSpec
from recipe_search.engine.trial_cost import Rates
from recipe_search.errors import RecipeSearchError
from recipe_search.study import Study, measured_records
from recipe_search.study._selection import resampling_basis

pytestmark = pytest.mark.llama  # the task checks load llama.cpp

SMALL = {"cloze_items": 8, "cloze_tokens": 24, "prompts": 6, "prompt_tokens": 16, "new_tokens": 8}
BASE = {"ctx": 128, "chunks": 4, "surrogate_seeds": 0, "refit_every": 0, "task_options": SMALL,
        "space": {"tensor_types": ["ffn_up", "ffn_down", "attn_q"], "ladder": ["Q8_0", "Q4_0", "Q2_K"]},
        "references": {"uniform": ["Q8_0"], "presets": []}}


@pytest.fixture(scope="module")
def prose(prose_file: Path) -> Path:
    return prose_file


def _config(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**BASE, **fields}))
    return path


def test_task_objectives_are_the_figures_task_check_writes() -> None:
    """Each task objective is a figure its task writes, minimised when it counts losses and maximised otherwise."""
    right = np.array([1, 0, 1, 1], bool)
    written = {}
    for kind in TASK_KINDS:
        spec = TaskSpec(kind, "x")
        figures = (continuation_agreement(np.array([8, 3, 0, 8]), 8, spec.name) if kind == "continuation"
                   else item_flips(spec.name, right, ~right))
        written[kind] = TaskResult(spec, figures, right, 0.0).figures_as_numbers()
    for name, kind in TASK_OBJECTIVES.items():
        assert name in written[kind]
        assert BY_NAME[name].direction == ("minimize" if name.endswith("_flips_lost") else "maximize")
    assert set(TASK_OBJECTIVES.values()) == set(TASK_KINDS)


@pytest.mark.parametrize(("fields", "message"), [
    ({"objectives": ["size", "kld_p99", "cloze_flips_lost"]}, "objective cloze_flips_lost needs the cloze task"),
    ({"objectives": ["size", "hellaswag_acc"], "tasks": ["cloze:{prose}"]}, "needs the hellaswag task"),
    ({"tasks": ["bogus:{prose}"]}, "unknown task 'bogus'"),
    ({"objectives": ["size", "cloze_acc"], "tasks": ["cloze"]}, "task cloze needs a text"),
    ({"objectives": ["size", "hellaswag_acc"], "tasks": ["hellaswag:{missing}"]}, "cannot read the task file"),
    ({"tasks": ["cloze:{prose}"], "task_options": {"cloze_items": 1}}, "cloze items must be an integer"),
])
def test_bad_task_configs_are_one_line_errors(dense_model, prose, tmp_path, capsys, fields, message) -> None:
    fields = json.loads(json.dumps(fields).replace("{prose}", str(prose)).replace("{missing}", str(tmp_path / "no")))
    code = main(["search", str(dense_model), "--config", str(_config(tmp_path, **fields)), "--dir",
                 str(tmp_path / "s"), "--cache-dir", str(tmp_path / "cache"), "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    db = tmp_path / "s" / "study.db"
    assert not db.exists() or not optuna.get_all_study_summaries(f"sqlite:///{db}")  # refused before the study exists


def test_study_optimises_task_figures(dense_model, prose, tmp_path) -> None:
    """A text task without its text is built from the held-out text; every measured trial (the reference too)
    carries its figures as the objective values, in their directions."""
    objectives = ["size", "kld_p99", "cloze_flips_lost", "continuation_agree_tokens"]
    config = StudyConfig.model_validate({**BASE, "objectives": objectives, "holdout_text": f"{prose}[0.5:1]",
                                         "tasks": ["cloze", f"continuation:{prose}[0:0.5]"]})
    study = Study.open(dense_model, config, name="t", directory=tmp_path / "s", cache=tmp_path / "cache")
    assert study.worker.tasks is not None
    assert [s.source for s in study.worker.tasks.specs] == [f"{prose}[0.5:1]", f"{prose}[0:0.5]"]
    assert study.optuna_study.directions[2:] == [optuna.study.StudyDirection.MINIMIZE,
                                                 optuna.study.StudyDirection.MAXIMIZE]
    study.prepare()
    study.run(n_trials=3)
    records = measured_records(study.optuna_study)
    assert len(records) == 3 and any(r.reference for r in records)
    for r in records:
        assert r.measured_values[2:] == [r.metrics["cloze_flips_lost"], r.metrics["continuation_agree_tokens"]]
        assert r.measurement is not None and r.measurement.seconds["task_cloze"] > 0
    q8 = next(r for r in records if r.reference)
    assert q8.metrics["continuation_agree_tokens"] >= min(r.metrics["continuation_agree_tokens"] for r in records)
    # each task objective is kept item by item, so frontier steps and picks on it get a paired test, not "not tested"
    for objective in TASK_OBJECTIVES:
        if objective.split("_")[0] not in ("cloze", "continuation"):
            continue
        values, unit, statistic = resampling_basis(records, objective, per_chunk=127)
        assert unit == 1 and statistic is not None
        for r, v in zip(records, values):
            assert v is not None and len(v) == r.metrics[objective.split("_")[0] + "_n"]
            assert float(statistic(v.astype(np.float64)[None])[0]) == pytest.approx(r.metrics[objective])
        tests = neighbour_tests(range(len(records)), values, statistic, unit)
        assert all(t is not None for t in tests), objective


def test_estimate_shows_each_task_beside_the_kld_trial(dense_model, prose, tmp_path, capsys, monkeypatch) -> None:
    rates = Rates({"Q8_0": 1e8, "Q4_0": 1e8, "Q2_K": 1e8}, 1e9, 1e9, 1e-5, 1e9, "test")
    monkeypatch.setattr("recipe_search.engine.trial_cost.measure_rates", lambda *a: rates)
    config = _config(tmp_path, objectives=["size", "kld_p99", "cloze_flips_lost"], tasks=[f"cloze:{prose}"])
    args = ["search", str(dense_model), "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--estimate"]
    assert main([*args, "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimate"]
    cpu = est["phases"]["cpu"]
    assert est["task_tokens"] == {"cloze": SMALL["cloze_items"] * (SMALL["cloze_tokens"] + 1)}
    ratio = est["task_tokens"]["cloze"] / (BASE["chunks"] * BASE["ctx"])
    assert cpu["task cloze"] == pytest.approx(cpu["load"] + cpu["evaluation"] * ratio)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "task cloze" in out and f"cloze about {est['task_tokens']['cloze']} tokens" in out


def test_a_task_text_that_overlaps_the_search_text_is_warned(dense_model, prose, tmp_path, capsys, monkeypatch) -> None:
    def stop(*a, **k):
        raise RecipeSearchError("stopped before the study")

    monkeypatch.setattr(Study, "open", stop)
    config = _config(tmp_path, text=f"{prose}[0:0.5]", holdout_text=f"{prose}[0.5:1]",
                     tasks=["cloze", f"continuation:{prose}[0.25:0.75]"])
    assert main(["search", str(dense_model), "--config", str(config), "--dir", str(tmp_path / "s")]) == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "continuation task" in warnings[0] and "search text" in warnings[0], warnings


def test_hypervolume_of_a_figure_to_maximise() -> None:
    """A study optimising a task figure (higher is better) had its hypervolume computed as if lower were better (the
    log10 of an accuracy, minimised): a recipe both smaller and more accurate than another counted as a trade-off."""
    from recipe_search.study._records import TrialRecord
    from recipe_search.study._summary import hypervolumes

    records = [TrialRecord(0, values=[100.0, 0.9]), TrialRecord(1, values=[200.0, 0.5])]
    # (100, 0.9) dominates (200, 0.5); the reference point lies just beyond the worst: (202, -0.495) negated
    assert hypervolumes(records, maximise=True)[0] == pytest.approx((202 - 100) * (-0.495 + 0.9))
    assert hypervolumes(records, maximise=True) != hypervolumes(records)
