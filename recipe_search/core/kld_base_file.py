"""llama-perplexity's ``--kl-divergence-base`` file: the base model's log-probabilities, 16 bits each.

Layout (tools/perplexity/perplexity.cpp, `perplexity` writing and `kl_divergence` reading it):

- ``_logits_`` (8 bytes), n_ctx (u32), n_vocab (i32), n_chunk (i32);
- n_chunk·n_ctx int32 tokens: the first n_chunk·n_ctx tokens of the text, as tokenized (the BOS
  that replaces each chunk's first token during evaluation is not stored);
- per chunk, one row per scored position (positions n_ctx/2 … n_ctx−2, so n_ctx−1−n_ctx/2 rows,
  predicting tokens n_ctx/2+1 … n_ctx−1): f32 scale, f32 min_log_prob, n_vocab uint16 codes, one
  zero uint16 more when n_vocab is odd (nv = 2·((n_vocab+1)/2) + 4 uint16 per row).

A row encodes log-probabilities as ``scale·code + min_log_prob``: logits are floored at max−16,
scale = (max − min)/65535, code = round-half-even(((logit − min)/scale)) for logits above the floor
and 0 otherwise (0 everywhere when all logits are equal). The writer and reader both stream.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from ..errors import RecipeSearchError
from .kld import DEFAULT_BLOCK, TokenStats, scored_per_chunk, token_stats_from_logprobs

MAGIC = b"_logits_"
HEADER = struct.Struct("<8sIii")
_LOGIT_RANGE = np.float32(16)
_CODE_MAX = np.float32(65535)


def row_width(n_vocab: int) -> int:
    """uint16 entries per row: two f32 (scale, min) and the codes padded to an even count."""
    return 2 * ((n_vocab + 1) // 2) + 4


def encode_logprobs(logits: np.ndarray) -> np.ndarray:
    """Rows [n, row_width(n_vocab)] uint16 for float32 logits [n, n_vocab], as llama-perplexity writes them."""
    x = np.asarray(logits, dtype=np.float32)
    n, n_vocab = x.shape
    mx = x.max(axis=1)
    mn = np.maximum(x.min(axis=1), mx - _LOGIT_RANGE)
    log_sum_exp = np.log(np.exp(x - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
    min_log_prob = (mn - mx) - log_sum_exp
    scale = (mx - mn) / _CODE_MAX
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale != 0, np.float32(1) / scale, np.float32(0))
    codes = np.where(x > mn[:, None], np.rint(inv_scale[:, None] * (x - mn[:, None])), np.float32(0))
    rows = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    rows[:, :4] = np.stack([scale, min_log_prob], axis=1).astype("<f4").view(np.uint16)
    rows[:, 4:4 + n_vocab] = codes.astype(np.int64).astype(np.uint16)
    return rows


def decode_logprobs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """float32 log-probabilities [n, n_vocab] of encoded rows: scale·code + min_log_prob in float32."""
    rows = np.asarray(rows, dtype=np.uint16)
    head = np.ascontiguousarray(rows[:, :4]).view("<f4").astype(np.float32)
    return head[:, :1] * rows[:, 4:4 + n_vocab].astype(np.float32) + head[:, 1:2]


def token_stats_from_rows(rows: np.ndarray, n_vocab: int, quant_logits: np.ndarray, next_tokens: np.ndarray,
                          block_size: int = DEFAULT_BLOCK) -> TokenStats:
    """Per-token statistics of quant logits against encoded base rows, decoded block by block."""
    rows, quant_logits, next_tokens = map(np.asarray, (rows, quant_logits, next_tokens))
    if rows.ndim != 2 or rows.shape[1] != row_width(n_vocab) or len(quant_logits) != len(rows):
        raise RecipeSearchError(f"{len(quant_logits)} quant rows against base rows of shape {rows.shape} "
                                f"(expected width {row_width(n_vocab)})")
    return TokenStats.concat([
        token_stats_from_logprobs(decode_logprobs(rows[s:s + block_size], n_vocab), quant_logits[s:s + block_size],
                                  next_tokens[s:s + block_size], block_size)
        for s in range(0, max(len(rows), 1), block_size)
    ])


class KLDBaseFileWriter:
    """Writes a base file chunk by chunk, under a temporary name renamed into place by `close`.

    `tokens` [n_chunk, n_ctx] are the evaluated chunks' tokens; `write_chunk` takes each chunk's
    logits at the scored positions, [n_ctx−1−n_ctx/2, n_vocab].
    """

    def __init__(self, path: str | os.PathLike[str], tokens: np.ndarray, n_vocab: int) -> None:
        self.path = Path(path)
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] < 1 or scored_per_chunk(tokens.shape[1]) < 1:
            raise RecipeSearchError(f"tokens of shape {tokens.shape}: expected [n_chunk ≥ 1, n_ctx ≥ 3]", self.path)
        if n_vocab < 1 or tokens.min() < 0 or tokens.max() >= n_vocab:
            raise RecipeSearchError(f"token ids outside a vocabulary of {n_vocab}", self.path)
        self.n_chunk, self.n_ctx = tokens.shape
        self.n_vocab = n_vocab
        self.chunks_written = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(HEADER.pack(MAGIC, self.n_ctx, n_vocab, self.n_chunk))
        self._fh.write(tokens.astype("<i4").tobytes())

    def write_chunk(self, logits: np.ndarray, block_size: int = DEFAULT_BLOCK) -> None:
        """Append one chunk: its scored positions' logits, encoded block by block."""
        expected = (scored_per_chunk(self.n_ctx), self.n_vocab)
        if np.shape(logits) != expected:
            raise RecipeSearchError(f"chunk logits of shape {np.shape(logits)}, expected {expected}", self.path)
        if self.chunks_written >= self.n_chunk:
            raise RecipeSearchError(f"more than the announced {self.n_chunk} chunks", self.path)
        for s in range(0, expected[0], block_size):
            self._fh.write(encode_logprobs(logits[s:s + block_size]).astype("<u2").tobytes())
        self.chunks_written += 1

    def close(self) -> None:
        """Finish the file; it must hold all announced chunks."""
        if self._fh.closed:
            return
        self._fh.close()
        if self.chunks_written != self.n_chunk:
            self._tmp.unlink(missing_ok=True)
            raise RecipeSearchError(f"{self.chunks_written} of {self.n_chunk} chunks written; file discarded",
                                    self.path)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard the file."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> KLDBaseFileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class KLDBaseFile:
    """A base file, memory-mapped and checked: header, size and token ids."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(HEADER.size)
        except OSError as err:
            raise RecipeSearchError(f"cannot read: {err.strerror}", self.path) from None
        if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
            raise RecipeSearchError("not a llama-perplexity KL-divergence base file (no _logits_ magic)", self.path)
        if len(head) < HEADER.size:
            raise RecipeSearchError("truncated header", self.path)
        _, self.n_ctx, self.n_vocab, self.n_chunk = HEADER.unpack(head)
        if self.n_vocab < 1 or self.n_chunk < 1 or scored_per_chunk(self.n_ctx) < 1:
            raise RecipeSearchError(f"bad header: n_ctx={self.n_ctx}, n_vocab={self.n_vocab}, "
                                    f"n_chunk={self.n_chunk}", self.path)
        self.n_scored = scored_per_chunk(self.n_ctx)
        self.width = row_width(self.n_vocab)
        tokens_bytes = 4 * self.n_chunk * self.n_ctx
        expected = HEADER.size + tokens_bytes + 2 * self.n_chunk * self.n_scored * self.width
        if size != expected:
            what = "truncated" if size < expected else "unexpected trailing data"
            raise RecipeSearchError(f"{what}: {size} bytes where n_ctx={self.n_ctx}, n_vocab={self.n_vocab}, "
                                    f"n_chunk={self.n_chunk} make {expected}", self.path)
        self.tokens = np.memmap(self.path, dtype="<i4", mode="r", offset=HEADER.size,
                                shape=(self.n_chunk, self.n_ctx))
        if self.tokens.min() < 0 or self.tokens.max() >= self.n_vocab:
            raise RecipeSearchError(f"token ids outside the vocabulary of {self.n_vocab}", self.path)
        self._rows = np.memmap(self.path, dtype="<u2", mode="r", offset=HEADER.size + tokens_bytes,
                               shape=(self.n_chunk, self.n_scored, self.width))

    def next_tokens(self, chunk: int) -> np.ndarray:
        """The tokens the scored positions of `chunk` predict (n_ctx/2+1 … n_ctx−1)."""
        return np.asarray(self.tokens[chunk, self.n_ctx // 2 + 1:])

    def rows(self, chunk: int) -> np.ndarray:
        """The encoded rows of `chunk`, [n_scored, width] uint16, memory-mapped (nothing read yet)."""
        return self._rows[chunk]

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(tokens [n_ctx], next tokens [n_scored], encoded rows) of every chunk in order."""
        for c in range(self.n_chunk):
            yield np.asarray(self.tokens[c]), self.next_tokens(c), self.rows(c)

    def token_stats(self, chunk: int, quant_logits: np.ndarray, block_size: int = DEFAULT_BLOCK) -> TokenStats:
        """Per-token statistics of a chunk's quant logits (its scored positions) against this file."""
        return token_stats_from_rows(self.rows(chunk), self.n_vocab, quant_logits, self.next_tokens(chunk),
                                     block_size)
