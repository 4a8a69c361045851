"""A recipe moved to a size target in the surrogate's order, keeping its own shape.

The tensors that share a tensor type and a ggml type (a type's first blocks at Q8_0, the rest at Q4_K: two
groups) move together, one step at a time: to a type of the next lower or the next higher bits per weight
among those its tensor type has a cell for in the sensitivity table (and its source type) and its rows take. Over the target,
the step down that saves bytes at the least predicted mean KLD per byte is taken, again and again; then,
with room left, the step up that buys the most predicted mean KLD per byte and still fits. The surrogate's
additive mean (`Surrogate`) orders the moves, as it orders the allocator's seeds; sizes are exact
(`predict_size`). A group at a type the table has no cell for keeps it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..core.pareto import Target
from ..core.recipe import Recipe
from ..core.resolution import resolve
from ..core.roles import recipe_of_types
from ..core.size import SizePrediction, padded_bytes, predict_size
from ..errors import RecipeSearchError
from ..formats.ggml_types import GGMLType, bits_per_weight, parse_type, row_fits, tensor_bytes
from .surrogate import Prediction, Surrogate


@dataclass(frozen=True)
class Rescaled:
    recipe: Recipe
    size: SizePrediction
    prediction: Prediction | None  # None when a kept type has no cell
    moves: int
    kept: list[str]  # "tensor_type ggml_type" groups held at a type without a cell


def rescale(recipe: Recipe, surrogate: Surrogate, target: Target,
            extra_kv: dict[str, str | int] | None = None) -> Rescaled:
    """``recipe`` moved to at or under ``target`` on the surrogate's model; see the module docstring."""
    inv = surrogate.inv
    resolution = resolve(recipe, inv)
    chosen = {r.tensor.name: r.ggml_type for r in resolution.tensors if r.tensor.quantizable}
    start = predict_size(resolution, inv, extra_kv)
    by_bytes = target.kind == "bytes"
    cap = int(target.value) if by_bytes else int(target.value * start.n_elements / 8)
    used = start.file_bytes if by_bytes else start.tensor_bytes
    ladders = _ladders(surrogate, {inv.by_name[n].kind: inv.by_name[n].ggml_type for n in chosen})
    kept: set[str] = set()
    moves = 0

    def cost(names: list[str], t: GGMLType) -> int:
        raw = [tensor_bytes(t, inv.by_name[n].shape) for n in names]
        return sum(padded_bytes(inv, b) for b in raw) if by_bytes else sum(raw)

    def mean(kind: str, names: list[str], t: GGMLType) -> float:
        return ladders[kind][t] * sum(inv.by_name[n].n_elements for n in names) / inv.kinds[kind].n_elements

    def candidates() -> list[tuple[int, float, list[str], GGMLType]]:
        """Every move: (bytes added, predicted mean KLD added, the group's tensors, the new type)."""
        groups: dict[tuple[str, GGMLType], list[str]] = defaultdict(list)
        for name, t in chosen.items():
            groups[(inv.by_name[name].kind, t)].append(name)
        out = []
        for (kind, t), names in groups.items():
            if t not in ladders[kind]:
                kept.add(f"{kind} {t.name}")
                continue
            now_bytes, now_mean = cost(names, t), mean(kind, names, t)
            fits = {u: v for u, v in ladders[kind].items() if all(row_fits(u, inv.by_name[n].shape[0]) for n in names)}
            out += [(cost(names, u) - now_bytes, mean(kind, names, u) - now_mean, names, u)
                    for u in _next_steps(fits, t)]
        return out

    while used > cap:
        down = [m for m in candidates() if m[0] < 0]
        if not down:
            raise RecipeSearchError(f"size target {target.label} is below the smallest the table's types reach")
        added, _, names, t = min(down, key=lambda m: (m[1] / -m[0], m[0]))
        chosen.update(dict.fromkeys(names, t))
        used, moves = used + added, moves + 1
    while True:
        up = [m for m in candidates() if m[1] < 0 and used + m[0] <= cap]
        if not up:
            break
        added, _, names, t = max(up, key=lambda m: (m[0] <= 0, -m[1] / max(m[0], 1)))
        chosen.update(dict.fromkeys(names, t))
        used, moves = used + added, moves + 1
    provenance = {**(recipe.provenance or {}), "rescaled": {"from": recipe.name, "target": target.label,
                                                           "sensitivity": surrogate.table.directory.name}}
    out = recipe_of_types(f"{recipe.name}-{target.label}", recipe.unmatched, inv, chosen, provenance)
    out_resolution = resolve(out, inv)
    prediction = None if surrogate.missing(out_resolution.tensors) else surrogate.predict(out_resolution)
    return Rescaled(out, predict_size(out_resolution, inv, extra_kv), prediction, moves, sorted(kept))


def _next_steps(ladder: dict[GGMLType, float], t: GGMLType) -> list[GGMLType]:
    """The types one step down and one step up from ``t``: those of the next lower and the next higher bits
    per weight on the ladder."""
    below = [bits_per_weight(u) for u in ladder if bits_per_weight(u) < bits_per_weight(t)]
    above = [bits_per_weight(u) for u in ladder if bits_per_weight(u) > bits_per_weight(t)]
    steps = {max(below)} if below else set()
    steps |= {min(above)} if above else set()
    return [u for u in ladder if bits_per_weight(u) in steps]


def _ladders(surrogate: Surrogate, sources: dict[str, GGMLType]) -> dict[str, dict[GGMLType, float]]:
    """Per tensor type, the types a group may move to and each one's cell mean (the source type's is 0)."""
    out: dict[str, dict[GGMLType, float]] = {kind: {source: 0.0} for kind, source in sources.items()}
    for key, value in surrogate.means.items():
        kind, name = key.split("|")
        if kind in out:
            out[kind][parse_type(name)] = value
    return out
