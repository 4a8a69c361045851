"""The search space built for a model: what its ladders leave out and why."""

from __future__ import annotations

from recipe_search.core.config import StudyConfig
from recipe_search.core.inventory import read_inventory
from recipe_search.core.space import build_space
from recipe_search.formats.ggml_types import GGMLType

LADDER = {"space": {"ladder": ["Q8_0", "Q4_0", "IQ2_XS", "IQ2_XXS"]}}


def test_types_ggml_cannot_quantize_without_data_leave_tensor_types_the_imatrix_lacks(dense_model) -> None:
    """llama-imatrix never collects token_embd (nor output without --process-output): IQ2_XXS and IQ2_XS there
    would abort in ggml, so the space leaves them out for those tensor types alone, and says so in one line."""
    inv = read_inventory(dense_model)
    config = StudyConfig.model_validate(LADDER)
    whole = {p.name: set(p.ladder) for p in build_space(config, inv, has_imatrix=True).parameters}
    assert {GGMLType.IQ2_XS, GGMLType.IQ2_XXS} <= whole["token_embd"]  # the rows admit them
    collected = {t.name for t in inv.tensors if t.quantizable and t.kind not in ("token_embd", "output")}
    space = build_space(config, inv, has_imatrix=True, imatrix_tensors=collected)
    ladders = {p.name: set(p.ladder) for p in space.parameters}
    for kind, ladder in whole.items():
        lacking = kind in ("token_embd", "output")
        assert ladders[kind] == (ladder - {GGMLType.IQ2_XS, GGMLType.IQ2_XXS} if lacking else ladder), kind
    note = space.imatrix_note()
    assert note is not None and "token_embd: IQ2_XS, IQ2_XXS (the imatrix has no data for token_embd.weight)" in note
    # an imatrix with data for every tensor leaves the ladders whole, and there is nothing to say
    full = build_space(config, inv, has_imatrix=True, imatrix_tensors={t.name for t in inv.tensors})
    assert {p.name: set(p.ladder) for p in full.parameters} == whole and full.imatrix_note() is None


def test_size_targets_on_the_command_line_become_bits_per_weight(dense_model) -> None:
    """`search --targets 5bpw,SIZE`: a file size is the bits per weight its tensors can take after the metadata."""
    from recipe_search.cli.study import _targets_bpw
    from recipe_search.core.pareto import parse_targets
    from recipe_search.core.recipe import uniform_recipe
    from recipe_search.core.resolution import resolve
    from recipe_search.core.size import predict_size

    inv = read_inventory(dense_model)
    q4 = predict_size(resolve(uniform_recipe("Q4_0"), inv), inv)
    bpw = _targets_bpw(dense_model, StudyConfig(target_bpw=[6.0]), parse_targets(f"5bpw,{q4.file_bytes}"))
    [from_size] = [b for b in bpw if b not in (5.0, 6.0)]
    assert bpw == sorted(bpw) and len(bpw) == 3
    assert abs(from_size - q4.bits_per_weight) < 0.01  # the uniform Q4_0 file's size gives (about) its bpw
