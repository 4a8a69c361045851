"""Recover a recipe from an existing quantized GGUF: the fewest rules that reproduce its tensor types."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType
from .inventory import Inventory, read_inventory
from .recipe import ModelRef, Recipe, Rule, Unmatched


def _majority(counter: Counter) -> str:
    # deterministic: most tensors first, then the type name
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def recipe_from_inventory(inv: Inventory, name: str | None = None) -> Recipe:
    """One rule per tensor type where its layers agree; block-group rules where they differ.

    The type most tensor types share becomes the catch-all, so it needs no rules of its own.
    """
    per_kind: dict[str, dict[int | None, GGMLType]] = {}
    for info in inv.kinds.values():
        if info.quantizable:
            per_kind[info.name] = {t.block: t.ggml_type for t in info.tensors if t.quantizable}
    if not per_kind:
        raise RecipeSearchError("no tensor llama.cpp would quantize", inv.path)
    kind_main = {k: _majority(Counter(t.name for t in blocks.values())) for k, blocks in per_kind.items()}
    catch_all = _majority(Counter(kind_main.values()))
    rules: list[Rule] = []
    for kind, blocks in per_kind.items():
        main = kind_main[kind]
        minority: dict[str, list[int]] = defaultdict(list)
        for block, t in blocks.items():
            if t.name != main:
                assert block is not None  # a kind with differing types always has block numbers
                minority[t.name].append(block)
        for t_name in sorted(minority, key=lambda n: (min(minority[n]), n)):
            rules.append(Rule(tensors=kind, blocks=sorted(minority[t_name]), type=t_name))
        if main != catch_all:
            rules.append(Rule(tensors=kind, type=main))
    model = ModelRef(architecture=inv.arch, tensor_count=len(inv.tensors),
                     name=str(inv.headers[0].get("general.name") or "") or None)
    return Recipe(name=name or Path(inv.path).stem, model=model, unmatched=Unmatched(type=catch_all), rules=rules,
                  provenance={"imported_from": Path(inv.path).name,
                              "file_type": inv.file_type_label()})


def import_recipe(path: str | Path, name: str | None = None) -> Recipe:
    return recipe_from_inventory(read_inventory(path), name)
