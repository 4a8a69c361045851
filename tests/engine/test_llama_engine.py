"""The in-process evaluation engine against llama-perplexity's chunking rules and llama-cpp-python's high-level API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipe_search.core.text import TextSource
from recipe_search.engine import llama
from recipe_search.errors import RecipeSearchError

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

CTX = 64
# n_threads=1 throughout: on these tiny models two threads mostly wait on each other, badly so on a busy machine


def test_chunk_tokens_takes_consecutive_windows_and_swaps_in_bos() -> None:
    tokens = np.arange(1000, 1000 + 5 * CTX + 7, dtype=np.int32)
    chunks = llama.chunk_tokens(tokens, CTX, 3, add_bos=True, bos_id=2)
    assert chunks.shape == (3, CTX) and chunks.dtype == np.int32
    assert (chunks[:, 0] == 2).all()
    for i in range(3):
        assert (chunks[i, 1:] == tokens[i * CTX + 1 : (i + 1) * CTX]).all()
    assert tokens[0] == 1000  # the input is not modified
    plain = llama.chunk_tokens(tokens, CTX, None, add_bos=False, bos_id=2)
    assert plain.shape == (5, CTX) and (plain.ravel() == tokens[: 5 * CTX]).all()
    with pytest.raises(RecipeSearchError, match="5 chunks"):
        llama.chunk_tokens(tokens, CTX, 6, add_bos=False, bos_id=2)
    with pytest.raises(RecipeSearchError):
        llama.chunk_tokens(tokens[: CTX - 1], CTX, None, add_bos=False, bos_id=2)


def test_scored_range_is_second_half_minus_last() -> None:
    assert llama.scored_range(512) == (256, 510)
    first, last = llama.scored_range(CTX)
    assert (first, last) == (32, 62)
    assert last - first + 1 == CTX - 1 - first  # one logit row per predicted token first+1..ctx-1


def test_text_source_drops_one_trailing_newline(tmp_path: Path) -> None:
    """As llama-perplexity's -f does, for the whole file; a cut keeps its newline."""
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\r\nb\n\n")
    assert TextSource(path).read() == b"a\r\nb\n"
    assert TextSource(path, 0.0, 0.3).read() == b"a\r\n"
    with pytest.raises(RecipeSearchError, match="missing.txt: cannot read text"):
        TextSource(tmp_path / "missing.txt").read()

def test_unloadable_files_are_user_errors(tmp_path: Path, dense_model: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file" * 100)
    with pytest.raises(RecipeSearchError, match="junk.gguf: llama.cpp cannot load it: invalid magic"):
        llama.LlamaModel(junk)
    truncated = tmp_path / "truncated.gguf"
    data = dense_model.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecipeSearchError, match="truncated.gguf: .*not within the file bounds"):
        llama.LlamaModel(truncated)
    with pytest.raises(RecipeSearchError, match="no such file"):
        llama.LlamaModel(tmp_path / "absent.gguf")


@pytest.fixture(scope="module")
def chunks(dense_model: Path, sample_text: str) -> np.ndarray:
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as model:
        tokens = model.tokenize(sample_text)
        assert tokens[0] == model.bos_id and model.add_bos
        return llama.chunk_tokens(tokens, CTX, 3, model.add_bos, model.bos_id)


def test_properties_and_tokenize_match_high_level(dense_model: Path, moe_model: Path, sample_text: str) -> None:
    import llama_cpp

    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as model:
        high = llama_cpp.Llama(str(dense_model), n_ctx=CTX, verbose=False)
        try:
            expected = high.tokenize(sample_text.encode(), add_bos=True, special=False)
            assert model.tokenize(sample_text).tolist() == expected
            assert model.tokenize(sample_text.encode(), add_special=False).tolist() == expected[1:]
            assert model.n_vocab == high.n_vocab() and model.bos_id == high.token_bos()
            assert model.n_ctx_train == 1024
        finally:
            high.close()
        fingerprint = model.vocab_fingerprint
    assert len(fingerprint) == 64
    with (
        llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as again,
        llama.LlamaModel(moe_model, n_threads=1, n_ctx=CTX) as other,
    ):
        assert again.vocab_fingerprint == fingerprint
        assert other.vocab_fingerprint != fingerprint  # same tokens, but no BOS added


def test_evaluate_is_independent_of_sequences_per_decode(dense_model: Path, chunks: np.ndarray) -> None:
    first, last = llama.scored_range(CTX)
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX, n_seq=1) as one:
        single = list(llama.evaluate(one, chunks, first))
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX, n_seq=2) as two:
        paired = list(llama.evaluate(two, chunks, first))  # rounds of 2 + 1 chunks
    assert [i for i, _ in single] == [i for i, _ in paired] == [0, 1, 2]
    for (_, a), (_, b) in zip(single, paired):
        assert a.shape == (last - first + 1, one.n_vocab) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert not np.allclose(single[0][1], single[1][1])  # chunks really differ


def test_memory_is_cleared_between_rounds_of_a_hybrid_model(qwen35_model: Path, sample_text: str) -> None:
    """Recurrent state and KV cache are reset: a chunk scores the same after another chunk or alone."""
    with llama.LlamaModel(qwen35_model, n_threads=1, n_ctx=CTX, n_seq=2) as model:
        chunks = llama.chunk_tokens(model.tokenize(sample_text), CTX, 3, model.add_bos, model.bos_id)
        first, _ = llama.scored_range(CTX)
        paired = dict(llama.evaluate(model, chunks, first))
        alone = dict(llama.evaluate(model, chunks[2:], first))
    with llama.LlamaModel(qwen35_model, n_threads=1, n_ctx=CTX, n_seq=1) as model:
        single = dict(llama.evaluate(model, chunks, first))
    np.testing.assert_allclose(paired[2], alone[0], rtol=0, atol=1e-4)
    for i in range(3):
        np.testing.assert_allclose(paired[i], single[i], rtol=0, atol=1e-4)


def test_evaluate_matches_high_level_logits_all(dense_model: Path, chunks: np.ndarray) -> None:
    import llama_cpp

    first, last = llama.scored_range(CTX)
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX, n_seq=2) as model:
        ours = dict(llama.evaluate(model, chunks, first))
    high = llama_cpp.Llama(
        str(dense_model), n_ctx=CTX, n_batch=CTX, logits_all=True, flash_attn=True, swa_full=False, verbose=False
    )
    try:
        for i, chunk in enumerate(chunks):
            high.reset()
            high.eval(chunk.tolist())
            np.testing.assert_allclose(ours[i], high.scores[first : last + 1], rtol=0, atol=1e-3)
    finally:
        high.close()


def test_evaluate_rejects_bad_shapes(dense_model: Path, chunks: np.ndarray) -> None:
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX // 2) as model:
        with pytest.raises(ValueError, match="exceed"):
            next(llama.evaluate(model, chunks, CTX // 2))
        with pytest.raises(ValueError, match="outside"):
            next(llama.evaluate(model, chunks[:, : CTX // 2], CTX // 2 - 1))


def test_generate_speed(dense_model: Path) -> None:
    with llama.LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as model:
        pp, tg = model.generate_speed(n_prompt=CTX, n_gen=4)
        assert pp > 0 and tg > 0
        with pytest.raises(ValueError):
            model.generate_speed(n_prompt=CTX + 1)
