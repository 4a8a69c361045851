"""Recipes in the dialects people publish: each read as its own tool would read it, sized exactly, round-tripped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from paths import REPO

from recipe_search.cli import main
from recipe_search.core.dialects import Dialect, detect, load_any_recipe, parse_substitutions, read_source
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import recipe_from_dict
from recipe_search.core.resolution import resolve
from recipe_search.core.rule_coverage import coverage
from recipe_search.core.tool_formats import export
from recipe_search.errors import RecipeSearchError

T = GGMLQuantizationType


# -- the tools' own reading, written out here independently of the code under test -------------------
def _kept(name: str, shape: tuple[int, ...]) -> bool:
    """Tensors llama.cpp copies unchanged in these models: 1-D ones, biases, norms, the router, the SSM conv."""
    dims = [n for n in shape]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return (len(dims) < 2 or not name.endswith("weight")
            or any(s in name for s in ("_norm.weight", "ffn_gate_inp.weight", "ssm_conv1d")))


def tool_types(path: Path, rules: list[tuple[str, str]], unmatched: str, tool: str,
               token_embd: str | None = None) -> dict[str, tuple[T, tuple[int, ...]]]:
    """Per tensor: (type, ggml shape) as the tool assigns it: the first regex *found* in the name wins
    (lower-cased by mainline llama-quantize, kept by ik_llama.cpp); unnamed tensors take ``unmatched``."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(n) for n in t.shape)
        if _kept(t.name, shape):
            out[t.name] = (T(t.tensor_type), shape)
            continue
        if token_embd and t.name == "token_embd.weight" and tool == "llama.cpp":
            out[t.name] = (T[token_embd.upper()], shape)
            continue
        chosen = unmatched
        for pattern, type_name in rules:
            if re.search(pattern.lower() if tool == "llama.cpp" else pattern, t.name):
                chosen = type_name
                break
        out[t.name] = (T[chosen.upper()], shape)
    return out


def bpw(types: dict[str, tuple[T, tuple[int, ...]]]) -> float:
    """8 x sum of tensor bytes / sum of weights, from gguf.GGML_QUANT_SIZES (metadata excluded)."""
    nbytes = nweights = 0
    for t, shape in types.values():
        block, size = GGML_QUANT_SIZES[t]
        assert shape[0] % block == 0, "a test recipe must not make llama.cpp fall back"
        n = 1
        for d in shape:
            n *= d
        nbytes += n // block * size
        nweights += n
    return 8 * nbytes / nweights


def resolved(recipe, model: Path) -> dict[str, T]:
    return resolve(recipe, read_inventory(model)).types()


def _write(path: Path, text: str, crlf: bool = False) -> Path:
    path.write_bytes(text.replace("\n", "\r\n").encode() if crlf else text.encode())
    return path


# -- one test per dialect --------------------------------------------------------------------------
TENSOR_TYPE_FILE = """\
# attention first; the broad rule shadows the attn_v one below
blk\\.0\\.ATTN_Q\\.weight=q4_0   blk\\.1\\.attn_q\\.weight=q5_0

attn_.*=q5_0
attn_v\\.weight=q8_0
blk\\.0\\.attn_q\\.weight=q8_0
ffn_(up|gate)=Q4_0
ffn_up=q8_0
no_such_tensor=q4_0
"""


def test_tensor_type_file(dense_model, tmp_path) -> None:
    path = _write(tmp_path / "mix.txt", TENSOR_TYPE_FILE, crlf=True)
    assert detect(path.read_text(), path) is Dialect.TENSOR_TYPE_FILE
    imported = read_source(path, unmatched="q5_1")
    recipe = imported.recipe
    assert imported.warnings == ["line 1: llama-quantize itself does not skip comments in a --tensor-type-file"]
    assert [r.pattern for r in recipe.rules][:2] == [r"blk\.0\.attn_q\.weight", r"blk\.1\.attn_q\.weight"]
    prov = recipe.provenance
    assert prov["dialect"] == "tensor-type-file" and prov["rule_lines"] == [2, 2, 4, 5, 6, 7, 8, 9]
    assert prov["comments"] == {1: "# attention first; the broad rule shadows the attn_v one below"}
    types = resolved(recipe, dense_model)
    rules = [tuple(tok.split("=")) for line in TENSOR_TYPE_FILE.splitlines() if line and not line.startswith("#")
             for tok in line.split()]
    expected = tool_types(dense_model, rules, "q5_1", "llama.cpp")
    assert types == {name: t for name, (t, _) in expected.items()}
    assert types["blk.0.attn_q.weight"] == T.Q4_0 and types["blk.0.attn_v.weight"] == T.Q5_0
    assert types["blk.1.ffn_up.weight"] == T.Q4_0 and types["blk.1.ffn_down.weight"] == T.Q5_1
    cov = coverage(recipe, read_inventory(dense_model))
    assert cov.unused == [r"line 9: no_such_tensor -> Q4_0"]
    assert cov.shadowed == [r"line 5: attn_v\.weight -> Q8_0", r"line 6: blk\.0\.attn_q\.weight -> Q8_0",
                            "line 8: ffn_up -> Q8_0"]
    assert cov.unnamed == ["token_embd", "output", "ffn_down"]


ARGS = """\
./build/bin/llama-quantize --pure --imatrix /data/imatrix.dat \\
    --token-embedding-type q8_0 --tensor-type "token_embd=q4_0" \\
    --tensor-type 'ffn_down=Q5_0' --tensor-type ffn_down=q8_0 \\
    --tensor-type "blk\\.1\\.attn_.*=q4_0" \\
    model-F16.gguf out.gguf Q5_1 8
"""


def test_args(dense_model, tmp_path) -> None:
    path = _write(tmp_path / "quantize.sh.txt", ARGS)
    assert detect(ARGS) is Dialect.ARGS
    imported = read_source(path)
    recipe = imported.recipe
    assert imported.warnings == []
    assert recipe.unmatched.file_type == "Q5_1" and recipe.pure and recipe.imatrix == "imatrix.dat"
    assert recipe.token_embedding_type == "Q8_0"  # mainline: --token-embedding-type wins over a pattern
    assert recipe.provenance["rule_lines"] == [1, 1, 1, 1]
    rules = [("token_embd", "q4_0"), ("ffn_down", "q5_0"), ("ffn_down", "q8_0"), (r"blk\.1\.attn_.*", "q4_0")]
    expected = tool_types(dense_model, rules, "q5_1", "llama.cpp", token_embd="q8_0")
    assert resolved(recipe, dense_model) == {name: t for name, (t, _) in expected.items()}
    left = _write(tmp_path / "left.txt", ARGS.replace("--pure", "--pure --leave-output-tensor"))
    [warning] = read_source(left).warnings
    assert warning.startswith("line 1: --leave-output-tensor (output.weight kept unquantized) is not carried over")


CUSTOM_Q = """\
# ik_llama.cpp; rules override --token-embedding-type
llama-quantize --token-embedding-type q8_0 --custom-q "token_embd=q4_0,blk\\.0\\.ffn_.*=q5_0" \\
  --custom-q "Blk\\.1\\.attn_q=q4_0,ffn_down=q8_0,blk\\.0\\.ffn_down=q4_0" --pure in.gguf out.gguf q5_1
"""


def test_custom_q(dense_model, tmp_path) -> None:
    path = _write(tmp_path / "ik.txt", CUSTOM_Q)
    assert detect(CUSTOM_Q) is Dialect.CUSTOM_Q
    recipe = read_source(path).recipe
    assert recipe.token_embedding_type is None
    assert recipe.provenance["notes"] == [
        "--token-embedding-type dropped: a --custom-q rule names token_embd.weight and wins"]
    assert recipe.rules[2].pattern == r"Blk\.1\.attn_q"  # case kept: it matches nothing
    rules = [("token_embd", "q4_0"), (r"blk\.0\.ffn_.*", "q5_0"), (r"Blk\.1\.attn_q", "q4_0"), ("ffn_down", "q8_0"),
             (r"blk\.0\.ffn_down", "q4_0")]
    expected = tool_types(dense_model, rules, "q5_1", "ik_llama.cpp")
    types = resolved(recipe, dense_model)
    assert types == {name: t for name, (t, _) in expected.items()}
    assert types["token_embd.weight"] == T.Q4_0 and types["blk.0.ffn_down.weight"] == T.Q5_0
    assert types["blk.1.attn_q.weight"] == T.Q5_1

    bare = _write(tmp_path / "value.txt", "token_embd=q4_0,ffn_down=q8_0\n")
    assert detect(bare.read_text()) is Dialect.CUSTOM_Q
    assert [r.type for r in read_source(bare).recipe.rules] == ["Q4_0", "Q8_0"]


def test_ik_only_types_are_named_and_substituted_only_explicitly(tmp_path) -> None:
    path = _write(tmp_path / "ik.txt", "# ik\nllama-quantize --custom-q 'ffn_down=q8_0,attn_.*=iq4_ks' in out Q8_0\n")
    with pytest.raises(RecipeSearchError, match=r"ik\.txt: line 2: iq4_ks is an ik_llama\.cpp-only type"):
        read_source(path)
    recipe = read_source(path, substitutions=parse_substitutions(["iq4_ks=iq4_xs"])).recipe
    assert [r.type for r in recipe.rules] == ["Q8_0", "IQ4_XS"]
    assert recipe.provenance["substitutions"] == {"iq4_ks": "IQ4_XS"}
    with pytest.raises(RecipeSearchError, match="file type IQ2_KT is ik_llama.cpp-only"):
        read_source(_write(tmp_path / "ft.txt", "llama-quantize --custom-q 'a=q8_0' in out IQ2_KT\n"))
    with pytest.raises(RecipeSearchError, match="unknown ggml type 'q9_9'"):
        read_source(_write(tmp_path / "bad.txt", "a=q8_0\nb=q9_9\n"))


TOOL_SUITE = """\
## Quant mix recipe created using Thireus' GGUF Tool Suite - https://gguf.thireus.com/
# Model name: tiny

## Model head & embeddings — qbits: 32 8 4
^output\\.weight$=q8_0
^token_embd\\.weight$=q4_0
^output_norm\\.weight$=f32

## GPU-loaded ffn_*_shexp
# ffn_down_shexp (down-projection) — qbits: 8 4
^blk\\.0\\.ffn_down_shexp\\.weight$=q8_0
^blk\\.([0-1])\\.ffn_down_shexp\\.weight$=q4_0

## CPU-loaded ffn_*_exps
^blk\\.([0-1])\\.ffn_(up|gate|down)_exps\\.weight$=q4_0
^blk\\.([0-1])\\.ffn_up_exps\\.weight$=q8_0
^blk\\.([0-9])\\.attn_.*$=q5_0

## Summary of tensor sizes per class
# -Average BPW: {bpw}
## THE END!
"""


def _tool_suite_rules(text: str) -> list[tuple[str, str]]:
    return [tuple(line.rsplit("=", 1)) for line in text.splitlines() if line and not line.startswith("#")]


def test_tool_suite_recipe(moe_model, tmp_path) -> None:
    text = TOOL_SUITE.replace("{bpw}", "0")
    path = _write(tmp_path / "tiny.THIREUS-x.recipe", text)
    assert detect(text) is Dialect.TOOL_SUITE
    recipe = read_source(path, unmatched="q8_0").recipe
    prov = recipe.provenance
    assert prov["dialect"] == "gguf-tool-suite" and prov["tool"] == "ik_llama.cpp" and prov["stated_bpw"] == 0
    assert prov["rule_lines"] == [5, 6, 7, 11, 12, 15, 16, 17]
    assert prov["rule_comments"][3] == "# ffn_down_shexp (down-projection) — qbits: 8 4"
    assert prov["rule_comments"][5] == "## CPU-loaded ffn_*_exps"
    expected = tool_types(moe_model, _tool_suite_rules(text), "q8_0", "ik_llama.cpp")
    types = resolved(recipe, moe_model)
    assert types == {name: t for name, (t, _) in expected.items()}
    assert types["blk.0.ffn_down_shexp.weight"] == T.Q8_0 and types["blk.1.ffn_up_exps.weight"] == T.Q4_0
    cov = coverage(recipe, read_inventory(moe_model))
    assert cov.shadowed == [r"line 16: ^blk\.([0-1])\.ffn_up_exps\.weight$ -> Q8_0"]
    assert cov.unnamed == ["ffn_gate_shexp", "ffn_up_shexp"]


SHELL = """\
#!/usr/bin/env bash
set -euo pipefail
custom="
# attention
blk\\.[0-1]\\.attn_.*=$1
## ffn
blk\\.0\\.ffn_down=q8_0
ffn_down=q4_0
token_embd=q8_0
"
custom=$(echo "$custom" | grep -v '^#' | sed -Ez 's:\\n+:,:g;s:,$::;s:^,::')
llama-quantize --pure --custom-q "$custom" --imatrix imatrix.dat \\
    in-BF16.gguf out-${1^^}.gguf ${1^^} $(nproc) && chmod 444 out-*.gguf || echo "failed"
"""


def test_shell_script(dense_model, tmp_path) -> None:
    path = _write(tmp_path / "quant.sh", SHELL)
    assert detect(SHELL) is Dialect.SHELL
    with pytest.raises(RecipeSearchError, match=r"quant\.sh: line 5: type '\$1' is a shell variable"):
        read_source(path)
    recipe = read_source(path, substitutions=parse_substitutions(["$1=q5_0"])).recipe
    assert recipe.provenance["rule_lines"] == [5, 7, 8, 9] and recipe.provenance["tool"] == "ik_llama.cpp"
    assert recipe.unmatched.file_type == "Q5_0" and recipe.pure and recipe.imatrix == "imatrix.dat"
    assert recipe.provenance["rule_comments"] == {0: "# attention", 1: "## ffn", 2: "## ffn", 3: "## ffn"}
    rules = [(r"blk\.[0-1]\.attn_.*", "q5_0"), (r"blk\.0\.ffn_down", "q8_0"), ("ffn_down", "q4_0"),
             ("token_embd", "q8_0")]
    expected = tool_types(dense_model, rules, "q5_0", "ik_llama.cpp")
    assert resolved(recipe, dense_model) == {name: t for name, (t, _) in expected.items()}

    heredoc = tmp_path / "tt.sh"
    _write(heredoc, "#!/bin/sh\nTT=$(cat <<'EOF'\nattn_q=q4_0\n# keep\nffn_up=Q8_0\nEOF\n)\n"
                    "args=$(echo \"$TT\" | grep -v '^#' | sed 's/^/--tensor-type /')\n"
                    "llama-quantize --pure $args in.gguf out.gguf q5_1 4\n")
    recipe = read_source(heredoc).recipe
    assert recipe.provenance["tool"] == "llama.cpp" and recipe.unmatched.file_type == "Q5_1"
    assert [(r.pattern, r.type) for r in recipe.rules] == [("attn_q", "Q4_0"), ("ffn_up", "Q8_0")]
    assert recipe.provenance["rule_lines"] == [3, 5]


# -- round trip ------------------------------------------------------------------------------------
ROUND_TRIP = {
    "name": "mix", "unmatched": {"type": "Q8_0"},
    "rules": [{"tensors": "attn_v", "blocks": [0], "type": "Q5_0"}, {"tensors": "ffn_down_exps", "type": "Q4_0"},
              {"tensors": "ffn_down", "type": "Q4_0"}, {"pattern": r"ffn_(up|gate)", "type": "Q5_1"},
              {"tensors": "attn_q", "type": "Q4_1"}, {"tensors": "output", "type": "Q6_K"}],
}


@pytest.mark.parametrize("fmt", ["tensor-type-file", "args", "custom-q"])
def test_round_trip(fmt, dense_model, moe_model, qwen35_model, qwen_35b, tmp_path) -> None:
    original = recipe_from_dict(ROUND_TRIP)
    path = _write(tmp_path / f"mix.{fmt}", export(original, fmt))
    back = read_source(path, unmatched=None if fmt == "args" else "q8_0").recipe
    assert back.provenance["dialect"] == fmt
    for model in (dense_model, moe_model, qwen35_model, qwen_35b):
        assert resolved(back, model) == resolved(original, model)


# -- bad files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, problem", [
    ("attn_q=q4_0\nffn_down q8_0\n", "line 2: 'ffn_down' is not regex=type"),
    ("## Quant mix recipe\n^a$=q8_0\n^b$=q8_0=x\n", "line 3: '^b$=q8_0=x' is not a regex=type line"),
    ("attn_q=q4_0\nattn(=q8_0\n", "line 2: invalid regex 'attn('"),
])
def test_bad_recipe_file_is_one_line(text, problem, dense_model, tmp_path, capsys) -> None:
    path = _write(tmp_path / "bad.txt", text)
    assert main(["size", str(dense_model), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {problem}" in err


# -- sizes their authors state come out exactly ------------------------------------------------------
def _dialect_files(tmp_path: Path, rules: list[tuple[str, str]], stated: float) -> dict[str, Path]:
    tokens = [f"{p}={t}" for p, t in rules]
    body = "\n".join(tokens)
    return {
        "tensor-type-file": _write(tmp_path / "a.txt", "\n".join(tokens) + "\n"),
        "args": _write(tmp_path / "b.txt", "llama-quantize --pure " + " ".join(f"--tensor-type '{t}'" for t in tokens)
                       + " in.gguf out.gguf Q8_0\n"),
        "custom-q": _write(tmp_path / "c.txt", f"llama-quantize --pure --custom-q '{','.join(tokens)}' in out q8_0\n"),
        "gguf-tool-suite": _write(tmp_path / "d.recipe", f"## Quant mix recipe\n{body}\n# -Average BPW: {stated:.4f}\n"),
        "shell": _write(tmp_path / "e.sh", "#!/bin/bash\nQ=\"\n" + "\n".join(tokens) + "\n\"\n"
                        "llama-quantize --pure --custom-q \"$(echo $Q | tr ' ' ,)\" in out Q8_0 8\n"),
    }


@pytest.mark.parametrize("which", ["tiny", "qwen3.5-35b-a3b"])
def test_author_stated_bpw_comes_out_exactly(which, qwen35_model, qwen_35b, tmp_path, capsys) -> None:
    model = qwen35_model if which == "tiny" else qwen_35b
    rules = [(r"blk\.[0-9]*[02468]\.ffn_down_exps\.weight", "q4_0"), (r"ffn_(up|gate)_exps", "q4_k"),
             (r"blk\.1\.ffn_.*_shexp\.weight", "q6_k"), (r"attn_(qkv|gate)\.weight", "q5_k"),
             (r"token_embd\.weight", "q5_0"), (r"ffn_down_exps", "iq4_xs"), (r"ssm_", "q8_0"), (r"output", "q6_k")]
    stated = bpw(tool_types(model, [(p.lower(), t) for p, t in rules], "q8_0", "llama.cpp"))
    for dialect, path in _dialect_files(tmp_path, rules, stated).items():
        imported = read_source(path)
        assert imported.dialect.value == dialect
        assert main(["size", str(model), str(path), "--json"]) == 0
        reported = json.loads(capsys.readouterr().out)["bits_per_weight"]
        assert reported == stated, dialect
        if dialect == "gguf-tool-suite":
            assert imported.recipe.provenance["stated_bpw"] == round(reported, 4)


# -- the commands take these files -----------------------------------------------------------------
def test_import_cli_several_files_and_model_report(dense_model, tmp_path, capsys) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a.txt", TENSOR_TYPE_FILE)
    _write(src / "b.txt", CUSTOM_Q)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["import", str(src), "-o", str(out), "--model", str(dense_model)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "(tensor-type-file, 8 rules)" in captured.out
    assert f"{src / 'a.txt'}: rule matches no tensor: line 9: no_such_tensor -> Q4_0" in captured.err
    assert f"{src / 'a.txt'}: no rule names: ffn_down" in captured.err
    assert f"{src / 'b.txt'}: rule matches no tensor: line 2: Blk\\.1\\.attn_q -> Q4_0" in captured.err
    a, b = load_any_recipe(out / "a.yaml"), load_any_recipe(out / "b.yaml")
    assert a.provenance["rule_lines"][0] == 2 and b.provenance["dialect"] == "custom-q"
    assert main(["import", str(src / "a.txt"), "--format", "gguf-tool-suite"]) == 2
    assert "line 2: 'blk\\\\.0\\\\.ATTN_Q\\\\.weight=q4_0   blk" in capsys.readouterr().err


def test_compare_and_export_take_dialects(dense_model, tmp_path, capsys) -> None:
    a = _write(tmp_path / "a.txt", TENSOR_TYPE_FILE)
    b = _write(tmp_path / "b.txt", CUSTOM_Q)
    assert main(["compare", str(a), str(b), "--model", str(dense_model), "--json"]) == 0
    cols = json.loads(capsys.readouterr().out)["columns"]
    assert [c["label"] for c in cols] == ["a", "b"] and all(c["file_bytes"] for c in cols)
    assert main(["export", str(a), "--format", "tensor-type-file"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == r"blk\.0\.attn_q\.weight=q4_0"


@pytest.mark.llama  # the study façade opens a worker
def test_study_seeds_are_carried_onto_the_space(qwen35_model, tmp_path) -> None:
    import optuna

    from recipe_search.core.config import StudyConfig
    from recipe_search.core.space import build_space, seed_recipes
    from recipe_search.study._records import TrialRecord
    from recipe_search.study.study import Study

    seed = _write(tmp_path / "their.recipe", "## Quant mix recipe\n^blk\\.0\\.ffn_down_exps\\.weight$=q4_k\n"
                                             "ffn_down_exps=q6_k\nffn_(up|gate)_exps=iq4_nl\nattn_qkv=q2_k\n")
    config = StudyConfig(seeds=[str(seed)], references={"uniform": ["Q8_0"], "presets": []}, surrogate_seeds=0, refit_every=0,
                         space={"tensor_types": ["ffn_down_exps", "ffn_up_exps", "ffn_gate_exps", "attn_qkv"],
                                "tied": [["ffn_up_exps", "ffn_gate_exps"]], "bands": {"ffn_down_exps": 3},
                                "ladder": ["Q8_0", "Q6_K", "Q4_K", "IQ4_XS", "Q3_K"]})
    inv = read_inventory(qwen35_model)
    space = build_space(config, inv, has_imatrix=False)
    [(recipe, choice)] = seed_recipes(config, space, inv)
    ladder = {p.name: p.ladder for p in space.parameters}
    picked = {name: ladder[name][i].name for name, i in choice.items()}
    # blocks 0 / 1 / 2 are the three bands; off the ladder, IQ4_NL takes Q4_K (both 4.5 bpw), Q2_K takes Q3_K
    assert picked == {"ffn_down_exps@0-0": "Q4_K", "ffn_down_exps@1-1": "Q6_K", "ffn_down_exps@2-2": "Q6_K",
                      "ffn_up_exps+ffn_gate_exps": "Q4_K", "attn_qkv": "Q3_K"}
    assert recipe.name == "seed-their"

    study = optuna.create_study(directions=["minimize", "minimize"])
    opened = Study(study, config, space, type("W", (), {"inventory": inv, "imatrix": None})(), tmp_path)
    assert opened.enqueue_references() == 2
    waiting = [TrialRecord.from_trial(t) for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [(t.reference, t.seed) for t in waiting] == [("uniform-Q8_0", None), (None, "seed-their")]
    assert study.get_trials(states=(optuna.trial.TrialState.WAITING,))[1].system_attrs["fixed_params"] == choice


def test_commands_take_substitutions(dense_model, tmp_path, capsys) -> None:
    ik = _write(tmp_path / "ik.recipe", "## Quant mix recipe\n^blk\\.0\\..*$=iq4_ks\n^blk\\.1\\..*$=q6_0\n")
    assert main(["size", str(dense_model), str(ik)]) == 2
    assert "ik.recipe: line 2: iq4_ks is an ik_llama.cpp-only type" in capsys.readouterr().err
    args = ["--substitute", "iq4_ks=q4_0", "--substitute", "q6_0=q5_0", "--unmatched", "q8_0"]
    assert main(["size", str(dense_model), str(ik), "--json", *args]) == 0
    types = {t["name"]: t["ggml_type"] for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert types["blk.0.ffn_down.weight"] == "Q4_0" and types["blk.1.attn_q.weight"] == "Q5_0"
    assert types["output.weight"] == "Q8_0"
    assert main(["compare", str(ik), "--model", str(dense_model), "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out)["columns"][0]["cells"]["ffn_down"]["text"] == "Q4_0×1 Q5_0×1"


@pytest.mark.slow
@pytest.mark.llama  # quantizes
def test_quantize_takes_a_custom_q_command_line(dense_model, tmp_path, capsys) -> None:
    path = _write(tmp_path / "ik.txt", CUSTOM_Q)
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(dense_model), str(path), "-o", str(out)]) == 0
    assert "every tensor has its recipe type" in capsys.readouterr().out
    written = {t.name: T(t.tensor_type) for t in GGUFReader(out).tensors}
    assert written == resolved(read_source(path).recipe, dense_model)
    assert written["token_embd.weight"] == T.Q4_0 and written["blk.0.ffn_down.weight"] == T.Q5_0


def test_dialects_report_compare_of_three_dialects(qwen_35b, capsys, monkeypatch) -> None:
    root = REPO
    report = root / "experiments" / "reports" / "dialects.md"
    block = report.read_text(encoding="utf-8").split("## Recipes people already have", 1)[1]
    block = block.split("```\n$ cd experiments/dialects && recipe-search ", 1)[1].split("```", 1)[0]
    command, *shown = block.splitlines()
    args = command.split()
    args[args.index("q35.gguf")] = str(qwen_35b)
    monkeypatch.chdir(root / "experiments" / "dialects")
    assert main(args) == 0
    out = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    out[0] = out[0].replace(str(qwen_35b), "q35.gguf")
    assert [line for line in shown if line != "..."] == [line for line in out if line in shown]
    assert len(shown) > 20
