"""A recipe rescaled to a size in the surrogate's order, on a hand-made sensitivity table (no measuring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recipe_search.core.inventory import Inventory, model_fingerprint, read_inventory
from recipe_search.core.pareto import parse_target
from recipe_search.core.recipe import recipe_from_dict
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.errors import RecipeSearchError
from recipe_search.sensitivity.rescaling import rescale
from recipe_search.sensitivity.surrogate import Surrogate
from recipe_search.sensitivity.table import SensitivityTable

TYPES = {"Q8_0": 1.0, "Q6_K": 2.0, "Q5_0": 4.0, "Q4_0": 8.0, "Q2_K": 32.0}  # a cell's mean: this x the kind's weight
#: attention cheap to lower, the FFN dear; ffn_down has no Q5_0 cell
WEIGHT = {"attn_q": 0.001, "attn_k": 0.001, "attn_v": 0.001, "attn_output": 0.001, "ffn_up": 1.0, "ffn_gate": 1.0,
          "ffn_down": 1.0, "token_embd": 0.01, "output": 0.01}


def _table(inv: Inventory, where: Path) -> SensitivityTable:
    table = SensitivityTable(where, {"model_fingerprint": model_fingerprint(inv), "model": inv.path.name})
    for kind, w in WEIGHT.items():
        for t, mean in TYPES.items():
            if (kind, t) != ("ffn_down", "Q5_0"):
                table.add({"tensor_type": kind, "ggml_type": t, "kld_mean": w * mean}, np.full(10, w * mean))
    return table


RECIPE = {"name": "r", "unmatched": {"type": "Q8_0"}, "rules": [  # ffn_down's rows (320) take no K-quant
    {"tensors": "ffn_down", "blocks": [0], "type": "Q8_0"}, {"tensors": "ffn_down", "type": "Q4_0"},
    {"tensors": "attn_q", "type": "Q6_K"}, {"tensors": "attn_k", "type": "Q6_K"}]}


def test_rescaled_down_lowers_the_cheap_tensors_first_and_keeps_the_groups(dense_model, tmp_path) -> None:
    inv = read_inventory(dense_model)
    surrogate = Surrogate(_table(inv, tmp_path), inv)
    recipe = recipe_from_dict(RECIPE)
    before = predict_size(resolve(recipe, inv), inv)
    target = parse_target(f"{before.bits_per_weight - 0.3:.3f}bpw")
    out = rescale(recipe, surrogate, target)
    types = resolve(out.recipe, inv).types()
    assert out.size == predict_size(resolve(out.recipe, inv), inv)
    assert target.value - 0.2 < out.size.bits_per_weight <= target.value
    assert types["blk.1.attn_output.weight"].name == types["blk.1.attn_v.weight"].name == "Q6_K"  # the cheap first
    assert types["blk.0.ffn_up.weight"].name == types["token_embd.weight"].name == "Q8_0"  # the dear ones stayed
    assert types["blk.0.ffn_down.weight"].name == "Q8_0" and types["blk.1.ffn_down.weight"].name == "Q4_0"
    assert out.prediction is not None and out.prediction.kld_mean == pytest.approx(
        surrogate.predict(resolve(out.recipe, inv)).kld_mean)
    assert out.recipe.provenance["rescaled"]["target"] == target.label


def test_rescaled_up_fills_the_room_and_a_byte_target_is_exact(dense_model, tmp_path) -> None:
    inv = read_inventory(dense_model)
    surrogate = Surrogate(_table(inv, tmp_path), inv)
    recipe = recipe_from_dict({"name": "low", "unmatched": {"type": "Q4_0"}, "rules": []})
    before = predict_size(resolve(recipe, inv), inv)
    target = parse_target(str(before.file_bytes + 40_000))
    out = rescale(recipe, surrogate, target)
    assert before.file_bytes < out.size.file_bytes <= target.value
    assert out.prediction is not None and out.prediction.kld_mean < surrogate.predict_recipe(recipe).kld_mean
    types = resolve(out.recipe, inv).types()
    assert {types[f"blk.0.{k}.weight"].name for k in ("ffn_up", "ffn_gate")} > {"Q4_0"}  # the dear FFN first
    assert {types["blk.0.attn_q.weight"].name} == {"Q4_0"}


def test_kept_types_and_a_target_out_of_reach(dense_model, tmp_path) -> None:
    inv = read_inventory(dense_model)
    surrogate = Surrogate(_table(inv, tmp_path), inv)
    recipe = recipe_from_dict({"name": "r", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_down", "type": "Q5_0"}]})
    out = rescale(recipe, surrogate, parse_target("7.0bpw"))
    assert out.kept == ["ffn_down Q5_0"] and out.prediction is None
    assert {t.name for n, t in resolve(out.recipe, inv).types().items() if "ffn_down" in n} == {"Q5_0"}
    with pytest.raises(RecipeSearchError, match="below the smallest"):
        rescale(recipe, surrogate, parse_target("1.0bpw"))
