"""A fast, header-only GGUF reader: key/value pairs and the tensor table, no weights.

The `gguf` package's reader builds numpy views for every field; for a 35B model's
header (tens of thousands of tensors, a 262k-entry vocabulary) this reader is
several times faster and records each key/value pair's encoded size, which the
size predictor needs.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RecipeSearchError
from .ggml_types import GGMLType, tensor_bytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# gguf value types
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
#: arrays longer than this are not decoded (only counted); vocabularies are huge.
_DECODE_ARRAY_MAX = 64


@dataclass(frozen=True)
class KeyValue:
    key: str
    value_type: int
    value: object  # decoded scalar/string/short list, or None for a long array
    encoded_size: int  # bytes this pair takes in the file, key included
    array_len: int | None = None
    offset: int = 0  # where the pair starts in the file


@dataclass(frozen=True)
class RawTensor:
    name: str
    shape: tuple[int, ...]  # ggml ne order: shape[0] is the row length
    ggml_type: GGMLType
    data_offset: int  # absolute offset of the data in its file
    file_index: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    kv: dict[str, KeyValue]
    tensors: list[RawTensor] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_start: int = 0

    def get(self, key: str, default: object = None) -> object:
        kv = self.kv.get(key)
        return default if kv is None else kv.value


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise RecipeSearchError("truncated GGUF header", self.path)
        out = self.buf[self.pos:end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise RecipeSearchError(f"corrupt GGUF header (string of {n} bytes)", self.path)
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos = self.buf, self.pos
        for _ in range(count):
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
        if pos > len(buf):
            raise RecipeSearchError("truncated GGUF header", self.path)
        self.pos = pos

    def value(self, vtype: int, decode: bool = True) -> tuple[object, int | None]:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype]), None
        if vtype == STRING:
            return self.string(), None
        if vtype == ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if count <= _DECODE_ARRAY_MAX:
                return [self.value(etype)[0] for _ in range(count)], count
            if etype == STRING:
                self.skip_strings(count)
            elif etype in _SCALAR_FORMATS:
                self.take(struct.calcsize(_SCALAR_FORMATS[etype]) * count)
            else:
                raise RecipeSearchError(f"unsupported GGUF array element type {etype}", self.path)
            return None, count
        raise RecipeSearchError(f"corrupt GGUF header (value type {vtype})", self.path)


def read_header(path: str | Path, file_index: int = 0) -> GGUFHeader:
    """Parse one GGUF file's header and tensor table (memory-mapped; no tensor data is touched)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 24:
                raise RecipeSearchError("not a GGUF file (too short)", path)
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise RecipeSearchError(f"cannot read: {err.strerror}", path) from None
    try:
        return _parse(_Cursor(buf, path), path, file_index, size)
    except struct.error:
        raise RecipeSearchError("truncated GGUF header", path) from None
    finally:
        buf.close()


def _parse(cur: _Cursor, path: Path, file_index: int, file_size: int) -> GGUFHeader:
    if cur.take(4) != GGUF_MAGIC:
        raise RecipeSearchError("not a GGUF file (bad magic)", path)
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise RecipeSearchError(f"unsupported GGUF version {version}", path)
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 20:
        raise RecipeSearchError("corrupt GGUF header (implausible counts)", path)
    kv: dict[str, KeyValue] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        vtype = cur.unpack("<I")
        value, alen = cur.value(vtype)
        kv[key] = KeyValue(key, vtype, value, cur.pos - start, alen, start)
    alignment = int(kv["general.alignment"].value) if "general.alignment" in kv else DEFAULT_ALIGNMENT
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if n_dims > 4:
            raise RecipeSearchError(f"corrupt GGUF header (tensor {name} has {n_dims} dims)", path)
        shape = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims))
        raw_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        try:
            gtype = GGMLType(raw_type)
        except ValueError:
            raise RecipeSearchError(f"tensor {name} has unknown ggml type {raw_type}", path) from None
        infos.append((name, tuple(int(s) for s in shape), gtype, offset))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [RawTensor(n, s, t, data_start + off, file_index) for n, s, t, off in infos]
    header = GGUFHeader(path, version, kv, tensors, alignment, data_start)
    _check_extent(header, file_size)
    return header


def _check_extent(header: GGUFHeader, file_size: int) -> None:
    for t in header.tensors:
        if t.data_offset + tensor_bytes(t.ggml_type, t.shape) > file_size:
            raise RecipeSearchError(f"truncated GGUF (tensor {t.name} runs past the end of the file)", header.path)
