"""The quantize-and-score worker: real scoring on tiny models and the demo, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe_search.core.inventory import read_inventory
from recipe_search.core.kld import SparseReference, TokenStats, summarize, token_stats, token_stats_sparse
from recipe_search.core.kld_base_file import KLDBaseFile
from recipe_search.core.recipe import recipe_from_dict, uniform_recipe
from recipe_search.core.text import TextSource
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.engine.llama import LlamaModel, chunk_tokens, evaluate, scored_range
from recipe_search.engine.quantize import quantize_model
from recipe_search.engine.score import (
    ScoreSettings,
    get_reference,
    load_reference,
    reference_chunk_count,
    score_against_base_file,
    score_quant,
    write_base_file,
)
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.imatrix_file import ImatrixInput, save_imatrix_gguf

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

SETTINGS = ScoreSettings(ctx=128, chunks=4)


def test_worker_measures_and_caches(dense_model, tmp_path) -> None:
    worker = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work")
    good = worker.measure(uniform_recipe("Q8_0"))
    bad = worker.measure(uniform_recipe("Q2_K"))
    assert worker.reference_was_cached is False
    assert good.metrics["n_tokens"] == 4 * (128 - 1 - 64)
    for key in ("kld_mean", "kld_median", "kld_p99", "kld_max", "dp_rms"):
        assert bad.metrics[key] > good.metrics[key], key
    assert bad.metrics["same_top"] < good.metrics["same_top"]
    assert bad.file_bytes < good.file_bytes
    assert good.fallbacks == {} and bad.fallbacks == {"ffn_down": {"Q2_K->Q4_0": 2}}
    assert not list((tmp_path / "work").iterdir())
    again = Worker(dense_model, SETTINGS, tmp_path / "cache", tmp_path / "work")
    hit = again.measure(uniform_recipe("Q8_0"))
    assert hit.cached and not good.cached
    assert hit.metrics == good.metrics and np.array_equal(hit.kld_tokens, good.kld_tokens)
    assert again.reference_was_cached is True
    # a damaged cache entry is measured again and rewritten, never trusted
    entries = sorted((tmp_path / "cache" / "measurements").glob("*.json"))
    assert len(entries) == 2
    for e in entries:
        e.write_text(e.read_text()[:50])
    remeasured = again.measure(uniform_recipe("Q8_0"))
    assert not remeasured.cached and remeasured.metrics["kld_mean"] == pytest.approx(good.metrics["kld_mean"], rel=1e-5)
    assert again.measure(uniform_recipe("Q8_0")).cached
    assert not again.measure(uniform_recipe("Q8_0"), use_cache=False).cached


@pytest.mark.slow
def test_base_file_round_trip(dense_model, tmp_path) -> None:
    base = tmp_path / "base.kld"
    n = write_base_file(dense_model, SETTINGS, base)
    f = KLDBaseFile(base)
    assert (f.n_chunk, f.n_ctx) == (n, 128)
    with LlamaModel(dense_model, n_ctx=128) as lm:
        raw = lm.tokenize(SETTINGS.text.read())[: n * 128].reshape(n, 128)
    assert np.array_equal(np.asarray(f.tokens), raw)  # stored before the BOS swap
    q = quantize_model(dense_model, uniform_recipe("Q4_0"), tmp_path / "q.gguf")
    via_file = score_against_base_file(q.path, base, SETTINGS).summary
    ref, _ = get_reference(dense_model, SETTINGS, tmp_path / "cache")
    via_cache = score_quant(q.path, ref, SETTINGS).summary
    assert via_file.n_tokens == via_cache.n_tokens
    assert via_file.kld_mean == pytest.approx(via_cache.kld_mean, rel=0.01)


@pytest.mark.slow
def test_bad_inputs(dense_model, moe_model, tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("far too short a text")
    with pytest.raises(RecipeSearchError, match="short.txt: the text has \\d+ tokens; at least 2 x ctx"):
        get_reference(dense_model, ScoreSettings(text=TextSource(short), ctx=128), tmp_path / "cache")
    assert not list((tmp_path / "cache" / "references").glob("[!.]*"))  # nothing cached

    ref, _ = get_reference(dense_model, SETTINGS, tmp_path / "cache")
    with pytest.raises(RecipeSearchError, match="another model"):
        load_reference(ref.path, "0" * 64)
    other = quantize_model(moe_model, uniform_recipe("Q8_0"), tmp_path / "other.gguf")
    with pytest.raises(RecipeSearchError, match="other.gguf: not a quant of dense"):
        score_quant(other.path, ref, SETTINGS)
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(dense_model.read_bytes()[:5000])
    with pytest.raises(RecipeSearchError, match="corrupt.gguf: truncated"):
        score_quant(corrupt, ref, SETTINGS)

    im = collect_imatrix(dense_model, TextSource().read()[:20000], ctx=128, n_chunks=2, n_threads=1)
    save_imatrix_gguf(im, tmp_path / "dense.imatrix")
    with pytest.raises(RecipeSearchError, match="dense.imatrix: imatrix (entries of the wrong width|has no entry)"):
        quantize_model(moe_model, uniform_recipe("IQ4_NL"), tmp_path / "x.gguf",
                       imatrix=ImatrixInput.from_file(tmp_path / "dense.imatrix"))
    with pytest.raises(RecipeSearchError, match="IQ2_XXS need an importance matrix"):
        quantize_model(dense_model, uniform_recipe("IQ2_XXS"), tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.partial"))
    iq2 = recipe_from_dict({"name": "iq", "unmatched": {"type": "IQ2_XXS"}, "rules": [{"tensors": "token_embd", "type": "Q8_0"}]})
    with pytest.raises(RecipeSearchError, match="ggml cannot quantize to IQ2_XXS without imatrix data.*output.weight"):
        quantize_model(dense_model, iq2, tmp_path / "iq.gguf", imatrix=ImatrixInput.from_file(tmp_path / "dense.imatrix"))
    iq2.rules.append(iq2.rules[0].model_copy(update={"tensors": "output"}))
    ok = quantize_model(dense_model, iq2, tmp_path / "iq.gguf", imatrix=ImatrixInput.from_file(tmp_path / "dense.imatrix"))
    assert {t.ggml_type.name for t in read_inventory(ok.path).tensors if t.kind == "ffn_up"} == {"IQ2_XXS"}
    assert read_inventory(ok.path).headers[0].get("quantize.imatrix.entries_count") == len(im.entries)


def test_sparse_reference_matches_full_computation_on_demo(demo_model, demo_original) -> None:
    """The cached sparse reference against the full distributions, on the real 262k vocabulary."""
    text = TextSource().read()
    with LlamaModel(demo_model, n_ctx=512, n_seq=1) as base_lm:
        chunks = chunk_tokens(base_lm.tokenize(text), 512, 2, base_lm.add_bos, base_lm.bos_id)
        first, _ = scored_range(512)
        base = [logits for _, logits in evaluate(base_lm, chunks, first)]
        n_vocab = base_lm.n_vocab
    full, sparse, nbytes = [], [], 0
    with LlamaModel(demo_original, n_ctx=512, n_seq=1) as quant_lm:
        for (i, quant), b in zip(evaluate(quant_lm, chunks, first), base):
            nxt = chunks[i, first + 1:]
            ref = SparseReference.from_logits(b, nxt)
            nbytes += ref.nbytes
            full.append(token_stats(b, quant, nxt))
            sparse.append(token_stats_sparse(ref, quant, nxt))
    f, s = summarize(TokenStats.concat(full)), summarize(TokenStats.concat(sparse))
    llama_perplexity_bytes = f.n_tokens * 2 * (n_vocab + 4)
    assert nbytes / llama_perplexity_bytes < 0.05
    for key in ("kld_mean", "kld_median", "kld_p99", "kld_p999", "kld_max"):
        assert getattr(s, key) == pytest.approx(getattr(f, key), rel=1e-3), key


@pytest.mark.slow
def test_demo_score_end_to_end(demo_model, tmp_path) -> None:
    """From the command line: Q8_0 vs Q4_0 on the demo, the second call reusing the cached reference."""
    out = {}
    for t in ("Q8_0", "Q4_0"):
        recipe = tmp_path / f"{t}.yaml"
        recipe.write_text(uniform_recipe(t).to_yaml())
        run = subprocess.run([sys.executable, "-m", "recipe_search.cli", "score", "demo", str(recipe), "--chunks", "2",
                              "--cache-dir", str(tmp_path / "cache"), "--json"], capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, run.stderr
        out[t] = json.loads(run.stdout)
    assert "computed" in out["Q8_0"]["reference"] and "cached" in out["Q4_0"]["reference"]
    q8, q4 = out["Q8_0"]["metrics"], out["Q4_0"]["metrics"]
    for key in ("kld_mean", "kld_median", "kld_p90", "kld_p99", "kld_p999", "kld_max", "dp_rms", "ppl_ratio"):
        assert q4[key] > q8[key], key
    assert q4["same_top"] < q8["same_top"]
    assert out["Q4_0"]["fallbacks"] == {} and out["Q4_0"]["file_bytes"] < out["Q8_0"]["file_bytes"]
    assert not list(Path(tmp_path / "cache" / "work").glob("*.gguf"))


def test_trials_scored_beyond_chunks_keep_their_statistics_on_chunks(dense_model, tmp_path) -> None:
    """A reference with `more_chunks` holds them (as far as the text goes); a measurement asked for more chunks
    scores them, while its statistics stay those of the first `chunks`, and a cached one scored on fewer is measured
    again."""
    longer = ScoreSettings(ctx=128, chunks=2, more_chunks=2)
    worker = Worker(dense_model, longer, tmp_path / "cache", tmp_path / "work")
    assert len(worker.reference.tokens) == 4
    per_chunk = worker.reference.n_scored_per_chunk
    plain = worker.measure(uniform_recipe("Q4_0"))
    assert len(plain.kld_tokens) == 2 * per_chunk and plain.metrics["n_tokens"] == 2 * per_chunk
    far = worker.measure(uniform_recipe("Q4_0"), chunks=4)  # the cached two chunks are not enough
    assert not far.cached and len(far.kld_tokens) == 4 * per_chunk
    assert far.metrics == plain.metrics and np.array_equal(far.kld_tokens[:2 * per_chunk], plain.kld_tokens)
    assert worker.measure(uniform_recipe("Q4_0"), chunks=3).cached  # four chunks do for three
    assert reference_chunk_count(ScoreSettings(ctx=128, chunks=2, more_chunks=10), 128 * 7 + 5) == 7  # the text's end
    assert reference_chunk_count(ScoreSettings(ctx=128, chunks=2), 128 * 7) == 2
