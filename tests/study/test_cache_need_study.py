"""The space's need in the tensor cache, as the study reports it at its start, is what the cache then holds."""

from __future__ import annotations

import pytest

from recipe_search.core.config import StudyConfig
from recipe_search.study.study import Study

pytestmark = pytest.mark.llama  # quantizes every pair of the space with libggml


def test_need_equals_the_cache_after_every_pair_and_warns_below_it(dense_model, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RECIPE_SEARCH_TENSOR_CACHE_GB", "0.001")  # 1.02 MiB: below what the tiny model needs
    config = StudyConfig.model_validate({
        "ctx": 128, "chunks": 2, "objectives": ["size", "kld_p99"],
        "space": {"ladder": ["Q8_0", "Q4_0"]}, "references": {"uniform": ["Q8_0"], "presets": []}})
    study = Study.open(dense_model, config, directory=tmp_path / "study", cache=tmp_path / "cache")
    lines: list[str] = []
    report = study.tensor_cache_need(lines.append)
    assert report is not None and len(lines) == 1 and lines[0].startswith("tensor cache: the space's")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: the space's tensors need") and "bound 1.02 MiB" in err[0]
    tensors = study.worker.tensors
    inv = study.worker.inventory
    types = {t for _, t in report_pairs(study)}
    assert len(types) >= 2  # Q8_0 and Q4_0 (fallbacks) plus the kept types of the norms
    for name, t in report_pairs(study):
        tensors.shard(inv.by_name[name], t)
    info = tensors.cache.info()
    assert info.entries == report.pairs and info.bytes == report.need
    monkeypatch.delenv("RECIPE_SEARCH_TENSOR_CACHE_GB")
    tensors.cache.max_bytes = None  # half the disk: room enough, so no warning
    report = study.tensor_cache_need()
    assert report is not None and report.warning is None and report.held == report.need
    assert capsys.readouterr().err == ""


def report_pairs(study: Study):
    from recipe_search.core.cache_need import space_cache_need

    return space_cache_need(study.space, study.worker.inventory).pairs


def test_the_study_pins_its_frontier(dense_model, tmp_path) -> None:
    """After trials, the frontier's (tensor, type) entries are pinned in the cache; a dominated recipe's are not."""
    import numpy as np
    from tiny_studies import ffn_attn_recipe, measured_trial

    from recipe_search.core.resolution import resolve

    config = StudyConfig.model_validate({"ctx": 128, "chunks": 2, "objectives": ["size", "kld_p999"],
                                         "references": {"uniform": ["Q8_0"], "presets": []}})
    study = Study.open(dense_model, config, directory=tmp_path / "study", cache=tmp_path / "cache")
    tokens = np.full(100, 0.1, np.float32)
    small, big, dominated = (ffn_attn_recipe("small", "Q4_0", "Q4_0"), ffn_attn_recipe("big", "Q8_0", "Q8_0"),
                             ffn_attn_recipe("dominated", "Q5_0", "Q5_0"))
    for recipe, size, kld in ((small, 1000, 0.5), (big, 2000, 0.1), (dominated, 3000, 1.0)):
        study.optuna_study.add_trial(measured_trial(recipe, size, 4.0, tokens * kld / 0.1))
    assert study.pin_frontier() > 0
    tensors, inv = study.worker.tensors, study.worker.inventory
    want = {tensors.path(r.tensor, r.ggml_type) for rec in (small, big) for r in resolve(rec, inv).tensors}
    assert tensors.pinned == want
    assert not {tensors.path(r.tensor, r.ggml_type) for r in resolve(dominated, inv).tensors} <= want
