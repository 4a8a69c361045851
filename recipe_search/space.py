"""The search space: which tensor types vary, over which ggml types, and what a study measures.

A `StudyConfig` (YAML, validated) becomes a `SearchSpace` for one model: one ordinal parameter per
tensor type (or tied group, or per-layer band), each an index into a ladder of ggml types ordered from
best to smallest, with the types that the tensor's row size or a missing imatrix rule out removed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import limits
from .errors import RecipeSearchError
from .ggml_types import DEFAULT_LADDER, IMATRIX_REQUIRED, GGMLType, bits_per_weight, fallback, parse_file_type, parse_type
from .inventory import Inventory
from .metrics import OBJECTIVES, SIZE_OBJECTIVES
from .recipe import Recipe, Rule, Unmatched, preset_recipe
from .text import ScoreSettings, TextSource
from .yaml_file import load_yaml


class SpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tensor_types: list[str] | None = None  # None: every tensor type llama.cpp quantizes
    ladder: list[str] = Field(default_factory=lambda: [t.name for t in DEFAULT_LADDER], min_length=1)
    ladders: dict[str, list[str]] = Field(default_factory=dict)
    fixed: dict[str, str] = Field(default_factory=dict)
    tied: list[list[str]] = Field(default_factory=list)
    # tensor type -> its blocks searched apart: a number of equal bands, or the first block of each band
    # (``[0, 1, 5]`` on 6 blocks: block 0, blocks 1-4, block 5), so first and last blocks can be parameters of their own
    bands: dict[str, int | list[int]] = Field(default_factory=dict)
    unmatched: str = "Q8_0"

    @field_validator("ladders")
    @classmethod
    def _not_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        empty = [k for k, ts in v.items() if not ts]
        if empty:
            raise ValueError(f"empty ladder for {', '.join(empty)}")
        return v

    @field_validator("bands")
    @classmethod
    def _band_counts(cls, v: dict[str, int | list[int]]) -> dict[str, int | list[int]]:
        lo, hi = limits.BANDS
        bad = [f"{k}: {n}" for k, n in v.items() if isinstance(n, int) and not lo <= n <= hi]
        if bad:
            raise ValueError(f"a tensor type is split into {lo}..{hi} bands, not {', '.join(bad)}")
        starts = [f"{k}: {n}" for k, n in v.items() if isinstance(n, list) and (not n or min(n) < 0)]
        if starts:
            raise ValueError(f"bands given as first blocks need block numbers (0 or more), not {', '.join(starts)}")
        return v

    @model_validator(mode="after")
    def _ties(self) -> SpaceConfig:
        """A tied group is one parameter: its members share one ladder and appear in one group."""
        seen: set[str] = set()
        for group in self.tied:
            again = [k for k in group if k in seen]
            if again:
                raise ValueError(f"tensor type {again[0]} is in more than one tied group (or twice in one)")
            seen.update(group)
            ladders = {tuple(self.ladders.get(k, self.ladder)) for k in group}
            if len(ladders) > 1:
                raise ValueError(f"tied tensor types {', '.join(group)} have different ladders; give them one")
            banded = {str(self.bands.get(k, 1)) for k in group}
            if len(banded) > 1:
                raise ValueError(f"tied tensor types {', '.join(group)} have different bands; give them one")
        return self

    @field_validator("ladder", "unmatched", mode="before")
    @classmethod
    def _types(cls, v):
        return [parse_type(t).name for t in v] if isinstance(v, list) else parse_type(v).name

    @field_validator("ladders", "fixed", mode="before")
    @classmethod
    def _type_maps(cls, v):
        return {k: ([parse_type(t).name for t in ts] if isinstance(ts, list) else parse_type(ts).name)
                for k, ts in (v or {}).items()}


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uniform: list[str] | Literal["ladder"] = "ladder"
    presets: list[str] = Field(default_factory=lambda: ["Q4_K_M", "Q3_K_M"])

    @field_validator("uniform")
    @classmethod
    def _uniform_types(cls, v):
        return v if v == "ladder" else [parse_type(t).name for t in v]

    @field_validator("presets")
    @classmethod
    def _preset_types(cls, v: list[str]) -> list[str]:
        for preset in v:
            parse_file_type(preset)
        return v


class StudyConfig(BaseModel):
    """Everything a study needs besides the model; stored in the study so workers can join it."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None  # FILE or FILE[a:b]; None = the built-in default text
    holdout_text: str | None = None  # a second text the study never sees: `validate` and `pareto` re-score on it
    ctx: int = Field(ScoreSettings.ctx, ge=limits.CTX[0], le=limits.CTX[1])
    chunks: int = Field(ScoreSettings.chunks or 8, ge=limits.CHUNKS[0], le=limits.CHUNKS[1])
    imatrix: str | None = None
    threads: int = Field(ScoreSettings.threads, ge=limits.THREADS[0], le=limits.THREADS[1])
    gpu_layers: int = Field(ScoreSettings.gpu_layers, ge=-1)  # layers offloaded to a GPU (-1: all); a GPU build
    objectives: list[str] = Field(default_factory=lambda: ["size", "kld_p999"])
    max_bpw: float | None = Field(None, gt=0)
    min_bpw: float | None = Field(None, ge=0)
    max_bytes: int | None = Field(None, gt=0)
    band: Literal["steer", "prune"] = "steer"  # a proposal outside the size band is moved into it, or pruned
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    references: ReferenceConfig = Field(default_factory=ReferenceConfig)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = 0
    prune: bool = True
    # recipes from the sensitivity surrogate enqueued at start, spread over the size range
    surrogate_seeds: int = Field(0, ge=0, le=1000)
    # sizes (bits per weight) the surrogate's allocation is enqueued at, and that refitted proposals revisit
    target_bpw: list[float] = Field(default_factory=list)
    # after the enqueued trials, every `refit_every`-th trial is the allocation of the surrogate refitted to the
    # measured trials (at a target, or where the frontier has its widest gap); 0: TPE proposes every trial
    refit_every: int = Field(0, ge=0, le=1000)
    seeds: list[str] = Field(default_factory=list)  # recipe files (any dialect `import` reads) enqueued first
    # the sensitivity table the surrogate comes from; None: the study sweeps its own space on `sweep_chunks` chunks
    sensitivity: str | None = None
    sweep_chunks: int | None = Field(None, ge=limits.CHUNKS[0], le=limits.CHUNKS[1])  # None: `sweep_chunk_count`

    @field_validator("objectives")
    @classmethod
    def _two_or_more(cls, v: list[str]) -> list[str]:
        unknown = [o for o in v if o not in OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objective {unknown[0]!r} (one of {', '.join(OBJECTIVES)})")
        if len(v) < 2 or v[0] not in SIZE_OBJECTIVES or any(o in SIZE_OBJECTIVES for o in v[1:]):
            raise ValueError("objectives start with `size` or `bpw` and name at least one quality measure")
        if len(set(v)) < len(v):
            raise ValueError(f"objectives name one twice: {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.min_bpw is not None and self.max_bpw is not None and self.min_bpw >= self.max_bpw:
            raise ValueError(f"min_bpw {self.min_bpw} is not below max_bpw {self.max_bpw}")
        bad = [t for t in self.target_bpw if not 0 < t < 64]
        if bad:
            raise ValueError(f"target_bpw holds bits per weight between 0 and 64, not {bad[0]}")
        return self

    @property
    def uses_surrogate(self) -> bool:
        """Whether the study needs a sensitivity table (its own sweep when `sensitivity` is not given)."""
        return bool(self.surrogate_seeds or self.target_bpw or self.refit_every)

    @property
    def sweep_chunk_count(self) -> int:
        """Chunks per cell of the study's own sweep: `sweep_chunks`, else a tenth of `chunks` (at least 2), so the
        sweep's fidelity follows the trials': a sweep on too few tokens misorders the small differences between
        the high-precision types (on tiny-qwen35moe, 2 chunks put token_embd at Q6_K below Q8_0; 6 did not)."""
        return self.sweep_chunks if self.sweep_chunks is not None else max(2, self.chunks // 10)


    def score_settings(self) -> ScoreSettings:
        """The scoring setup of every trial."""
        return ScoreSettings(text=TextSource.parse(self.text), ctx=self.ctx, chunks=self.chunks, threads=self.threads,
                             gpu_layers=self.gpu_layers)


def load_study_config(path: str | Path | None) -> StudyConfig:
    if path is None:
        return StudyConfig()
    path = Path(path)
    data = load_yaml(path, "study config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeSearchError("a study config is a YAML mapping", path)
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "config"
        raise RecipeSearchError(f"{where}: {first['msg'].removeprefix('Value error, ')}", path) from None
    except RecipeSearchError as err:
        raise RecipeSearchError(str(err), path) from None


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


def build_space(config: StudyConfig, inv: Inventory, has_imatrix: bool) -> SearchSpace:
    """Turn the config into parameters for this model, dropping ladder types its rows cannot take."""
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
            else:
                ladder.append(t)
        if not ladder:
            raise RecipeSearchError(f"no ladder type fits tensor type {kind}")
        parts = block_bands(kind, sc.bands.get(kind, 1), quantizable[kinds[0]].blocks)
        if len(parts) > 1:
            params += [Parameter(f"{'+'.join(kinds)}@{part[0]}-{part[-1]}", kinds, part, tuple(ladder)) for part in parts]
        else:
            params.append(Parameter("+".join(kinds), kinds, None, tuple(ladder)))
    fixed = {k: parse_type(t) for k, t in sc.fixed.items()}
    return SearchSpace(tuple(params), fixed, parse_type(sc.unmatched), removed)


def seed_recipes(config: StudyConfig, space: SearchSpace, inv: Inventory) -> list[tuple[Recipe, dict[str, int]]]:
    """The study's seed recipes, each carried onto the space: per parameter, the type the seed gives most of
    its tensors on this model, or the ladder type nearest to it in bits per weight."""
    from collections import Counter

    from .dialects import load_any_recipe
    from .resolve import resolve

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
