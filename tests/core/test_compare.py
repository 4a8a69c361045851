"""Recipes side by side, and recipes mapped onto other models (tiny ones, and the real Qwen3.5-35B-A3B table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from paths import QWEN_TABLES

from recipe_search.cli import main
from recipe_search.core.comparison import compare, format_table
from recipe_search.core.importer import import_recipe
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import load_recipe, recipe_from_dict
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.engine.quantize import quantize_model
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.ggml_types import GGMLType, is_quantized
from recipe_search.formats.tensor_map import read_map, write_header_only

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp


#: what `recipe-search import` recovers from the Gemma 3 270M Q4_K_M file (the demo's original)
GEMMA_Q4_K_M = {
    "name": "gemma-3-270m-q4_k_m", "unmatched": {"type": "Q5_0"},
    "rules": [{"tensors": "token_embd", "type": "Q8_0"}, {"tensors": "attn_output", "type": "Q4_K"},
              {"tensors": "attn_v", "blocks": [0, 1, 4, 7, 10, 13, 15, 16, 17], "type": "Q8_0"},
              {"tensors": "ffn_down", "blocks": [0, 1, 4, 7, 10, 13, 15, 16, 17], "type": "Q6_K"},
              {"tensors": "ffn_down", "type": "Q4_K"}],
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture()
def dense_recipe(tmp_path) -> Path:
    return _write(tmp_path / "dense-mix.yaml", {
        "name": "dense-mix", "unmatched": {"type": "Q8_0"},
        "rules": [{"tensors": "attn_q", "type": "Q4_K"}, {"tensors": "ffn_down", "type": "Q4_K"},
                  {"tensors": "attn_v", "blocks": [0], "type": "Q6_K"}]})


def test_recipes_as_they_read(tmp_path) -> None:
    a = _write(tmp_path / "a.yaml", {
        "name": "a", "unmatched": {"type": "Q8_0"}, "token_embedding_type": "Q6_K",
        "rules": [{"tensors": "ffn_down", "blocks": [0, 1, 2, 5], "type": "Q6_K"}, {"tensors": "ffn_down", "type": "Q4_K"},
                  {"tensors": "attn_q", "type": "Q5_0"}, {"pattern": r"attn_(k|v)\.weight$", "type": "Q4_0"}]})
    b = _write(tmp_path / "b.yaml", {
        "name": "b", "unmatched": {"file_type": "Q4_K_M", "pure": False},
        "rules": [{"tensors": "attn_output", "type": "Q8_0"}, {"pattern": r"ffn_down\.weight$", "type": "Q5_K"}],
        "metrics": {"bpw": 4.9, "file_bytes": 123_456_789}})
    cmp = compare([a, b])
    assert cmp.rows == ["token_embd", "ffn_down", "attn_q", r"/attn_(k|v)\.weight$/", "attn_output"]
    ca, cb = ({row: (cell.text, cell.bpw) for row, cell in c.cells.items()} for c in cmp.columns)
    assert ca == {"token_embd": ("Q6_K", 6.5625), "ffn_down": ("Q6_K@0-2,5 Q4_K", None), "attn_q": ("Q5_0", 5.5),
                  r"/attn_(k|v)\.weight$/": ("Q4_0", 4.5), "attn_output": ("(Q8_0)", 8.5)}
    assert cb["attn_output"] == ("Q8_0", 8.5) and cb["ffn_down"] == ("Q5_K~", 5.5)
    assert cb["attn_q"] == ("(Q4_K_M mixture)", None)
    assert (cmp.columns[0].bpw, cmp.columns[1].bpw, cmp.columns[1].size_from) == (None, 4.9, "measured")
    table = format_table(cmp)
    assert table.splitlines()[0].split() == ["a", "b"]
    assert "117.74 MiB (measured)" in table and "(T): no rule names the tensor type" in table


@pytest.mark.slow
def test_quant_file_and_mapping_onto_another_family(dense_model, qwen35_model, dense_recipe, tmp_path) -> None:
    quant = tmp_path / "dense-mix.gguf"
    quantize_model(dense_model, load_recipe(dense_recipe), quant)
    [col] = compare([quant]).columns
    assert col.source == "gguf" and col.file_bytes == quant.stat().st_size
    assert col.cells["attn_q"].text == "Q4_K" and col.cells["attn_q"].bpw == 4.5
    assert col.cells["ffn_down"].text == "Q5_0"  # rows of 320 take no K-quant: llama.cpp fell back
    assert col.cells["attn_v"].text == "Q6_K×1 Q8_0×1"

    # the dense (llama) recipe on the hybrid MoE: the mapping says what carries over
    cmp = compare([dense_recipe, quant], model=qwen35_model)
    inv = read_inventory(qwen35_model)
    assert cmp.rows == [k.name for k in inv.kinds.values() if k.quantizable]
    mapped = cmp.columns[0]
    assert mapped.source == "mapped"
    assert mapped.missing_rules == ["ffn_down -> Q4_K: no such tensor type",
                                    "attn_v[blocks 0] -> Q6_K: attn_v exists only in blocks 2"]
    assert "ffn_up_exps" in mapped.uncovered and "attn_q" not in mapped.uncovered
    assert mapped.cells["attn_q"].text == "Q4_K" and mapped.cells["ffn_up_exps"].text == "(Q8_0)"
    # the predicted size is the size llama.cpp writes
    out = quantize_model(qwen35_model, load_recipe(dense_recipe), tmp_path / "mapped.gguf")
    assert mapped.file_bytes == out.file_bytes == (tmp_path / "mapped.gguf").stat().st_size
    # the imported recipe of the quant maps the same way (its catch-all is Q8_0 too)
    assert cmp.columns[1].cells["attn_q"].text == "Q4_K"
    assert "mapped onto" in format_table(cmp) and "rule finds nothing: ffn_down -> Q4_K" in format_table(cmp)


def test_partial_coverage_lists_counts(qwen35_model, tmp_path) -> None:
    r = _write(tmp_path / "r.yaml", {"name": "r", "unmatched": {"type": "Q8_0"},
                                     "rules": [{"tensors": "ffn_up_exps", "blocks": [0], "type": "Q4_K"}]})
    [col] = compare([r], model=qwen35_model).columns
    assert col.cells["ffn_up_exps"].text == "Q4_K×1 (Q8_0×2)"
    assert "ffn_up_exps (2 of 3 tensors)" in col.uncovered


def test_compare_cli(dense_model, dense_recipe, capsys) -> None:
    assert main(["compare", str(dense_recipe), "--model", str(dense_model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["columns"][0]["fallbacks"] == {"ffn_down": {"Q4_K->Q5_0": 2}}
    assert data["model"].startswith(str(dense_model))
    assert main(["compare", str(dense_recipe), "--score"]) == 2
    assert "--score needs --model" in capsys.readouterr().err
    assert main(["compare", str(dense_model)]) == 2
    assert "holds no quantized tensor" in capsys.readouterr().err


def test_compare_score(dense_model, dense_recipe, tmp_path, capsys) -> None:
    uniform = _write(tmp_path / "q8.yaml", {"name": "q8", "unmatched": {"type": "Q8_0"}})
    assert main(["compare", str(dense_recipe), str(uniform), "--model", str(dense_model), "--score", "--ctx", "128",
                 "--chunks", "2", "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    cols = json.loads(capsys.readouterr().out)["columns"]
    scores = [c["score"] for c in cols]
    assert all({"kld_mean", "kld_p99", "kld_p999", "same_top", "ppl_ratio"} <= set(s) for s in scores)
    assert scores[0]["file_bytes"] == cols[0]["file_bytes"]
    assert scores[1]["kld_mean"] < scores[0]["kld_mean"]  # Q8_0 everywhere beats the 4-bit mix


@pytest.fixture(scope="module")
def qwen_35b(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    if not (QWEN_TABLES / "tensors.bf16.map").exists():
        pytest.skip(f"Qwen3.5-35B-A3B tables not found under {QWEN_TABLES}")
    maps = {q: read_map(QWEN_TABLES / f"tensors.{q}.map") for q in ("bf16", "q8_0", "q4_K", "q5_0")}
    path = write_header_only(tmp_path_factory.mktemp("q35") / "qwen3.5-35b-a3b-bf16.gguf", "qwen35moe", maps["bf16"])
    return path, maps


def test_gemma_recipe_on_qwen35_35b(qwen_35b, tmp_path) -> None:
    model, maps = qwen_35b
    recipe_path = _write(tmp_path / "gemma-3-270m-q4_k_m.yaml", GEMMA_Q4_K_M)
    cmp = compare([recipe_path], model=model)
    [col] = cmp.columns
    assert "qwen35moe, 733 tensors, 40 blocks" in cmp.model
    # Gemma's dense FFN has no counterpart among Qwen's experts; attn_v exists only in the 10 attention blocks
    assert col.missing_rules == ["ffn_down[blocks 0,1,4,7,10,13,15,16,17] -> Q6_K: no such tensor type",
                                 "ffn_down -> Q4_K: no such tensor type"]
    assert {"ffn_down_exps", "ffn_up_exps", "attn_qkv", "ssm_out", "attn_v (8 of 10 tensors)"} <= set(col.uncovered)
    assert "token_embd" not in " ".join(col.uncovered)
    assert col.cells["attn_v"].text == "Q8_0×2 (Q5_0×8)" and col.cells["ffn_down_exps"].text == "(Q5_0)"
    # every tensor's bytes agree with the real uniformly quantized files of that type
    inv = read_inventory(model)
    recipe = recipe_from_dict(GEMMA_Q4_K_M)
    pred = predict_size(resolve(recipe, inv), inv)
    by_type = {GGMLType.Q8_0: "q8_0", GGMLType.Q4_K: "q4_K", GGMLType.Q5_0: "q5_0"}
    oracle = {q: {name: nbytes for name, _, _, nbytes in rows} for q, rows in maps.items()}
    for t in pred.tensors:
        gtype = GGMLType[t.ggml_type]
        if is_quantized(gtype):
            assert t.bytes == oracle[by_type[gtype]][t.name], t.name
    assert col.file_bytes == pred.file_bytes
    assert 22 * 2**30 < col.file_bytes < 23 * 2**30
    assert "22.43 GiB (predicted)" in format_table(cmp)


def test_gemma_import_is_the_inline_recipe(demo_original) -> None:
    imported = import_recipe(demo_original)
    assert [r.model_dump(exclude_none=True) for r in imported.rules] == GEMMA_Q4_K_M["rules"]
    assert imported.unmatched.type == GEMMA_Q4_K_M["unmatched"]["type"]


def test_tensor_map_errors(tmp_path) -> None:
    bad = tmp_path / "bad.map"
    bad.write_text("f.gguf:abc:blk.0.x.weight:shape=(4, 4):dtype=f32:elements=16:bytes=64\nnonsense\n")
    with pytest.raises(RecipeSearchError, match="bad.map: line 2: not a tensor map line"):
        read_map(bad)
    with pytest.raises(RecipeSearchError, match="cannot read tensor map"):
        read_map(tmp_path / "missing.map")
