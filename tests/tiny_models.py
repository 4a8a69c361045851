"""Tiny seeded GGUF models that llama.cpp loads, evaluates and quantizes.

Three layouts, random weights, one self-made byte-level BPE vocabulary:

- ``write_dense``: arch ``llama``, 2 blocks, F16 weights, ``ffn_down`` rows 320 wide.
- ``write_moe``: arch ``qwen2moe``, 2 blocks, 4 experts (top-2) plus a gated shared
  expert, F32 weights, ``ffn_down_exps`` rows 64 wide.
- ``write_qwen35moe``: arch ``qwen35moe``, blocks [linear, linear, full] (Gated
  DeltaNet, DeltaNet, gated attention), 2 experts (top-2) plus a shared expert, BF16.

Shapes are given in ggml order (``ne[0]`` = row length first), as the GGUF stores them.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import quantize

N_EMBD = 256
N_VOCAB = 512
BOS_ID = 0
EOS_ID = 1
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

_F32 = GGMLQuantizationType.F32
_TEXT_WORDS = {
    "adj": ["small", "large", "early", "late", "quiet", "bright", "heavy", "simple", "common", "local", "public", "northern", "final", "main", "second", "modern", "ancient", "strong", "young"],
    "noun": ["river", "city", "model", "station", "bridge", "garden", "island", "village", "engine", "paper", "letter", "window", "market", "school", "church", "harbour", "valley", "season", "record", "album", "battle", "company", "council", "network", "system", "music", "weather"],
    "verb": ["opened", "crossed", "reached", "joined", "built", "covered", "followed", "described", "carried", "returned", "supported", "replaced", "changed", "released", "recorded"],
    "prep": ["near", "across", "above", "under", "beside", "through", "after", "before", "during"],
    "name": ["Alder", "Brook", "Carver", "Dunmore", "Ellis", "Fenwick", "Garland", "Hollis", "Ivers"],
}


def english_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic English-like prose (CRLF paragraphs, digits, punctuation), ``n_chars`` long."""
    rng = random.Random(seed)

    def pick(kind: str) -> str:
        return rng.choice(_TEXT_WORDS[kind])

    templates = (
        lambda: f"The {pick('adj')} {pick('noun')} {pick('verb')} the {pick('noun')} "
        f"{pick('prep')} the {pick('noun')}.",
        lambda: f"In {rng.randint(1800, 2024)}, {pick('name')} {pick('verb')} a {pick('adj')} {pick('noun')}.",
        lambda: f"About {rng.randint(2, 99)}.{rng.randint(0, 9)} percent of the {pick('noun')} was {pick('adj')}; "
        f"the rest (roughly {rng.randint(10, 999)} units) was not.",
        lambda: f'"Is the {pick("noun")} {pick("adj")}?" asked {pick("name")}, '
        f"and the {pick('noun')} {pick('verb')} it.",
        lambda: f"{pick('name')}'s {pick('noun')} -- a {pick('adj')} one -- {pick('verb')} {rng.randint(3, 40)} "
        f"{pick('noun')}s: {pick('noun')}, {pick('noun')} & {pick('noun')}!",
    )
    paragraphs: list[str] = []
    length = 0
    while length < n_chars:
        paragraph = " ".join(rng.choice(templates)() for _ in range(rng.randint(2, 5)))
        paragraphs.append(f" {paragraph} \r\n")
        length += len(paragraphs[-1])
    return "".join(paragraphs)[:n_chars]


def _byte_symbols() -> list[str]:
    """GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the rest to U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    for offset, byte in enumerate(b for b in range(256) if b not in symbols):
        symbols[byte] = chr(256 + offset)
    return [symbols[b] for b in range(256)]


@functools.cache
def bpe_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Special tokens, the 256 byte tokens and merges learned from ``english_text``; ``N_VOCAB`` tokens."""
    byte_symbols = _byte_symbols()
    words = Counter(
        tuple(byte_symbols[b] for b in word.encode())
        for word in re.findall(r" ?[A-Za-z]+", english_text(20_000, seed=12345))
    )
    tokens = [*SPECIAL_TOKENS, *byte_symbols]
    merges: list[str] = []
    while len(tokens) < N_VOCAB:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        (left, right), _ = max(pairs.items(), key=lambda item: (item[1], item[0]))
        merges.append(f"{left} {right}")
        tokens.append(left + right)
        words = Counter({_merge(word, left, right): count for word, count in words.items()})
    return tuple(tokens), tuple(merges)


def _merge(word: tuple[str, ...], left: str, right: str) -> tuple[str, ...]:
    """``word`` with each adjacent (left, right) pair joined."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


class _Writer:
    """GGUFWriter plus seeded random tensors: weights in ``dtype``; 1-D and ``f32=True`` tensors in F32."""

    def __init__(self, path: Path, arch: str, dtype: GGMLQuantizationType, seed: int) -> None:
        self.gguf = GGUFWriter(path, arch)
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)

    def header(self, name: str, n_layer: int, file_type: LlamaFileType, pre: str, add_bos: bool) -> None:
        """General keys, shared hparams and the BPE tokenizer."""
        g = self.gguf
        g.add_name(name)
        g.add_file_type(file_type)
        g.add_context_length(1024)
        g.add_embedding_length(N_EMBD)
        g.add_block_count(n_layer)
        g.add_layer_norm_rms_eps(1e-6)
        tokens, merges = bpe_vocab()
        g.add_tokenizer_model("gpt2")
        g.add_tokenizer_pre(pre)
        g.add_token_list(list(tokens))
        n_special = len(SPECIAL_TOKENS)
        g.add_token_types([TokenType.CONTROL] * n_special + [TokenType.NORMAL] * (len(tokens) - n_special))
        g.add_token_merges(list(merges))
        g.add_bos_token_id(BOS_ID)
        g.add_eos_token_id(EOS_ID)
        g.add_pad_token_id(EOS_ID)
        g.add_add_bos_token(add_bos)
        g.add_add_eos_token(False)

    def tensor(self, name: str, ne: Sequence[int], std: float = 0.05, *, f32: bool = False) -> None:
        """Add ``name`` with ggml shape ``ne``, values N(0, std)."""
        self.values(name, self.rng.standard_normal(tuple(reversed(ne)), dtype=np.float32) * std, f32=f32)

    def values(self, name: str, data: np.ndarray, *, f32: bool = False) -> None:
        """Add ``data`` (numpy order, i.e. reversed ggml shape); 1-D tensors are always F32."""
        dtype = _F32 if f32 or data.ndim == 1 else self.dtype
        if dtype == GGMLQuantizationType.BF16:
            self.gguf.add_tensor(name, quantize(data, dtype), raw_dtype=dtype)
        else:
            self.gguf.add_tensor(name, quantize(data, dtype))

    def norm(self, name: str, n: int) -> None:
        """An RMSNorm weight near 1."""
        self.values(name, 1.0 + 0.05 * self.rng.standard_normal(n, dtype=np.float32))

    def embeddings(self) -> None:
        """token_embd, output_norm and an untied output."""
        self.tensor("token_embd.weight", (N_EMBD, N_VOCAB), std=1.0)
        self.norm("output_norm.weight", N_EMBD)
        self.tensor("output.weight", (N_EMBD, N_VOCAB))

    def finish(self) -> None:
        """Write header, metadata and tensors, then close."""
        self.gguf.write_header_to_file()
        self.gguf.write_kv_data_to_file()
        self.gguf.write_tensors_to_file()
        self.gguf.close()


def write_dense(path: Path | str, seed: int = 0) -> Path:
    """Llama-like dense model: 2 blocks, 4 heads (2 KV) of 64, n_ff 320, F16 weights."""
    n_layer, n_head, n_head_kv, head_dim, n_ff = 2, 4, 2, 64, 320
    w = _Writer(Path(path), "llama", GGMLQuantizationType.F16, seed)
    w.header("tiny-dense", n_layer, LlamaFileType.MOSTLY_F16, pre="gpt-2", add_bos=True)
    g = w.gguf
    g.add_feed_forward_length(n_ff)
    g.add_head_count(n_head)
    g.add_head_count_kv(n_head_kv)
    g.add_rope_dimension_count(head_dim)
    g.add_rope_freq_base(10000.0)
    w.embeddings()
    for i in range(n_layer):
        blk = f"blk.{i}"
        w.norm(f"{blk}.attn_norm.weight", N_EMBD)
        w.tensor(f"{blk}.attn_q.weight", (N_EMBD, n_head * head_dim))
        w.tensor(f"{blk}.attn_k.weight", (N_EMBD, n_head_kv * head_dim))
        w.tensor(f"{blk}.attn_v.weight", (N_EMBD, n_head_kv * head_dim))
        w.tensor(f"{blk}.attn_output.weight", (n_head * head_dim, N_EMBD))
        w.norm(f"{blk}.ffn_norm.weight", N_EMBD)
        w.tensor(f"{blk}.ffn_gate.weight", (N_EMBD, n_ff))
        w.tensor(f"{blk}.ffn_up.weight", (N_EMBD, n_ff))
        w.tensor(f"{blk}.ffn_down.weight", (n_ff, N_EMBD))
    w.finish()
    return Path(path)


def _moe_ffn(w: _Writer, blk: str, n_expert: int, n_ff_exp: int, n_ff_shexp: int) -> None:
    """Router, routed experts (3-D) and the sigmoid-gated shared expert."""
    w.tensor(f"{blk}.ffn_gate_inp.weight", (N_EMBD, n_expert), std=0.5, f32=True)
    w.tensor(f"{blk}.ffn_gate_exps.weight", (N_EMBD, n_ff_exp, n_expert))
    w.tensor(f"{blk}.ffn_up_exps.weight", (N_EMBD, n_ff_exp, n_expert))
    w.tensor(f"{blk}.ffn_down_exps.weight", (n_ff_exp, N_EMBD, n_expert))
    w.tensor(f"{blk}.ffn_gate_inp_shexp.weight", (N_EMBD, 1), std=0.1, f32=True)
    w.tensor(f"{blk}.ffn_gate_shexp.weight", (N_EMBD, n_ff_shexp))
    w.tensor(f"{blk}.ffn_up_shexp.weight", (N_EMBD, n_ff_shexp))
    w.tensor(f"{blk}.ffn_down_shexp.weight", (n_ff_shexp, N_EMBD))


def write_moe(path: Path | str, seed: int = 0) -> Path:
    """Qwen2-MoE: 2 blocks, 4 heads (2 KV) with q/k/v biases, 4 experts top-2 (n_ff 64), shared expert 256, F32."""
    n_layer, n_head, n_head_kv, head_dim = 2, 4, 2, 64
    n_expert, n_expert_used, n_ff_exp, n_ff_shexp = 4, 2, 64, 256
    w = _Writer(Path(path), "qwen2moe", GGMLQuantizationType.F32, seed)
    w.header("tiny-moe", n_layer, LlamaFileType.ALL_F32, pre="qwen2", add_bos=False)
    g = w.gguf
    g.add_head_count(n_head)
    g.add_head_count_kv(n_head_kv)
    g.add_rope_freq_base(1000000.0)
    g.add_expert_count(n_expert)
    g.add_expert_used_count(n_expert_used)
    g.add_expert_feed_forward_length(n_ff_exp)
    g.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.embeddings()
    for i in range(n_layer):
        blk = f"blk.{i}"
        w.norm(f"{blk}.attn_norm.weight", N_EMBD)
        for proj, width in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
            w.tensor(f"{blk}.attn_{proj}.weight", (N_EMBD, width * head_dim))
            w.tensor(f"{blk}.attn_{proj}.bias", (width * head_dim,), std=0.02)
        w.tensor(f"{blk}.attn_output.weight", (n_head * head_dim, N_EMBD))
        w.norm(f"{blk}.ffn_norm.weight", N_EMBD)
        _moe_ffn(w, blk, n_expert, n_ff_exp, n_ff_shexp)
    w.finish()
    return Path(path)


def write_qwen35moe(path: Path | str, seed: int = 0) -> Path:
    """Qwen3.5 hybrid MoE: blocks [linear, linear, full], 2 experts top-2 + shared expert, BF16.

    Gated DeltaNet: 2 key heads and 4 value heads of 64, conv kernel 4. Full attention: 4 query
    heads (gated, so attn_q is 2x wide), 2 KV heads of 64, q/k norms, 16-dim interleaved MRoPE.
    """
    recurrent = [True, True, False]
    n_head, n_head_kv, head_dim = 4, 2, 64
    n_expert, n_expert_used, n_ff_exp, n_ff_shexp = 2, 2, 256, 256
    ssm_state, ssm_groups, ssm_v_heads, ssm_conv = 64, 2, 4, 4
    key_dim, value_dim = ssm_state * ssm_groups, ssm_state * ssm_v_heads
    w = _Writer(Path(path), "qwen35moe", GGMLQuantizationType.BF16, seed)
    w.header("tiny-qwen35moe", len(recurrent), LlamaFileType.MOSTLY_BF16, pre="qwen2", add_bos=False)
    g = w.gguf
    g.add_head_count(n_head)
    g.add_head_count_kv(n_head_kv)
    g.add_key_length(head_dim)
    g.add_value_length(head_dim)
    g.add_rope_dimension_count(16)
    g.add_rope_dimension_sections([3, 3, 2, 0])
    g.add_rope_freq_base(10000000.0)
    g.add_expert_count(n_expert)
    g.add_expert_used_count(n_expert_used)
    g.add_expert_feed_forward_length(n_ff_exp)
    g.add_expert_shared_feed_forward_length(n_ff_shexp)
    g.add_ssm_conv_kernel(ssm_conv)
    g.add_ssm_state_size(ssm_state)
    g.add_ssm_group_count(ssm_groups)
    g.add_ssm_time_step_rank(ssm_v_heads)
    g.add_ssm_inner_size(value_dim)
    g.add_array("qwen35moe.attention.recurrent_layers", recurrent)
    g.add_full_attention_interval(3)
    w.embeddings()
    for i, is_linear in enumerate(recurrent):
        blk = f"blk.{i}"
        w.norm(f"{blk}.attn_norm.weight", N_EMBD)
        if is_linear:
            w.tensor(f"{blk}.attn_qkv.weight", (N_EMBD, 2 * key_dim + value_dim))
            w.tensor(f"{blk}.attn_gate.weight", (N_EMBD, value_dim))
            w.tensor(f"{blk}.ssm_conv1d.weight", (ssm_conv, 2 * key_dim + value_dim), std=0.3, f32=True)
            w.values(f"{blk}.ssm_dt.bias", w.rng.uniform(-1.0, 1.0, ssm_v_heads).astype(np.float32))
            w.values(f"{blk}.ssm_a", -np.exp(w.rng.uniform(-1.0, 1.0, ssm_v_heads)).astype(np.float32))
            w.tensor(f"{blk}.ssm_alpha.weight", (N_EMBD, ssm_v_heads))
            w.tensor(f"{blk}.ssm_beta.weight", (N_EMBD, ssm_v_heads))
            w.norm(f"{blk}.ssm_norm.weight", ssm_state)
            w.tensor(f"{blk}.ssm_out.weight", (value_dim, N_EMBD))
        else:
            w.tensor(f"{blk}.attn_q.weight", (N_EMBD, 2 * n_head * head_dim))
            w.tensor(f"{blk}.attn_k.weight", (N_EMBD, n_head_kv * head_dim))
            w.tensor(f"{blk}.attn_v.weight", (N_EMBD, n_head_kv * head_dim))
            w.tensor(f"{blk}.attn_output.weight", (n_head * head_dim, N_EMBD))
            w.norm(f"{blk}.attn_q_norm.weight", head_dim)
            w.norm(f"{blk}.attn_k_norm.weight", head_dim)
        w.norm(f"{blk}.post_attention_norm.weight", N_EMBD)
        _moe_ffn(w, blk, n_expert, n_ff_exp, n_ff_shexp)
    w.finish()
    return Path(path)
