"""The generated tiny models: layout, tokenizer, llama.cpp evaluation and Q4_0 quantization."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from tiny_models import BOS_ID, EOS_ID, N_VOCAB, write_dense

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

F32, F16, BF16 = GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16
MODELS = ("dense_model", "moe_model", "qwen35_model")
LLAMA_FTYPE_MOSTLY_Q4_0 = 2

GLOBAL_TENSORS = {"token_embd.weight", "output_norm.weight", "output.weight"}
MOE_FFN = {
    f"ffn_{name}{kind}.weight" for name in ("gate", "up", "down") for kind in ("_exps", "_shexp")
} | {"ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"}
ATTENTION = {f"attn_{name}.weight" for name in ("q", "k", "v", "output")}
DENSE_BLOCK = ATTENTION | {f"{name}.weight" for name in ("attn_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
MOE_BLOCK = ATTENTION | MOE_FFN | {"attn_norm.weight", "ffn_norm.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias"}
QWEN35_COMMON = MOE_FFN | {"attn_norm.weight", "post_attention_norm.weight"}
QWEN35_LINEAR = QWEN35_COMMON | {
    "attn_qkv.weight", "attn_gate.weight", "ssm_a", "ssm_alpha.weight", "ssm_beta.weight",
    "ssm_conv1d.weight", "ssm_dt.bias", "ssm_norm.weight", "ssm_out.weight",
}
QWEN35_FULL = QWEN35_COMMON | ATTENTION | {"attn_q_norm.weight", "attn_k_norm.weight"}

# per model: arch, tensor names per block, weight type, a few (name, ggml shape, type) checks
LAYOUTS = {
    "dense_model": (
        "llama", [DENSE_BLOCK, DENSE_BLOCK], F16,
        [("token_embd.weight", [256, N_VOCAB], F16), ("blk.1.ffn_down.weight", [320, 256], F16),
         ("blk.0.attn_k.weight", [256, 128], F16), ("blk.0.attn_norm.weight", [256], F32)],
    ),
    "moe_model": (
        "qwen2moe", [MOE_BLOCK, MOE_BLOCK], F32,
        [("blk.0.ffn_up_exps.weight", [256, 64, 4], F32), ("blk.1.ffn_down_exps.weight", [64, 256, 4], F32),
         ("blk.0.ffn_gate_inp.weight", [256, 4], F32), ("blk.0.ffn_gate_inp_shexp.weight", [256, 1], F32),
         ("blk.0.ffn_down_shexp.weight", [256, 256], F32), ("blk.0.attn_q.bias", [256], F32)],
    ),
    "qwen35_model": (
        "qwen35moe", [QWEN35_LINEAR, QWEN35_LINEAR, QWEN35_FULL], BF16,
        [("blk.0.attn_qkv.weight", [256, 512], BF16), ("blk.1.ssm_out.weight", [256, 256], BF16),
         ("blk.0.ssm_conv1d.weight", [4, 512], F32), ("blk.0.ssm_alpha.weight", [256, 4], BF16),
         ("blk.2.attn_q.weight", [256, 512], BF16), ("blk.2.attn_k.weight", [256, 128], BF16),
         ("blk.2.ffn_up_exps.weight", [256, 256, 2], BF16), ("blk.0.ffn_gate_inp.weight", [256, 2], F32)],
    ),
}


def _tensors(path: Path) -> dict[str, tuple[list[int], GGMLQuantizationType]]:
    return {t.name: (t.shape.tolist(), t.tensor_type) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("model", MODELS)
def test_layout(model: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(model)
    arch, blocks, weight_type, checks = LAYOUTS[model]
    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == BOS_ID
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == EOS_ID
    assert 256 <= len(reader.fields["tokenizer.ggml.tokens"].data) <= 1024
    assert path.stat().st_size < 6_000_000

    tensors = _tensors(path)
    expected = GLOBAL_TENSORS | {f"blk.{i}.{name}" for i, block in enumerate(blocks) for name in block}
    assert set(tensors) == expected
    for name, shape, ggml_type in checks:
        assert tensors[name] == (shape, ggml_type), name

    matrices = {name: shape for name, (shape, dtype) in tensors.items() if dtype == weight_type and len(shape) >= 2}
    assert len(matrices) > len(blocks) * 5
    assert all(shape[0] % 32 == 0 for shape in matrices.values())
    off_256 = {name for name, shape in matrices.items() if shape[0] % 256}
    if model == "qwen35_model":
        assert not off_256
    else:
        assert off_256 and len(off_256) < len(matrices) / 2


def test_qwen35_mirrors_real_model(qwen35_model: Path, tiny_qwen35moe_real: Path) -> None:
    """Same tensors, types, row lengths and ranks as the trained model's blocks 0-2 (expert count differs)."""

    def signature(path: Path) -> dict[str, tuple[int, int, GGMLQuantizationType]]:
        return {
            name: (shape[0], len(shape), dtype)
            for name, (shape, dtype) in _tensors(path).items()
            if not name.startswith("blk.") or int(name.split(".")[1]) < 3
        }

    assert signature(qwen35_model) == signature(tiny_qwen35moe_real)


def test_seeded(tmp_path: Path) -> None:
    first = write_dense(tmp_path / "a.gguf").read_bytes()
    assert write_dense(tmp_path / "b.gguf").read_bytes() == first
    assert write_dense(tmp_path / "c.gguf", seed=1).read_bytes() != first


@pytest.mark.parametrize("model", MODELS)
def test_tokenizer_round_trip(model: str, request: pytest.FixtureRequest, sample_text: str) -> None:
    llm = llama_cpp.Llama(model_path=str(request.getfixturevalue(model)), vocab_only=True, verbose=False)
    text = sample_text + "Tabs\tand  spaces,\r\n\r\nx = -3.25e+4; [a] {b} <c> ~`@#$%^&*_|\\/ naïve café – ü\n"
    tokens = llm.tokenize(text.encode(), add_bos=False)
    assert llm.n_vocab() == N_VOCAB
    assert llm.token_bos() == BOS_ID and llm.token_eos() == EOS_ID
    assert all(0 <= t < N_VOCAB for t in tokens)
    assert len(tokens) < len(text) / 2, "merges should shorten English text"
    assert llm.detokenize(tokens) == text.encode()
    llm.close()


@pytest.mark.parametrize("model", MODELS)
def test_evaluates_to_finite_logits(model: str, request: pytest.FixtureRequest, sample_text: str) -> None:
    llm = llama_cpp.Llama(model_path=str(request.getfixturevalue(model)), n_ctx=256, logits_all=True, verbose=False)
    tokens = llm.tokenize(sample_text.encode())[:40]
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)])
    llm.close()
    assert np.isfinite(logits).all()
    assert logits.std(axis=1).min() > 0.1, "logits are flat over the vocabulary"
    assert np.abs(logits[1:] - logits[:-1]).max(axis=1).min() > 1e-3, "logits do not depend on the input"


@pytest.mark.parametrize("model", MODELS)
def test_quantizes_to_q4_0(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source: Path = request.getfixturevalue(model)
    target = tmp_path / "q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) == 0
    assert target.stat().st_size < source.stat().st_size / 2.5
    quantized_types = {ggml_type for _, ggml_type in _tensors(target).values()}
    assert GGMLQuantizationType.Q4_0 in quantized_types
