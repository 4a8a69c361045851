"""A trial's model put together from cached tensors, without rewriting their bytes.

llama.cpp loads a model split into `PREFIX-00001-of-0000N.gguf` ... files (llama_model_loader in
src/llama-model-loader.cpp): the first holds every key/value pair plus `split.count` (u16) and
`split.tensors.count` (i32), each holds `split.no` (u16) equal to its position, tensors may sit in any
shard (the first may hold none), and the loader checks only names, positions and the total tensor
count. So a trial is a small first shard with the quantizer's metadata, written per trial, plus one
link per tensor to the cache's ready shard for that (tensor, type). Hard links where the cache and
the trial share a file system (an entry evicted meanwhile stays readable), symbolic links otherwise.
`write_single_file` is the fallback: the same tensors copied into one GGUF, byte for byte what
`llama_model_quantize` writes.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..core.resolution import Resolution, ResolvedTensor
from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType
from ..formats.gguf_write import TensorInfo, header_bytes, loader_order, pad, quantized_kv, split_kv, split_path
from .tensor_cache import ModelTensors, shard_data
from .tensor_fill import write_atomically

MAX_SPLITS = 65535  # split.count is a u16
_LINK_TRIES = 3


@dataclass
class Assembled:
    """The files of one assembled trial; ``path`` is the first shard (what llama.cpp loads)."""

    path: Path
    files: list[Path]
    hits: int
    misses: int
    seconds: dict[str, float] = field(default_factory=dict)  # quantize (cache fills), assemble
    links: dict[Path, Path] = field(default_factory=dict)  # cache entry -> the trial's link to it

    def remove(self) -> None:
        for f in self.files:
            f.unlink(missing_ok=True)


def _fds_available(n: int) -> bool:
    """Whether this process may hold ``n`` more open files (raising its soft limit to the hard one if needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            return False
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))
    return True


def can_split(n_tensors: int) -> bool:
    """Whether a model of ``n_tensors`` tensors can be loaded as one shard per tensor here."""
    return n_tensors + 1 <= MAX_SPLITS and _fds_available(n_tensors + 1)


def fill(tensors: ModelTensors, resolution: Resolution) -> dict[str, Path]:
    """The cached shard of every tensor of the resolved recipe (missing ones quantized now)."""
    return {r.tensor.name: tensors.shard(r.tensor, r.ggml_type) for r in resolution.tensors}


def _link(src: Path, dst: Path) -> None:
    """A hard link; a symbolic one where the file system refuses hard links (another one, or none at all). An entry
    gone meanwhile is FileNotFoundError (it once became a dangling symbolic link, which llama.cpp cannot load)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        os.symlink(src.resolve(), dst)


def _link_entry(tensors: ModelTensors, x: ResolvedTensor, shard: Path, dst: Path) -> Path:
    """Link the cached entry of ``x`` at ``dst``; an entry another worker evicted since it was filled is filled again
    (a few times, against a cache evicting as fast). Returns the entry linked."""
    for _ in range(_LINK_TRIES - 1):
        try:
            _link(shard, dst)
            return shard
        except FileNotFoundError:
            shard = tensors.shard(x.tensor, x.ggml_type)
    _link(shard, dst)
    return shard


def metadata_kv(tensors: ModelTensors, resolution: Resolution, extra_kv: dict[str, str | int] | None) -> list[bytes]:
    return quantized_kv(tensors.inventory.headers[0], int(resolution.recipe.file_type), extra_kv)


def assemble(tensors: ModelTensors, resolution: Resolution, prefix: Path,
             extra_kv: dict[str, str | int] | None = None) -> Assembled:
    """Link the recipe's cached tensors into a split GGUF ``PREFIX-00001-of-N.gguf`` (``extra_kv``: the
    imatrix keys the quantizer adds)."""
    hits0, misses0 = tensors.hits, tensors.misses
    start = time.perf_counter()
    shards = fill(tensors, resolution)
    filled = time.perf_counter()
    count = len(tensors.index) + 1
    files = []
    links = {}
    try:
        for x in resolution.tensors:
            dst = split_path(prefix, tensors.index[x.tensor.name], count)
            shard = shards[x.tensor.name] = _link_entry(tensors, x, shards[x.tensor.name], dst)
            files.append(dst)
            links[shard] = dst
        first = split_path(prefix, 0, count)
        kv = metadata_kv(tensors, resolution, extra_kv) + split_kv(0, count, len(shards))
        align = tensors.inventory.headers[0].alignment
        write_atomically(first, [header_bytes(kv, [], align)])
        files.append(first)
    except OSError as err:
        for f in files:
            f.unlink(missing_ok=True)
        raise RecipeSearchError(f"cannot assemble the trial: {err.strerror}", err.filename or prefix) from None
    out = Assembled(first, files, tensors.hits - hits0, tensors.misses - misses0,
                    {"quantize": filled - start, "assemble": time.perf_counter() - filled}, links)
    tensors.cache.count(out.hits, out.misses)
    tensors.cache.evict(keep=set(shards.values()) | tensors.pinned)
    return out


def write_single_file(tensors: ModelTensors, resolution: Resolution, out: Path,
                      extra_kv: dict[str, str | int] | None = None) -> Assembled:
    """Write the recipe's model as one GGUF from cached tensors (what llama_model_quantize writes)."""
    hits0, misses0 = tensors.hits, tensors.misses
    start = time.perf_counter()
    shards = fill(tensors, resolution)
    filled = time.perf_counter()
    types: dict[str, GGMLType] = resolution.types()
    by_name = tensors.inventory.by_name
    order = loader_order(list(shards))
    align = tensors.inventory.headers[0].alignment
    infos = []
    for name in order:
        t = by_name[name]
        infos.append(TensorInfo(name, t.shape, types[name], shard_data(shards[name])[1]))

    def parts() -> Iterator[bytes]:
        yield header_bytes(metadata_kv(tensors, resolution, extra_kv), infos, align)
        for name in order:
            offset, size = shard_data(shards[name])
            with open(shards[name], "rb") as fh:
                fh.seek(offset)
                left = size
                while left > 0:
                    block = fh.read(min(left, 1 << 24))
                    if not block:
                        raise RecipeSearchError("cached tensor is truncated", shards[name])
                    left -= len(block)
                    yield block
            yield bytes(pad(size, align) - size)

    write_atomically(out, parts())
    result = Assembled(out, [out], tensors.hits - hits0, tensors.misses - misses0,
                       {"quantize": filled - start, "assemble": time.perf_counter() - filled})
    tensors.cache.count(result.hits, result.misses)
    tensors.cache.evict(keep=set(shards.values()) | tensors.pinned)
    return result
