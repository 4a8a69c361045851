"""Recipes of very many rules (issue 24): sized in seconds, with llama.cpp's first-match answer."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_search.core import yaml_file
from recipe_search.core.inventory import read_inventory
from recipe_search.core.recipe import load_recipe, recipe_from_dict
from recipe_search.core.resolution import ResolvedTensor, Source, resolve
from recipe_search.core.rule_match import NameIndex, first_matches, required_literals
from recipe_search.core.size import predict_size
from recipe_search.formats.ggml_types import fallback, is_quantized, parse_type

TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "IQ4_XS", "Q4_0"]


def generated_rules(kinds: list[str], n: int, seed: int = 0, whole_kinds: bool = True) -> list[dict]:
    """Rules of every form: a tensor type in one block, a block's tensor by pattern, patterns that match nothing,
    whole tensor types, and regexes with groups, classes and branches."""
    rng = random.Random(seed)
    rules: list[dict] = []
    for i in range(n):
        kind, block, t = kinds[i % len(kinds)], rng.randrange(48), rng.choice(TYPES)
        form = i % 5 if whole_kinds else (0, 1, 2, 4)[i % 4]
        if form == 0:
            rules.append({"tensors": kind, "blocks": [block], "type": t})
        elif form == 1:
            rules.append({"pattern": rf"^blk\.{block}\.{kind}\.weight$", "type": t})
        elif form == 2:
            rules.append({"pattern": f"nothing_{i}", "type": t})
        elif form == 3:
            rules.append({"tensors": kind, "type": t})
        else:
            rules.append({"pattern": rng.choice([rf"blk\.{block}\.(ffn|attn)_[a-z]+", rf"\.{block % 10}\d\.",
                                                 r"ffn_(up|down)_(exps|shexp)", rf"(?:^|\.){kind}\b",
                                                 rf"blk\.[0-{block % 10}]\.ssm_", "output", r"^token_embd"]),
                          "type": t})
    return rules


def straightforward(recipe, inv) -> list[ResolvedTensor]:
    """The resolution as llama.cpp does it, tensor by tensor: every rule's regex in order, the first match wins."""
    rules = recipe.overrides()
    compiled: dict[str, re.Pattern] = {}

    def search(rx: str, name: str) -> bool:
        if rx not in compiled:
            compiled[rx] = re.compile(rx)
        return compiled[rx].search(name) is not None

    default = recipe.file_type.default_type
    out = []
    for tensor in inv.tensors:
        if not tensor.quantizable:
            out.append(ResolvedTensor(tensor, tensor.ggml_type, tensor.ggml_type, Source.KEPT))
            continue
        assert is_quantized(default) and not recipe.token_embedding_type and not recipe.output_tensor_type
        first = next((i for i, (rx, _) in enumerate(rules) if search(rx, tensor.name)), None)
        if first is None:
            out.append(ResolvedTensor(tensor, default, fallback(default, tensor.row_length), Source.UNMATCHED))
        else:
            t = rules[first][1]
            out.append(ResolvedTensor(tensor, t, fallback(t, tensor.row_length), Source.RULE,
                                      first if first < len(recipe.rules) else None))
    return out


def _write_recipe(path: Path, rules: list[dict]) -> Path:
    """The recipe YAML, one flow mapping per rule (JSON strings are YAML strings; quicker than a YAML dumper)."""
    lines = ["name: many-rules", "unmatched: {type: Q8_0}", "rules:"]
    lines += ["- " + json.dumps(r, separators=(", ", ": ")) for r in rules]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_300k_rules_are_sized_in_seconds(qwen_35b, tmp_path) -> None:
    """`size` of a 300,000-rule recipe on the 35B table took three minutes (every rule compiled and searched for
    every tensor, PyYAML's pure-Python parser). The bound is on the command's CPU seconds, loose (it takes a few):
    under load the wall time grew past it."""
    inv = read_inventory(qwen_35b)
    rules = generated_rules(sorted(inv.kinds), 300_000)
    recipe_path = _write_recipe(tmp_path / "many.yaml", rules)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-m", "recipe_search.cli", "size", str(qwen_35b), str(recipe_path), "--json"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "RECIPE_SEARCH_CACHE":
                                                                           str(tmp_path / "cache")})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds, not wall: a machine busy with other jobs makes the command wait, not work more
    seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert out.returncode == 0, out.stderr
    print(f"size of 300,000 rules: {seconds:.1f} CPU s")
    assert seconds < 30 and "more warning(s) like these" in out.stderr, seconds
    recipe = load_recipe(recipe_path)
    assert len(recipe.rules) == 300_000
    resolution = resolve(recipe, inv)
    assert resolution.tensors == straightforward(recipe, inv)
    assert json.loads(out.stdout)["file_bytes"] == predict_size(resolution, inv).file_bytes


def test_first_match_as_llama_cpp_on_a_sample(qwen_35b) -> None:
    """Rules that leave tensors unmatched, and regexes of every kind: the same answer as the rule-by-rule search."""
    inv = read_inventory(qwen_35b)
    for seed in range(3):
        rules = generated_rules(sorted(inv.kinds), 500, seed=seed, whole_kinds=False)
        recipe = recipe_from_dict({"name": "sample", "unmatched": {"type": "Q4_K"}, "rules": rules})
        resolution = resolve(recipe, inv)
        assert resolution.tensors == straightforward(recipe, inv)
        assert {r.source for r in resolution.tensors} >= {Source.RULE, Source.UNMATCHED, Source.KEPT}


@pytest.mark.parametrize("pattern", [
    r"^blk\.3\.ffn_up\.weight$", "nothing_7", r"ffn_(up|down)_exps", r"(?:^|\.)attn_q\b", r"a\d+b", "x*y", "(?i)FFN",
    r"(?i:FFN)_up", r"(?=ffn)f", "[a-z]+_exps", r"blk\.(1|12)\.", r"(ab)+c", r"a{2}b", ".", r"\.weight$", "ffn|attn",
])
def test_required_literals_are_in_every_match(pattern) -> None:
    names = ["blk.3.ffn_up.weight", "blk.12.ffn_down_exps.weight", "aab", "a12b", "xy", "ffn_up", "FFN_up",
             "blk.1.attn_q.weight", "abababc", "token_embd.weight", "y", "nothing_7"]
    for name in names:
        m = re.search(pattern, name)
        if m is not None:
            assert all(lit in name for lit in required_literals(pattern)), (pattern, name)
    index = NameIndex(names)
    assert index.matches(pattern) == tuple(j for j, n in enumerate(names) if re.search(pattern, n))


def test_first_matches_skips_repeats_and_stops_early() -> None:
    index = NameIndex(["a.weight", "b.weight", "ab"])
    assert first_matches(["^b", "a", "b", "a"], index) == [1, 0, 1]
    assert first_matches(["zzz", "zzz"], index) == [None, None, None]


# -- YAML through libyaml's events ---------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "name: x\nrules:\n- {tensors: ffn_up, blocks: [1, 2], type: q4_k}\n- pattern: '^a\\.b$'\n  type: Q8_0\n",
    "a: 1\nb: 1.5\nc: true\nd: null\ne: ~\nf: '1'\ng: 0x10\nh: 1_000\ni: .inf\nj: yes\nk: \"x\\ty\"\nl: [1, [2, {m: n}]]\n",
    "- a\n- b: |\n    text\n    more\n- c: >\n    folded\n",
    "", "# only a comment\n", "plain\n", "{}\n", "[]\n", "a:\nb: ''\n",
])
def test_fast_yaml_equals_the_full_loader(text) -> None:
    assert yaml_file._fast_load(text) == yaml.load(text, Loader=yaml_file._StrictLoader)  # noqa: S506


@pytest.mark.parametrize("text", [
    "a: 1\na: 2\n", "a: &x 1\nb: *x\n", "a: !!str 1\n", "<<: {a: 1}\n", "a: 2001-12-14\n", "--- 1\n--- 2\n",
    "? [a]\n: 1\n", "a: [1\n", "\t- x\n", "a: " + "[" * 100 + "]" * 100 + "\n",
])
def test_fast_yaml_leaves_the_unusual_to_the_full_loader(text) -> None:
    with pytest.raises(yaml_file._Unusual):
        yaml_file._fast_load(text)


def test_large_yaml_errors_are_the_full_loaders(tmp_path) -> None:
    from recipe_search.errors import RecipeSearchError

    body = "".join(f"- {{pattern: nothing_{i}, type: Q8_0}}\n" for i in range(8_000))
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nunmatched: {type: Q8_0}\nrules:\n" + body + "name: y\n")
    assert len(path.read_text()) > yaml_file.FAST_FROM
    with pytest.raises(RecipeSearchError, match="duplicate key 'name'"):
        load_recipe(path)
    path.write_text("name: x\nunmatched: {type: Q8_0}\nrules:\n" + body)
    assert len(load_recipe(path).rules) == 8_000
    assert parse_type(load_recipe(path).rules[-1].type).name == "Q8_0"
