"""Importance-matrix files in both llama.cpp formats, and what llama-quantize makes of them.

Mirrors common/imatrix-loader.cpp (reading), tools/imatrix/imatrix.cpp (`save_imatrix`,
`save_imatrix_legacy`) and tools/quantize/quantize.cpp (`load_imatrix`) of the llama.cpp that
llama-cpp-python 0.3.36 vendors.

GGUF: keys ``general.type`` = "imatrix", ``imatrix.datasets`` (string array),
``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32); per weight, sorted by name, F32 tensors
``<name>.in_sum2`` (ne = [ne0, n_expert]: raw sums of squared activations) and ``<name>.counts``
(ne = [1, n_expert]: activations counted per expert). llama-quantize refuses a GGUF imatrix
without all three keys.

Legacy ``.dat``: i32 n_entries; per entry i32 name length, name, i32 ncall, i32 nval, nval f32
values = (sum / count) · ncall; then, optionally, i32 chunk count, i32 length and the dataset name.
A legacy entry loads here as in_sum2 = the stored values [1, nval] and counts = [ncall], which
quantizes exactly as llama-quantize quantizes the .dat (values / ncall; an ncall ≤ 0, where it
passes the values unchanged, loads as 1). Its chunk_size is 0 (unknown), as in llama.cpp.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import RecipeSearchError
from .ggml_types import GGMLType
from .gguf_header import ARRAY, GGUF_MAGIC, STRING, RawTensor, read_header

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"

_GGUF_VERSION = 3
_ALIGNMENT = 32
_UINT32 = 4


@dataclass
class ImatrixEntry:
    """One weight's statistics: in_sum2 float32 [n_expert, ne0], counts float32 [n_expert]."""

    in_sum2: np.ndarray
    counts: np.ndarray


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry]
    datasets: list[str]
    chunk_count: int
    chunk_size: int


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF or legacy imatrix (told apart by the GGUF magic)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block for ever, a device never end
            raise RecipeSearchError("cannot read imatrix: not a regular file (a directory, a device or a FIFO)", path)
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise RecipeSearchError(f"cannot read imatrix: {err.strerror}", path) from None
    return _load_gguf(path) if magic == GGUF_MAGIC else _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    header = read_header(path)
    if not header.tensors:
        raise RecipeSearchError("no data in imatrix file", path)
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in header.kv]
    if missing:
        raise RecipeSearchError(f"missing imatrix metadata ({', '.join(missing)}); llama-quantize refuses it", path)
    for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if header.kv[key].value_type != _UINT32:
            raise RecipeSearchError(f"{key} is not a u32", path)
    ds = header.kv[KEY_DATASETS]
    datasets: list[str] = []
    if ds.value_type == ARRAY and isinstance(ds.value, list):
        datasets = [v for v in ds.value if isinstance(v, str)]
    elif ds.value_type == ARRAY and ds.array_len:  # too long for the header reader to decode
        datasets = _long_string_array(path, KEY_DATASETS)
    pairs: dict[str, dict[str, RawTensor]] = {}
    for t in header.tensors:
        for suffix in (SUFFIX_SUMS, SUFFIX_COUNTS):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[:-len(suffix)], {})[suffix] = t
    entries = {}
    for name in sorted(pairs):
        sums_t, counts_t = pairs[name].get(SUFFIX_SUMS), pairs[name].get(SUFFIX_COUNTS)
        if sums_t is None or counts_t is None:
            raise RecipeSearchError(f"mismatched sums and counts for {name}", path)
        if sums_t.ggml_type != GGMLType.F32 or counts_t.ggml_type != GGMLType.F32:
            raise RecipeSearchError(f"sums and counts for {name} must be F32", path)
        sums, counts = _read_f32(path, sums_t), _read_f32(path, counts_t)
        if counts.size == 0 or sums.size % counts.size:
            raise RecipeSearchError(f"{name}: {sums.size} sums do not split into {counts.size} experts", path)
        entries[name] = ImatrixEntry(in_sum2=sums.reshape(counts.size, -1), counts=counts)
    return Imatrix(entries, datasets, int(header.kv[KEY_CHUNK_COUNT].value), int(header.kv[KEY_CHUNK_SIZE].value))


def _read_f32(path: Path, t: RawTensor) -> np.ndarray:
    count = int(np.prod(t.shape))
    return np.fromfile(path, dtype="<f4", count=count, offset=t.data_offset).astype(np.float32)


def _long_string_array(path: Path, key: str) -> list[str]:
    from gguf import GGUFReader  # only for the rare array the header reader leaves undecoded

    field = GGUFReader(path).get_field(key)
    if field is None or field.types[-1] != STRING:  # llama.cpp ignores a non-string array
        return []
    return [str(field.contents(i)) for i in range(len(field.data))]


class _LegacyReader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RecipeSearchError(f"truncated legacy imatrix ({what})", self.path)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _load_legacy(path: Path) -> Imatrix:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecipeSearchError(f"cannot read imatrix: {err.strerror}", path) from None
    r = _LegacyReader(data, path)
    if r.remaining() < 4 or (n_entries := r.i32("entry count")) < 1:
        raise RecipeSearchError("no data in imatrix file (neither GGUF nor a legacy imatrix)", path)
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n_entries):
        n = r.i32(f"name length of entry {i + 1}")
        if n < 0:
            raise RecipeSearchError(f"corrupt legacy imatrix (name length {n} for entry {i + 1})", path)
        name = r.take(n, f"name of entry {i + 1}").split(b"\0", 1)[0].decode("utf-8", errors="replace")
        ncall = r.i32(f"call count of {name}")
        nval = r.i32(f"value count of {name}")
        if nval < 1:
            raise RecipeSearchError(f"corrupt legacy imatrix ({nval} values for {name})", path)
        values = np.frombuffer(r.take(4 * nval, f"values of {name}"), dtype="<f4").astype(np.float32)
        entries[name] = ImatrixEntry(in_sum2=values.reshape(1, nval),
                                     counts=np.array([ncall if ncall > 0 else 1], dtype=np.float32))
    chunk_count, datasets = 0, []
    if r.remaining() >= 4:  # the optional trailer; llama.cpp ignores a broken one
        chunk_count = r.i32("chunk count")
        if r.remaining() >= 4:
            n = r.i32("dataset name length")
            if 0 < n <= r.remaining():
                datasets.append(r.take(n, "dataset name").split(b"\0", 1)[0].decode("utf-8", errors="replace"))
    return Imatrix(dict(sorted(entries.items())), datasets, chunk_count, 0)


def _lround(x: np.ndarray) -> np.ndarray:
    """C's lround: halves away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantizer_arrays(imatrix: Imatrix) -> dict[str, np.ndarray]:
    """Per weight, the float32 [n_expert·ne0] array llama-quantize hands the quantizer.

    in_sum2 / count per expert (count = lround of the stored float); experts never counted get 1s.
    Non-finite results are an error, as in llama_model_quantize.
    """
    out = {}
    for name, e in imatrix.entries.items():
        counts = _lround(np.asarray(e.counts, dtype=np.float32)).astype(np.float32)
        sums = np.asarray(e.in_sum2, dtype=np.float32).reshape(counts.size, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            arr = np.where(counts[:, None] > 0, sums / counts[:, None], np.float32(1)).astype(np.float32).ravel()
        if not np.isfinite(arr).all():
            raise RecipeSearchError(f"imatrix contains non-finite values for {name}")
        out[name] = arr
    return out


def check_against(imatrix: Imatrix, shapes: Mapping[str, tuple[int, int]], source: object = None) -> None:
    """Raise naming every entry whose size does not fit its weight, shapes: name -> (ne0, n_expert).

    llama-quantize checks size == ne0·n_expert; an entry with per-expert counts must also have
    n_expert of them. Names absent from either side are not checked.
    """
    wrong = []
    for name, (ne0, n_expert) in shapes.items():
        e = imatrix.entries.get(name)
        if e is None:
            continue
        n_counts = np.size(e.counts)
        if np.size(e.in_sum2) != ne0 * n_expert or (n_counts > 1 and n_counts != n_expert):
            wrong.append(f"{name} ({n_counts}×{np.size(e.in_sum2) // max(n_counts, 1)} where the weight has "
                         f"{n_expert}×{ne0})")
    if wrong:
        shown = ", ".join(wrong[:6]) + (f" and {len(wrong) - 6} more" if len(wrong) > 6 else "")
        raise RecipeSearchError(f"imatrix entries of the wrong size: {shown}", source)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _pad(n: int) -> int:
    return -n % _ALIGNMENT


def save_imatrix_gguf(imatrix: Imatrix, path: str | os.PathLike[str]) -> None:
    """Write a GGUF imatrix laid out as llama-imatrix writes one, atomically."""
    kv = (_gguf_string(KEY_TYPE) + struct.pack("<I", STRING) + _gguf_string("imatrix")
          + _gguf_string(KEY_DATASETS) + struct.pack("<IIQ", ARRAY, STRING, len(imatrix.datasets))
          + b"".join(_gguf_string(d) for d in imatrix.datasets)
          + _gguf_string(KEY_CHUNK_COUNT) + struct.pack("<II", _UINT32, imatrix.chunk_count)
          + _gguf_string(KEY_CHUNK_SIZE) + struct.pack("<II", _UINT32, imatrix.chunk_size))
    tensors: list[tuple[str, list[int], np.ndarray]] = []
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        counts = np.asarray(e.counts, dtype="<f4").ravel()
        sums = np.asarray(e.in_sum2, dtype="<f4").ravel()
        if sums.size and counts.size:
            n_expert = counts.size
            tensors.append((name + SUFFIX_SUMS, [sums.size // n_expert, n_expert], sums))
            tensors.append((name + SUFFIX_COUNTS, [1, n_expert], counts))
    infos, offset = b"", 0
    for name, ne, data in tensors:
        n_dims = 2 if ne[1] > 1 else 1  # ggml_n_dims: trailing 1s are dropped
        infos += _gguf_string(name) + struct.pack(f"<I{n_dims}qiQ", n_dims, *ne[:n_dims], GGMLType.F32, offset)
        offset += data.nbytes + _pad(data.nbytes)
    head = GGUF_MAGIC + struct.pack("<Iqq", _GGUF_VERSION, len(tensors), 4) + kv + infos

    def write(fh: BinaryIO) -> None:
        fh.write(head + b"\0" * _pad(len(head)))
        for _, _, data in tensors:
            fh.write(data.tobytes() + b"\0" * _pad(data.nbytes))

    _atomic_write(path, write)


def save_imatrix_dat(imatrix: Imatrix, path: str | os.PathLike[str]) -> None:
    """Write a legacy imatrix as llama-imatrix's save_imatrix_legacy does, atomically.

    Entries never counted are left out; values become (sum / count) · ncall with ncall =
    ceil(max count / chunk_size) (a chunk_size of 0, as after loading a .dat, counts as 1);
    uncounted experts store ncall; the trailer names the last dataset.
    """
    chunk_size = imatrix.chunk_size if imatrix.chunk_size > 0 else 1
    body = []
    for name in sorted(imatrix.entries):
        e = imatrix.entries[name]
        counts = _lround(np.asarray(e.counts, dtype=np.float64)).astype(np.int64).ravel()
        if counts.size == 0 or not counts.any():
            continue
        values = np.asarray(e.in_sum2, dtype=np.float32).reshape(counts.size, -1)
        ncall = int((counts.max() + chunk_size - 1) // chunk_size)
        c = counts.astype(np.float32)[:, None]
        out = np.where(c == 0, np.float32(1), values / np.where(c == 0, np.float32(1), c)) * np.float32(ncall)
        raw = name.encode("utf-8")
        body.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
                    + out.astype("<f4").tobytes())
    dataset = imatrix.datasets[-1].encode("utf-8") if imatrix.datasets else b""
    blob = (struct.pack("<i", len(body)) + b"".join(body) + struct.pack("<ii", imatrix.chunk_count, len(dataset))
            + dataset)
    _atomic_write(path, lambda fh: fh.write(blob))


# llama-quantize's kv_overrides for an imatrix (tools/quantize/quantize.cpp)
KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"


@dataclass
class ImatrixInput:
    """What the quantizer receives from an importance matrix: per-tensor weights plus provenance keys."""

    arrays: dict[str, np.ndarray]  # tensor name -> float32 [n_expert * ne0], in_sum2 / count
    file: str
    dataset: str | None = None
    chunk_count: int = 0

    @classmethod
    def from_file(cls, path: str | Path) -> ImatrixInput:
        """Load an imatrix file (GGUF or legacy .dat) into what the quantizer receives."""
        im = load_imatrix(path)
        return cls(quantizer_arrays(im), file=str(path), dataset=im.datasets[0] if im.datasets else None,
                   chunk_count=im.chunk_count)

    @cached_property
    def digest(self) -> str:
        """Hash of the quantizer's arrays: keys every cache whose entries depend on the imatrix
        (a large imatrix is hashed once)."""
        h = hashlib.sha256()
        for name, values in sorted(self.arrays.items()):
            h.update(name.encode() + np.asarray(values, np.float32).tobytes())
        return h.hexdigest()[:32]

    def kv(self) -> dict[str, str | int]:
        """The keys llama-quantize adds to the output (strings cut to 127 bytes, as it does)."""
        out: dict[str, str | int] = {KV_IMATRIX_FILE: self.file.encode()[:127].decode(errors="ignore")}
        if self.dataset:
            out[KV_IMATRIX_DATASET] = self.dataset.encode()[:127].decode(errors="ignore")
        out[KV_IMATRIX_N_ENTRIES] = len(self.arrays)
        if self.chunk_count > 0:
            out[KV_IMATRIX_N_CHUNKS] = self.chunk_count
        return out
