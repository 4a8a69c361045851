"""Write a few-block qwen35moe GGUF with a real model's per-block tensor shapes, from its tensor map.

    python experiments/real_shapes.py ../shared/data/qwen3.5-35b-a3b/tensors.bf16.map \
        ../rs-work/real-shapes/q35-2blocks.gguf --blocks 2 [--check]

Every tensor of a block takes the shape and type of the map's first block of the same kind (Gated DeltaNet
linear attention or full attention); token_embd, output_norm and output keep the map's, so the vocabulary is
the real one (248,320 for Qwen3.5-35B-A3B). The full-attention interval is the map's (its first full-attention
block's number + 1: 4) or the block count when that is smaller, so 2 blocks are [linear, full] and 4 blocks
[linear, linear, linear, full], as the real model begins. Hyperparameters come from the shapes (width, heads,
head size, experts, expert width, DeltaNet state, groups and heads, conv kernel); the rest, which no shape
says, are options with Qwen3.5-35B-A3B's published values (8 experts per token, 64 rotary dimensions in
MRoPE sections 11/11/10, rope base 1e7, RMS epsilon 1e-6).

Weights are seeded random, N(0, 1/fan-in) for every matrix (ggml's ne0 is the fan-in), so each projection
keeps unit scale; token_embd is N(0, 1); output is N(0, logit_std^2/fan-in), so the logits have standard
deviation ``--logit-std``, which sets how sharp the distributions are and so how large a quant's KLD is;
norms near 1; DeltaNet's decay (ssm_a) and time-step bias as tests/tiny_models.py draws them. They are
written a slice at a time (``CHUNK`` elements), never a whole tensor in memory. The tokenizer is
``--tokenizer``'s (default: the tiny trained qwen35moe, the same architecture), padded with unused tokens
(``<|unused_N|>``, type UNUSED, never produced by its merges) to the map's vocabulary.

``--check`` then scores a uniform Q4_K recipe on it with `recipe-search score` (``--check-ctx``,
``--check-chunks`` chunks of wiki.test.raw; a fresh cache under the output's directory, removed after) and
fails unless the mean KLD is finite.

``--experts N`` and ``--vocab N`` shrink the routed experts and the padded vocabulary (the smoke mode's
scaled-down model).

    python experiments/real_shapes.py --smoke  # a tiny qwen35moe's map cut to 2 blocks, 4 experts, 640 tokens; --check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import quantize

from recipe_search import RecipeSearchError
from recipe_search.formats import GGMLType, block_index, check_output_file, read_map

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
DEFAULT_TOKENIZER = DATA / "tiny-qwen35moe" / "model-bf16.gguf"
DEFAULT_TEXT = DATA / "wikitext-2-raw" / "wiki.test.raw"
ARCH = "qwen35moe"
CHUNK = 1 << 24  # elements drawn and written at a time (64 MiB of float32)
WRITABLE = {GGMLType.F32: GGMLQuantizationType.F32, GGMLType.F16: GGMLQuantizationType.F16,
            GGMLType.BF16: GGMLQuantizationType.BF16}

Tensor = tuple[str, tuple[int, ...], GGMLType]  # name, ggml shape (ne0 first), type


def plan(rows: Sequence[tuple[str, tuple[int, ...], GGMLType, int]], blocks: int, experts: int | None,
         vocab: int | None, source: Path) -> tuple[list[Tensor], int]:
    """The tensors of a ``blocks``-block model cut from a map's rows, and its full-attention interval."""
    by_block: dict[int, list[tuple[str, tuple[int, ...], GGMLType]]] = {}
    top: list[tuple[str, tuple[int, ...], GGMLType]] = []
    for name, shape, gtype, _ in rows:
        if gtype not in WRITABLE:
            raise RecipeSearchError(f"{name} is {gtype.name}: the map must list unquantized tensors "
                                    "(tensors.bf16.map)", source)
        b = block_index(name)
        (top if b is None else by_block.setdefault(b, [])).append((name, shape, gtype))
    full = [b for b, ts in by_block.items() if any(n.endswith(".attn_q.weight") for n, *_ in ts)]
    linear = [b for b, ts in by_block.items() if any(n.endswith(".ssm_a") for n, *_ in ts)]
    if not full or not linear:
        raise RecipeSearchError("the map needs a full-attention block (attn_q) and a linear-attention block "
                                "(ssm_a), as qwen35moe has", source)
    interval = min(full) + 1
    if sorted(full) != list(range(interval - 1, len(by_block), interval)):
        raise RecipeSearchError(f"full-attention blocks {sorted(full)} are not every {interval}th", source)
    interval = min(interval, blocks)

    def resize(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if experts is not None and name.endswith("_exps.weight"):
            return (*shape[:2], experts)
        if experts is not None and name.endswith("ffn_gate_inp.weight"):
            return (shape[0], experts)
        if vocab is not None and name in ("token_embd.weight", "output.weight"):
            return (shape[0], vocab)
        return shape

    out: list[Tensor] = [(n, resize(n, s), t) for n, s, t in top if n == "token_embd.weight"]
    for i in range(blocks):
        proto = min(linear) if (i + 1) % interval else min(full)
        out += [(n.replace(f"blk.{proto}.", f"blk.{i}.", 1), resize(n, s), t) for n, s, t in by_block[proto]]
    out += [(n, resize(n, s), t) for n, s, t in top if n != "token_embd.weight"]
    return out, interval


def shape_of(tensors: Sequence[Tensor], suffix: str) -> tuple[int, ...]:
    """The ggml shape of the first tensor whose name ends with ``suffix``."""
    return next(s for n, s, _ in tensors if n.endswith(suffix))


def hyperparameters(w: GGUFWriter, tensors: Sequence[Tensor], blocks: int, interval: int,
                    a: argparse.Namespace) -> None:
    """qwen35moe's keys: from the shapes where they say them, else from the options."""
    n_embd = shape_of(tensors, "token_embd.weight")[0]
    head_dim = shape_of(tensors, "attn_k_norm.weight")[0]
    _, _, n_expert = shape_of(tensors, "ffn_gate_exps.weight")
    inner = shape_of(tensors, "attn_gate.weight")[1]
    state = shape_of(tensors, "ssm_norm.weight")[0]
    w.add_name(f"real-shapes-{ARCH}-{blocks}blocks")
    w.add_file_type(LlamaFileType.MOSTLY_BF16)
    w.add_context_length(a.context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(blocks)
    w.add_layer_norm_rms_eps(a.rms_eps)
    w.add_head_count(shape_of(tensors, "attn_output.weight")[0] // head_dim)
    w.add_head_count_kv(shape_of(tensors, "attn_k.weight")[1] // head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(2 * sum(a.rope_sections))
    w.add_rope_dimension_sections([*a.rope_sections, 0])
    w.add_rope_freq_base(a.rope_base)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(min(a.experts_used, n_expert))
    w.add_expert_feed_forward_length(shape_of(tensors, "ffn_gate_exps.weight")[1])
    w.add_expert_shared_feed_forward_length(shape_of(tensors, "ffn_gate_shexp.weight")[1])
    w.add_ssm_conv_kernel(shape_of(tensors, "ssm_conv1d.weight")[0])
    w.add_ssm_state_size(state)
    w.add_ssm_group_count((shape_of(tensors, "attn_qkv.weight")[1] - inner) // 2 // state)
    w.add_ssm_time_step_rank(shape_of(tensors, "ssm_a")[0])
    w.add_ssm_inner_size(inner)
    w.add_full_attention_interval(interval)


def copy_tokenizer(w: GGUFWriter, source: Path, n_vocab: int) -> int:
    """Every ``tokenizer.*`` key of ``source``, its token list padded with unused tokens to ``n_vocab``;
    returns the number of real tokens."""
    reader = GGUFReader(source)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    if len(tokens) > n_vocab:
        raise RecipeSearchError(f"its {len(tokens):,} tokens do not fit a vocabulary of {n_vocab:,}", source)
    pad = n_vocab - len(tokens)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        if key == "tokenizer.ggml.tokens":
            value = [*value, *(f"<|unused_{i}|>" for i in range(pad))]
        elif key == "tokenizer.ggml.token_type":
            value = [*value, *[int(TokenType.UNUSED)] * pad]
        array = field.types[0] == GGUFValueType.ARRAY
        w.add_key_value(key, value, field.types[0], sub_type=field.types[-1] if array else None)
    return len(tokens)


def values(name: str, ne: tuple[int, ...], rng: np.random.Generator, logit_std: float):
    """The tensor's values, float32 in numpy order, a slice of whole rows (ne0 each) at a time."""
    if len(ne) == 1:
        n = ne[0]
        if name.endswith(".ssm_a"):
            yield -np.exp(rng.uniform(-1.0, 1.0, n)).astype(np.float32)
        elif name.endswith(".ssm_dt.bias"):
            yield rng.uniform(-1.0, 1.0, n).astype(np.float32)
        else:  # an RMSNorm weight
            yield (1.0 + 0.05 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)
        return
    gain = {"token_embd.weight": math.sqrt(ne[0]), "output.weight": logit_std}.get(name, 1.0)
    std = gain / math.sqrt(ne[0])
    rows = math.prod(ne[1:])
    step = max(1, CHUNK // ne[0])
    for start in range(0, rows, step):
        yield rng.standard_normal((min(step, rows - start), ne[0]), dtype=np.float32) * np.float32(std)


def write(path: Path, tensors: Sequence[Tensor], interval: int, a: argparse.Namespace) -> int:
    """Write the GGUF through a temporary file and a rename; returns the tokenizer's real token count."""
    check_output_file(path)
    part = path.with_name(path.name + ".part")
    w = GGUFWriter(part, ARCH)
    hyperparameters(w, tensors, a.blocks, interval, a)
    real_tokens = copy_tokenizer(w, a.tokenizer, shape_of(tensors, "token_embd.weight")[1])
    for name, ne, gtype in tensors:
        nbytes = math.prod(ne) * np.dtype(np.float32 if gtype == GGMLType.F32 else np.float16).itemsize
        w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float32), nbytes, raw_dtype=WRITABLE[gtype])
    rng = np.random.default_rng(a.seed)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None
        out = w.fout[0]
        w.write_padding(out, out.tell())
        for name, ne, gtype in tensors:
            written = 0
            for part_values in values(name, ne, rng, a.logit_std):
                data = quantize(part_values, WRITABLE[gtype]) if gtype != GGMLType.F32 else part_values
                data.tofile(out)
                written += data.nbytes
            w.write_padding(out, written)
        w.close()
        os.replace(part, path)
    finally:
        w.close()
        part.unlink(missing_ok=True)
    return real_tokens


def check(path: Path, a: argparse.Namespace) -> float:
    """Mean KLD of a uniform Q4_K recipe on ``path`` from `recipe-search score`; fails unless finite."""
    from recipe_search import uniform_recipe

    work = path.with_name(path.stem + "-check")
    work.mkdir(exist_ok=True)
    try:
        recipe = work / "q4_k.yaml"
        uniform_recipe("Q4_K").save(recipe)
        cmd = [sys.executable, "-m", "recipe_search.cli", "score", str(path), str(recipe), "--text", str(a.text),
               "--ctx", str(a.check_ctx), "--chunks", str(a.check_chunks), "--threads", str(a.threads),
               "--cache-dir", str(work / "cache"), "--json"]
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if run.returncode:
            raise RecipeSearchError(f"recipe-search score failed (exit {run.returncode}): {run.stderr[-2000:]}", path)
        metrics = json.loads(run.stdout)["metrics"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kld = metrics["kld_mean"]
    print(f"check: uniform Q4_K, ctx {a.check_ctx}, {a.check_chunks} chunks: mean KLD {kld:.4f}, "
          f"99.9% KLD {metrics.get('kld_p999', float('nan')):.4f}", flush=True)
    if not math.isfinite(kld):
        raise RecipeSearchError(f"mean KLD {kld} is not finite", path)
    return kld


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("map", type=Path, help="tensors.bf16.map of the real model (name, shape, dtype, bytes per line)")
    p.add_argument("out", type=Path, help="the GGUF to write (keep it outside the repository)")
    p.add_argument("--blocks", type=int, default=2, help="blocks to write, at least 2 (default 2)")
    p.add_argument("--experts", type=int, help="routed experts per block (default: the map's)")
    p.add_argument("--vocab", type=int, help="vocabulary size, padded with unused tokens (default: the map's)")
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="a qwen35moe GGUF whose tokenizer to copy")
    p.add_argument("--logit-std", type=float, default=4.0, help="standard deviation of the logits (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experts-used", type=int, default=8, help="experts per token (default 8)")
    p.add_argument("--rope-sections", type=int, nargs=3, default=[11, 11, 10], help="MRoPE sections (default 11 11 10)")
    p.add_argument("--rope-base", type=float, default=1e7)
    p.add_argument("--rms-eps", type=float, default=1e-6)
    p.add_argument("--context-length", type=int, default=262144)
    p.add_argument("--check", action="store_true", help="then score a uniform Q4_K recipe on it (KLD must be finite)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="--check's text (default: wiki.test.raw)")
    p.add_argument("--check-ctx", type=int, default=256)
    p.add_argument("--check-chunks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="--check's threads (default 2)")
    a = p.parse_args(argv)
    if a.blocks < 2:
        p.error("--blocks must be at least 2 (one linear-attention and one full-attention block)")
    tensors, interval = plan(read_map(a.map), a.blocks, a.experts, a.vocab, a.map)
    real_tokens = write(a.out, tensors, interval, a)
    kinds = ["full" if (i + 1) % interval == 0 else "linear" for i in range(a.blocks)]
    print(f"wrote {a.out}: {a.out.stat().st_size:,} bytes, {len(tensors)} tensors, blocks {kinds} "
          f"(full_attention_interval {interval}), {shape_of(tensors, 'ffn_gate_exps.weight')[2]} experts, "
          f"vocabulary {shape_of(tensors, 'token_embd.weight')[1]:,} ({real_tokens:,} real tokens)", flush=True)
    if a.check:
        check(a.out, a)


def run_smoke() -> None:
    """The tests' tiny qwen35moe (blocks [linear, linear, full], 2 experts, 512 tokens) listed as a map, cut to 2
    blocks of 4 experts at 640 tokens, its own tokenizer padded, checked on the generated text."""
    from header_only_gguf import write_map

    with smoke.directory("real_shapes") as tmp:
        tiny = smoke.qwen35_model(tmp)
        main([str(write_map(tiny, tmp / "tensors.map")), str(tmp / "real-shapes.gguf"), "--blocks", "2",
              "--experts", "4", "--vocab", "640", "--tokenizer", str(tiny), "--check", "--text",
              str(smoke.text_file(tmp)), "--check-ctx", "128", "--check-chunks", "2"])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
