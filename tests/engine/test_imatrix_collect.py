"""In-process imatrix collection (recipe_search.engine.imatrix_collect) on tiny models, checked against independent values."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gguf import GGUFReader
from tiny_models import BOS_ID, N_VOCAB

from recipe_search.engine import libggml as ggml_ctypes
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.imatrix_file import Imatrix

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

CTX = 64


def _weights(path: Path) -> dict[str, tuple[int, ...]]:
    """ggml shape (ne order) of every tensor."""
    return {t.name: tuple(int(n) for n in t.shape) for t in GGUFReader(path).tensors}


def _matmul_weights(path: Path) -> dict[str, tuple[int, ...]]:
    """The block weights llama-imatrix collects: 2-D/3-D `blk.*` tensors other than the conv kernel."""
    return {
        name: shape
        for name, shape in _weights(path).items()
        if name.startswith("blk.") and len(shape) >= 2 and ".ssm_conv1d." not in name
    }


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, N_VOCAB, n, dtype=np.int32)


def _check_entries(path: Path, imatrix: Imatrix, n_tokens: int, top_k: int) -> None:
    """One entry per collected weight, ne0 wide; dense counts = tokens, expert counts sum to tokens * top_k."""
    expected = _matmul_weights(path)
    assert set(imatrix.entries) == set(expected)
    for name, shape in expected.items():
        entry = imatrix.entries[name]
        n_expert = shape[2] if len(shape) == 3 else 1
        assert entry.in_sum2.shape == (n_expert, shape[0]), name
        assert entry.in_sum2.dtype == np.float32 and entry.counts.dtype == np.float32
        assert np.all(entry.in_sum2 >= 0), name
        if n_expert == 1:
            assert entry.counts.tolist() == [n_tokens], name
        else:
            assert entry.counts.sum() == n_tokens * top_k, name


def test_ggml_tensor_layout() -> None:
    lib = ggml_ctypes.ggml_base()
    ggml_object_size = 32  # struct ggml_object: offs, size, next, type, padding[4]
    assert ctypes.sizeof(ggml_ctypes.GgmlTensor) == lib.ggml_tensor_overhead() - ggml_object_size
    assert lib.ggml_op_name(ggml_ctypes.GGML_OP_MUL_MAT) == b"MUL_MAT"
    assert lib.ggml_op_name(ggml_ctypes.GGML_OP_MUL_MAT_ID) == b"MUL_MAT_ID"
    assert lib.ggml_type_name(ggml_ctypes.GGML_TYPE_F32) == b"f32"
    assert lib.ggml_type_name(ggml_ctypes.GGML_TYPE_I32) == b"i32"


def test_dense_sums_match_numpy(dense_model: Path) -> None:
    """blk.0.attn_q/k/v read rms_norm(token_embd[tokens]) * attn_norm: recompute that in numpy."""
    tokens = _tokens(2 * CTX + 7)
    imatrix = collect_imatrix(dense_model, tokens, ctx=CTX, n_threads=1)
    assert (imatrix.chunk_count, imatrix.chunk_size) == (2, CTX)
    _check_entries(dense_model, imatrix, 2 * CTX, 1)
    assert "output.weight" not in imatrix.entries

    tensors = {t.name: t for t in GGUFReader(dense_model).tensors}
    chunks = tokens[: 2 * CTX].reshape(2, CTX).copy()
    chunks[:, 0] = BOS_ID  # the tiny dense vocabulary adds BOS
    x = np.asarray(tensors["token_embd.weight"].data, dtype=np.float64)[chunks.ravel()]
    normed = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-6)
    normed *= np.asarray(tensors["blk.0.attn_norm.weight"].data, dtype=np.float64)
    expected = (normed * normed).sum(axis=0)
    for proj in ("q", "k", "v"):
        np.testing.assert_allclose(imatrix.entries[f"blk.0.attn_{proj}.weight"].in_sum2[0], expected, rtol=1e-4)


def _final_norm_outputs(path: Path, chunks: np.ndarray) -> np.ndarray:
    """The model's final-norm hidden states (embeddings, no pooling) for each chunk, decoded alone."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.use_extra_bufts = False  # the same kernels as the collector's model
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = chunks.shape[1]
    cparams.n_threads = cparams.n_threads_batch = 1
    cparams.embeddings = True
    cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
    lctx = llama_cpp.llama_init_from_model(model, cparams)
    n_embd = llama_cpp.llama_model_n_embd(model)
    out = []
    try:
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.int32)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(lctx), True)
            batch = llama_cpp.llama_batch_get_one(
                chunk.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)), len(chunk)
            )
            assert llama_cpp.llama_decode(lctx, batch) == 0
            out.append(np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(lctx), shape=(len(chunk), n_embd)).copy())
    finally:
        llama_cpp.llama_free(lctx)
        llama_cpp.llama_model_free(model)
    return np.concatenate(out).astype(np.float64)


def test_output_projection_reads_final_norm(dense_model: Path) -> None:
    tokens = _tokens(2 * CTX, seed=1)
    imatrix = collect_imatrix(dense_model, tokens, ctx=CTX, n_threads=1, process_output=True)
    entry = imatrix.entries["output.weight"]
    assert entry.counts.tolist() == [2 * CTX]
    chunks = tokens.reshape(2, CTX).copy()
    chunks[:, 0] = BOS_ID
    hidden = _final_norm_outputs(dense_model, chunks)
    np.testing.assert_allclose(entry.in_sum2[0], (hidden * hidden).sum(axis=0), rtol=1e-4)


def _check_routing(imatrix: Imatrix, n_layer: int, top_k: int) -> None:
    """Per block: gate/up/down experts see the same routing, and each routed slot reads the router's input."""
    for i in range(n_layer):
        blk = f"blk.{i}"
        gate, up, down = (imatrix.entries[f"{blk}.ffn_{p}_exps.weight"] for p in ("gate", "up", "down"))
        router = imatrix.entries[f"{blk}.ffn_gate_inp.weight"]
        np.testing.assert_array_equal(gate.counts, up.counts)
        np.testing.assert_array_equal(gate.counts, down.counts)
        np.testing.assert_allclose(gate.in_sum2, up.in_sum2, rtol=1e-6)
        np.testing.assert_allclose(gate.in_sum2.sum(axis=0), top_k * router.in_sum2[0], rtol=1e-4)


def test_moe_counts_and_routing(moe_model: Path) -> None:
    n_tokens = 3 * CTX
    imatrix = collect_imatrix(moe_model, _tokens(n_tokens, seed=2), ctx=CTX, n_threads=1)
    _check_entries(moe_model, imatrix, n_tokens, top_k=2)
    _check_routing(imatrix, n_layer=2, top_k=2)
    assert imatrix.chunk_count == 3


def test_hybrid_qwen35moe(qwen35_model: Path) -> None:
    imatrix = collect_imatrix(qwen35_model, _tokens(2 * CTX, seed=3), ctx=CTX, n_threads=1)
    _check_entries(qwen35_model, imatrix, 2 * CTX, top_k=2)
    _check_routing(imatrix, n_layer=3, top_k=2)


def test_trained_qwen35moe_on_wikitext(tiny_qwen35moe_real: Path, wiki_text: Path) -> None:
    ctx = 128
    text = wiki_text.read_bytes()[:20000]
    imatrix = collect_imatrix(tiny_qwen35moe_real, text, ctx=ctx, n_chunks=2, n_threads=1, dataset=str(wiki_text))
    assert imatrix.datasets == [str(wiki_text)]
    _check_entries(tiny_qwen35moe_real, imatrix, 2 * ctx, top_k=2)
    _check_routing(imatrix, n_layer=6, top_k=2)
    counts = imatrix.entries["blk.0.ffn_down_exps.weight"].counts
    assert len(set(counts.tolist())) > 1  # a trained router does not spread tokens evenly


def test_errors(dense_model: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeSearchError, match="do not fill one chunk"):
        collect_imatrix(dense_model, _tokens(CTX - 1), ctx=CTX, n_threads=1)
    with pytest.raises(RecipeSearchError, match="no such file"):
        collect_imatrix(tmp_path / "missing.gguf", _tokens(CTX), ctx=CTX, n_threads=1)
