"""The text-built tasks on tiny models: the base against itself, determinism, the cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.text import TextSource
from recipe_search.core.text_tasks import ClozeSettings, ContinuationSettings
from recipe_search.engine.greedy import generate_greedy, greedy_choices
from recipe_search.engine.llama import LlamaModel
from recipe_search.engine.quantize import quantize_model
from recipe_search.engine.text_tasks import cloze_base, continuation_base, score_cloze, score_continuation
from recipe_search.errors import RecipeSearchError

pytestmark = pytest.mark.llama  # evaluates with llama.cpp

CLOZE = ClozeSettings(items=12, passage_tokens=24)
CONTINUATION = ContinuationSettings(prompts=6, prompt_tokens=16, new_tokens=8)


@pytest.fixture(scope="module")
def text(prose_file: Path) -> TextSource:
    return TextSource(prose_file)


def test_greedy_choices_follow_generation(dense_model: Path) -> None:
    with LlamaModel(dense_model, n_threads=1, n_ctx=24, n_seq=3) as lm:
        prompts = np.stack([lm.tokenize(f"The river {w} the", add_special=False)[:4] for w in ("saw", "met", "hid", "ran")])
        generated = generate_greedy(lm, prompts, 6)
        assert generated.shape == (4, 6)
        sequences = [np.concatenate([p, g[:-1]]) for p, g in zip(prompts, generated, strict=True)]
        choices = greedy_choices(lm, sequences, [6] * 4)
    # teacher-forced on its own continuation, the model chooses it again (up to near-ties, absent here)
    assert np.array_equal(np.stack(choices), generated)


def test_base_against_itself(dense_model: Path, text: TextSource, tmp_path: Path) -> None:
    cloze, cached = cloze_base(dense_model, text, CLOZE, tmp_path, threads=1)
    assert not cached and len(cloze.words) == CLOZE.items
    assert all(len(c) == CLOZE.passage_tokens + 1 for c in cloze.contexts)  # BOS and the passage
    flips = score_cloze(dense_model, cloze, threads=1)
    assert (flips.n, flips.lost, flips.gained, flips.acc_diff) == (CLOZE.items, 0, 0, 0.0)
    assert flips.quant_acc == flips.base_acc == cloze.base_correct.mean()
    continuation, cached = continuation_base(dense_model, text, CONTINUATION, tmp_path, threads=1)
    assert not cached and continuation.prompts.shape == (CONTINUATION.prompts, CONTINUATION.prompt_tokens + 1)
    agreement = score_continuation(dense_model, continuation, threads=1)
    assert (agreement.identical, agreement.agree_tokens, agreement.n) == (1.0, 8.0, CONTINUATION.prompts)


def test_two_runs_identical_and_the_cache_reused(dense_model: Path, text: TextSource, tmp_path: Path) -> None:
    quant = quantize_model(dense_model, uniform_recipe("Q2_K"), tmp_path / "q2k.gguf").path
    first = cloze_base(dense_model, text, CLOZE, tmp_path / "a", threads=1)[0]
    again, cached = cloze_base(dense_model, text, CLOZE, tmp_path / "a", threads=1)
    fresh = cloze_base(dense_model, text, CLOZE, tmp_path / "b", threads=1)[0]  # computed again from nothing
    assert cached and again.words == first.words == fresh.words
    assert json.loads(first.path.read_text())["base_choice"] == json.loads(fresh.path.read_text())["base_choice"]
    assert score_cloze(quant, first, threads=1) == score_cloze(quant, fresh, threads=1)
    cont = continuation_base(dense_model, text, CONTINUATION, tmp_path / "a", threads=1)[0]
    cont_fresh = continuation_base(dense_model, text, CONTINUATION, tmp_path / "b", threads=1)[0]
    assert np.array_equal(cont.continuations, cont_fresh.continuations)
    agreement = score_continuation(quant, cont, threads=1)
    assert agreement == score_continuation(quant, cont_fresh, threads=1)
    assert agreement.identical < 1  # Q2_K of random weights strays from the base
    # other settings are another cache entry; a damaged entry is computed again, with one warning
    assert cloze_base(dense_model, text, ClozeSettings(items=5, passage_tokens=24), tmp_path / "a", threads=1)[1] is False
    cont.path.write_text(cont.path.read_text()[:-40])
    rebuilt, cached = continuation_base(dense_model, text, CONTINUATION, tmp_path / "a", threads=1)
    assert not cached and np.array_equal(rebuilt.base_choice, cont.base_choice)


def test_bad_input(dense_model: Path, qwen35_model: Path, text: TextSource, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("The river saw the river. " * 3)
    with pytest.raises(RecipeSearchError, match=r"short.txt: the text yields \d cloze items") as err:
        cloze_base(dense_model, TextSource(short), CLOZE, tmp_path, threads=1)
    assert "\n" not in str(err.value)
    with pytest.raises(RecipeSearchError, match=r"short.txt: the text has \d+ tokens: too few for 2 continuation"):
        continuation_base(dense_model, TextSource(short), CONTINUATION, tmp_path, threads=1)
    base = continuation_base(dense_model, text, CONTINUATION, tmp_path, threads=1)[0]
    with pytest.raises(RecipeSearchError, match="tokenizer differs from the base model's"):
        score_continuation(qwen35_model, base, threads=1)


def test_demo_cloze_flips_both_ways(demo_model: Path, demo_original: Path, tmp_path: Path) -> None:
    """On the default text the demo model answers some items; its packaged Q4_K_M is scored against it."""
    base = cloze_base(demo_model, TextSource(), ClozeSettings(items=24, passage_tokens=32), tmp_path, threads=2)[0]
    assert 0 < base.base_correct.mean() < 1 and len(base.words) == 24
    assert any(len(t) > 1 for t in base.targets)  # words of several tokens
    flips = score_cloze(demo_original, base, threads=2)
    assert flips.quant_acc - flips.base_acc == pytest.approx((flips.gained - flips.lost) / flips.n)
