"""GGUF headers as llama.cpp's quantizer writes them, and llama.cpp's split-file naming.

Mirrors `llama_model_quantize_impl` (src/llama-quant.cpp) and gguf.cpp of the vendored llama.cpp:
the output's key/values are the source's in order (re-setting a key moves it to the end), then
`general.quantization_version` and `general.file_type`, less the split keys, then the overrides
(an integer override is written as u32); tensors follow the loader's order (block number, then
name), each padded to the alignment.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .ggml_types import GGMLType
from .gguf_header import DEFAULT_ALIGNMENT, STRING, GGUFHeader, ggml_n_dims

GGML_QNT_VERSION = 2  # ggml/include/ggml.h
KV_QUANTIZATION_VERSION = "general.quantization_version"
KV_FILE_TYPE = "general.file_type"
KV_SPLIT_NO, KV_SPLIT_COUNT, KV_SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"
_U16, _I32, _U32 = 2, 5, 4


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    n_bytes: int


def pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def encode_kv(key: str, value: str | int, value_type: int | None = None) -> bytes:
    """One key/value pair: a string, or an integer of ``value_type`` (u16, i32, u32)."""
    if isinstance(value, str):
        return _string(key) + struct.pack("<I", STRING) + _string(value)
    fmt = {_U16: "<H", _I32: "<i", _U32: "<I"}[value_type if value_type is not None else _U32]
    return _string(key) + struct.pack("<I", value_type if value_type is not None else _U32) + struct.pack(fmt, value)


def source_kv(header: GGUFHeader) -> dict[str, bytes]:
    """The source file's key/value pairs, encoded bytes as they are in the file, in file order."""
    with open(header.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return {k: bytes(buf[v.offset:v.offset + v.encoded_size]) for k, v in header.kv.items()}


def quantized_kv(header: GGUFHeader, file_type: int, overrides: dict[str, str | int] | None = None) -> list[bytes]:
    """The key/values of llama_model_quantize's output, in its order."""
    kv = source_kv(header)
    for key, blob in ((KV_QUANTIZATION_VERSION, encode_kv(KV_QUANTIZATION_VERSION, GGML_QNT_VERSION)),
                      (KV_FILE_TYPE, encode_kv(KV_FILE_TYPE, int(file_type)))):
        kv.pop(key, None)
        kv[key] = blob
    for key in (KV_SPLIT_NO, KV_SPLIT_COUNT, KV_SPLIT_TENSORS):
        kv.pop(key, None)
    for key, value in (overrides or {}).items():
        kv.pop(key, None)
        kv[key] = encode_kv(key, value if isinstance(value, str) else abs(int(value)))
    return list(kv.values())


def loader_order(names: list[str]) -> list[str]:
    """llama_model_loader's weights_map order (weight_name_comparer): block number, then name."""
    def key(name: str) -> tuple[int, bytes]:
        m = re.match(r"blk\.(-?\d+)\.", name)
        return (int(m.group(1)) if m else -1, name.encode())
    return sorted(names, key=key)


def header_bytes(kv: list[bytes], tensors: list[TensorInfo], alignment: int = DEFAULT_ALIGNMENT) -> bytes:
    """A GGUF v3 header (key/values, tensor table, padding to ``alignment``) for tensors stored in this
    order, each padded to the alignment."""
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv)), *kv]
    offset = 0
    for t in tensors:
        dims = t.shape[:ggml_n_dims(t.shape)]
        parts += [_string(t.name), struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, int(t.ggml_type), offset)]
        offset += pad(t.n_bytes, alignment)
    head = b"".join(parts)
    return head + bytes(pad(len(head), alignment) - len(head))


def split_kv(no: int, count: int | None = None, n_tensors: int | None = None) -> list[bytes]:
    """The split keys llama.cpp's loader reads: every shard's ``split.no`` (u16); the first shard's count
    (u16) and total tensor count (i32)."""
    out = [encode_kv(KV_SPLIT_NO, no, _U16)]
    if count is not None:
        out.append(encode_kv(KV_SPLIT_COUNT, count, _U16))
    if n_tensors is not None:
        out.append(encode_kv(KV_SPLIT_TENSORS, n_tensors, _I32))
    return out


def split_path(prefix: str | Path, no: int, count: int) -> Path:
    """llama_split_path: ``PREFIX-%05d-of-%05d.gguf`` with the 1-based shard number."""
    return Path(f"{prefix}-{no + 1:05d}-of-{count:05d}.gguf")

