"""How a recipe's rules meet a model, in one pass: rules that match nothing (and why), rules that match
only tensors llama.cpp never quantizes, rules an earlier one shadows (first match wins), rule types a
tensor's rows do not fit, and tensor types no rule names. `lint`, `Coverage.lines` and
`missing_rules` are three ways of saying what this one pass found."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..formats.ggml_types import fallback
from .inventory import Inventory, Tensor, _compact_ranges
from .recipe import Recipe


@dataclass(frozen=True)
class RuleUse:
    """What one rule does on the model."""

    index: int
    hits: list[Tensor]  # every tensor its regex matches
    quantizable: list[Tensor]  # of those, the ones llama.cpp quantizes
    fresh: list[Tensor]  # of those, the ones no earlier rule took
    fallbacks: dict[str, list[Tensor]] = field(default_factory=dict)  # tensor type -> fresh tensors it does not fit

    @property
    def unused(self) -> bool:
        return not self.hits

    @property
    def shadowed(self) -> bool:
        return bool(self.quantizable) and not self.fresh


@dataclass(frozen=True)
class Coverage:
    recipe: Recipe
    model: Inventory
    rules: list[RuleUse]
    unnamed: list[str]  # tensor types (with blocks) llama.cpp quantizes that no rule names

    @property
    def unused(self) -> list[str]:
        return [rule_label(self.recipe, u.index) for u in self.rules if u.unused]

    @property
    def shadowed(self) -> list[str]:
        return [rule_label(self.recipe, u.index) for u in self.rules if u.shadowed]

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
    claimed: set[str] = set()
    uses = []
    index = inv.name_index
    seen: dict[str, tuple[list[Tensor], list[Tensor]]] = {}  # regex -> its hits, the quantizable ones
    for i, rule in enumerate(recipe.rules):
        regex = rule.regex
        if regex in seen:  # a repeated regex: whatever it matches an earlier rule took
            hits, quantizable = seen[regex]
            uses.append(RuleUse(i, hits, quantizable, []))
            continue
        hits = [inv.tensors[j] for j in index.matches(regex)]
        quantizable = [t for t in hits if t.quantizable]
        seen[regex] = hits, quantizable
        fresh = [t for t in quantizable if t.name not in claimed]
        claimed.update(t.name for t in fresh)
        fell: dict[str, list[Tensor]] = defaultdict(list)
        t_rule = rule.ggml_type
        for t in fresh:
            if fallback(t_rule, t.row_length) != t_rule:
                fell[t.kind].append(t)
        uses.append(RuleUse(i, hits, quantizable, fresh, dict(fell)))
    for name, override in (("token_embd.weight", recipe.token_embedding_type),
                           ("output.weight", recipe.output_tensor_type)):
        if override:
            claimed.add(name)
    left: dict[str, list[int | None]] = defaultdict(list)
    for tensor in inv.tensors:
        if tensor.quantizable and tensor.name not in claimed:
            left[tensor.kind].append(tensor.block)
    unnamed = []
    for kind, blocks in left.items():
        numbered = sorted(b for b in blocks if b is not None)
        complete = len(blocks) == inv.kinds[kind].count
        unnamed.append(kind if complete or not numbered else f"{kind} (blocks {_compact_ranges(numbered)})")
    return Coverage(recipe, inv, uses, unnamed)


def lint(recipe: Recipe, inv: Inventory) -> list[str]:
    """Warnings about rules that do nothing or do something other than they say, one line each."""
    warnings = []
    made_for = recipe.model
    if made_for is not None and made_for.architecture != inv.arch:
        warnings.append(f"the recipe was made for a {made_for.architecture} model"
                        f"{f' ({made_for.name})' if made_for.name else ''}; this model is {inv.arch}")
    for use in coverage(recipe, inv).rules:
        rule = recipe.rules[use.index]
        where = f"rules[{use.index}] ({rule.label})"
        if use.unused:
            warnings.append(f"{where}: matches no tensor of this model")
        elif not use.quantizable:
            warnings.append(f"{where}: matches only tensors llama.cpp never quantizes ({use.hits[0].kind}...); it does nothing")
        elif use.shadowed:
            warnings.append(f"{where}: every tensor it matches is taken by an earlier rule")
        for kind, ts in use.fallbacks.items():
            to = fallback(rule.ggml_type, ts[0].row_length).name
            warnings.append(f"{where}: {rule.type} does not fit the {len(ts)} {kind} tensor(s) "
                            f"(rows of {ts[0].row_length}); llama.cpp falls back to {to}")
    return warnings


def missing_rules(recipe: Recipe, model: Inventory) -> list[str]:
    """The rules that match no tensor of ``model``, each with the reason."""
    out = []
    for use in coverage(recipe, model).rules:
        if not use.unused:
            continue
        rule = recipe.rules[use.index]
        if rule.tensors is None:
            why = "the regex matches no tensor"
        elif rule.tensors not in model.kinds:
            why = "no such tensor type"
        else:
            why = f"{rule.tensors} exists only in blocks {_compact_ranges(model.kinds[rule.tensors].blocks)}"
        out.append(f"{rule.label} -> {rule.type}: {why}")
    for kind, t in (("token_embd", recipe.token_embedding_type), ("output", recipe.output_tensor_type)):
        if t and f"{kind}.weight" not in model.by_name:
            out.append(f"{kind} -> {t} ({'token_embedding_type' if kind == 'token_embd' else 'output_tensor_type'}): "
                       "no such tensor")
    return out
