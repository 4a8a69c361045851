"""A fast, header-only GGUF reader: key/value pairs and the tensor table, no weights.

The `gguf` package's reader builds numpy views for every field; for a 35B model's
header (tens of thousands of tensors, a 262k-entry vocabulary) this reader is
several times faster and records each key/value pair's encoded size, which the
size predictor needs.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeSearchError
from .ggml_types import GGMLType, block_size, tensor_bytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# gguf value types
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY, UINT32 = 8, 9, 4
#: arrays longer than this are not decoded (only counted); vocabularies are huge.
_DECODE_ARRAY_MAX = 64


@dataclass(frozen=True)
class KeyValue:
    key: str
    value_type: int
    value: Any  # decoded scalar/string/short list, or None for a long array
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

    def get(self, key: str, default: Any = None) -> Any:
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

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise RecipeSearchError(f"corrupt GGUF header (string of {n} bytes)", self.path)
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos = self.buf, self.pos
        for _ in range(count):
            if pos + 8 > len(buf):
                break
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
        if pos > len(buf):
            raise RecipeSearchError("truncated GGUF header", self.path)
        self.pos = pos

    def value(self, vtype: int, decode: bool = True) -> tuple[Any, int | None]:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype]), None
        if vtype == STRING:
            return self.string(), None
        if vtype == ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if etype not in _SCALAR_FORMATS and etype != STRING:  # llama.cpp reads no nested arrays either
                raise RecipeSearchError(f"corrupt GGUF header (array of value type {etype})", self.path)
            least = 8 if etype == STRING else struct.calcsize(_SCALAR_FORMATS[etype])
            if count * least > len(self.buf) - self.pos:
                raise RecipeSearchError("truncated GGUF header", self.path)
            if count <= _DECODE_ARRAY_MAX:
                return [self.value(etype)[0] for _ in range(count)], count
            if etype == STRING:
                self.skip_strings(count)
            else:
                self.take(least * count)
            return None, count
        raise RecipeSearchError(f"corrupt GGUF header (value type {vtype})", self.path)


def read_header(path: str | Path, file_index: int = 0) -> GGUFHeader:
    """Parse one GGUF file's header and tensor table (memory-mapped; no tensor data is touched)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a device never end
            raise RecipeSearchError("not a regular file", path)
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
        if key in kv:
            raise RecipeSearchError(f"corrupt GGUF header (duplicate key {key!r})", path)
        kv[key] = KeyValue(key, vtype, value, cur.pos - start, alen, start)
    alignment = _alignment(kv, path)
    infos, names, expected = [], set(), 0
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if not 1 <= n_dims <= 4:
            raise RecipeSearchError(f"corrupt GGUF header (tensor {name} has {n_dims} dims)", path)
        shape = tuple(int(s) for s in struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims)))
        raw_type = cur.unpack("<I")
        offset = cur.unpack("<Q")
        try:
            gtype = GGMLType(raw_type)
        except ValueError:
            raise RecipeSearchError(f"tensor {name} has unknown ggml type {raw_type}", path) from None
        _check_tensor(name, shape, gtype, path)
        if name in names:
            raise RecipeSearchError(f"corrupt GGUF header (duplicate tensor {name})", path)
        if offset != expected:  # llama.cpp's gguf reader demands the packed, aligned layout
            raise RecipeSearchError(f"corrupt GGUF header (tensor {name} at data offset {offset}, "
                                    f"expected {expected})", path)
        names.add(name)
        expected += -(-tensor_bytes(gtype, shape) // alignment) * alignment
        infos.append((name, shape, gtype, offset))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [RawTensor(n, s, t, data_start + off, file_index) for n, s, t, off in infos]
    header = GGUFHeader(path, version, kv, tensors, alignment, data_start)
    _check_extent(header, file_size)
    return header


def _alignment(kv: dict[str, KeyValue], path: Path) -> int:
    """``general.alignment``: a uint32 power of two, as llama.cpp's gguf reader demands."""
    item = kv.get("general.alignment")
    if item is None:
        return DEFAULT_ALIGNMENT
    value = item.value
    if item.value_type != UINT32 or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise RecipeSearchError(f"corrupt GGUF header (general.alignment {value!r} is not a power of 2)", path)
    return value


def _check_tensor(name: str, shape: tuple[int, ...], gtype: GGMLType, path: Path) -> None:
    """Dimensions llama.cpp accepts (none empty, the element count below 2**63, whole blocks per row)."""
    n = 1
    for s in shape:
        n *= s
    if n == 0 or n >= 1 << 63:
        raise RecipeSearchError(f"corrupt GGUF header (tensor {name} has shape {list(shape)})", path)
    block = block_size(gtype)
    if shape[0] % block:
        raise RecipeSearchError(f"corrupt GGUF header (tensor {name}: row of {shape[0]} is not a multiple of "
                                f"the {gtype.name} block size {block})", path)


def _check_extent(header: GGUFHeader, file_size: int) -> None:
    for t in header.tensors:
        if t.data_offset + tensor_bytes(t.ggml_type, t.shape) > file_size:
            raise RecipeSearchError(f"truncated GGUF (tensor {t.name} runs past the end of the file)", header.path)


#: the ``blk.N.`` prefix of a block's tensor names
BLOCK_PREFIX = re.compile(r"^blk\.(\d+)\.")


def block_index(name: str) -> int | None:
    m = BLOCK_PREFIX.match(name)
    return int(m.group(1)) if m else None


def ggml_n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return max(n, 1)
