"""Tensor roles across architectures, and recipes carried between model families by role and depth."""

from __future__ import annotations

import pytest

from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import recipe_from_dict
from recipe_search.core.resolution import resolve
from recipe_search.core.roles import Role, _source_block, carry, role_of
from recipe_search.formats.ggml_types import bits_per_weight

KNOWN = {
    "dense_model": {"token_embd": Role.EMBEDDING, "attn_q": Role.ATTN_Q, "attn_output": Role.ATTN_OUTPUT,
                    "ffn_up": Role.FFN_UP, "ffn_down": Role.FFN_DOWN, "attn_norm": Role.NORM},
    "moe_model": {"ffn_up_exps": Role.EXPERTS_UP, "ffn_down_exps": Role.EXPERTS_DOWN, "ffn_up_shexp": Role.SHARED_UP,
                  "ffn_gate_inp": Role.ROUTER},
    "qwen35_model": {"attn_qkv": Role.ATTN_QKV, "attn_gate": Role.ATTN_GATE, "ssm_out": Role.SSM_OUT,
                     "ssm_conv1d": Role.SSM_SMALL, "ffn_gate_exps": Role.EXPERTS_GATE,
                     "ffn_down_shexp": Role.SHARED_DOWN, "attn_q": Role.ATTN_Q},
}


@pytest.mark.parametrize("fixture", sorted(KNOWN))
def test_every_quantized_tensor_type_has_a_role(request, fixture: str) -> None:
    inv = read_inventory(request.getfixturevalue(fixture))
    assert {k: role_of(k) for k in KNOWN[fixture]} == KNOWN[fixture]
    assert [k for k, t in inv.kinds.items() if t.quantizable and role_of(k) is Role.OTHER] == []


def test_the_real_35b_table_and_the_demo_have_roles(qwen_35b, demo_model) -> None:
    for path in (qwen_35b, demo_model):
        inv = read_inventory(path)
        assert [k for k, t in inv.kinds.items() if t.quantizable and role_of(k) is Role.OTHER] == []
    assert role_of("ssm_alpha") is Role.SSM_SMALL and role_of("post_ffw_norm") is Role.NORM


def test_depth_keeps_the_first_and_last_blocks_from_the_ends() -> None:
    assert [_source_block(b, 6, 24) for b in range(6)] == [0, 1, 2, 21, 22, 23]  # a smaller target
    assert [_source_block(b, 24, 6) for b in (0, 1, 12, 22, 23)] == [0, 0, 3, 5, 5]  # a larger one: by depth
    assert _source_block(0, 1, 5) == 0


def test_a_dense_recipe_carried_onto_a_moe_model(dense_model, qwen35_model) -> None:
    """Experts and shared experts take the dense FFN's types of the same kind; the fused qkv the highest of
    q/k/v; ssm_out the attention output's; block 0's protection stays on block 0."""
    dense, moe = read_inventory(dense_model), read_inventory(qwen35_model)
    recipe = recipe_from_dict({"name": "dense", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_down", "blocks": [0], "type": "Q8_0"}, {"tensors": "ffn_down", "type": "Q4_K"},
        {"tensors": "ffn_up", "type": "Q3_K"}, {"tensors": "ffn_gate", "type": "Q2_K"},
        {"tensors": "attn_q", "type": "Q4_K"}, {"tensors": "attn_k", "type": "Q6_K"}, {"tensors": "attn_v", "type": "Q5_K"},
        {"tensors": "attn_output", "type": "Q5_K"}]})
    carried = carry(recipe, dense, moe)
    source = {k: {r.requested for r in resolve(recipe, dense).tensors if r.tensor.kind == k} for k in dense.kinds}
    got = {}
    for r in resolve(carried.recipe, moe).tensors:
        got.setdefault(r.tensor.kind, {})[r.tensor.block] = r.requested
    for kind, dense_kind in (("ffn_up_exps", "ffn_up"), ("ffn_gate_exps", "ffn_gate"), ("ffn_up_shexp", "ffn_up"),
                             ("ffn_gate_shexp", "ffn_gate")):
        [want] = source[dense_kind]
        assert all(abs(bits_per_weight(t) - bits_per_weight(want)) <= 0.25 for t in got[kind].values()), kind
    for kind in ("ffn_down_exps", "ffn_down_shexp"):  # the first block protected, the last not
        assert got[kind][min(got[kind])].name == "Q8_0" and got[kind][max(got[kind])].name == "Q4_K"
    assert {t.name for t in got["attn_qkv"].values()} == {"Q6_K"}  # the highest of q (Q4_K), k (Q6_K), v (Q5_K)
    assert {t.name for t in got["ssm_out"].values()} == {"Q5_K"}
    for kind in set(got) & set(source):  # every role present in both: the same type
        assert {t for t in got[kind].values()} <= source[kind], kind
    assert "ssm_alpha" in carried.no_counterpart and carried.counterparts["ffn_down_exps"] == "ffn_down"


def test_carry_command(dense_model, qwen35_model, tmp_path, capsys) -> None:
    from recipe_search.cli import main
    from recipe_search.core.recipe import load_recipe

    recipe = tmp_path / "dense.yaml"
    recipe.write_text("name: dense\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_down, type: Q4_K}\n")
    out = tmp_path / "carried.yaml"
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "ffn_down_exps          <- ffn_down" in printed.out and "ssm_alpha: no counterpart" in printed.err
    carried = load_recipe(out)
    assert {r.type for r in carried.rules if r.tensors == "ffn_down_exps"} == {"Q4_K"}
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(tmp_path / "nope.gguf")]) == 2
    assert main(["carry", str(recipe), "--from", str(dense_model), "--onto", str(qwen35_model), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 2 and "nope.gguf" in err[0] and "exists already" in err[-1]


def test_role_profile_by_depth_band(dense_model) -> None:
    from recipe_search.core.roles import role_profile

    inv = read_inventory(dense_model)
    recipe = recipe_from_dict({"name": "r", "unmatched": {"type": "Q8_0"}, "rules": [
        {"tensors": "ffn_down", "blocks": [0], "type": "Q4_0"}, {"tensors": "ffn_down", "type": "Q6_K"}]})
    bands = role_profile(recipe, inv).bands()
    assert bands["ffn down"]["first"] == bits_per_weight(resolve(recipe, inv).types()["blk.0.ffn_down.weight"])
    assert bands["ffn down"]["last"] == bits_per_weight(resolve(recipe, inv).types()[
        f"blk.{max(t.block for t in inv.tensors if t.block is not None)}.ffn_down.weight"])
    assert set(bands["ffn up/gate"].values()) == {8.5}  # Q8_0 everywhere


def test_roles_command_tables_and_draws_two_families(dense_model, qwen35_model, tmp_path, capsys) -> None:
    from recipe_search.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nunmatched: {type: Q8_0}\nrules:\n- {tensors: ffn_down, type: Q4_0}\n")
    png = tmp_path / "roles.png"
    assert main(["roles", "--recipe", str(dense_model), str(recipe), "--recipe", str(qwen35_model), str(recipe),
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ffn down first" in out and "r (llama)" in out and "r (qwen35moe)" in out and "ssm first" in out
    assert png.stat().st_size > 10_000


def test_a_generated_glm4moe_has_roles(tmp_path) -> None:
    """GLM-4.5's layout: a dense first block, routed and shared experts after it, a multi-token-prediction
    (nextn) layer at the end; a header-only GGUF generated from the gguf package's own tensor list."""
    import gguf

    from recipe_search.formats.ggml_types import GGMLType, tensor_bytes
    from recipe_search.formats.tensor_map import write_header_only

    names = [gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GLM4_MOE]]
    rows = []
    for block in range(3):
        for name in names:
            if "{bid}" not in name and block:
                continue
            name = name.format(bid=block)
            dense, nextn = ("ffn_up." in name + "." or "ffn_gate." in name + "." or "ffn_down." in name + "."), "nextn" in name
            if (dense and block != 0) or (("_exps" in name or "_shexp" in name or "gate_inp" in name or "exp_probs" in name)
                                          and block == 0) or (nextn and block != 2):
                continue
            shape = (256, 4, 256) if "_exps" in name else (4,) if "norm" in name or "exp_probs" in name else (256, 256)
            rows.append((f"{name}.weight" if not name.endswith("exp_probs_b") else f"{name}.bias", shape, GGMLType.F32,
                         tensor_bytes(GGMLType.F32, shape)))
    inv = read_inventory(write_header_only(tmp_path / "glm4moe.gguf", "glm4moe", rows))
    assert inv.arch == "glm4moe" and {"ffn_up", "ffn_up_exps", "ffn_up_shexp", "nextn.eh_proj"} <= set(inv.kinds)
    assert [k for k, t in inv.kinds.items() if t.quantizable and role_of(k) is Role.OTHER] == []
    assert role_of("nextn.eh_proj") is Role.MTP and role_of("nextn.shared_head_head") is Role.OUTPUT
    assert role_of("ffn_up") is Role.FFN_UP and role_of("ffn_up_exps") is Role.EXPERTS_UP


@pytest.mark.parametrize("onto", ["qwen_35b", "tiny_qwen35moe_real"])
def test_the_demo_pick_carried_onto_the_hybrid_moe_models(request, demo_model, onto: str) -> None:
    """The Done-when of issue 26 on the real models: routed and shared experts within 0.25 bpw of the demo's
    dense FFN of the same kind, every role present in both within 0.25 bpw of the demo's, before fallbacks."""
    from pathlib import Path

    from recipe_search.core.recipe import load_recipe

    demo, target = read_inventory(demo_model), read_inventory(request.getfixturevalue(onto))
    pick = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "gemma-3-270m-f16-5.00bpw-kld_p99.yaml")
    carried = carry(pick, demo, target)

    def bpw_by_role(recipe, inv) -> dict[Role, set[float]]:
        out: dict[Role, set[float]] = {}
        for r in resolve(recipe, inv).tensors:
            if r.tensor.quantizable:
                out.setdefault(role_of(r.tensor.kind), set()).add(bits_per_weight(r.requested))
        return out

    source, got = bpw_by_role(pick, demo), bpw_by_role(carried.recipe, target)
    kinds = {Role.FFN_UP: (Role.EXPERTS_UP, Role.SHARED_UP), Role.FFN_GATE: (Role.EXPERTS_GATE, Role.SHARED_GATE),
             Role.FFN_DOWN: (Role.EXPERTS_DOWN, Role.SHARED_DOWN)}
    pairs = [(dense, moe) for dense, moes in kinds.items() for moe in moes]
    pairs += [(role, role) for role in set(source) & set(got)]
    assert len(pairs) >= 10
    for from_role, to_role in pairs:
        assert all(abs(b - a) <= 0.25 for a in source[from_role] for b in got[to_role]), (from_role, to_role)
