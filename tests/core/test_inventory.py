"""Header-only inventory: tiny layouts, split files, and the real Qwen3.5-35B-A3B tensor table."""

from __future__ import annotations

import time

import pytest
from paths import QWEN_TABLES

from recipe_search.core.importer import recipe_from_inventory
from recipe_search.core.inventory import inventory_rows, read_inventory
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.tensor_map import read_map, write_header_only


def test_layouts(dense_model, moe_model, qwen35_model) -> None:
    kinds = {m.name: set(read_inventory(m).kinds) for m in (dense_model, moe_model, qwen35_model)}
    assert {"attn_q", "ffn_down", "token_embd", "output"} <= kinds[dense_model.name]
    assert {"ffn_up_exps", "ffn_down_shexp", "ffn_gate_inp"} <= kinds[moe_model.name]
    assert {"attn_qkv", "attn_gate", "ssm_a", "ssm_alpha", "ssm_beta", "ssm_conv1d", "ssm_dt.bias", "ssm_norm",
            "ssm_out", "attn_q", "attn_k", "attn_v", "attn_output"} <= kinds[qwen35_model.name]
    rows = {r["tensor_type"]: r for r in inventory_rows(read_inventory(qwen35_model))}
    assert rows["ffn_up_exps"]["quantized_by_llama_cpp"] and "IQ2_XXS" in rows["ffn_up_exps"]["admits"]
    assert not rows["ssm_conv1d"]["quantized_by_llama_cpp"] and not rows["ffn_gate_inp"]["quantized_by_llama_cpp"]
    assert not rows["ffn_gate_inp_shexp"]["quantized_by_llama_cpp"]  # [256, 1] counts as 1-D in ggml
    dense = {r["tensor_type"]: r for r in inventory_rows(read_inventory(dense_model))}
    assert "Q4_K" not in dense["ffn_down"]["admits"] and "Q4_K" in dense["ffn_up"]["admits"]
    assert abs(sum(r["share"] for r in dense.values()) - 1) < 1e-9


def test_demo_inventory(demo_model) -> None:
    rows = {r["tensor_type"]: r for r in inventory_rows(read_inventory(demo_model))}
    weights = [k for k, r in rows.items() if r["quantized_by_llama_cpp"]]
    assert len(weights) == 8
    assert sorted(k for k in weights if "Q4_K" in rows[k]["admits"]) == ["attn_output", "ffn_down"]
    assert 0.62 < rows["token_embd"]["share"] < 0.64


def test_bad_files(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all, just text" * 4)
    with pytest.raises(RecipeSearchError, match="bad.gguf: not a GGUF file"):
        read_inventory(bad)
    with pytest.raises(RecipeSearchError, match="no such file"):
        read_inventory(tmp_path / "missing.gguf")


def test_truncated_file(dense_model, tmp_path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(dense_model.read_bytes()[:-1000])
    with pytest.raises(RecipeSearchError, match="truncated"):
        read_inventory(cut)


@pytest.fixture(scope="module")
def qwen_maps() -> dict[str, list]:
    if not (QWEN_TABLES / "tensors.bf16.map").exists():
        pytest.skip(f"Qwen3.5-35B-A3B tables not found under {QWEN_TABLES}")
    return {q: read_map(QWEN_TABLES / f"tensors.{q}.map") for q in ("bf16", "q4_K", "iq2_xxs", "q8_0")}


def test_qwen35_35b_split_header_and_exact_bytes(qwen_maps, tmp_path) -> None:
    bf16 = qwen_maps["bf16"]
    shards = [bf16[i:i + 300] for i in range(0, len(bf16), 300)]
    n = len(shards)
    for i, part in enumerate(shards):
        write_header_only(tmp_path / f"q35-{i + 1:05d}-of-{n:05d}.gguf", "qwen35moe", part,
                          {"split.no": i, "split.count": n, "split.tensors.count": len(bf16)})
    start = time.perf_counter()
    inv = read_inventory(tmp_path / f"q35-00002-of-{n:05d}.gguf")
    assert time.perf_counter() - start < 1.0
    assert len(inv.tensors) == len(bf16) == 733
    assert {"ssm_out", "attn_qkv", "attn_gate", "ffn_down_exps", "ffn_up_shexp"} <= set(inv.kinds)

    for qtype in ("q4_K", "iq2_xxs", "q8_0"):
        quant = write_header_only(tmp_path / f"{qtype}.gguf", "qwen35moe", qwen_maps[qtype])
        recipe = recipe_from_inventory(read_inventory(quant))
        pred = predict_size(resolve(recipe, inv), inv)
        expected = {name: nbytes for name, _, _, nbytes in qwen_maps[qtype]}
        assert {t.name: t.bytes for t in pred.tensors} == expected, qtype
