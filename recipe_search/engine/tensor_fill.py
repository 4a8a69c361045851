"""One cache entry filled: a source tensor quantized as llama.cpp quantizes it, its shard and record written.

A tensor is quantized exactly as `llama_model_quantize_impl` / `llama_tensor_quantize_impl`
(src/llama-quant.cpp) do it: the source rows converted to float by the source type's `to_float`
(F16/BF16 row conversion; an F32 source is used as it is), `ggml_quantize_chunk` over runs of rows
that never cross an expert boundary, each expert of a 3-D `*_exps` tensor with its own slice of
the imatrix entry (`n_per_row` floats per expert), `ggml_validate_row_data` on the result. Rows are
quantized independently, so how they are cut into chunks and threads does not change the bytes.
A tensor whose type does not change is copied. Beside the shard, its record holds the digests `tensor_cache`
checks and, once the sensitivity proxy asked for it, the imatrix-weighted squared quantization error
(the shard dequantized against the float source).
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


def _row_chunks(tensor: Tensor) -> list[tuple[int, int]]:
    """Runs of rows (first, end) of at most `_CHUNK_ELEMENTS` floats that never cross an expert boundary."""
    n_per_row = tensor.shape[0]
    rows_per_expert = tensor.shape[1] if len(tensor.shape) > 1 else 1
    n_rows = tensor.n_elements // n_per_row
    chunk_rows = max(1, min(rows_per_expert, _CHUNK_ELEMENTS // n_per_row))
    return [(first, min(first + chunk_rows, expert + rows_per_expert))
            for expert in range(0, n_rows, rows_per_expert) for first in range(expert, expert + rows_per_expert, chunk_rows)]


def _rows_as_float(raw: np.ndarray, tensor: Tensor, first: int, end: int) -> np.ndarray:
    """Source rows first..end as float32, converted by the source type's ``to_float`` as llama.cpp converts them."""
    n_per_row = tensor.shape[0]
    row = libggml.row_size(int(tensor.ggml_type), n_per_row)
    src = raw[first * row:end * row]
    if tensor.ggml_type == GGMLType.F32:
        return src.view(np.float32).reshape(end - first, n_per_row)
    return libggml.to_float(int(tensor.ggml_type), src, (end - first) * n_per_row).reshape(end - first, n_per_row)


def _expert_imatrix(imatrix: np.ndarray | None, tensor: Tensor, first: int) -> np.ndarray | None:
    """The imatrix columns of the expert that row ``first`` belongs to (the whole entry for a 2-D tensor)."""
    n_per_row, rows_per_expert = tensor.shape[0], tensor.shape[1] if len(tensor.shape) > 1 else 1
    expert = first // rows_per_expert
    return None if imatrix is None else imatrix[expert * n_per_row:(expert + 1) * n_per_row]


def quantize_tensor(raw: np.ndarray, tensor: Tensor, new_type: GGMLType, imatrix: np.ndarray | None,
                    threads: int) -> np.ndarray:
    """Quantize one source tensor (``raw``: its bytes) to ``new_type``; returns the data, one row after another.

    The rows go to ``threads`` threads in chunks; each chunk is converted and quantized in its thread (ggml's
    calls release the GIL), as llama.cpp converts and quantizes in its threads."""
    n_per_row = tensor.shape[0]
    if libggml.requires_imatrix(int(new_type)) and imatrix is None:
        raise RecipeSearchError(f"ggml cannot quantize {tensor.name} to {new_type.name} without imatrix data")
    q = np.empty((tensor.n_elements // n_per_row, libggml.row_size(int(new_type), n_per_row)), dtype=np.uint8)

    def chunk(rows: tuple[int, int]) -> bool:
        first, end = rows
        return libggml.quantize_rows(int(new_type), _rows_as_float(raw, tensor, first, end), q[first:end],
                                     _expert_imatrix(imatrix, tensor, first))

    with ThreadPoolExecutor(max(1, threads)) as pool:
        if not all(pool.map(chunk, _row_chunks(tensor))):
            raise RecipeSearchError(f"quantized data validation failed for {tensor.name} ({new_type.name})")
    return q.reshape(-1)


def weight_error(raw: np.ndarray, quantized: np.ndarray, tensor: Tensor, new_type: GGMLType,
                 imatrix: np.ndarray | None, threads: int) -> WeightError:
    """The imatrix-weighted squared error of ``quantized`` (``tensor``'s data at ``new_type``) against the float
    source ``raw``, from the data alone: nothing is quantized again. The chunks of `quantize_tensor` go to
    ``threads`` threads and their errors are summed in row order: the same figures for any thread count."""
    n_per_row = tensor.shape[0]
    rows_per_expert = tensor.shape[1] if len(tensor.shape) > 1 else 1
    q = quantized.reshape(tensor.n_elements // n_per_row, libggml.row_size(int(new_type), n_per_row))
    chunks = _row_chunks(tensor)

    def chunk(rows: tuple[int, int]) -> tuple[float, float]:
        first, end = rows
        return _chunk_error(_rows_as_float(raw, tensor, first, end), q[first:end], new_type,
                            _expert_imatrix(imatrix, tensor, first))

    with ThreadPoolExecutor(max(1, threads)) as pool:
        done = list(pool.map(chunk, chunks))
    errors = np.zeros(max(1, len(q) // rows_per_expert))
    for (first, _), (e, _) in zip(chunks, done, strict=True):
        errors[first // rows_per_expert] += e
    return WeightError(float(errors.sum()), float(sum(r for _, r in done)), imatrix is not None,
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
    threads: int
    header: bytes
    path: Path


def source_data(path: Path, tensor: Tensor) -> np.ndarray:
    """The bytes of ``tensor`` in its source file, mapped."""
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buf, dtype=np.uint8, count=tensor.n_bytes, offset=tensor.data_offset)


def fill(job: FillJob) -> None:
    """Quantize (or copy) the tensor and write its shard and record, both atomically, the record first. The weight
    error is not computed here (8% more than quantizing, in a cold trial): `ModelTensors.weight_error` adds it to the
    record when the sensitivity proxy asks."""
    tensor, ggml_type = job.tensor, job.ggml_type
    raw = source_data(job.source, tensor)
    data = raw if ggml_type == tensor.ggml_type else quantize_tensor(raw, tensor, ggml_type, job.imatrix, job.threads)
    n_bytes = data.nbytes
    if n_bytes != tensor_bytes(ggml_type, tensor.shape):
        raise RecipeSearchError(f"{tensor.name} at {ggml_type.name}: {n_bytes} bytes quantized, "
                                f"{tensor_bytes(ggml_type, tensor.shape)} expected")
    tail = bytes(pad(n_bytes, SHARD_ALIGNMENT) - n_bytes)
    parts: list[bytes | memoryview] = [job.header, data.data, tail]
    record = {"tensor": tensor.name, "type": ggml_type.name, "bytes": n_bytes, "digest": digest_of(parts),
              "created": time.time()}
    write_record(job.path.with_suffix(".json"), record)
    write_atomically(job.path, parts)


def write_record(path: Path, record: dict) -> None:
    """An entry's record, sealed with its own digest (``record_digest``), written atomically."""
    record = {k: v for k, v in record.items() if k != "record_digest"}
    record["record_digest"] = json_digest(record, "record_digest")
    write_atomically(path, [json.dumps(record).encode()])


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
