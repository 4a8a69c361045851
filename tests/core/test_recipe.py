"""Recipe YAML, validation errors, lint warnings, exports."""

from __future__ import annotations

import re

import pytest
from exported import llama_quantize_reads

from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import kind_pattern, load_recipe, recipe_from_dict, uniform_recipe
from recipe_search.core.rule_coverage import lint
from recipe_search.core.tool_formats import custom_q, quantize_args, tensor_type_file
from recipe_search.errors import RecipeSearchError

GOOD = {"name": "r", "unmatched": {"type": "Q8_0"}, "rules": [
    {"tensors": "ffn_down_exps", "type": "q4_k"}, {"tensors": "ffn_up", "blocks": [2, 0], "type": "Q3_K"},
    {"pattern": r"blk\.\d+\.attn_(q|k)\.weight", "type": "IQ4_NL"}]}


def test_yaml_round_trip(tmp_path) -> None:
    r = recipe_from_dict(GOOD)
    path = r.save(tmp_path / "r.yaml")
    back = load_recipe(path)
    assert back == r
    assert back.rules[0].type == "Q4_K"
    assert back.overrides()[1][0] == r"^blk\.(0|2)\.ffn_up\.weight$"
    with pytest.raises(RecipeSearchError, match="exists already"):
        r.save(path, overwrite=False)


@pytest.mark.parametrize("data, message", [
    ({**GOOD, "rules": [{"tensors": "ffn_up", "type": "Q9_K"}]}, r"rules\.0\.type: unknown ggml type 'Q9_K'"),
    ({**GOOD, "rules": [{"pattern": "ffn_(up", "type": "Q4_0"}]}, r"rules\.0\.pattern: invalid regex"),
    ({**GOOD, "rules": [{"pattern": r"ffn_\D", "type": "Q4_0"}]}, r"upper-case escape"),
    ({**GOOD, "rules": [{"pattern": "a b", "type": "Q4_0"}]}, r"whitespace"),
    ({**GOOD, "rules": [{"tensors": "x", "pattern": "y", "type": "Q4_0"}]}, r"either `tensors`"),
    ({**GOOD, "schema": 7}, r"unsupported recipe schema 7"),
    ({"name": "r", "rules": []}, r"unmatched: Field required"),
    ({**GOOD, "unmatched": {"file_type": "Q4_K_X"}}, r"unknown file type"),
])
def test_bad_recipes_give_one_line(tmp_path, data, message) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeSearchError, match=message) as err:
        load_recipe(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_yaml_syntax_error(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nrules: [\n  {tensors: a\n")
    with pytest.raises(RecipeSearchError, match=r"broken.yaml: YAML syntax error: line \d+"):
        load_recipe(path)


def test_lint(dense_model, qwen35_model) -> None:
    recipe = recipe_from_dict({"name": "l", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_up_exps", "type": "Q4_K"}, {"tensors": "attn_norm", "type": "Q4_K"},
        {"tensors": "ffn_down", "type": "Q4_K"}, {"pattern": "ffn_down", "type": "Q6_K"}]})
    warnings = lint(recipe, read_inventory(dense_model))
    assert any("rules[0]" in w and "matches no tensor" in w for w in warnings)
    assert any("rules[1]" in w and "never quantizes" in w for w in warnings)
    assert any("rules[2]" in w and "falls back to Q5_0" in w and "rows of 320" in w for w in warnings)
    assert any("rules[3]" in w and "earlier rule" in w for w in warnings)
    assert lint(uniform_recipe("Q4_K"), read_inventory(qwen35_model)) == []


def test_kind_patterns_do_not_overlap() -> None:
    names = ["blk.0.ffn_up.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_up_shexp.weight",
             "blk.1.attn_q.weight", "blk.1.attn_qkv.weight", "output.weight", "blk.2.attn_output.weight",
             "token_embd.weight", "blk.12.attn_q.weight"]
    def hits(kind, blocks=None):
        return [n for n in names if re.search(kind_pattern(kind, blocks), n)]
    assert hits("ffn_up") == ["blk.0.ffn_up.weight"]
    assert hits("attn_q") == ["blk.1.attn_q.weight", "blk.12.attn_q.weight"]
    assert hits("attn_q", [1]) == ["blk.1.attn_q.weight"]
    assert hits("output") == ["output.weight"]


def test_exports() -> None:
    r = recipe_from_dict({**GOOD, "unmatched": {"type": "F16"}, "token_embedding_type": "Q8_0"})
    ttf = tensor_type_file(r)
    parsed = llama_quantize_reads(ttf)
    assert [p for p, _ in parsed] == [rx for rx, _ in r.overrides()]
    assert parsed[-1] == (".", parsed[-1][1]) and parsed[-1][1].name == "F16"
    assert all("=" not in p and " " not in p for p, _ in parsed)
    args = quantize_args(r, "in.gguf", "out.gguf")
    assert args.startswith("llama-quantize --pure --token-embedding-type q8_0 --tensor-type")
    assert args.endswith("in.gguf out.gguf Q8_0")
    assert custom_q(r).count(",") == len(r.overrides()) - 1


def test_shareable_paths_carry_no_machine_layout(tmp_path, monkeypatch) -> None:
    """What committed results record of a path: relative inside or beside the working directory, else its name."""
    from recipe_search.core.locations import shareable

    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert shareable(tmp_path / "repo" / "experiments" / "x.json") == "experiments/x.json"
    assert shareable(f"{tmp_path}/shared/wiki.test.raw[0:0.4]") == "../shared/wiki.test.raw[0:0.4]"
    assert shareable("/root/.cache/recipe-search/model.gguf") == "model.gguf"
    assert shareable("relative/text.raw") == "relative/text.raw"
