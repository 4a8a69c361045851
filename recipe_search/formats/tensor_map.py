"""Tensor tables without weights: read a ``tensors.<qtype>.map`` listing, write a header-only GGUF from it.

A header-only GGUF holds the real header and tensor table with its data region left as a sparse hole,
so a model far too big for this machine can be inspected, resolved and sized exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..errors import RecipeSearchError
from .ggml_types import GGMLType, parse_type
from .gguf_header import block_index

#: one map line: ``<shard>:<sha256>:<name>:shape=(ne0, ne1, ...):dtype=<type>:elements=<n>:bytes=<n>[:...]``
_MAP_LINE = re.compile(r":(?P<name>[^:]+):shape=\((?P<shape>[^)]*)\):dtype=(?P<dtype>[^:]+):elements=(?P<el>\d+)"
                       r":bytes=(?P<bytes>\d+)")

MapRow = tuple[str, tuple[int, ...], GGMLType, int]  # name, shape (ne0 first), type, stored bytes


def read_map(path: Path) -> list[MapRow]:
    """The (name, shape, type, bytes) rows of a tensor map file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise RecipeSearchError(f"cannot read tensor map: {err.strerror}", path) from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MAP_LINE.search(line)
        if m is None:
            raise RecipeSearchError(f"line {number}: not a tensor map line", path)
        try:
            rows.append((m["name"], tuple(int(s) for s in m["shape"].split(",") if s.strip()),
                         parse_type(m["dtype"].upper()), int(m["bytes"])))
        except ValueError:  # a shape entry that is not an integer
            raise RecipeSearchError(f"line {number}: not a tensor map line", path) from None
    if not rows:
        raise RecipeSearchError("tensor map lists no tensor", path)
    return rows


def _pad(n: int, alignment: int = 32) -> int:
    return -(-n // alignment) * alignment


def write_header_only(path: Path, arch: str, tensors: Sequence[MapRow], kv: dict[str, int] | None = None,
                      block_count: int | None = None) -> Path:
    """A GGUF holding only the header and tensor table; the data region is a sparse hole.

    ``kv``: extra integer keys (the split keys; ``split.tensors.count`` as int32, the rest uint16);
    ``block_count`` defaults to one past the highest block number among ``tensors``.
    """
    path = Path(path)
    if block_count is None:
        block_count = 1 + max((b for b in (block_index(name) for name, *_ in tensors) if b is not None), default=-1)
    w = GGUFWriter(path, arch=arch)
    w.add_block_count(block_count)
    for key, value in (kv or {}).items():
        w.add_uint16(key, value) if key != "split.tensors.count" else w.add_int32(key, value)
    for name, shape, gtype, nbytes in tensors:
        w.add_tensor_info(name, tuple(reversed(shape)), np.dtype(np.float32), nbytes,
                          raw_dtype=GGMLQuantizationType(int(gtype)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    end = _pad(path.stat().st_size) + sum(_pad(nbytes) for *_, nbytes in tensors)
    with open(path, "r+b") as fh:
        fh.truncate(end)
    return path
