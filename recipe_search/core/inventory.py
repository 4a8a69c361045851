"""A model's tensors and tensor types, read from the GGUF header alone."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import RecipeSearchError
from ..formats.ggml_types import QUANTIZABLE_TYPES, GGMLType, bits_per_weight, fallback, tensor_bytes
from ..formats.gguf_header import BLOCK_PREFIX, GGUFHeader, block_index, ggml_n_dims, read_header
from .rule_match import NameIndex

_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# tensor_allows_quantization (src/llama-quant.cpp): substrings that keep a tensor at its source type
_NEVER_QUANTIZED_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_GLM5_NEXT_SUBSTRINGS = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def tensor_kind(name: str) -> str:
    """The tensor type: the name with ``blk.N.`` and ``.weight`` stripped (``ffn_up_exps``, ``output``)."""
    return BLOCK_PREFIX.sub("", name).removesuffix(".weight")


def allows_quantization(name: str, shape: tuple[int, ...], arch: str) -> bool:
    """Mirror of llama.cpp's tensor_allows_quantization (quantize_output_tensor on, only_copy off)."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if any(s in name for s in _NEVER_QUANTIZED_SUBSTRINGS):
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    return not (arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_SUBSTRINGS))


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    data_offset: int
    file_index: int
    quantizable: bool

    @property
    def kind(self) -> str:
        return tensor_kind(self.name)

    @property
    def block(self) -> int | None:
        return block_index(self.name)

    @property
    def n_elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def n_bytes(self) -> int:
        return tensor_bytes(self.ggml_type, self.shape)

    @property
    def row_length(self) -> int:
        return self.shape[0]


@dataclass(frozen=True)
class TensorKind:
    """All tensors of one tensor type, summarized."""

    name: str
    tensors: tuple[Tensor, ...]
    total_elements: int

    @property
    def count(self) -> int:
        return len(self.tensors)

    @property
    def blocks(self) -> list[int]:
        return sorted({t.block for t in self.tensors if t.block is not None})

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def share(self) -> float:
        return self.n_elements / self.total_elements if self.total_elements else 0.0

    @property
    def ggml_types(self) -> list[str]:
        return sorted({t.ggml_type.name for t in self.tensors})

    @property
    def bits_per_weight(self) -> float:
        return self.n_bytes * 8 / self.n_elements if self.n_elements else 0.0

    @property
    def quantizable(self) -> bool:
        return any(t.quantizable for t in self.tensors)

    @property
    def row_lengths(self) -> list[int]:
        return sorted({t.row_length for t in self.tensors})

    def admits(self, t: GGMLType) -> bool:
        """True when every tensor's row length takes ``t`` without a fallback."""
        return all(fallback(t, n) == t for n in self.row_lengths)

    @property
    def admitted_types(self) -> list[GGMLType]:
        if not self.quantizable:
            return []
        return [t for t in QUANTIZABLE_TYPES if self.admits(t)]


@dataclass
class Inventory:
    """A model as llama.cpp's quantizer sees it: architecture, metadata and the tensor table."""

    paths: list[Path]
    headers: list[GGUFHeader]
    tensors: list[Tensor]

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def arch(self) -> str:
        return str(self.headers[0].get("general.architecture", "unknown"))

    @property
    def n_blocks(self) -> int:
        return int(self.headers[0].get(f"{self.arch}.block_count", 0) or 0)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @cached_property
    def by_name(self) -> dict[str, Tensor]:
        return {t.name: t for t in self.tensors}

    @cached_property
    def name_index(self) -> NameIndex:
        """The tensor names, for matching many rules at once (`rule_match`)."""
        return NameIndex([t.name for t in self.tensors])

    @cached_property
    def kinds(self) -> dict[str, TensorKind]:
        """Tensor types in order of first appearance."""
        groups: dict[str, list[Tensor]] = defaultdict(list)
        for t in self.tensors:
            groups[t.kind].append(t)
        total = self.n_elements
        return {k: TensorKind(k, tuple(v), total) for k, v in groups.items()}

    def file_type_label(self) -> str:
        from ..formats.ggml_types import FileType

        ft = self.headers[0].get("general.file_type")
        try:
            return FileType(int(ft)).label if ft is not None else "unknown"
        except ValueError:
            return str(ft)


def split_paths(path: Path) -> list[Path]:
    """All shards of a split GGUF given any one of them; ``[path]`` for a single file."""
    m = _SPLIT.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    shards = [path.with_name(f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise RecipeSearchError(f"split GGUF is missing shard(s) {', '.join(missing)}", path)
    return shards


def read_inventory(path: str | Path) -> Inventory:
    """Read a (possibly split) GGUF's header into an Inventory. No tensor data is read."""
    path = Path(path)
    if not path.exists():
        raise RecipeSearchError("no such file", path)
    paths = split_paths(path)
    headers = [read_header(p, i) for i, p in enumerate(paths)]
    arch = str(headers[0].get("general.architecture", "unknown"))
    tensors = [
        Tensor(rt.name, rt.shape, rt.ggml_type, rt.data_offset, rt.file_index,
               allows_quantization(rt.name, rt.shape, arch))
        for h in headers for rt in h.tensors
    ]
    if not tensors:
        raise RecipeSearchError("GGUF holds no tensors", path)
    return Inventory(paths, headers, tensors)


def inventory_rows(inv: Inventory) -> list[dict]:
    """One JSON-able row per tensor type, as `recipe-search inspect` prints it."""
    rows = []
    for k in inv.kinds.values():
        rows.append({
            "tensor_type": k.name,
            "count": k.count,
            "blocks": _compact_ranges(k.blocks),
            "params": k.n_elements,
            "share": k.share,
            "ggml_types": k.ggml_types,
            "bytes": k.n_bytes,
            "bpw": k.bits_per_weight,
            "quantized_by_llama_cpp": k.quantizable,
            "row_lengths": k.row_lengths,
            "admits": [t.name for t in k.admitted_types],
        })
    return rows


def _compact_ranges(blocks: list[int]) -> str:
    if not blocks:
        return "-"
    parts, start, prev = [], blocks[0], blocks[0]
    for b in blocks[1:] + [None]:
        if b is not None and b == prev + 1:
            prev = b
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if b is not None:
            start = prev = b
    return ",".join(parts)


__all__ = [
    "Inventory",
    "Tensor",
    "TensorKind",
    "allows_quantization",
    "bits_per_weight",
    "block_index",
    "inventory_rows",
    "read_inventory",
    "tensor_kind",
]


def model_fingerprint(inv: Inventory, samples: int = 16, sample_bytes: int = 1 << 16) -> str:
    """A cheap identity for a model file: sizes, the header and evenly spaced samples of the data.

    Hashing a 70 GB model whole would cost minutes; the header pins every tensor's name, shape and type,
    and the samples catch different weights under the same header.
    """
    import hashlib

    h = hashlib.sha256()
    for path, header in zip(inv.paths, inv.headers):
        size = path.stat().st_size
        h.update(size.to_bytes(8, "little"))
        with open(path, "rb") as fh:
            h.update(fh.read(header.data_start))
            span = max(size - header.data_start - sample_bytes, 0)
            for i in range(samples):
                fh.seek(header.data_start + span * i // max(samples - 1, 1))
                h.update(fh.read(sample_bytes))
    return h.hexdigest()
