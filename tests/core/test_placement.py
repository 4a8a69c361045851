"""Placement: llama.cpp's run flags resolved per tensor as its loader assigns buffers."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipe_search.core.inventory import read_inventory
from recipe_search.core.placement import CPU, FFN_EXPS_REGEX, GPU, Placement
from recipe_search.errors import RecipeSearchError


def _devices(path: Path, flags: str) -> dict[str, str]:
    return {t.name + (" (output)" if t.duplicate else ""): t.device for t in Placement.parse(flags).place(read_inventory(path))}


def test_parse_flags_in_llama_cpp_order() -> None:
    p = Placement.parse("-ot 'blk\\.0\\.=CUDA0,exps=CPU' --cpu-moe --n-cpu-moe=2 -ngl 7")
    assert [(o.pattern, o.buffer) for o in p.overrides] == [
        (r"blk\.0\.", "CUDA0"), ("exps", "CPU"), (FFN_EXPS_REGEX, "CPU"),
        (r"blk\.0" + FFN_EXPS_REGEX, "CPU"), (r"blk\.1" + FFN_EXPS_REGEX, "CPU")]
    assert p.n_gpu_layers == 7
    assert Placement.parse("").n_gpu_layers is None and Placement.parse("-ngl all").n_gpu_layers is None
    again = Placement.parse(p.describe())  # the pinned run flags read back as the same placement
    assert [(o.pattern, o.buffer) for o in again.overrides] == [(o.pattern, o.buffer) for o in p.overrides]
    assert again.n_gpu_layers == 7


@pytest.mark.parametrize("flags, message", [
    ("-ot exps", "not PATTERN=BUFFER"), ("-ot '(=CPU'", "not a regex"), ("--n-cpu-moe -1", "layer count"),
    ("-ngl auto", "--fit"), ("--mlock", "not a placement flag"), ("-ot", "needs a value"), ("--cpu-moe=1", "no value"),
])
def test_bad_flags_are_one_line_errors(flags: str, message: str) -> None:
    with pytest.raises(RecipeSearchError, match=message):
        Placement.parse(flags)


def test_ngl_offloads_the_last_layers_output_counted(dense_model: Path) -> None:
    inv = read_inventory(dense_model)
    n = inv.n_blocks
    for ngl in (0, 1, 2, n, n + 1, n + 5):
        dev = _devices(dense_model, f"-ngl {ngl}")
        assert dev["token_embd.weight"] == CPU  # the input layer never moves
        assert dev["output.weight"] == dev["output_norm.weight"] == (GPU if ngl >= 1 else CPU)
        for b in range(n):
            assert dev[f"blk.{b}.attn_q.weight"] == (GPU if b >= n + 1 - ngl else CPU), (ngl, b)
    assert set(_devices(dense_model, "").values()) == {CPU, GPU}  # default: all layers, the input layer stays


def test_first_override_wins_and_beats_the_layer(moe_model: Path) -> None:
    dev = _devices(moe_model, "-ot 'blk\\.1\\.ffn_up_exps=CUDA0,exps=CPU' -ngl 0")
    assert dev["blk.1.ffn_up_exps.weight"] == GPU  # first match, though its layer is on the CPU
    assert dev["blk.1.ffn_down_exps.weight"] == CPU
    cpu_moe = _devices(moe_model, "--cpu-moe")
    exps = [n for n in cpu_moe if "_exps" in n]
    assert exps and all(cpu_moe[n] == CPU for n in exps)
    assert all(d == GPU for n, d in cpu_moe.items() if "_exps" not in n and n != "token_embd.weight")


def test_n_cpu_moe_takes_the_first_blocks(qwen_35b: Path) -> None:
    dev = _devices(qwen_35b, "--n-cpu-moe 20")
    for name, d in dev.items():
        block = int(name.split(".")[1]) if name.startswith("blk.") else None
        expected = CPU if ("_exps" in name and block is not None and block < 20) or name == "token_embd.weight" else GPU
        assert d == expected, name


def test_tied_output_is_loaded_twice(dense_model: Path, demo_model: Path) -> None:
    tied = _devices(demo_model, "-ngl 1")  # Gemma 3 has no output.weight
    assert tied["token_embd.weight"] == CPU and tied["token_embd.weight (output)"] == GPU
    assert "token_embd.weight (output)" not in _devices(dense_model, "")


def test_pattern_matching_nothing_is_an_error(dense_model: Path) -> None:
    with pytest.raises(RecipeSearchError, match="'-ot nothing_here=CPU' places no tensor"):
        Placement.parse("-ot attn_q=CPU,nothing_here=CPU").place(read_inventory(dense_model))
    with pytest.raises(RecipeSearchError, match="--cpu-moe"):
        Placement.parse("--cpu-moe").place(read_inventory(dense_model))  # a dense model has no experts


@pytest.mark.llama
@pytest.mark.parametrize("model, flags", [
    ("demo_model", "-ot 'attn_q=CPU,token_embd=CPU,blk\\.1[0-9]\\.ffn=CPU'"),
    ("qwen35_model", "--n-cpu-moe 2 -ot 'ssm_(a|conv1d)=CPU,^output'=CPU"),
    ("moe_model", "--cpu-moe"),
])
def test_llama_cpp_overrides_the_same_tensors(model: str, flags: str, request: pytest.FixtureRequest) -> None:
    """llama.cpp's loader logs each tensor an override placed; ours must be the same list (duplicates included)."""
    from recipe_search.engine.allocation import load_placement

    path = request.getfixturevalue(model)
    placement = Placement.parse(flags)
    loaded = load_placement(path, placement)
    ours = [t.name for t in placement.place(read_inventory(path)) if t.override]
    assert loaded.overridden and sorted(loaded.overridden) == sorted(ours)
    assert loaded.model_bytes == read_inventory(path).n_bytes


def test_run_export_pins_the_placement(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`export --format run`: the quantize command as `args` writes it, then -ot, an explicit -ngl and -fit off
    (``-fit [on|off]`` in the vendored common/arg.cpp); a picked recipe brings the placement it was budgeted for."""
    import shlex

    import yaml

    from recipe_search.cli import main
    from recipe_search.core.recipe import load_recipe
    from recipe_search.core.tool_formats import export

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nunmatched: {type: Q4_K}\nrules: [{tensors: ffn_down_exps, type: Q3_K}]\n")
    assert main(["export", str(path), "--format", "run", "--placement", "--n-cpu-moe 2 -ngl 30", "--run-ctx", "4096"]) == 0
    quantize, run = capsys.readouterr().out.splitlines()
    assert quantize == export(load_recipe(path), "args").strip()
    words = shlex.split(run)
    assert words[words.index("-ngl") + 1] == "30" and words[words.index("-fit") + 1] == "off"
    assert words[words.index("-c") + 1] == "4096" and words[words.index("-ctk") + 1] == "f16"
    pinned = Placement.parse(shlex.join(words[3:7]))  # -ot ... -ngl 30, read back
    assert [o.pattern for o in pinned.overrides] == [o.pattern for o in Placement.parse("--n-cpu-moe 2").overrides]
    picked = yaml.safe_load(path.read_text())
    picked["provenance"] = {"devices": {"placement": "-ot exps=CPU -ngl all", "ctx": 8192, "parallel": 2, "ubatch": 256,
                                        "cache_type_k": "q8_0", "cache_type_v": "f16", "gpu_bytes": 1, "cpu_bytes": 2}}
    path.write_text(yaml.safe_dump(picked))
    assert main(["export", str(path), "--format", "run"]) == 0
    run = capsys.readouterr().out.splitlines()[1]
    assert "-ot exps=CPU -ngl all -fit off -c 8192 -np 2 -ub 256 -ctk q8_0 -ctv f16" in run
