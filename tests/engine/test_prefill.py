"""Quantizing while scoring: the next recipes' missing tensors are filled while one is scored, on threads taken
from scoring, each once; what the next trial then measures is what it measures without it, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_search.core.config import StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import preset_recipe, uniform_recipe
from recipe_search.core.text import TextSource
from recipe_search.engine import worker as worker_module
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.worker import Worker
from recipe_search.formats.ggml_types import GGMLType

pytestmark = pytest.mark.llama


def _worker(model, where, prefill_threads: int) -> Worker:
    return Worker(model, ScoreSettings(TextSource(), ctx=128, chunks=2, threads=2), where / "cache", where / "work",
                  prefill_threads=prefill_threads)


def test_the_next_recipe_is_quantized_while_one_is_scored(moe_model, tmp_path, monkeypatch) -> None:
    ahead = _worker(moe_model, tmp_path / "ahead", prefill_threads=1)
    plain = _worker(moe_model, tmp_path / "plain", prefill_threads=0)
    first, second = uniform_recipe("Q8_0"), uniform_recipe("Q4_0")
    seen: list[int] = []

    def score_quant(quant, reference, settings, *args, **kwargs):  # scoring runs on the threads the prefill leaves
        seen.append(settings.threads)
        return real(quant, reference, settings, *args, **kwargs)

    real = worker_module.score_quant
    monkeypatch.setattr(worker_module, "score_quant", score_quant)
    ahead.measure(first, then=[second], use_cache=False)
    monkeypatch.undo()
    misses = ahead.tensors.misses
    prefill = ahead.prefill
    got = ahead.measure(second, use_cache=False)  # while the prefill may still quantize one of its entries
    ahead.close()
    pairs = {(x.tensor.name, x.ggml_type) for x in ahead.resolve(second).tensors if x.ggml_type != x.tensor.ggml_type}
    assert prefill.filled >= 1  # scoring two tiny chunks leaves time for a few
    assert prefill.filled + ahead.tensors.misses - misses == len(pairs)  # each entry quantized once
    assert seen == [1] and ahead.settings.threads == 2  # the worker's own settings are left as they were
    want = plain.measure(second, use_cache=False)
    assert np.array_equal(got.kld_tokens, want.kld_tokens)
    assert got.file_bytes == want.file_bytes


def test_nothing_ahead_without_threads_to_spare(moe_model, tmp_path) -> None:
    one = Worker(moe_model, ScoreSettings(TextSource(), ctx=128, chunks=2, threads=1), tmp_path / "c", tmp_path / "w",
                 prefill_threads=1)
    assert one.prefill_threads == 0
    one.measure(uniform_recipe("Q8_0"), then=[uniform_recipe("Q4_0")], use_cache=False)
    inv = read_inventory(moe_model)
    t = next(t for t in inv.tensors if t.name.endswith("ffn_up_exps.weight"))
    assert not one.tensors.path(t, GGMLType.Q4_0).exists()
    assert "prefill" not in one.__dict__


def test_a_mixture_is_not_resolved_ahead(moe_model, tmp_path) -> None:
    """A llama.cpp preset needs its dry run to resolve: it is left out of what is quantized ahead."""
    ahead = _worker(moe_model, tmp_path, prefill_threads=1)
    ahead.measure(uniform_recipe("Q8_0"), then=[preset_recipe("Q4_K_M")],
                  use_cache=False)
    assert ahead.prefill.filled == 0
    ahead.close()


def test_by_default_only_a_gpu_run_quantizes_ahead() -> None:
    """On the CPU the threads would come from scoring, which they slow as much as they save (the report's bench)."""
    assert StudyConfig(threads=4).prefill_thread_count == 0
    assert StudyConfig(threads=4, gpu_layers=-1).prefill_thread_count == 4
    assert StudyConfig(threads=4, prefill_threads=1).prefill_thread_count == 1
