"""Recipes side by side, tensor type by tensor type, and recipes carried from one model family to another.

Without a model each recipe is shown as it reads (a quantized GGUF as the types it holds); with a
model every recipe is resolved on that model's tensor table: the types llama.cpp would write, the
exact file size, the rules that find nothing there and the tensor types no rule covers.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import RecipeSearchError
from ..formats.ggml_types import bits_per_weight, is_quantized, parse_type
from .devices import DEVICES, device_memory
from .inventory import Inventory, _compact_ranges, read_inventory
from .placement import Placement
from .recipe import Recipe, Rule
from .resolution import MixtureOracle, Resolution, Source, resolve
from .rule_coverage import missing_rules
from .run_memory import ContextSettings
from .size import SizePrediction, human_bytes, predict_size

#: the measured numbers a scored column shows
SCORE_METRICS = ("kld_mean", "kld_p99", "kld_p999", "same_top", "ppl_ratio")


@dataclass(frozen=True)
class Cell:
    """What one recipe gives one tensor type. Text in parentheses: no rule names it, the recipe's unmatched
    type (or llama.cpp's mixture) applies; ``~``: a regex rule, matched against a sample tensor name."""

    text: str
    bpw: float | None = None


@dataclass
class Column:
    label: str
    source: str  # "recipe", "gguf" (types read from the file) or "mapped" (resolved on --model)
    unmatched: str
    cells: dict[str, Cell]
    bpw: float | None = None
    file_bytes: int | None = None
    size_from: str | None = None  # "measured" (recipe metrics), "file", "predicted"
    missing_rules: list[str] = field(default_factory=list)  # mapped: rules that match no tensor, and why
    uncovered: list[str] = field(default_factory=list)  # mapped: tensor types (partly) left to `unmatched`
    fallbacks: dict[str, dict[str, int]] = field(default_factory=dict)
    score: dict[str, float | str] | None = None  # SCORE_METRICS, or {"error": why}
    devices: dict | None = None  # mapped with a placement: DeviceMemory.to_dict()


@dataclass
class Comparison:
    rows: list[str]  # tensor types, in order
    columns: list[Column]
    model: str | None = None  # "path (arch, N tensors)" when mapped

    def to_dict(self) -> dict:
        return asdict(self)


def unmatched_text(recipe: Recipe) -> str:
    u = recipe.unmatched
    if u.type is not None:
        return u.type
    return f"{u.file_type} {'(pure)' if recipe.pure else 'mixture'}"


def _unmatched_bpw(recipe: Recipe) -> float | None:
    return None if recipe.uses_mixture else bits_per_weight(recipe.file_type.default_type
                                                            if recipe.unmatched.type is None
                                                            else parse_type(recipe.unmatched.type))


def _type_counts(counter: Counter, counts: bool = False) -> str:
    if len(counter) == 1 and not counts:
        return next(iter(counter))
    return " ".join(f"{t}×{n}" for t, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


# -- rows ------------------------------------------------------------------------------------------
def nominal_rows(recipes: Sequence[Recipe], known: Sequence[str] = ()) -> list[str]:
    """Tensor types to show without a model: ``known`` ones first, then those the recipes name (a regex
    rule that names none of them gets a row of its own, ``/regex/``)."""
    rows = list(dict.fromkeys(known))
    for recipe in recipes:
        if recipe.token_embedding_type:
            rows.append("token_embd")
        if recipe.output_tensor_type:
            rows.append("output")
        for rule in recipe.rules:
            if rule.tensors is not None:
                rows.append(rule.tensors)
            elif not any(_pattern_hits(rule, kind) for kind in rows):
                rows.append(f"/{rule.pattern}/")
    return list(dict.fromkeys(rows))


def _pattern_hits(rule: Rule, kind: str) -> bool:
    return rule.pattern is not None and any(re.search(rule.pattern, n) for n in (f"{kind}.weight",
                                                                                 f"blk.0.{kind}.weight"))


# -- columns ---------------------------------------------------------------------------------------
def recipe_column(label: str, recipe: Recipe, rows: Sequence[str]) -> Column:
    """A recipe as it reads: per tensor type the rules that name it, in first-match order."""
    cells = {}
    for kind in rows:
        cells[kind] = _nominal_cell(recipe, kind)
    metrics = recipe.metrics or {}
    measured = "bpw" in metrics and "file_bytes" in metrics
    return Column(label, "recipe", unmatched_text(recipe), cells,
                  float(metrics["bpw"]) if measured else None, int(metrics["file_bytes"]) if measured else None,
                  "measured" if measured else None)


def _nominal_cell(recipe: Recipe, kind: str) -> Cell:
    override = {"token_embd": recipe.token_embedding_type, "output": recipe.output_tensor_type}.get(kind)
    if override:
        return Cell(override, bits_per_weight(parse_type(override)))
    parts: list[str] = []
    for rule in recipe.rules:
        if rule.tensors == kind and rule.blocks:
            parts.append(f"{rule.type}@{_compact_ranges(sorted(rule.blocks))}")
        elif rule.tensors == kind or kind == f"/{rule.pattern}/" or _pattern_hits(rule, kind):
            parts.append(f"{rule.type}~" if _pattern_hits(rule, kind) else rule.type)
            bpw = bits_per_weight(rule.ggml_type) if len(parts) == 1 else None
            return Cell(" ".join(parts), bpw)
    parts.append(f"({unmatched_text(recipe)})")
    return Cell(" ".join(parts), _unmatched_bpw(recipe) if len(parts) == 1 else None)


def quant_column(label: str, recipe: Recipe, quant: Inventory, file_bytes: int | None) -> Column:
    """A quantized GGUF: the types it holds per tensor type (``recipe``: its imported recipe)."""
    cells = {k.name: Cell(_type_counts(Counter(t.ggml_type.name for t in k.tensors)), k.bits_per_weight)
             for k in quant.kinds.values() if k.quantizable}
    return Column(label, "gguf", unmatched_text(recipe), cells, quant.n_bytes * 8 / quant.n_elements, file_bytes,
                  "file")


def mapped_column(label: str, recipe: Recipe, model: Inventory, resolution: Resolution,
                  prediction: SizePrediction) -> Column:
    """``recipe`` resolved on ``model``: the types llama.cpp would write, rules that find nothing, tensor types
    left to the unmatched type, fallbacks, and the predicted size."""
    per_kind: dict[str, Counter] = defaultdict(Counter)
    left: dict[str, int] = Counter()
    for r in resolution.tensors:
        if not r.tensor.quantizable:
            continue
        from_unmatched = r.source in (Source.UNMATCHED, Source.MIXTURE)
        per_kind[r.tensor.kind][(r.ggml_type.name, from_unmatched)] += 1
        left[r.tensor.kind] += from_unmatched
    bytes_of: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for t in prediction.tensors:
        bytes_of[t.kind][0] += t.bytes
        bytes_of[t.kind][1] += t.n_elements
    cells = {}
    for kind, counts in per_kind.items():
        ruled = Counter({t: n for (t, u), n in counts.items() if not u})
        fell = Counter({t: n for (t, u), n in counts.items() if u})
        both = bool(ruled) and bool(fell)
        text = " ".join(p for p in (_type_counts(ruled, both) if ruled else "",
                                    f"({_type_counts(fell, both)})" if fell else "") if p)
        nbytes, nel = bytes_of[kind]
        cells[kind] = Cell(text, nbytes * 8 / nel)
    uncovered = [kind if n == model.kinds[kind].count else f"{kind} ({n} of {model.kinds[kind].count} tensors)"
                 for kind, n in left.items() if n]
    return Column(label, "mapped", unmatched_text(recipe), cells, prediction.bits_per_weight, prediction.file_bytes,
                  "predicted", missing_rules(recipe, model), uncovered,
                  {k: dict(v) for k, v in resolution.fallbacks().items()})


# -- the table -------------------------------------------------------------------------------------
def format_table(cmp: Comparison) -> str:
    """The side-by-side table, then per column what did not carry over (mapped) and its score."""
    name_w = max([len("tensor type"), *(len(r) for r in cmp.rows)]) + 2
    widths = [max(len(c.label), *(len(cell.text) for cell in c.cells.values()), 6) + 1 for c in cmp.columns]
    lines = []
    if cmp.model:
        lines.append(f"mapped onto {cmp.model}")
    lines.append(f"{'':<{name_w}}" + "".join(f"{c.label:<{w}}{'':>7}  " for c, w in zip(cmp.columns, widths)))
    lines.append(f"{'tensor type':<{name_w}}" + "".join(f"{'type':<{w}}{'bpw':>7}  " for w in widths))
    for row in cmp.rows:
        cells = [c.cells.get(row) for c in cmp.columns]
        lines.append(f"{row:<{name_w}}" + "".join(
            f"{(cell.text if cell else '-'):<{w}}{(f'{cell.bpw:.2f}' if cell and cell.bpw else ''):>7}  "
            for cell, w in zip(cells, widths)))
    lines.append(f"{'unmatched':<{name_w}}" + "".join(f"{c.unmatched:<{w}}{'':>7}  " for c, w in zip(cmp.columns,
                                                                                                       widths)))
    lines.append(f"{'overall':<{name_w}}" + "".join(
        f"{(_size_text(c) or '-'):<{w}}{(f'{c.bpw:.3f}' if c.bpw else ''):>7}  " for c, w in zip(cmp.columns, widths)))
    if any(c.devices for c in cmp.columns):
        for device in DEVICES:
            lines.append(f"{device + ' bytes':<{name_w}}" + "".join(
                f"{(human_bytes(c.devices['total'][device]) if c.devices else '-'):<{w}}{'':>7}  "
                for c, w in zip(cmp.columns, widths)))
        lines.append(f"{'placement':<{name_w}}{cmp.columns[0].devices['placement'] if cmp.columns[0].devices else '-'}"
                     + ("" if not cmp.columns[0].devices or cmp.columns[0].devices["context"] is None else
                        " (weights, KV cache, recurrent state, compute estimate)"))
    if any(c.score for c in cmp.columns):
        for m in SCORE_METRICS:
            lines.append(f"{m:<{name_w}}" + "".join(
                f"{(f'{c.score[m]:.5g}' if c.score and m in c.score else '-'):<{w}}{'':>7}  "
                for c, w in zip(cmp.columns, widths)))
    lines.append("(T): no rule names the tensor type, the unmatched type applies; T~: by a regex rule; "
                 "T@blocks: a rule for some blocks")
    for c in cmp.columns:
        notes = ([f"  rule finds nothing: {m}" for m in c.missing_rules]
                 + ([f"  left to the unmatched type {c.unmatched}: {', '.join(c.uncovered)}"] if c.uncovered else [])
                 + [f"  fallback: {kind}: " + ", ".join(f"{n} x {mv}" for mv, n in moves.items())
                    for kind, moves in c.fallbacks.items()]
                 + ([f"  not scored: {c.score['error']}"] if c.score and "error" in c.score else []))
        if notes:
            lines += [f"{c.label}:", *notes]
    return "\n".join(lines) + "\n"


def _size_text(c: Column) -> str | None:
    if c.file_bytes is None:
        return None
    return f"{human_bytes(c.file_bytes)} ({c.size_from})"


# -- loading and mapping (I/O) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """A recipe and, for a quantized GGUF, the file it was imported from."""

    label: str
    recipe: Recipe
    quant: Inventory | None = None
    file_bytes: int | None = None


def load_source(path: str | Path, recipe_options: dict | None = None) -> Loaded:
    """A recipe (YAML or any text dialect), or a quantized GGUF (its recipe imported)."""
    from .dialects import load_any_recipe
    from .importer import recipe_from_inventory
    from .inventory import read_inventory

    path = Path(path)
    if path.suffix.lower() == ".gguf":
        inv = read_inventory(path)
        if not any(is_quantized(t.ggml_type) for t in inv.tensors):
            raise RecipeSearchError("holds no quantized tensor; compare takes quantized GGUFs or recipes", path)
        return Loaded(path.stem, recipe_from_inventory(inv), inv, sum(p.stat().st_size for p in inv.paths))
    return Loaded(path.stem, load_any_recipe(path, **(recipe_options or {})))


def compare(paths: Sequence[str | Path], model: Path | None = None,
            measure: Callable[[Recipe], dict[str, float | str]] | None = None,
            mixture: MixtureOracle | None = None, recipe_options: dict | None = None,
            placement: Placement | None = None, settings: ContextSettings | None = None) -> Comparison:
    """The comparison of ``paths``; with ``model`` each is resolved there (``mixture`` resolves recipes that
    ask for llama.cpp's own mixture), with ``placement`` sized per device (``settings``: the context too)
    and, with ``measure``, scored. ``recipe_options``: ``unmatched``/``substitutions`` for recipes in another
    tool's dialect."""
    sources = [load_source(p, recipe_options) for p in paths]
    if len({s.label for s in sources}) < len(sources):
        sources = [Loaded(str(p), s.recipe, s.quant, s.file_bytes) for p, s in zip(paths, sources)]
    if model is None:
        known = [k.name for s in sources if s.quant for k in s.quant.kinds.values() if k.quantizable]
        rows = nominal_rows([s.recipe for s in sources], known)
        cols = [quant_column(s.label, s.recipe, s.quant, s.file_bytes) if s.quant
                else recipe_column(s.label, s.recipe, rows) for s in sources]
        return Comparison(rows, cols)
    inv = read_inventory(model)
    cols = []
    for s in sources:
        resolution = resolve(s.recipe, inv, mixture)
        prediction = predict_size(resolution, inv)
        col = mapped_column(s.label, s.recipe, inv, resolution, prediction)
        if placement is not None:
            col.devices = device_memory(prediction, inv, placement, settings).to_dict()
        if measure is not None:
            try:
                col.score = measure(s.recipe)
            except RecipeSearchError as err:
                col.score = {"error": str(err)}
        cols.append(col)
    rows = [k.name for k in inv.kinds.values() if k.quantizable]
    return Comparison(rows, cols, f"{model} ({inv.arch}, {len(inv.tensors)} tensors, {inv.n_blocks} blocks)")
