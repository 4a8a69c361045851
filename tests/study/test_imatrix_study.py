"""A study with the imatrix users have (llama-imatrix's: no token_embd, no output): no trial fails for lack
of imatrix data, although the ladder offers types ggml cannot quantize without it."""

from __future__ import annotations

import optuna
import pytest

from recipe_search.core.config import StudyConfig
from recipe_search.core.text import TextSource
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.formats.imatrix_file import save_imatrix_gguf
from recipe_search.study.study import Study

pytestmark = pytest.mark.llama  # collects an imatrix, quantizes and evaluates


def test_no_trial_fails_for_imatrix_data_the_imatrix_lacks(dense_model, tmp_path) -> None:
    imatrix = collect_imatrix(dense_model, TextSource().read()[:20000], ctx=128, n_chunks=2, n_threads=1)
    assert "token_embd.weight" not in imatrix.entries
    save_imatrix_gguf(imatrix, tmp_path / "dense.imatrix")
    config = StudyConfig.model_validate({
        "ctx": 128, "chunks": 2, "objectives": ["size", "kld_p99"], "imatrix": str(tmp_path / "dense.imatrix"),
        "space": {"tensor_types": ["token_embd", "ffn_up", "ffn_down"], "ladder": ["Q8_0", "Q4_0", "IQ2_XXS"]},
        "references": {"uniform": ["Q8_0", "IQ2_XXS"], "presets": []}})
    study = Study.open(dense_model, config, directory=tmp_path / "study", cache=tmp_path / "cache")
    assert "token_embd" in (study.space.imatrix_note() or "")
    study.prepare()
    study.run(n_trials=4)
    trials = study.optuna_study.get_trials(deepcopy=False)
    assert len(trials) >= 4
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed == [], [t.system_attrs for t in failed]
