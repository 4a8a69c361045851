"""First-match rule resolution: the ggml type llama.cpp's quantizer will give every tensor.

Mirrors llama_tensor_get_type in src/llama-quant.cpp: token-embedding/output types win, rules apply
only when the file type's default type is quantized, unmatched tensors take the default (pure) type,
never-quantized tensors keep their source type, and a row size that does not divide the block falls back.
A llama.cpp mixture (a file type without ``pure``) is resolved by llama.cpp itself (a dry run).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType, fallback, is_quantized, parse_type
from .inventory import Inventory, Tensor
from .recipe import Recipe
from .rule_match import first_matches


class Source(str, Enum):
    KEPT = "kept"  # llama.cpp never quantizes this tensor
    RULE = "rule"
    UNMATCHED = "unmatched"
    TOKEN_EMBEDDING = "token_embedding_type"
    OUTPUT = "output_tensor_type"
    MIXTURE = "llama.cpp mixture"


@dataclass(frozen=True)
class ResolvedTensor:
    tensor: Tensor
    requested: GGMLType  # before any row-size fallback
    ggml_type: GGMLType  # what llama.cpp writes
    source: Source
    rule: int | None = None  # index into recipe.rules (a catch-all rule is None)

    @property
    def fell_back(self) -> bool:
        return self.requested != self.ggml_type


@dataclass(frozen=True)
class Resolution:
    recipe: Recipe
    tensors: list[ResolvedTensor]

    def types(self) -> dict[str, GGMLType]:
        return {r.tensor.name: r.ggml_type for r in self.tensors}

    def key(self) -> tuple[tuple[str, str], ...]:
        """What decides the output file's tensors: the per-tensor types (two recipes alike here are one file)."""
        return tuple(sorted((name, t.name) for name, t in self.types().items()))

    def fallbacks(self) -> dict[str, Counter]:
        """Per tensor type, how many tensors fell back from which type to which."""
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.tensors:
            if r.fell_back:
                out[r.tensor.kind][f"{r.requested.name}->{r.ggml_type.name}"] += 1
        return dict(out)

    def kind_types(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.tensors:
            out[r.tensor.kind][r.ggml_type.name] += 1
        return dict(out)


def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


#: llama.cpp's own choice of every tensor's type for a recipe (its dry run: `quantize.dry_run_types`)
MixtureOracle = Callable[[Path, Recipe], dict[str, GGMLType]]


def resolve(recipe: Recipe, inv: Inventory, mixture: MixtureOracle | None = None) -> Resolution:
    """Resolve every tensor's type. A recipe that asks for llama.cpp's own per-tensor mixture (a file type
    without ``pure``) is resolved by ``mixture``, llama.cpp's dry run, which the engine layer passes in."""
    oracle = None
    if recipe.uses_mixture:
        if mixture is None:
            raise RecipeSearchError(f"recipe {recipe.name!r} asks for llama.cpp's own {recipe.file_type.name} mixture, "
                                    "which only llama.cpp's dry run can resolve")
        oracle = mixture(inv.path, recipe)
    rules = recipe.overrides()
    first = first_matches([rx for rx, _ in rules], inv.name_index)
    n_named = len(recipe.rules)
    default = recipe.file_type.default_type
    tok_type = parse_type(recipe.token_embedding_type) if recipe.token_embedding_type else None
    out_type = parse_type(recipe.output_tensor_type) if recipe.output_tensor_type else None
    resolved = []
    for t, rule in zip(inv.tensors, first):
        resolved.append(_resolve_one(t, rules, rule, n_named, default, tok_type, out_type, oracle))
    return Resolution(recipe, resolved)


def _resolve_one(t: Tensor, rules: list[tuple[str, GGMLType]], first: int | None, n_named: int, default: GGMLType,
                 tok_type, out_type, oracle) -> ResolvedTensor:
    """``first``: the first of ``rules`` whose regex matches the tensor's name (`rule_match.first_matches`)."""
    if not t.quantizable:
        return ResolvedTensor(t, t.ggml_type, t.ggml_type, Source.KEPT)
    if tok_type is not None and _is_token_embd(t.name):
        named = t.name == "per_layer_token_embd.weight" and first is not None
        if not named:
            return ResolvedTensor(t, tok_type, tok_type, Source.TOKEN_EMBEDDING)
    if out_type is not None and t.name == "output.weight":
        return ResolvedTensor(t, out_type, out_type, Source.OUTPUT)
    if not is_quantized(default):
        return ResolvedTensor(t, default, default, Source.UNMATCHED)
    if first is not None:
        rule_type = rules[first][1]
        return ResolvedTensor(t, rule_type, fallback(rule_type, t.row_length), Source.RULE,
                              first if first < n_named else None)
    if oracle is not None:
        final = oracle[t.name]
        return ResolvedTensor(t, final, final, Source.MIXTURE)
    return ResolvedTensor(t, default, fallback(default, t.row_length), Source.UNMATCHED)
