"""One cache entry filled: a source tensor quantized as llama.cpp quantizes it, its shard and record written.

A tensor is quantized exactly as `llama_model_quantize_impl` / `llama_tensor_quantize_impl`
(src/llama-quant.cpp) do it: the source rows converted to float by the source type's `to_float`
(F16/BF16 row conversion; an F32 source is used as it is), `ggml_quantize_chunk` over runs of rows
that never cross an expert boundary, each expert of a 3-D `*_exps` tensor with its own slice of
the imatrix entry (`n_per_row` floats per expert), `ggml_validate_row_data` on the result. Rows are
quantized independently, so how they are cut into chunks and threads does not change the bytes.
A tensor whose type does not change is copied. Beside the shard, its record holds the imatrix-weighted
squared quantization error (dequantized against the float source) and the digests `tensor_cache` checks.
"""

from __future__ import annotations

import json
import mmap
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.cache_need import SHARD_ALIGNMENT
from ..core.inventory import Tensor
from ..errors import RecipeSearchError
from ..formats.files import write_error
from ..formats.ggml_types import GGMLType, tensor_bytes
from ..formats.gguf_write import pad
from . import libggml
from .digest import digest_of, json_digest

#: rows handed to a thread at a time hold at most this many floats, and never cross an expert boundary
_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class WeightError:
    """Squared quantization error of one tensor, imatrix-weighted per column (unweighted without one)."""

    sq_error: float  # sum over elements of w_col * (dequantized - source)^2
    sq_source: float  # sum over elements of w_col * source^2
    weighted: bool
    per_expert: tuple[float, ...] = ()  # sq_error of each expert of a 3-D tensor (one value for a 2-D one)

    @property
    def relative(self) -> float:
        return self.sq_error / self.sq_source if self.sq_source > 0 else 0.0


def quantize_tensor(raw: np.ndarray, tensor: Tensor, new_type: GGMLType, imatrix: np.ndarray | None,
                    threads: int) -> tuple[list[np.ndarray], WeightError]:
    """Quantize one source tensor (``raw``: its bytes) to ``new_type``; returns the data and the weight error.

    The rows go to ``threads`` threads in chunks; each chunk is converted, quantized and compared with its
    source in its thread (ggml's calls release the GIL), as llama.cpp converts and quantizes in its threads.
    The chunks do not depend on ``threads``, and their errors are summed in row order: the same figures for
    any thread count."""
    n_per_row = tensor.shape[0]
    rows_per_expert = tensor.shape[1] if len(tensor.shape) > 1 else 1
    n_rows = tensor.n_elements // n_per_row
    if libggml.requires_imatrix(int(new_type)) and imatrix is None:
        raise RecipeSearchError(f"ggml cannot quantize {tensor.name} to {new_type.name} without imatrix data")
    q = np.empty((n_rows, libggml.row_size(int(new_type), n_per_row)), dtype=np.uint8)
    chunk_rows = max(1, min(rows_per_expert, _CHUNK_ELEMENTS // n_per_row))
    chunks = [(first, min(first + chunk_rows, expert + rows_per_expert))
              for expert in range(0, n_rows, rows_per_expert) for first in range(expert, expert + rows_per_expert, chunk_rows)]
    src_row = libggml.row_size(int(tensor.ggml_type), n_per_row)

    def chunk(rows: tuple[int, int]) -> tuple[bool, float, float]:
        first, end = rows
        src = raw[first * src_row:end * src_row]
        if tensor.ggml_type == GGMLType.F32:
            x = src.view(np.float32).reshape(end - first, n_per_row)
        else:
            x = libggml.to_float(int(tensor.ggml_type), src, (end - first) * n_per_row).reshape(end - first, n_per_row)
        expert = first // rows_per_expert
        w = None if imatrix is None else imatrix[expert * n_per_row:(expert + 1) * n_per_row]
        ok = libggml.quantize_rows(int(new_type), x, q[first:end], w)
        return (ok, *_chunk_error(x, q[first:end], new_type, w))

    with ThreadPoolExecutor(max(1, threads)) as pool:
        done = list(pool.map(chunk, chunks))
    if not all(ok for ok, _, _ in done):
        raise RecipeSearchError(f"quantized data validation failed for {tensor.name} ({new_type.name})")
    errors = np.zeros(max(1, n_rows // rows_per_expert))
    for (first, _), (_, e, _) in zip(chunks, done, strict=True):
        errors[first // rows_per_expert] += e
    return [q.reshape(-1)], WeightError(float(errors.sum()), float(sum(r for _, _, r in done)), imatrix is not None,
                                        tuple(float(e) for e in errors))


def _chunk_error(x: np.ndarray, q: np.ndarray, new_type: GGMLType, w: np.ndarray | None) -> tuple[float, float]:
    f32 = new_type == GGMLType.F32
    d = np.zeros_like(x) if f32 else libggml.to_float(int(new_type), q, x.size).reshape(x.shape) - x
    col_err = np.einsum("ij,ij->j", d, d).astype(np.float64)  # per column over the chunk's rows, in float32
    col_ref = np.einsum("ij,ij->j", x, x).astype(np.float64)
    if w is None:
        return float(col_err.sum()), float(col_ref.sum())
    w64 = w.astype(np.float64)
    return float(col_err @ w64), float(col_ref @ w64)


@dataclass(frozen=True)
class FillJob:
    """One cache miss: quantize ``tensor`` of the file ``source`` to ``ggml_type`` into a shard at ``path``."""

    source: Path
    tensor: Tensor
    ggml_type: GGMLType
    imatrix: np.ndarray | None  # the tensor's own imatrix entry, as llama.cpp would use it
    imatrix_given: bool  # the model has an imatrix (what a copied tensor's record says of its weighting)
    threads: int
    header: bytes
    path: Path


def _source(path: Path, tensor: Tensor) -> np.ndarray:
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buf, dtype=np.uint8, count=tensor.n_bytes, offset=tensor.data_offset)


def fill(job: FillJob) -> None:
    """Quantize (or copy) the tensor and write its shard and record, both atomically, the record first."""
    tensor, ggml_type = job.tensor, job.ggml_type
    raw = _source(job.source, tensor)
    if ggml_type == tensor.ggml_type:
        data, err = [raw], WeightError(0.0, 0.0, job.imatrix_given)
    else:
        data, err = quantize_tensor(raw, tensor, ggml_type, job.imatrix, job.threads)
    n_bytes = sum(d.nbytes for d in data)
    if n_bytes != tensor_bytes(ggml_type, tensor.shape):
        raise RecipeSearchError(f"{tensor.name} at {ggml_type.name}: {n_bytes} bytes quantized, "
                                f"{tensor_bytes(ggml_type, tensor.shape)} expected")
    tail = bytes(pad(n_bytes, SHARD_ALIGNMENT) - n_bytes)
    parts: list[bytes | memoryview] = [job.header, *[d.data for d in data], tail]
    record = {"tensor": tensor.name, "type": ggml_type.name, "bytes": n_bytes, "sq_error": err.sq_error,
              "sq_source": err.sq_source, "weighted": err.weighted, "per_expert": list(err.per_expert),
              "digest": digest_of(parts), "created": time.time()}
    record["record_digest"] = json_digest(record, "record_digest")
    write_atomically(job.path.with_suffix(".json"), [json.dumps(record).encode()])
    write_atomically(job.path, parts)


def write_atomically(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    """Stream ``parts`` into a temporary file beside ``path`` (``.NAME.PID-RANDOM.tmp``: `leftovers` removes
    those of dead processes), then rename it (large files: no fsync, no copy in memory); a failed write (a full
    disk) is one line naming the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.writelines(parts)
        os.replace(tmp, path)
    except OSError as err:  # a full disk: one line naming the file, not a crash of the fill's child
        raise write_error(err, path) from None
    finally:
        tmp.unlink(missing_ok=True)
