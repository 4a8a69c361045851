"""The KV cache and recurrent state llama.cpp allocates for a context, per layer, from a model's header.

Mirrors the vendored llama.cpp: ``llama_context`` pads ``n_ctx`` to 256 and, with one stream per sequence
(not ``--kv-unified``), gives each stream ``PAD(n_ctx / n_seq, 256)`` cells; ``llama_kv_cache`` holds a
K and a V row of ``n_embd_k_gqa`` / ``n_embd_v_gqa`` elements of the cache type per cell, stream and
attention layer; sliding-window layers get ``PAD(min(cells, n_swa + n_ubatch), 256)`` cells unless
``--swa-full``; hybrid models (``qwen35moe``) keep the KV cache on their full-attention layers only and a
recurrent state on the others: ``max(1, n_seq)`` rows of F32 conv state ``(d_conv - 1) * channels`` and
SSM state ``d_state * d_inner`` (``llama_memory_recurrent``). NextN/MTP layers get none. Each layer's
cache sits on that layer's device (``offload_kqv``, on by default).

Dimensions come from the header's hyperparameters, or from tensor shapes where a header-only file lacks
them (``attn_k``/``attn_v`` rows, ``ssm_conv1d``, ``ssm_out``, ``ssm_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType, parse_type, tensor_bytes
from ..formats.gguf_header import block_index
from .inventory import Inventory

#: the cache types llama.cpp's -ctk/-ctv accept (common/arg.cpp kv_cache_types)
CACHE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1")
#: load_swa_pattern's default period per architecture (src/models/*.cpp), last layer of each period full
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma-embedding": 6, "gpt-oss": 2, "cohere2": 4, "olmo2": 4,
               "exaone4": 4, "llama4": 4, "plamo3": 8, "afmoe": 4}


def _pad(n: int, to: int = 256) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class ContextSettings:
    """What the run flags set: ``-c``, ``-np`` (sequences), ``-ub``, ``-ctk``/``-ctv``, ``--kv-unified``, ``--swa-full``."""

    n_ctx: int = 4096
    n_seq: int = 1
    n_ubatch: int = 512
    type_k: str = "F16"
    type_v: str = "F16"
    unified: bool = False
    swa_full: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx < 1 or self.n_seq < 1 or self.n_ubatch < 1:
            raise RecipeSearchError(f"context {self.n_ctx}, sequences {self.n_seq}, ubatch {self.n_ubatch}: "
                                    "each must be positive")
        for t in (self.type_k, self.type_v):
            if t.upper() not in CACHE_TYPES:
                raise RecipeSearchError(f"cache type {t!r} is not one of {', '.join(c.lower() for c in CACHE_TYPES)}")


@dataclass(frozen=True)
class LayerMemory:
    layer: int
    kind: str  # "kv" or "recurrent"
    cells: int  # KV cells per stream, or recurrent rows
    bytes: int
    window: bool = False  # a sliding-window layer's cache


@dataclass(frozen=True)
class ContextMemory:
    layers: list[LayerMemory]

    def total(self, kind: str) -> int:
        return sum(m.bytes for m in self.layers if m.kind == kind)


class _Hparams:
    """The header's ``<arch>.*`` values, with tensor shapes behind them."""

    def __init__(self, inv: Inventory) -> None:
        self.inv, self.arch = inv, inv.arch
        self.header = inv.headers[0]
        self.blocks: dict[int, dict[str, tuple[int, ...]]] = {}
        for t in inv.tensors:
            b = block_index(t.name)
            if b is not None:
                self.blocks.setdefault(b, {})[t.name.split(".", 2)[2]] = t.shape

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(f"{self.arch}.{key}", default)

    def per_layer(self, key: str, layer: int) -> int | None:
        value = self.get(key)
        if isinstance(value, list):
            return int(value[layer])
        return None if value is None else int(value)

    def shape(self, layer: int, name: str) -> tuple[int, ...] | None:
        return self.blocks.get(layer, {}).get(name)

    def fail(self, what: str) -> RecipeSearchError:
        return RecipeSearchError(f"cannot size the {what} of this {self.arch} model: its header lacks the "
                                 "hyperparameters and its tensors do not show them", self.inv.path)


def _is_recurrent(hp: _Hparams, layer: int) -> bool:
    return any(name.startswith("ssm_") for name in hp.blocks.get(layer, {}))


def _kv_width(hp: _Hparams, layer: int, which: str) -> int:
    """n_embd_k_gqa / n_embd_v_gqa: head size x KV heads, or the rows of attn_k / attn_v."""
    heads_kv = hp.per_layer("attention.head_count_kv", layer)
    heads = hp.per_layer("attention.head_count", layer)
    n_embd = hp.get("embedding_length")
    head = hp.get(f"attention.{'key' if which == 'k' else 'value'}_length")
    if head is None and heads and n_embd:
        head = int(n_embd) // heads
    if heads_kv is None and heads is not None:
        heads_kv = heads
    if head is not None and heads_kv is not None:
        return int(head) * heads_kv
    shape = hp.shape(layer, f"attn_{which}.weight")
    if shape is None or len(shape) < 2:
        raise hp.fail("KV cache")
    return shape[1]


def _swa_layers(hp: _Hparams, n_layer: int) -> set[int]:
    if not hp.get("attention.sliding_window"):
        return set()
    pattern = hp.get("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return {il for il in range(n_layer) if pattern[il]}
    period = int(pattern) if pattern is not None else _SWA_PERIOD.get(hp.arch)
    if period is None:
        raise RecipeSearchError(f"which layers of a {hp.arch} model use the sliding window is not known here",
                                hp.inv.path)
    return {il for il in range(n_layer) if period == 0 or il % period < period - 1}


def _recurrent_row_bytes(hp: _Hparams, layer: int) -> int:
    """(n_embd_r + n_embd_s) x 4 bytes: the F32 conv and SSM state of one sequence."""
    conv = hp.shape(layer, "ssm_conv1d.weight")
    d_inner, d_state = hp.get("ssm.inner_size"), hp.get("ssm.state_size")
    if d_inner is None:
        out = hp.shape(layer, "ssm_out.weight")
        d_inner = out[0] if out else None
    if d_state is None:  # the gated delta net's key head size, taken equal to its value head size (ssm_norm)
        norm = hp.shape(layer, "ssm_norm.weight")
        d_state = norm[0] if norm else None
    if conv is None or d_inner is None or d_state is None:
        raise hp.fail("recurrent state")
    return 4 * ((conv[0] - 1) * conv[1] + int(d_state) * int(d_inner))


def context_memory(inv: Inventory, settings: ContextSettings) -> ContextMemory:
    """Every layer's KV cache or recurrent state for ``settings``, in bytes."""
    hp = _Hparams(inv)
    if hp.get("attention.kv_lora_rank"):
        raise RecipeSearchError(f"the MLA KV cache of a {inv.arch} model is not modelled here", inv.path)
    n_layer = inv.n_blocks - int(hp.get("nextn_predict_layers", 0) or 0)
    n_ctx = _pad(settings.n_ctx)
    cells, streams = (n_ctx, 1) if settings.unified else (_pad(n_ctx // settings.n_seq), settings.n_seq)
    swa = _swa_layers(hp, n_layer)
    n_swa = int(hp.get("attention.sliding_window", 0) or 0)
    swa_cells = cells if settings.swa_full else _pad(
        min(cells, n_swa * (settings.n_seq if settings.unified else 1) + settings.n_ubatch))
    type_k, type_v = parse_type(settings.type_k.upper()), parse_type(settings.type_v.upper())
    rows = max(1, settings.n_seq)
    out = []
    for il in range(n_layer):
        if _is_recurrent(hp, il):
            out.append(LayerMemory(il, "recurrent", rows, rows * _recurrent_row_bytes(hp, il)))
        elif any(name.startswith("attn_") for name in hp.blocks.get(il, {})):
            n = swa_cells if il in swa else cells
            row = _row(type_k, _kv_width(hp, il, "k")) + _row(type_v, _kv_width(hp, il, "v"))
            out.append(LayerMemory(il, "kv", n, row * n * streams, il in swa))
    return ContextMemory(out)


def _row(t: GGMLType, n: int) -> int:
    return tensor_bytes(t, (n,))


def n_vocab(inv: Inventory) -> int:
    """The vocabulary size: the tokenizer's token count, or the rows of ``token_embd``."""
    kv = inv.headers[0].kv.get("tokenizer.ggml.tokens")
    if kv is not None and kv.array_len:
        return int(kv.array_len)
    embd = inv.by_name.get("token_embd.weight")
    if embd is None or len(embd.shape) < 2:
        raise RecipeSearchError("cannot tell the vocabulary size (no tokenizer, no token_embd)", inv.path)
    return embd.shape[1]


def compute_estimate(inv: Inventory, settings: ContextSettings, memory: ContextMemory | None = None) -> int:
    """An estimate, not llama.cpp's figure: the scheduler reserves a worst-case ubatch of
    ``t = min(n_ctx, n_ubatch)`` tokens, all of them outputs: F32 logits ``4 t n_vocab``, an F16 attention
    mask ``2 t cells`` per KV cache (the full one, the sliding window's), and activations taken as
    ``16 t n_embd``; plus the output buffer of one row of logits per sequence."""
    memory = memory or context_memory(inv, settings)
    tokens = min(_pad(settings.n_ctx), settings.n_ubatch)
    masks = {m.window: m.cells for m in memory.layers if m.kind == "kv"}
    n_embd = inv.by_name["token_embd.weight"].shape[0] if "token_embd.weight" in inv.by_name else 0
    vocab = n_vocab(inv)
    return 4 * vocab * (tokens + settings.n_seq) + 2 * tokens * sum(masks.values()) + 16 * tokens * n_embd
