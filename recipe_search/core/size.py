"""Exact byte size of the GGUF llama.cpp writes for a resolved recipe, without quantizing.

file = metadata (header, key/values, tensor table, padded to the alignment)
     + every tensor's bytes padded to the alignment (llama-quant.cpp pads after each tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats.ggml_types import tensor_bytes
from ..formats.gguf_header import DEFAULT_ALIGNMENT, ggml_n_dims
from .inventory import Inventory
from .resolution import Resolution

_REMOVED_KEYS = ("split.no", "split.count", "split.tensors.count")
_SET_U32_KEYS = ("general.quantization_version", "general.file_type")


@dataclass(frozen=True)
class TensorSize:
    name: str
    kind: str
    ggml_type: str
    n_elements: int
    bytes: int


@dataclass(frozen=True)
class SizePrediction:
    file_bytes: int
    metadata_bytes: int
    tensor_bytes: int  # unpadded sum, as llama.cpp's "quant size"
    n_elements: int
    tensors: list[TensorSize]

    @property
    def bits_per_weight(self) -> float:
        """Tensor bytes x 8 / all elements: llama-quantize's BPW."""
        return self.tensor_bytes * 8 / self.n_elements

    def to_dict(self) -> dict:
        return {"file_bytes": self.file_bytes, "metadata_bytes": self.metadata_bytes,
                "tensor_bytes": self.tensor_bytes, "n_elements": self.n_elements,
                "bits_per_weight": self.bits_per_weight,
                "tensors": [t.__dict__ for t in self.tensors]}


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _kv_size(key: str, value: str | int) -> int:
    head = 8 + len(key.encode()) + 4
    return head + (8 + len(value.encode()) if isinstance(value, str) else 4)


def metadata_bytes(inv: Inventory, extra_kv: dict[str, str | int] | None = None) -> int:
    """gguf_get_meta_size of the quantizer's output context."""
    src = inv.headers[0].kv
    kv_sizes = {k: v.encoded_size for k, v in src.items() if k not in _REMOVED_KEYS}
    for key in _SET_U32_KEYS:
        kv_sizes[key] = _kv_size(key, 0)
    for key, value in (extra_kv or {}).items():
        kv_sizes[key] = _kv_size(key, value)
    infos = sum(8 + len(t.name.encode()) + 4 + 8 * ggml_n_dims(t.shape) + 4 + 8 for t in inv.tensors)
    return _pad(24 + sum(kv_sizes.values()) + infos, _alignment(inv))


def _alignment(inv: Inventory) -> int:
    return int(inv.headers[0].get("general.alignment", DEFAULT_ALIGNMENT))


def padded_bytes(inv: Inventory, n_bytes: int) -> int:
    """What a tensor of ``n_bytes`` takes in ``inv``'s quantized file: padded to the alignment."""
    return _pad(n_bytes, _alignment(inv))


def predict_size(resolution: Resolution, inv: Inventory, extra_kv: dict[str, str | int] | None = None) -> SizePrediction:
    """Predict the output file of quantizing ``inv`` by ``resolution`` (``extra_kv``: the imatrix keys)."""
    rows = [TensorSize(r.tensor.name, r.tensor.kind, r.ggml_type.name, r.tensor.n_elements,
                       tensor_bytes(r.ggml_type, r.tensor.shape)) for r in resolution.tensors]
    meta = metadata_bytes(inv, extra_kv)
    data = sum(padded_bytes(inv, t.bytes) for t in rows)
    return SizePrediction(meta + data, meta, sum(t.bytes for t in rows), sum(t.n_elements for t in rows), rows)


def bpw_at_file_bytes(inv: Inventory, file_bytes: float, extra_kv: dict[str, str | int] | None = None) -> float:
    """The bits per weight of a recipe whose file is ``file_bytes``: the metadata does not depend on the
    types, so what is left of the file is tensor data (alignment padding counted as data)."""
    return (file_bytes - metadata_bytes(inv, extra_kv)) * 8 / inv.n_elements


def human_bytes(n: float) -> str:
    """``123 B``, ``1.50 KiB``, ``20.31 GiB``: binary units, two decimals."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
