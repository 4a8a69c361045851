"""How a recipe's rules meet a model: rules that match nothing, rules an earlier one shadows, tensors none names."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from .inventory import Inventory, _compact_ranges
from .recipe import Recipe


@dataclass(frozen=True)
class Coverage:
    unused: list[str]  # rules that match no tensor of the model
    shadowed: list[str]  # rules whose every tensor an earlier rule takes (first match wins)
    unnamed: list[str]  # tensor types (with blocks) llama.cpp quantizes that no rule names

    def lines(self) -> list[str]:
        return ([f"rule matches no tensor: {r}" for r in self.unused]
                + [f"rule shadowed by earlier rules: {r}" for r in self.shadowed]
                + [f"no rule names: {t}" for t in self.unnamed])


def rule_label(recipe: Recipe, i: int) -> str:
    """``line N: pattern -> TYPE`` (the source line where the recipe was imported from a text dialect)."""
    rule = recipe.rules[i]
    lines = (recipe.provenance or {}).get("rule_lines")
    where = f"line {lines[i]}: " if isinstance(lines, list) and i < len(lines) else f"rules[{i}]: "
    return f"{where}{rule.label} -> {rule.type}"


def coverage(recipe: Recipe, inv: Inventory) -> Coverage:
    compiled = [re.compile(r.regex) for r in recipe.rules]
    taken: set[str] = set()
    unused, shadowed = [], []
    for i, rx in enumerate(compiled):
        hits = {t.name for t in inv.tensors if rx.search(t.name)}
        if not hits:
            unused.append(rule_label(recipe, i))
        elif hits <= taken:
            shadowed.append(rule_label(recipe, i))
        taken |= hits
    if recipe.token_embedding_type:
        taken |= {"token_embd.weight"}
    if recipe.output_tensor_type:
        taken |= {"output.weight"}
    left: dict[str, list[int | None]] = defaultdict(list)
    for t in inv.tensors:
        if t.quantizable and t.name not in taken:
            left[t.kind].append(t.block)
    unnamed = []
    for kind, blocks in left.items():
        numbered = sorted(b for b in blocks if b is not None)
        complete = len(blocks) == inv.kinds[kind].count
        unnamed.append(kind if complete or not numbered else f"{kind} (blocks {_compact_ranges(numbered)})")
    return Coverage(unused, shadowed, unnamed)
