"""The tool's type resolution and size prediction against llama.cpp's quantizer itself."""

from __future__ import annotations

import re

import pytest
from exported import llama_quantize_reads

from recipe_search.core.importer import import_recipe
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import Recipe, Rule, Unmatched, preset_recipe, recipe_from_dict, uniform_recipe
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.core.tool_formats import tensor_type_file
from recipe_search.engine.quantize import dry_run_types, quantize_model
from recipe_search.errors import RecipeSearchError

pytestmark = pytest.mark.llama  # quantizes or evaluates with llama.cpp

MIXED = [
    uniform_recipe("Q4_K"),
    uniform_recipe("IQ4_NL"),
    uniform_recipe("F16"),
    recipe_from_dict({"name": "legacy-k-fallback", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_down", "type": "Q2_K"}, {"tensors": "ffn_down_exps", "type": "Q3_K"},
        {"pattern": "attn_", "type": "Q6_K"}, {"tensors": "token_embd", "type": "Q4_0"},
        {"tensors": "ffn_norm", "type": "Q4_0"}]}),
    recipe_from_dict({"name": "blocks-bf16", "unmatched": {"type": "BF16"}, "rules": [
        {"tensors": "ffn_up", "blocks": [0], "type": "Q3_K"}, {"tensors": "ffn_up_exps", "type": "IQ4_XS"},
        {"tensors": "ssm_out", "type": "Q5_1"}, {"tensors": "output", "type": "MXFP4"}]}),
    recipe_from_dict({"name": "embd-output", "unmatched": {"file_type": "Q5_K_M", "pure": True},
                      "token_embedding_type": "Q6_K", "output_tensor_type": "Q4_1",
                      "rules": [{"tensors": "ffn_gate", "type": "Q5_K"}, {"tensors": "ffn_gate_shexp", "type": "Q4_1"}]}),
    preset_recipe("Q4_K_M"),
    preset_recipe("Q3_K_M"),
]


@pytest.mark.parametrize("recipe", MIXED, ids=lambda r: r.name)
def test_resolution_matches_llama_cpp_dry_run(recipe: Recipe, dense_model, moe_model, qwen35_model) -> None:
    for model in (dense_model, moe_model, qwen35_model):
        inv = read_inventory(model)
        ours = {n: t.name for n, t in resolve(recipe, inv, dry_run_types).types().items()}
        theirs = {n: t.name for n, t in dry_run_types(model, recipe).items()}
        assert ours == theirs, f"{model.name}: {set(ours.items()) ^ set(theirs.items())}"


def test_mixture_needs_the_dry_run(dense_model) -> None:
    """The pure resolver never loads llama.cpp itself: a mixture recipe without the dry run is a clear error."""
    with pytest.raises(RecipeSearchError, match="MOSTLY_Q4_K_M mixture"):
        resolve(preset_recipe("Q4_K_M"), read_inventory(dense_model))


def test_resolution_on_demo_reports_fallbacks(demo_model) -> None:
    inv = read_inventory(demo_model)
    recipe = uniform_recipe("Q4_K")
    resolution = resolve(recipe, inv)
    assert {n: t.name for n, t in resolution.types().items()} == \
        {n: t.name for n, t in dry_run_types(demo_model, recipe).items()}
    fell = resolution.fallbacks()
    # 640-wide rows: everything but attn_output (1024) and ffn_down (2048) leaves Q4_K for Q5_0
    assert set(fell) == {"token_embd", "attn_k", "attn_q", "attn_v", "ffn_gate", "ffn_up"}
    assert all(set(moves) == {"Q4_K->Q5_0"} for moves in fell.values())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", MIXED[:6], ids=lambda r: r.name)
def test_predicted_size_equals_written_file(recipe: Recipe, dense_model, moe_model, qwen35_model, tmp_path) -> None:
    for model in (dense_model, moe_model, qwen35_model):
        inv = read_inventory(model)
        out = quantize_model(model, recipe, tmp_path / f"{model.stem}.gguf", inventory=inv)
        assert predict_size(resolve(recipe, inv), inv).file_bytes == out.file_bytes == out.path.stat().st_size
        assert not list(tmp_path.glob("*.partial"))


def test_rule_patterns_are_exact_under_lowercasing(qwen35_model, moe_model) -> None:
    recipe = recipe_from_dict({"name": "x", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_up", "type": "Q4_0"}, {"tensors": "attn_q", "type": "Q4_1"}, {"tensors": "output", "type": "Q5_0"}]})
    names = [t.name for t in read_inventory(qwen35_model).tensors + read_inventory(moe_model).tensors]
    for rx, _ in recipe.overrides():
        hits = {n for n in names if re.search(rx.lower(), n)}
        assert hits == {n for n in names if re.search(rx, n)}
        assert not any(("ffn_up_exps" in n or "ffn_up_shexp" in n or "attn_qkv" in n or "attn_output" in n)
                       for n in hits)


@pytest.mark.slow
def test_import_of_demo_original_reproduces_it(demo_model, demo_original, tmp_path) -> None:
    recipe = import_recipe(demo_original)
    original = read_inventory(demo_original)
    inv = read_inventory(demo_model)
    resolution = resolve(recipe, inv)
    assert {n: t for n, t in resolution.types().items()} == {t.name: t.ggml_type for t in original.tensors}
    # fewest rules: one per tensor type, layer groups where its blocks differ
    assert len(recipe.rules) <= 2 * len(inv.kinds)
    out = quantize_model(demo_model, recipe, tmp_path / "q.gguf", inventory=inv)
    assert predict_size(resolution, inv).file_bytes == out.file_bytes

    # the exported --tensor-type-file, read the way llama-quantize reads it, gives the same types
    parsed = llama_quantize_reads(tensor_type_file(recipe))
    as_llama_quantize = Recipe(name="ttf", unmatched=recipe.unmatched,
                               rules=[Rule(pattern=p, type=t.name) for p, t in parsed])
    assert dry_run_types(demo_model, as_llama_quantize) == resolution.types()


@pytest.mark.slow
def test_import_of_mixture_on_tiny_models(dense_model, qwen35_model, tmp_path) -> None:
    for model in (dense_model, qwen35_model):
        inv = read_inventory(model)
        q = quantize_model(model, preset_recipe("Q4_K_M"), tmp_path / "mix.gguf", inventory=inv)
        recipe = import_recipe(q.path)
        assert resolve(recipe, inv).types() == q.resolution.types()


def test_catch_all_float_type_keeps_rules_working(dense_model) -> None:
    """With an F16 file type llama.cpp drops every rule; a float catch-all must not."""
    recipe = Recipe(name="x", unmatched=Unmatched(type="F16"), rules=[Rule(tensors="ffn_gate", type="Q4_0")])
    types = dry_run_types(dense_model, recipe)
    assert {t.name for n, t in types.items() if "ffn_gate" in n} == {"Q4_0"}
    assert {t.name for n, t in types.items() if "attn_q.weight" in n} == {"F16"}
