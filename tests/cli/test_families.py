"""`carry --target` (rescaled with the target model's sensitivity table), `carry --score` (held out, paired
intervals), and carry's bad inputs: each a one-line warning or error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recipe_search.cli import main
from recipe_search.core.inventory import model_fingerprint, read_inventory
from recipe_search.core.recipe import load_recipe
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.formats.ggml_types import GGMLType, tensor_bytes
from recipe_search.formats.tensor_map import write_header_only
from recipe_search.sensitivity.table import SensitivityTable

DENSE = "name: dense\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_down, type: Q4_K}\n- {tensors: ffn_up, type: Q4_K}\n"


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "dense.yaml"
    path.write_text(DENSE)
    return path


def _table(model, where):
    """A hand-made table of every quantized tensor type of ``model`` at three types, the FFN dear."""
    inv = read_inventory(model)
    table = SensitivityTable(where, {"model_fingerprint": model_fingerprint(inv), "model": inv.path.name,
                                     "text_spec": "wiki.test.raw[0:0.2]"})
    for kind, k in inv.kinds.items():
        if k.quantizable:
            for t, mean in (("Q8_0", 1.0), ("Q4_K", 4.0), ("Q2_K", 16.0)):
                w = 1.0 if "ffn" in kind else 0.01
                table.add({"tensor_type": kind, "ggml_type": t, "bpw": 0, "n_elements": 0, "file_bytes": 0,
                           "kld_mean": w * mean}, np.full(8, w * mean))
    table.save()
    return where


def test_carry_target_rescales_to_the_size_with_the_targets_table(dense_model, qwen35_model, recipe, tmp_path,
                                                                  capsys) -> None:
    table = _table(qwen35_model, tmp_path / "table")
    out = tmp_path / "carried.yaml"
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "-o", str(out)]) == 0
    inv = read_inventory(qwen35_model)
    carried = predict_size(resolve(load_recipe(out), inv), inv)
    target = carried.file_bytes - 20_000
    capsys.readouterr()
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "--target", str(target),
                 "--sensitivity", str(table), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prediction"]["file_bytes"] <= target < carried.file_bytes
    assert printed["rescaled"]["moves"] >= 1 and printed["rescaled"]["prediction"]["kld_mean"] > 0
    rescaled = printed["recipe"]
    assert rescaled["provenance"]["rescaled"]["target"] == f"{target}B"
    assert {r["type"] for r in rescaled["rules"] if r["tensors"] == "ffn_down_exps"} == {"Q4_K"}  # the FFN is dear


def test_carry_target_without_a_table_is_one_line(dense_model, qwen35_model, recipe, tmp_path, capsys,
                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "--target",
                 "4.5bpw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "sensitivity table" in err[-1] and "recipe-search sensitivity" in err[-1] and "Traceback" not in "".join(err)
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "--against",
                 str(recipe)]) == 2
    assert "--score" in capsys.readouterr().err


def test_carry_bad_inputs_are_one_line_each(dense_model, qwen35_model, tmp_path, capsys) -> None:
    """A recipe for another model: an error; a rule naming nothing, a role the target lacks, a tensor type of no
    known role in the source: a warning each."""
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text("name: foreign\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_down_exps, type: Q4_K}\n"
                       "- {tensors: ssm_out, type: Q6_K}\n")
    assert main(["carry", str(foreign), "--from", str(dense_model), "--onto", str(qwen35_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no rule names a tensor of this llama model" in err[0]
    partly = tmp_path / "partly.yaml"
    partly.write_text(DENSE + "- {tensors: ssm_out, type: Q6_K}\n")
    assert main(["carry", str(partly), "--from", str(dense_model), "--onto", str(qwen35_model)]) == 0
    err = capsys.readouterr().err
    assert "rule ssm_out: names no tensor of the llama model" in err and "ssm_alpha: no counterpart" in err
    rows = [(f"blk.{b}.{name}.weight", (256, 256), GGMLType.F16, tensor_bytes(GGMLType.F16, (256, 256)))
            for b in range(2) for name in ("attn_q", "ffn_up", "weird_proj")]
    odd = write_header_only(tmp_path / "odd.gguf", "llama", rows)
    assert main(["carry", str(partly), "--from", str(odd), "--onto", str(qwen35_model)]) == 0
    assert "weird_proj: a tensor type of no role llama.cpp names in the llama model; not carried" in \
        capsys.readouterr().err


@pytest.mark.llama
def test_carry_score_measures_it_next_to_the_targets_own(dense_model, moe_model, recipe, sample_text, tmp_path,
                                                         capsys) -> None:
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    own = tmp_path / "own.yaml"
    own.write_text("name: own\nunmatched: {type: Q4_0}\nrules: []\n")
    carried = tmp_path / "carried.yaml"
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(moe_model), "-o", str(carried)]) == 0
    capsys.readouterr()
    args = ["carry", str(recipe), "--from", str(dense_model), "--onto", str(moe_model), "--score", str(text),
            "--against", str(own), "--against", str(carried), "--ctx", "128", "--chunks", "4", "--n-boot", "200",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main([*args, "--json"]) == 0
    score = json.loads(capsys.readouterr().out)["score"]
    names = [r["name"] for r in score["recipes"]]
    assert names == ["dense-carried-to-qwen2moe", "own", "dense-carried-to-qwen2moe"]
    assert score["carried_minus"]["own"]["kld_mean"][1] < 0  # Q4_0 everywhere is worse than Q8_0/Q4_K
    assert score["carried_minus"]["dense-carried-to-qwen2moe"]["kld_p99"] == [0.0, 0.0]  # itself: the same tokens
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out text text.txt: ctx 128 x 4 chunks" in out and "carried - own" in out
