"""Watching a study: the metric names optuna-dashboard labels its axes with, and `recipe-search status`."""

from __future__ import annotations

import json

import optuna
import pytest

from recipe_search.core.config import StudyConfig

CONFIG = {"ctx": 64, "chunks": 2, "objectives": ["size", "kld_p99"], "surrogate_seeds": 0, "refit_every": 0,
          "space": {"tensor_types": ["ffn_up"], "ladder": ["Q8_0", "Q4_0"]},
          "references": {"uniform": ["Q4_0"], "presets": []}}


def test_opened_study_names_its_metrics(tmp_path, dense_model) -> None:
    """optuna-dashboard labels a study's axes with its metric names: the objectives, on creating and resuming."""
    from recipe_search.study.study import Study

    config = StudyConfig.model_validate(CONFIG)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = Study.open(dense_model, config, name="s", storage=url, directory=tmp_path / "s", cache=tmp_path / "cache")
    assert study.optuna_study.metric_names == ["size", "kld_p99"]
    # a study made before the names were set gets them when it is resumed
    optuna.load_study(study_name="s", storage=url)._storage.set_study_system_attr(
        study.optuna_study._study_id, "study:metric_names", None)
    assert optuna.load_study(study_name="s", storage=url).metric_names is None
    resumed = Study.open(None, name="s", storage=url, directory=tmp_path / "s", cache=tmp_path / "cache")
    assert resumed.optuna_study.metric_names == ["size", "kld_p99"]
