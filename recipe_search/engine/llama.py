"""In-process evaluation engine: llama-perplexity's KL-divergence chunking and decoding, over llama.cpp's C API.

Mirrors `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp): the text is tokenized
whole with `common_tokenize(ctx, text, add_special=true)`, cut into chunks of `ctx` tokens whose first
token becomes BOS when the vocabulary adds one, and `n_seq` chunks are decoded per `llama_decode` call
as separate sequences of a context of `n_seq * ctx` cells (non-unified KV cache, flash attention
"auto", SWA cache not full-size, as its common defaults give). Logits are requested for positions
`ctx/2 .. ctx-1`, exactly the outputs llama-perplexity requests; those of `ctx/2 .. ctx-2` are scored.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import time
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Self

import llama_cpp
import numpy as np

from ..errors import RecipeSearchError
from . import llama_log
from .libggml import buffer_types

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_log.install()
        llama_cpp.llama_backend_init()
        _backend_ready = True


def _load_error(messages: list[str]) -> str:
    """The reason llama.cpp's log gives for a failed load: the loader's error, or the GGUF parser's behind it."""
    lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        reason = line.partition("error loading model: ")[2]
        if reason:
            gguf = [earlier.partition(": ")[2] for earlier in lines[:i] if earlier.startswith("gguf_")]
            return gguf[-1] if gguf and "failed to load model from" in reason else reason
    return lines[-1] if lines else "llama.cpp gave no reason"


def chunk_tokens(tokens: np.ndarray, ctx: int, n_chunks: int | None, add_bos: bool, bos_id: int) -> np.ndarray:
    """Chunk i = tokens[i*ctx:(i+1)*ctx] with its first token replaced by BOS when the model adds one.

    `n_chunks=None` takes every whole chunk (llama-perplexity's default); asking for more chunks than
    the text holds is an error rather than llama-perplexity's silent cap.
    """
    available = len(tokens) // ctx
    n = available if n_chunks is None else n_chunks
    if n < 1 or n > available:
        raise RecipeSearchError(
            f"the text tokenizes to {len(tokens)} tokens: {available} chunks of {ctx}, "
            f"{'not enough for one' if n_chunks is None else f'not {n_chunks}'}"
        )
    chunks = np.array(tokens[: n * ctx], dtype=np.int32).reshape(n, ctx)
    if add_bos:
        chunks[:, 0] = bos_id
    return chunks


def scored_range(ctx: int) -> tuple[int, int]:
    """(first, last): the logits of positions first..last (inclusive) predict tokens first+1..last+1."""
    if ctx < 4:
        raise ValueError(f"context {ctx} is too small to score")
    return ctx // 2, ctx - 2


class Batch:
    """A `llama_batch` over numpy arrays this object owns, one sequence id per token.

    Built directly instead of with llama_batch_init so that every field is filled by vectorised numpy
    (llama_batch_init allocates one seq_id array per token) and nothing needs llama_batch_free.
    """

    def __init__(self, pos: np.ndarray, seq: np.ndarray, output: np.ndarray, n_seq_id: np.ndarray | None = None) -> None:
        """`n_seq_id` (default: one each) gives each token's count of sequence ids, `seq` all of them in a row."""
        n = len(pos)
        self.token = np.zeros(n, dtype=np.int32)
        self.pos = np.ascontiguousarray(pos, dtype=np.int32)
        self.n_seq_id = np.ones(n, dtype=np.int32) if n_seq_id is None else np.ascontiguousarray(n_seq_id, np.int32)
        self.seq = np.ascontiguousarray(seq, dtype=np.int32)
        first = np.concatenate(([0], np.cumsum(self.n_seq_id[:-1]))).astype(np.uintp)
        self.seq_ptr = self.seq.ctypes.data + self.seq.itemsize * first
        self.output = np.ascontiguousarray(output, dtype=np.int8)
        self.c = llama_cpp.llama_batch(
            n_tokens=n,
            token=self.token.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
            embd=None,
            pos=self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=ctypes.cast(self.seq_ptr.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id))),
            logits=self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )


class _Override(ctypes.Structure):
    """struct llama_model_tensor_buft_override."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def model_params(n_gpu_layers: int = 0, overrides: Sequence[tuple[str, str]] = ()) -> llama_cpp.llama_model_params:
    """The model parameters this engine loads with: mmap, no extra buffer types, ``n_gpu_layers`` layers offloaded
    (negative: all) and ``overrides`` (pattern, buffer type name), as ``-ot`` gives them. The override table is
    kept on the returned struct (``_keep``), which must outlive the load. An unknown buffer type is an error."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu_layers  # 0: CPU only; needs a GPU build of llama-cpp-python
    mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    # No extra buffer types: this build's AMX kernels die with SIGILL on Q4_K (tile config bug, see
    # llama.cpp PR 26954), and weight repacking would copy the weights out of the mmap at every load.
    mparams.use_extra_bufts = False
    if overrides:
        known = buffer_types()
        unknown = [b for _, b in overrides if b not in known]
        if unknown:
            raise RecipeSearchError(f"buffer type {unknown[0]!r} is not one of this llama.cpp build's "
                                    f"({', '.join(known)})")
        table = (_Override * (len(overrides) + 1))(*[_Override(p.encode(), known[b]) for p, b in overrides],
                                                  _Override(None, None))
        mparams.tensor_buft_overrides = ctypes.cast(table, ctypes.c_void_p)
        mparams._keep = table  # type: ignore[attr-defined]  # ctypes keeps no reference through a cast pointer
    return mparams


class LlamaModel:
    """A GGUF model loaded with mmap on the CPU, with a context for `n_seq` sequences of `n_ctx` tokens.

    `n_ubatch` is llama.cpp's physical batch (llama-perplexity's default 512); the logical batch is
    always `n_seq * n_ctx`, so one `llama_decode` call evaluates one round of `n_seq` chunks, as
    llama-perplexity does with `-b n_seq*n_ctx`. `n_seq > 1` gives the same logits for the same work
    and only costs memory (the output buffer holds a round's logits). Batch and generation both use
    `n_threads` threads; on a machine shared with other busy processes, llama.cpp's OpenMP barriers
    spin, which `OMP_WAIT_POLICY=passive` in the environment before llama_cpp is imported avoids.
    `kv_unified` gives the sequences one KV cache of all `n_seq * n_ctx` cells, as llama-perplexity's task
    scores do. `n_gpu_layers` and `overrides` place the weights (`model_params`).
    """

    def __init__(
        self, path: str | Path, n_threads: int = 2, n_ctx: int = 512, n_seq: int = 1, n_ubatch: int = 512,
        cb_eval: object | None = None, n_gpu_layers: int = 0, kv_unified: bool = False,
        overrides: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.path = Path(path)
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        self._model = self._ctx = None
        if n_ctx < 1 or n_seq < 1 or n_threads < 1 or n_ubatch < 1:
            raise ValueError("n_ctx, n_seq, n_threads and n_ubatch must be positive")
        if not self.path.is_file():
            raise RecipeSearchError("no such file", self.path)
        _init_backend()
        mparams = model_params(n_gpu_layers, overrides)
        with llama_log.captured() as log:
            self._model = llama_cpp.llama_model_load_from_file(os.fsencode(self.path), mparams) or None
        if self._model is None:
            raise RecipeSearchError(f"llama.cpp cannot load it: {_load_error(log)}", self.path)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_seq * n_ctx
        cparams.n_batch = n_seq * n_ctx
        cparams.n_ubatch = min(n_ubatch, n_seq * n_ctx)
        cparams.n_seq_max = n_seq
        cparams.n_threads = cparams.n_threads_batch = n_threads
        if cb_eval is not None:  # the scheduler's eval callback (a ctypes function), e.g. imatrix collection
            cparams.cb_eval = cb_eval
        cparams.swa_full = False
        cparams.kv_unified = self.kv_unified = kv_unified
        with llama_log.captured() as log:
            self._ctx = llama_cpp.llama_init_from_model(self._model, cparams) or None
        self.context_log = "".join(log)  #: what llama.cpp logged making the context (its buffers' sizes)
        if self._ctx is None:
            self.close()
            raise RecipeSearchError(f"llama.cpp cannot make a context for it: {_load_error(log)}", self.path)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.bos_id: int = llama_cpp.llama_vocab_bos(self._vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_cells: int = llama_cpp.llama_n_ctx(self._ctx)  # n_seq * n_ctx, padded by llama.cpp to 256
        self.n_batch: int = llama_cpp.llama_n_batch(self._ctx)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the context and the model (idempotent)."""
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = self._vocab = None

    def _live(self) -> llama_cpp.llama_context_p:
        if self._ctx is None:
            raise ValueError(f"{self.path} is closed")
        return self._ctx

    @cached_property
    def vocab_fingerprint(self) -> str:
        """sha256 over the tokenizer type, BOS handling and every token's text and attributes."""
        self._live()
        vocab = self._vocab
        parts = [struct.pack("<iiii", llama_cpp.llama_vocab_type(vocab), self.n_vocab, self.bos_id, self.add_bos)]
        for token in range(self.n_vocab):
            text = llama_cpp.llama_vocab_get_text(vocab, token) or b""
            parts.append(struct.pack("<iI", llama_cpp.llama_vocab_get_attr(vocab, token), len(text)) + text)
        return hashlib.sha256(b"".join(parts)).hexdigest()

    def tokenize(self, text: bytes | str, add_special: bool = True) -> np.ndarray:
        """Token ids of a whole text, as llama-perplexity's `common_tokenize(ctx, text, add_special)`."""
        self._live()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        n_max = len(data) + 2 * add_special
        if n_max >= 2**31:
            raise RecipeSearchError(f"text of {len(data)} bytes is too large to tokenize")
        for _ in range(2):
            out = np.empty(n_max, dtype=np.int32)
            n = llama_cpp.llama_tokenize(
                self._vocab,
                data,
                len(data),
                out.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
                n_max,
                add_special,
                False,
            )
            if n >= 0:
                return out[:n].copy()
            n_max = -n
        raise RecipeSearchError("tokenization failed")

    def detokenize(self, tokens: np.ndarray) -> bytes:
        """The text of ``tokens`` (special tokens kept as they are), as ``llama_detokenize`` gives it."""
        self._live()
        ids = np.ascontiguousarray(tokens, dtype=np.int32)
        n_max = 8 * len(ids) + 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(n_max)
            n = llama_cpp.llama_detokenize(self._vocab, ids.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
                                           len(ids), buf, n_max, False, False)
            if n >= 0:
                return buf.raw[:n]
            n_max = -n
        raise RecipeSearchError("detokenization failed")

    def output_logits(self, n_outputs: int) -> np.ndarray:
        """The last decode's logits [n_outputs, n_vocab], in the batch's order of output tokens: a read-only
        view of llama.cpp's buffer, which the next decode overwrites."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._live()), shape=(n_outputs, self.n_vocab))
        logits.flags.writeable = False
        return logits

    def clear(self) -> None:
        """Empty the KV cache / recurrent state of every sequence."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._live()), True)

    def decode(self, batch: Batch, n_tokens: int) -> None:
        batch.c.n_tokens = n_tokens
        rc = llama_cpp.llama_decode(self._live(), batch.c)
        if rc != 0:
            raise RecipeSearchError(f"llama_decode failed (code {rc})", self.path)

    def generate_speed(self, n_prompt: int = 512, n_gen: int = 64) -> tuple[float, float]:
        """(prompt-processing, generation) speed in tokens/s, each from an empty cache as llama-bench does."""
        if not (0 < n_prompt <= self.n_ctx and 0 < n_gen <= self.n_ctx):
            raise ValueError(f"n_prompt and n_gen must be in 1..{self.n_ctx}")
        prompt = np.random.default_rng(0).integers(0, self.n_vocab, n_prompt, dtype=np.int32)
        pp = Batch(np.arange(n_prompt), np.zeros(n_prompt), np.arange(n_prompt) == n_prompt - 1)
        pp.token[:] = prompt
        tg = Batch(np.zeros(1), np.zeros(1), np.ones(1))
        self.clear()
        tg.token[0] = prompt[0]
        self.decode(tg, 1)  # warm-up: graph allocation, first page faults
        self.clear()
        start = time.perf_counter()
        self.decode(pp, n_prompt)
        llama_cpp.llama_synchronize(self._live())
        pp_s = time.perf_counter() - start
        self.clear()
        start = time.perf_counter()
        for i in range(n_gen):
            tg.token[0], tg.pos[0] = prompt[i % n_prompt], i
            self.decode(tg, 1)
        llama_cpp.llama_synchronize(self._live())
        tg_s = time.perf_counter() - start
        self.clear()
        return n_prompt / pp_s, n_gen / tg_s


def evaluate(model: LlamaModel, chunks: np.ndarray, first: int,
             copy: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (chunk index, float32 logits [ctx-1-first, n_vocab]) of positions first..ctx-2 of each chunk.

    Chunks are decoded `model.n_seq` per llama_decode call, the next round only when the consumer asks
    for it. Each yielded array is a fresh copy, or with ``copy=False`` a read-only view of llama.cpp's
    output buffer that the next round overwrites (no copy of a chunk's logits, ~270 MB at a 262k vocabulary).
    """
    chunks = np.ascontiguousarray(chunks, dtype=np.int32)
    n_chunks, ctx = chunks.shape
    if ctx > model.n_ctx:
        raise ValueError(f"chunks of {ctx} tokens exceed the model's context of {model.n_ctx}")
    if not 0 < first < ctx - 1:
        raise ValueError(f"first scored position {first} is outside 1..{ctx - 2}")
    n_seq, n_vocab = model.n_seq, model.n_vocab
    n_out = ctx - first  # outputs per sequence; the last one is requested, as llama-perplexity does, but unused
    pos = np.tile(np.arange(ctx), n_seq)
    batch = Batch(pos, np.repeat(np.arange(n_seq), ctx), pos >= first)
    for start in range(0, n_chunks, n_seq):
        n = min(n_seq, n_chunks - start)
        batch.token[: n * ctx] = chunks[start : start + n].ravel()
        model.clear()
        model.decode(batch, n * ctx)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(model._live()), shape=(n, n_out, n_vocab))
        logits.flags.writeable = False
        for s in range(n):
            yield start + s, logits[s, : n_out - 1].copy() if copy else logits[s, : n_out - 1]
