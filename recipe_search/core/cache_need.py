"""What the quantized-tensor cache must hold for a search space, in bytes, and how a cache entry is laid out.

A cache entry is a split-GGUF shard (engine/tensor_cache.py): a header with only ``split.no`` (the tensor's
position in the source file plus one) and the one tensor's info, aligned to `SHARD_ALIGNMENT`, then the
tensor's bytes padded to it. `shard_bytes` is that file's size, exactly.

`space_cache_need` counts every (tensor, type) pair a study over the space can link: each parameter's
tensors at each type of its ladder, after the row-size fallbacks, and every other tensor at its fixed,
unmatched or kept type, as `resolution.resolve` gives them. It resolves the space's recipe once per ladder
index (every parameter at that index, a shorter ladder at its last type), which meets every ladder type of
every parameter: exact as long as a tensor's type depends only on its own parameter's choice (the space's
rules name one tensor type, and blocks, each). Not counted: the small JSON record beside each shard (the
cache's bound does not count it either), the llama.cpp presets and seed recipes outside the space, and the
sensitivity sweep's types that are not on a ladder.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..formats.ggml_types import GGMLType, tensor_bytes
from ..formats.gguf_write import TensorInfo, header_bytes, pad, split_kv
from .inventory import Inventory, Tensor
from .resolution import resolve
from .size import human_bytes
from .space import SearchSpace

SHARD_ALIGNMENT = 32
#: the default bound of the cache: this share of the disk it can use (free space plus what it holds)
DEFAULT_DISK_SHARE = 0.5


def shard_header(index: int, tensor: Tensor, ggml_type: GGMLType) -> bytes:
    """The header of the cache's shard of ``tensor`` at ``ggml_type`` (``index``: its split number)."""
    return header_bytes(split_kv(index), [TensorInfo(tensor.name, tensor.shape, ggml_type,
                                                     tensor_bytes(ggml_type, tensor.shape))], SHARD_ALIGNMENT)


def shard_bytes(index: int, tensor: Tensor, ggml_type: GGMLType) -> int:
    """The size of the cache's shard file of ``tensor`` at ``ggml_type``."""
    return len(shard_header(index, tensor, ggml_type)) + pad(tensor_bytes(ggml_type, tensor.shape), SHARD_ALIGNMENT)


@dataclass(frozen=True)
class CacheNeed:
    """The (tensor name, type) pairs a space can link, and the bytes their cache shards take."""

    pairs: frozenset[tuple[str, GGMLType]]
    bytes: int
    by_kind: dict[str, int]  # tensor type -> bytes of its pairs

    def largest(self, n: int = 3) -> str:
        """The ``n`` tensor types needing the most bytes, e.g. ``ffn_down_exps 120 GiB, ...``."""
        top = sorted(self.by_kind.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k} {human_bytes(b)}" for k, b in top)


def space_cache_need(space: SearchSpace, inv: Inventory) -> CacheNeed:
    """The bytes the space's (tensor, type) pairs take in the tensor cache (see the module's docstring)."""
    pairs: set[tuple[str, GGMLType]] = set()
    longest = max((len(p.ladder) for p in space.parameters), default=1)
    for i in range(longest):
        choice = {p.name: min(i, len(p.ladder) - 1) for p in space.parameters}
        pairs.update((r.tensor.name, r.ggml_type) for r in resolve(space.recipe(choice), inv).tensors)
    index = {t.name: i + 1 for i, t in enumerate(inv.tensors)}
    header = {t.name: len(shard_header(index[t.name], t, t.ggml_type)) for t in inv.tensors}  # alike for any type
    by_kind: dict[str, int] = defaultdict(int)
    for name, ggml_type in pairs:
        t = inv.by_name[name]
        by_kind[t.kind] += header[name] + pad(tensor_bytes(ggml_type, t.shape), SHARD_ALIGNMENT)
    return CacheNeed(frozenset(pairs), sum(by_kind.values()), dict(by_kind))


def disk_share_bound(free: int, held: int, share: float = DEFAULT_DISK_SHARE) -> int:
    """The cache's default bound: ``share`` of the disk it can use, the free bytes plus the ``held`` ones."""
    return int(share * (free + held))


def cache_need_warning(need: int, bound: int, free: int, held: int = 0) -> str | None:
    """One warning line (without ``warning:``) when the cache cannot keep what the space needs: its bound, or
    the disk it can use (``free`` plus the bytes it ``held``), smaller than ``need``; None when both suffice."""
    short = [f"the cache's bound {human_bytes(bound)}" if bound < need else "",
             f"the disk it can use {human_bytes(free + held)}" if free + held < need else ""]
    short = [s for s in short if s]
    if not short:
        return None
    return (f"the space's tensors need {human_bytes(need)} in the tensor cache, more than "
            f"{' and '.join(short)}: a study that explores evicts and quantizes them again "
            "(raise $RECIPE_SEARCH_TENSOR_CACHE_GB or free disk under the cache directory)")
