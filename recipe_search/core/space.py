"""The search space: which tensor types vary, over which ggml types, and what a study measures.

A `StudyConfig` (YAML, validated) becomes a `SearchSpace` for one model: one ordinal parameter per
tensor type (or tied group, or per-layer band), each an index into a ladder of ggml types ordered from
best to smallest, with the types that the tensor's row size or a missing imatrix rule out removed.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from ..errors import RecipeSearchError
from ..formats.ggml_types import GGML_IMATRIX_REQUIRED, IMATRIX_REQUIRED, GGMLType, bits_per_weight, fallback, parse_type
from .config import SpaceConfig, StudyConfig
from .inventory import Inventory
from .recipe import Recipe, Rule, Unmatched, preset_recipe


@dataclass(frozen=True)
class Parameter:
    """One searched choice: the tensor types (and blocks) it sets, and its ladder of admissible types."""

    name: str
    kinds: tuple[str, ...]
    blocks: tuple[int, ...] | None
    ladder: tuple[GGMLType, ...]

    def rules(self, t: GGMLType) -> list[Rule]:
        return [Rule(tensors=k, blocks=list(self.blocks) if self.blocks else None, type=t.name) for k in self.kinds]


@dataclass(frozen=True)
class SearchSpace:
    parameters: tuple[Parameter, ...]
    fixed: dict[str, GGMLType]
    unmatched: GGMLType
    removed: dict[str, list[str]]  # tensor type -> ladder entries dropped (and why), for the report
    #: tensor type -> (the types left out, the first of its tensors the imatrix has no data for, how many more)
    lacking_imatrix: dict[str, tuple[list[str], str, int]] = field(default_factory=dict)

    def imatrix_note(self) -> str | None:
        """One line naming the types left out of the space because the imatrix lacks data ggml needs for them."""
        parts = [f"{k}: {', '.join(types)} (the imatrix has no data for {first}{f' and {more} more' if more else ''})"
                 for k, (types, first, more) in self.lacking_imatrix.items()]
        return "left out of the space, for lack of imatrix data: " + "; ".join(parts) if parts else None

    def recipe(self, choice: dict[str, int], name: str = "trial") -> Recipe:
        """The recipe for ladder indices ``choice`` (parameter name -> index)."""
        rules = [Rule(tensors=k, type=t.name) for k, t in self.fixed.items()]
        for p in self.parameters:
            rules += p.rules(p.ladder[choice[p.name]])
        return Recipe(name=name, unmatched=Unmatched(type=self.unmatched.name), rules=rules)

    def nearest(self, wanted: dict[str, GGMLType], inv: Inventory) -> dict[str, int]:
        """Ladder indices for per-tensor-type wishes (e.g. a uniform type): llama.cpp's row-size fallback
        where the ladder has it, else the ladder type closest in bits per weight."""
        return {p.name: self.nearest_index(p, fallback(wanted[p.kinds[0]], inv.kinds[p.kinds[0]].row_lengths[0]))
                for p in self.parameters}

    @staticmethod
    def nearest_index(p: Parameter, t: GGMLType) -> int:
        """``t``'s place on ``p``'s ladder, else the ladder type closest to it in bits per weight."""
        return p.ladder.index(t) if t in p.ladder else min(
            range(len(p.ladder)), key=lambda i: abs(bits_per_weight(p.ladder[i]) - bits_per_weight(t)))


def build_space(config: StudyConfig, inv: Inventory, has_imatrix: bool,
                imatrix_tensors: Collection[str] | None = None) -> SearchSpace:
    """Turn the config into parameters for this model, dropping ladder types its rows cannot take, types
    that need an imatrix when there is none, and, given the names of the tensors the imatrix has data for,
    the types ggml cannot quantize without data (it aborts) on a tensor type the imatrix lacks any tensor of
    (llama-imatrix never collects token_embd, nor output without --process-output)."""
    sc = config.space
    quantizable = {k.name: k for k in inv.kinds.values() if k.quantizable}
    wanted = list(quantizable) if sc.tensor_types is None else sc.tensor_types
    unknown = [k for k in [*wanted, *sc.fixed, *(k for g in sc.tied for k in g), *sc.bands, *sc.ladders]
               if k not in quantizable]
    if unknown:
        raise RecipeSearchError(f"tensor type(s) not quantized in this model: {', '.join(sorted(set(unknown)))}")
    searched = [k for k in wanted if k not in sc.fixed]
    group_of = {k: tuple(g) for g in sc.tied for k in g}
    params = []
    removed: dict[str, list[str]] = {}
    lacking_imatrix: dict[str, tuple[list[str], str, int]] = {}
    seen: set[str] = set()
    for kind in searched:
        if kind in seen:
            continue
        kinds = tuple(k for k in group_of.get(kind, (kind,)) if k in searched)
        seen.update(kinds)
        ladder = []
        for name in sc.ladders.get(kind, sc.ladder):
            t = parse_type(name)
            fits = all(quantizable[k].admits(t) for k in kinds)
            if not fits:
                rows = quantizable[kinds[0]].row_lengths
                removed.setdefault(kind, []).append(f"{name} (rows of {rows[0]} -> {fallback(t, rows[0]).name})")
            elif t in IMATRIX_REQUIRED and not has_imatrix:
                removed.setdefault(kind, []).append(f"{name} (needs an imatrix)")
            elif t in GGML_IMATRIX_REQUIRED and imatrix_tensors is not None and (lacking := [
                    x.name for k in kinds for x in quantizable[k].tensors if x.name not in imatrix_tensors]):
                removed.setdefault(kind, []).append(f"{name} (the imatrix has no data for {lacking[0]})")
                lacking_imatrix.setdefault(kind, ([], lacking[0], len(lacking) - 1))[0].append(name)
            else:
                ladder.append(t)
        if not ladder:
            raise RecipeSearchError(f"no ladder type fits tensor type {kind}")
        parts = block_bands(kind, _bands(sc, kinds, quantizable[kinds[0]].blocks), quantizable[kinds[0]].blocks)
        if len(parts) > 1:
            params += [Parameter(f"{'+'.join(kinds)}@{part[0]}-{part[-1]}", kinds, part, tuple(ladder)) for part in parts]
        else:
            params.append(Parameter("+".join(kinds), kinds, None, tuple(ladder)))
    fixed = {k: parse_type(t) for k, t in sc.fixed.items()}
    return SearchSpace(tuple(params), fixed, parse_type(sc.unmatched), removed, lacking_imatrix)


def _bands(sc: SpaceConfig, kinds: tuple[str, ...], blocks: Sequence[int]) -> int | list[int]:
    """The bands a parameter's tensor types are split into: the config's, else, for routed experts with more
    blocks than twice `expert_first_blocks`, their first blocks apart from the rest."""
    if kinds[0] in sc.bands:
        return sc.bands[kinds[0]]
    first = sc.expert_first_blocks
    if first and all(k.endswith("_exps") for k in kinds) and len(blocks) > 2 * first:
        return [blocks[0], blocks[first]]
    return 1


def seed_recipes(config: StudyConfig, space: SearchSpace, inv: Inventory) -> list[tuple[Recipe, dict[str, int]]]:
    """The study's seed recipes, each carried onto the space: per parameter, the type the seed gives most of
    its tensors on this model, or the ladder type nearest to it in bits per weight."""
    from collections import Counter

    from .dialects import load_any_recipe
    from .resolution import resolve

    out = []
    for path in config.seeds:
        seed = load_any_recipe(path)
        types = resolve(seed, inv).types()
        choice = {}
        for p in space.parameters:
            names = [t.name for k in p.kinds for t in inv.kinds[k].tensors if p.blocks is None or t.block in p.blocks]
            t = Counter(types[n] for n in names).most_common(1)[0][0]
            choice[p.name] = space.nearest_index(p, t)
        out.append((space.recipe(choice, f"seed-{seed.name}"), choice))
    return out


def block_bands(kind: str, bands: int | list[int], blocks: Sequence[int]) -> list[tuple[int, ...]]:
    """A tensor type's blocks split into bands: ``n`` equal ones (no more than it has blocks), or bands starting
    at the given blocks (the first must be the type's first block)."""
    blocks = tuple(blocks)
    if isinstance(bands, int) or not blocks:
        bands = bands if isinstance(bands, int) else 1
        if bands > max(len(blocks), 1):
            raise RecipeSearchError(f"bands: {kind} has {len(blocks)} block(s), too few for {bands} bands")
        if bands < 2:
            return [blocks]
        size = -(-len(blocks) // bands)
        return [part for i in range(bands) if (part := tuple(blocks[i * size:(i + 1) * size]))]
    starts = sorted(set(bands))
    if not starts or starts[0] != blocks[0] or any(b not in blocks for b in starts):
        raise RecipeSearchError(f"bands of {kind} must start at its first block {blocks[0]} and name its blocks "
                                f"({blocks[0]}..{blocks[-1]}), not {bands}")
    cuts = [blocks.index(b) for b in starts] + [len(blocks)]
    return [tuple(blocks[a:z]) for a, z in itertools.pairwise(cuts)]


def reference_recipes(config: StudyConfig, space: SearchSpace, inv: Inventory) -> list[tuple[Recipe, dict[str, int] | None]]:
    """Uniform recipes over the ladder (as ladder choices) and llama.cpp presets (outside the space)."""
    out: list[tuple[Recipe, dict[str, int] | None]] = []
    ladder_types = sorted({t for p in space.parameters for t in p.ladder}, key=lambda t: -bits_per_weight(t))
    uniform = ladder_types if config.references.uniform == "ladder" else [parse_type(t) for t in config.references.uniform]
    seen = set()
    for t in uniform:
        wanted = {k: t for p in space.parameters for k in p.kinds}
        choice = space.nearest(wanted, inv)
        key = tuple(sorted(choice.items()))
        if key not in seen:
            seen.add(key)
            out.append((space.recipe(choice, f"uniform-{t.name}"), choice))
    for preset in config.references.presets:
        out.append((preset_recipe(preset), None))
    return out
