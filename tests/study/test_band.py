"""Per-block bands given by their first blocks, and proposals steered into the size band (exact sizes, no I/O)."""

from __future__ import annotations

import itertools

import pytest

from recipe_search.core.config import StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.resolution import resolve
from recipe_search.core.size import predict_size
from recipe_search.core.space import block_bands, build_space
from recipe_search.errors import RecipeSearchError
from recipe_search.study._band import BandSteer

LADDER = ["Q8_0", "Q6_K", "Q4_K", "Q3_K", "Q2_K"]


def test_block_bands_by_count_or_by_first_blocks() -> None:
    blocks = (0, 1, 2, 3, 4, 5)
    assert block_bands("k", 1, blocks) == [blocks]
    assert block_bands("k", 3, blocks) == [(0, 1), (2, 3), (4, 5)]
    with pytest.raises(RecipeSearchError, match="too few for 7 bands"):  # more bands than blocks: refused
        block_bands("k", 7, blocks)
    assert block_bands("k", [0, 1, 5], blocks) == [(0,), (1, 2, 3, 4), (5,)]
    assert block_bands("k", [5, 0], blocks) == [(0, 1, 2, 3, 4), (5,)]
    assert block_bands("k", [0], ()) == [()]  # a tensor outside the blocks has one band
    for bad in ([1, 3], [0, 9], []):
        with pytest.raises(RecipeSearchError, match="first block"):
            block_bands("k", bad, blocks)


def test_first_block_bands_become_parameters(qwen35_model) -> None:
    inv = read_inventory(qwen35_model)
    kind = "ffn_down_exps"
    blocks = inv.kinds[kind].blocks
    config = StudyConfig(space={"tensor_types": [kind, "attn_qkv"], "ladder": LADDER, "bands": {kind: [blocks[0], blocks[1]]}})
    space = build_space(config, inv, has_imatrix=False)
    params = {p.name: p.blocks for p in space.parameters}
    assert params == {f"{kind}@{blocks[0]}-{blocks[0]}": (blocks[0],),
                      f"{kind}@{blocks[1]}-{blocks[-1]}": tuple(blocks[1:]), "attn_qkv": None}
    first, rest = space.parameters[0].name, space.parameters[1].name
    recipe = space.recipe({first: 0, rest: 4, "attn_qkv": 2})
    types = {r.tensor.name: r.ggml_type.name for r in resolve(recipe, inv).tensors if r.tensor.kind == kind}
    assert types[f"blk.{blocks[0]}.{kind}.weight"] == "Q8_0"
    assert {types[f"blk.{b}.{kind}.weight"] for b in blocks[1:]} == {"Q2_K"}


def test_steering_lands_every_proposal_in_the_band_with_exact_sizes(qwen35_model) -> None:
    inv = read_inventory(qwen35_model)
    space_cfg = {"ladder": LADDER, "tensor_types": ["ffn_down_exps", "ffn_up_exps", "attn_qkv", "token_embd"]}
    free = build_space(StudyConfig(space=space_cfg), inv, has_imatrix=False)
    sizes = [predict_size(resolve(free.recipe(dict(zip([p.name for p in free.parameters], idx))), inv), inv)
             for idx in itertools.product(range(len(LADDER)), repeat=len(free.parameters))]
    bpws = sorted(s.bits_per_weight for s in sizes)
    lo, hi = bpws[len(bpws) // 4], bpws[len(bpws) // 2]
    config = StudyConfig(space=space_cfg, min_bpw=lo, max_bpw=hi)
    space = build_space(config, inv, has_imatrix=False)
    steer = BandSteer(space, inv, config)
    assert steer.active and not BandSteer(space, inv, StudyConfig(space=space_cfg)).active
    names = [p.name for p in space.parameters]
    moved = 0
    for idx in itertools.product(range(len(LADDER)), repeat=len(names)):
        choice = dict(zip(names, idx))
        exact = predict_size(resolve(space.recipe(choice), inv), inv)
        assert steer.size(choice) == (exact.file_bytes, pytest.approx(exact.bits_per_weight))
        out = steer.steer(choice)
        bpw = steer.size(out)[1]
        assert lo <= bpw <= hi
        if lo <= exact.bits_per_weight <= hi:
            assert out == choice  # inside the band: untouched
        else:
            moved += 1
            # only in the direction that was needed
            step = 1 if exact.bits_per_weight > hi else -1
            assert all((out[n] - choice[n]) * step >= 0 for n in names)
    assert moved > 0
