"""Importance matrix collection in-process, as llama.cpp's `llama-imatrix` computes it.

Mirrors tools/imatrix/imatrix.cpp of the llama.cpp vendored by llama-cpp-python 0.3.36:

- The text is tokenized whole (`add_special=true`, special tokens not parsed) and cut into chunks of
  `ctx` tokens; the first token of each chunk becomes BOS when the vocabulary adds one. With the
  default logical batch of 2048, `n_seq = max(1, n_batch // ctx)` chunks are decoded per call as
  separate sequences of a context of `n_seq * ctx` cells, every token asking for logits; the memory
  is cleared before each call; physical batches are 512 tokens.
- The scheduler's eval callback asks for every MUL_MAT_ID node, and for MUL_MAT nodes whose weight
  name starts with `blk.` (or is `output.weight` when `process_output`) and whose F32 input has at
  least 16 rows. On the data call it adds, per input column, the squared activations of `src[1]`:
  for MUL_MAT into one row per matrix of the weight (one count for the tensor), for MUL_MAT_ID into
  the row of the expert that `src[2]` (the ids) routes each token-slot to (one count per expert).

Sums are accumulated in float64 (llama-imatrix uses float32) and returned as float32.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np
import scipy.sparse

from ..errors import RecipeSearchError
from ..formats.imatrix_file import Imatrix, ImatrixEntry
from .libggml import (
    GGML_OP_MUL_MAT,
    GGML_OP_MUL_MAT_ID,
    GGML_TYPE_F32,
    GgmlTensor,
    ggml_base,
    tensor_at,
    tensor_name,
    tensor_to_numpy,
)
from .llama import Batch, LlamaModel, chunk_tokens

_MIN_ROWS = 16  # llama-imatrix ignores dense mat-muls of fewer input rows
_N_UBATCH = 512


def weight_name(t: GgmlTensor) -> str:
    """The weight's name without the scheduler's `BACKEND#...#n` decoration (filter_tensor_name)."""
    name = tensor_name(t)
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


class _Collector:
    """The eval callback and what it has accumulated: per weight, sums [rows, ne0] and counts [rows]."""

    def __init__(self, process_output: bool) -> None:
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: str | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def _on_node(self, address: int, ask: bool, user_data: int | None) -> bool:
        if self.error is not None:
            return False
        try:
            t = tensor_at(address)
            if ask:
                return self._wants(t)
            if t.op == GGML_OP_MUL_MAT_ID:
                self._collect_moe(t)
            else:
                self._collect_dense(t)
            return True
        except Exception as err:  # an exception must not cross back into C; it is re-raised after decode
            self.error = f"{type(err).__name__}: {err}"
            return False

    def _wants(self, t: GgmlTensor) -> bool:
        if t.op == GGML_OP_MUL_MAT_ID:
            return True
        if t.op != GGML_OP_MUL_MAT:
            return False
        src1 = t.src[1].contents
        if src1.ne[1] < _MIN_ROWS or src1.type != GGML_TYPE_F32:
            return False
        name = weight_name(t.src[0].contents)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _entry(self, name: str, n_rows: int, width: int, n_counts: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_rows, width))
            self.counts[name] = np.zeros(n_counts, dtype=np.int64)
        sums, counts = self.sums[name], self.counts[name]
        if sums.shape != (n_rows, width) or len(counts) != n_counts:
            raise ValueError(f"inconsistent size for {name}: {sums.shape} vs {(n_rows, width)}")
        return sums, counts

    def _collect_dense(self, t: GgmlTensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = weight_name(src0)
        n_mat = src0.ne[2] * src0.ne[3]
        sums, counts = self._entry(name, n_mat, src1.ne[0], 1)
        x = tensor_to_numpy(src1).astype(np.float64)  # [ne3, ne2, rows, ne0]
        per_plane = np.einsum("abrj,abrj->abj", x, x)
        i3, i2 = np.meshgrid(np.arange(src1.ne[3]), np.arange(src1.ne[2]), indexing="ij")
        mat_id = (i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])  # 3-D+ activations flatten onto a 2-D weight
        np.add.at(sums, mat_id.ravel(), per_plane.reshape(-1, src1.ne[0]))
        if not np.isfinite(sums).all():
            raise ValueError(f"non-finite values in {name}")
        counts += ggml_base().ggml_nrows(ctypes.byref(src1)) // n_mat

    def _collect_moe(self, t: GgmlTensor) -> None:
        src0, src1, ids_t = t.src[0].contents, t.src[1].contents, t.src[2].contents
        name = weight_name(src0)
        n_as, width, n_slots, n_tokens = src0.ne[2], src1.ne[0], src1.ne[1], src1.ne[2]
        if ids_t.ne[1] != n_tokens or src1.ne[3] != 1:
            raise ValueError(f"unexpected MUL_MAT_ID shapes for {name}")
        sums, counts = self._entry(name, n_as, width, n_as)
        ids = tensor_to_numpy(ids_t)[0, 0]  # [n_tokens, n_used]: expert of each token-slot
        if ids.size and (ids.min() < 0 or ids.max() >= n_as):
            raise ValueError(f"expert id out of range in {name}")
        x = tensor_to_numpy(src1)[0].astype(np.float64).reshape(n_tokens * n_slots, width)
        # slot k of token r reads input row (r, k % n_slots): broadcast input for gate/up, per-slot for down
        rows = np.arange(n_tokens)[:, None] * n_slots + np.arange(ids.shape[1])[None, :] % n_slots
        routing = scipy.sparse.csr_matrix(
            (np.ones(ids.size), (ids.ravel(), rows.ravel())), shape=(n_as, n_tokens * n_slots)
        )
        sums += routing @ (x * x)
        routed = np.bincount(ids.ravel(), minlength=n_as)
        counts += routed
        if not np.isfinite(sums[routed > 0]).all():
            raise ValueError(f"non-finite values in {name}")

    def result(self, chunk_size: int, dataset: str | None) -> Imatrix:
        entries = {
            name: ImatrixEntry(
                in_sum2=self.sums[name].reshape(len(counts), -1).astype(np.float32),
                counts=counts.astype(np.float32),
            )
            for name, counts in sorted(self.counts.items())
        }
        max_count = max((int(c.max()) for c in self.counts.values() if c.size), default=0)
        return Imatrix(
            entries=entries,
            datasets=[dataset] if dataset else [],
            chunk_count=max_count // chunk_size,
            chunk_size=chunk_size,
        )


def collect_imatrix(
    model_path: str | Path,
    tokens_or_text: str | bytes | Sequence[int] | np.ndarray,
    ctx: int = 512,
    n_chunks: int | None = None,
    n_threads: int = 2,
    *,
    n_batch: int = 2048,
    process_output: bool = False,
    dataset: str | None = None,
    n_gpu_layers: int = 0,
) -> Imatrix:
    """Evaluate `n_chunks` chunks of `ctx` tokens (all whole chunks when None) and return the imatrix.

    Text (str or bytes) is tokenized as llama-imatrix tokenizes its prompt (a file read as `-f` does
    drops one trailing newline); a token sequence is used as it is. `dataset` is the name recorded in
    the result's datasets. Unlike llama-imatrix, one chunk of text suffices (it wants two).
    """
    path = Path(model_path)
    if ctx < 1 or n_threads < 1 or n_batch < 1 or (n_chunks is not None and n_chunks < 1):
        raise ValueError("ctx, n_chunks, n_threads and n_batch must be positive")
    n_seq = max(1, n_batch // ctx)
    collector = _Collector(process_output)
    with LlamaModel(path, n_threads=n_threads, n_ctx=ctx, n_seq=n_seq, n_ubatch=_N_UBATCH,
                    cb_eval=collector.callback, n_gpu_layers=n_gpu_layers) as lm:
        tokens = lm.tokenize(tokens_or_text) if isinstance(tokens_or_text, (str, bytes)) else \
            np.asarray(tokens_or_text, dtype=np.int32)
        available = len(tokens) // ctx
        if available < 1:
            raise RecipeSearchError(f"{len(tokens)} tokens do not fill one chunk of {ctx}")
        chunks = chunk_tokens(tokens, ctx, min(n_chunks or available, available), lm.add_bos, lm.bos_id)
        pos = np.tile(np.arange(ctx), n_seq)
        batch = Batch(pos, np.repeat(np.arange(n_seq), ctx), np.ones(len(pos)))  # logits for every token
        for first in range(0, len(chunks), n_seq):
            group = chunks[first:first + n_seq]
            batch.token[:group.size] = group.ravel()
            lm.clear()
            lm.decode(batch, group.size)
            if collector.error is not None:
                raise RecipeSearchError(f"imatrix collection failed: {collector.error}", path)
    return collector.result(ctx, dataset)
