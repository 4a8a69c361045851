"""An additive surrogate from a sensitivity table, the size-target allocator, and surrogate-seeded studies.

Every single-type cell's KLD is measured against the base model, which has zero KLD against itself,
so a full recipe's mean KLD is predicted as the sum of its tensor types' cell means, and its tail from
the cells' per-token KLD vectors summed token by token (then the 99%, 99.9% and max of the sum). A tensor
type set in only some of its blocks (a band, a llama.cpp mixture) counts with that share of its elements.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..core.config import StudyConfig
from ..core.devices import DEVICES, DeviceBudget
from ..core.inventory import Inventory, model_fingerprint
from ..core.kld import percentile
from ..core.metrics import BY_NAME, SURROGATE_METRICS
from ..core.recipe import Recipe
from ..core.resolution import Resolution, ResolvedTensor, resolve
from ..core.size import predict_size
from ..core.space import Parameter, SearchSpace
from ..errors import RecipeSearchError
from .table import SensitivityTable, cell_key

#: size bins of the dynamic programme
DP_BINS = 2000
#: bins per budget of the two-budget knapsack (its table is DP2_BINS² per parameter)
DP2_BINS = 160
#: bisection steps on the size's price when a size target and a device budget are solved together
BISECTIONS = 24


@dataclass(frozen=True)
class Prediction:
    kld_mean: float
    kld_p99: float
    kld_p999: float
    kld_max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def tail_metric(tokens: np.ndarray, metric: str) -> float:
    """99%, 99.9% (llama-perplexity's percentile) or max of per-token KLD values (NaN without any: a proxy
    table has no per-token vectors)."""
    if tokens.size == 0:
        return float("nan")
    s = np.sort(tokens.astype(np.float32))
    stat = BY_NAME[metric].statistic
    if stat == "max":
        return float(s[-1])
    assert isinstance(stat, float), f"{metric} is not a tail statistic"  # callers pass surrogate tail metrics
    return percentile(s, stat)


class Surrogate:
    """Predicts a recipe's KLD statistics for one model from its sensitivity table."""

    def __init__(self, table: SensitivityTable, inv: Inventory) -> None:
        if table.meta.get("model_fingerprint") != model_fingerprint(inv):
            raise RecipeSearchError(f"the sensitivity table was measured on another model "
                                    f"({table.meta.get('model')})", table.directory)
        if not table.rows:
            raise RecipeSearchError("the sensitivity table has no cells", table.directory)
        self.table, self.inv = table, inv
        self.means = {cell_key(r["tensor_type"], r["ggml_type"]): float(r["kld_mean"]) for r in table.rows}
        self.n_tokens = len(next(iter(table.tokens.values()), ()))  # 0 for a proxy table

    def missing(self, tensors: Iterable[ResolvedTensor]) -> list[str]:
        """Cells the prediction for ``tensors`` would need and the table lacks."""
        return sorted({cell_key(r.tensor.kind, r.ggml_type.name) for r in tensors
                       if r.ggml_type != r.tensor.ggml_type and cell_key(r.tensor.kind, r.ggml_type.name) not in self.means})

    def contribution(self, tensors: Iterable[ResolvedTensor]) -> tuple[float, np.ndarray]:
        """Mean KLD and per-token KLD that ``tensors`` add (each at its resolved type; zero at the source type)."""
        elements: dict[str, int] = defaultdict(int)
        for r in tensors:
            if r.ggml_type != r.tensor.ggml_type:
                elements[cell_key(r.tensor.kind, r.ggml_type.name)] += r.tensor.n_elements
        mean, tokens = 0.0, np.zeros(self.n_tokens, np.float64)
        for key, n in elements.items():
            if key not in self.means:
                raise RecipeSearchError(f"no cell {key.replace('|', ' ')} in the sensitivity table", self.table.directory)
            share = n / self.inv.kinds[key.split("|")[0]].n_elements
            mean += share * self.means[key]
            if self.n_tokens:
                tokens += share * self.table.tokens[key]
        return mean, tokens

    def predict(self, resolution: Resolution) -> Prediction:
        mean, tokens = self.contribution(resolution.tensors)
        return Prediction(**{m: mean if m == "kld_mean" else tail_metric(tokens, m) for m in SURROGATE_METRICS})

    def predict_recipe(self, recipe: Recipe) -> Prediction:
        return self.predict(resolve(recipe, self.inv))


@dataclass(frozen=True)
class _Option:
    index: int  # into the parameter's ladder
    file_bytes: int  # relative to every parameter at ladder index 0
    tensor_bytes: int
    mean: float
    tokens: np.ndarray
    devices: tuple[int, ...] = ()  # GPU and CPU bytes relative to index 0, with a device budget


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, int]  # parameter name -> ladder index
    recipe: Recipe
    file_bytes: int
    bpw: float
    prediction: Prediction
    device_bytes: dict[str, int] | None = None  # with a device budget: the totals under its placement


def _covers(p: Parameter, r: ResolvedTensor) -> bool:
    return r.tensor.kind in p.kinds and (p.blocks is None or r.tensor.block in p.blocks)


class Allocator:
    """The recipe of a search space the surrogate rates best at or under a size target.

    Sizes are exact (`predict_size` is additive over tensors). A dynamic programme over discretised size
    picks the ladder indices of least summed mean KLD; single and paired ladder moves then lower the
    predicted metric (the mean, or a tail of the summed per-token KLD) while the size stays within the
    target. Ladder types the table has no cell for are left out; tied groups and fixed types come from
    the space.
    """

    def __init__(self, surrogate: Surrogate, space: SearchSpace, extra_kv: dict[str, str | int] | None = None,
                 budget: DeviceBudget | None = None) -> None:
        self.surrogate, self.space, self.extra_kv, self.budget = surrogate, space, extra_kv, budget
        inv = surrogate.inv
        first = {p.name: 0 for p in space.parameters}
        base_resolution = resolve(space.recipe(first), inv)
        base = predict_size(base_resolution, inv, extra_kv)
        self.base_devices = budget.totals(base) if budget else {}
        self.base_bytes, self.base_tensor_bytes, self.n_elements = base.file_bytes, base.tensor_bytes, base.n_elements
        fixed = [r for r in base_resolution.tensors if not any(_covers(p, r) for p in space.parameters)]
        self.fixed_mean, self.fixed_tokens = surrogate.contribution(fixed)
        self.options: list[list[_Option]] = []
        for p in space.parameters:
            options = []
            for j in range(len(p.ladder)):
                resolution = resolve(space.recipe({**first, p.name: j}), inv)
                own = [r for r in resolution.tensors if _covers(p, r)]
                if surrogate.missing(own):
                    continue
                size = predict_size(resolution, inv, extra_kv)
                mean, tokens = surrogate.contribution(own)
                totals = budget.totals(size) if budget else {}
                options.append(_Option(j, size.file_bytes - self.base_bytes, size.tensor_bytes - self.base_tensor_bytes,
                                       mean, tokens, tuple(totals[d] - self.base_devices[d] for d in DEVICES if totals)))
            if not options:
                raise RecipeSearchError(f"no ladder type of {p.name} has a cell in the sensitivity table",
                                        surrogate.table.directory)
            self.options.append(options)

    def _cost(self, o: _Option, unit: str) -> int:
        return o.file_bytes if unit == "bytes" else o.tensor_bytes

    def size_range(self, unit: Literal["bytes", "bpw"] = "bytes") -> tuple[float, float]:
        """The smallest and largest recipe over the ladders, in file bytes or bits per weight."""
        lo = sum(min(self._cost(o, unit) for o in opts) for opts in self.options)
        hi = sum(max(self._cost(o, unit) for o in opts) for opts in self.options)
        if unit == "bytes":
            return self.base_bytes + lo, self.base_bytes + hi
        return (self.base_tensor_bytes + lo) * 8 / self.n_elements, (self.base_tensor_bytes + hi) * 8 / self.n_elements

    def scaled(self, factors: Sequence[float]) -> Allocator:
        """This allocator with the fixed tensors' and each parameter's predicted KLD multiplied by a factor
        (``factors[0]`` the fixed tensors', then one per parameter, as `fit_scales` gives them)."""
        out = copy.copy(self)
        out.fixed_mean, out.fixed_tokens = self.fixed_mean * factors[0], self.fixed_tokens * factors[0]
        out.options = [[dataclasses.replace(o, mean=o.mean * f, tokens=o.tokens * f) for o in opts]
                       for opts, f in zip(self.options, factors[1:])]
        return out

    def allocate(self, target: float, unit: Literal["bytes", "bpw"] = "bytes",
                 metric: str = "kld_p999") -> Allocation:
        """The surrogate's best recipe at or under ``target`` file bytes (or bits per weight), and inside the device
        budget when the allocator has one (`_knapsack_sized`: the size a price on the two-budget knapsack)."""
        if metric not in SURROGATE_METRICS:
            raise RecipeSearchError(f"the surrogate predicts {', '.join(SURROGATE_METRICS)}, not {metric}")
        if metric != "kld_mean" and not self.surrogate.n_tokens:
            raise RecipeSearchError(f"the table has no per-token KLD (a proxy table), so no {metric}; "
                                    "allocate by kld_mean", self.surrogate.table.directory)
        cap = int(target) - self.base_bytes if unit == "bytes" else \
            int(target * self.n_elements / 8) - self.base_tensor_bytes
        sizes = [[self._cost(o, unit) for o in opts] for opts in self.options]
        values = [[o.mean for o in opts] for opts in self.options]
        device_caps = self._device_caps()
        costs: list[list[tuple[int, ...]]]
        caps: tuple[int, ...]
        if device_caps is None:
            picks = _knapsack(sizes, values, cap)
            costs, caps = [[(c,) for c in cs] for cs in sizes], (cap,)
        else:
            picks = _knapsack_sized(sizes, [[o.devices for o in opts] for opts in self.options], values, cap,
                                    device_caps)
            costs = [[(c, *o.devices) for c, o in zip(cs, opts)] for cs, opts in zip(sizes, self.options)]
            caps = (cap, *device_caps)
        if picks is None:
            lo, _ = self.size_range(unit)
            raise RecipeSearchError(f"size target {target:g} is below the smallest recipe of the ladders ({lo:g})"
                                    + ("" if device_caps is None else " inside the device budget"))
        picks = self._improve(picks, costs, caps, metric)
        return self._allocation(picks, f"surrogate-{target:.3f}bpw" if unit == "bpw" else f"surrogate-{int(target)}B")

    def _device_caps(self) -> tuple[int, ...] | None:
        """The GPU and CPU room above every parameter's ladder index 0, or None without a device budget."""
        if self.budget is None or not self.budget.limits:
            return None
        return tuple(self.budget.limits.get(d, 1 << 62) - self.base_devices[d] for d in DEVICES)

    def allocate_devices(self, metric: str = "kld_mean") -> Allocation:
        """The surrogate's best recipe inside the device budget (a knapsack with a GPU and a CPU capacity)."""
        caps = self._device_caps()
        if caps is None or self.budget is None:
            raise RecipeSearchError("allocating by devices needs a device budget (max_gpu_bytes, max_cpu_bytes)")
        costs = [[o.devices for o in opts] for opts in self.options]
        picks = _knapsack2(costs, [[o.mean for o in opts] for opts in self.options], caps)
        if picks is None:
            raise RecipeSearchError("no recipe of the ladders fits the device budget")
        picks = self._improve(picks, costs, caps, metric)
        label = "+".join(f"{v}B-{d}" for d, v in self.budget.limits.items())
        return self._allocation(picks, f"surrogate-{label}")

    def _allocation(self, picks: list[int], name: str) -> Allocation:
        choice = {p.name: self.options[i][k].index for i, (p, k) in enumerate(zip(self.space.parameters, picks))}
        recipe = self.space.recipe(choice, name=name)
        resolution = resolve(recipe, self.surrogate.inv)
        size = predict_size(resolution, self.surrogate.inv, self.extra_kv)
        return Allocation(choice, recipe, size.file_bytes, size.bits_per_weight, self.surrogate.predict(resolution),
                          self.budget.totals(size) if self.budget else None)

    def _improve(self, picks: list[int], costs: list[list[tuple[int, ...]]], caps: tuple[int, ...],
                 metric: str) -> list[int]:
        """Hill-climb ``metric`` within the caps (one cost per cap: the size, or each device's bytes): one
        parameter to any type, or one up and another down a step (this also spends the room the DP's
        rounded-up costs left)."""
        picks = list(picks)
        opts = self.options
        mean = sum(opts[i][k].mean for i, k in enumerate(picks))
        tokens = self.fixed_tokens + sum(opts[i][k].tokens for i, k in enumerate(picks))
        used = np.sum([costs[i][k] for i, k in enumerate(picks)], axis=0)
        cap = np.array(caps)
        by_cost = [sorted(range(len(c)), key=[sum(x) for x in c].__getitem__) for c in costs]

        def value(m: float, t: np.ndarray) -> float:
            return m if metric == "kld_mean" else tail_metric(t, metric)

        current = value(mean, tokens)
        while True:
            moves = [[(i, k)] for i in range(len(picks)) for k in range(len(costs[i])) if k != picks[i]]
            for i, j in itertools.permutations(range(len(picks)), 2):
                up, down = by_cost[i].index(picks[i]) + 1, by_cost[j].index(picks[j]) - 1
                if up < len(by_cost[i]) and down >= 0:
                    moves.append([(i, by_cost[i][up]), (j, by_cost[j][down])])
            best, best_value = None, current
            for move in moves:
                change = np.sum([np.subtract(costs[i][k], costs[i][picks[i]]) for i, k in move], axis=0)
                if np.any(used + change > cap):
                    continue
                v = value(mean + sum(opts[i][k].mean - opts[i][picks[i]].mean for i, k in move),
                          tokens + sum(opts[i][k].tokens - opts[i][picks[i]].tokens for i, k in move))
                if v < best_value * (1 - 1e-9):
                    best, best_value = move, v
            if best is None:
                return picks
            for i, k in best:
                mean += opts[i][k].mean - opts[i][picks[i]].mean
                tokens = tokens + opts[i][k].tokens - opts[i][picks[i]].tokens
                used = used + np.subtract(costs[i][k], costs[i][picks[i]])
                picks[i] = k
            current = best_value


def _knapsack(costs: list[list[int]], values: list[list[float]], cap: int) -> list[int] | None:
    """Multiple-choice knapsack: one option per group, summed cost <= cap, least summed value.

    Costs are rounded up onto DP_BINS bins of the spare room, so every answer fits exactly (the price is
    a pick up to one bin's width short of the best). None when even the cheapest options do not fit.
    """
    floor = [min(c) for c in costs]
    spare = cap - sum(floor)
    if spare < 0:
        return None
    n = DP_BINS if spare > 0 else 0
    bins = [[0 if c == f else (-(-(c - f) * n // spare) if spare else n + 1) for c in cs]
            for cs, f in zip(costs, floor)]
    best = np.zeros(n + 1)
    taken = np.zeros((len(costs), n + 1), dtype=np.int32)
    for g, (bs, vs) in enumerate(zip(bins, values)):
        new = np.full(n + 1, np.inf)
        for k, (b, v) in enumerate(zip(bs, vs)):
            if b > n:
                continue
            candidate = np.full(n + 1, np.inf)
            candidate[b:] = best[:n + 1 - b] + v
            better = candidate < new
            new[better] = candidate[better]
            taken[g, better] = k
        best = new
    picks, room = [], n
    for g in range(len(costs) - 1, -1, -1):
        k = int(taken[g, room])
        picks.append(k)
        room -= bins[g][k]
    return picks[::-1]


def _knapsack2(costs: list[list[tuple[int, ...]]], values: list[list[float]], caps: tuple[int, ...]) -> list[int] | None:
    """The multiple-choice knapsack of `_knapsack` under two capacities (GPU and CPU bytes): each cost rounded up
    onto DP2_BINS bins of its dimension's spare room, so every answer fits both. None when nothing fits."""
    floor = [tuple(min(c[d] for c in cs) for d in range(2)) for cs in costs]
    spare = [caps[d] - sum(f[d] for f in floor) for d in range(2)]
    if min(spare) < 0:
        return None
    n = [DP2_BINS if spare[d] > 0 else 0 for d in range(2)]

    def to_bins(c: int, f: int, d: int) -> int:
        return 0 if c == f else (-(-(c - f) * n[d] // spare[d]) if spare[d] else n[d] + 1)

    bins = [[tuple(to_bins(c[d], f[d], d) for d in range(2)) for c in cs] for cs, f in zip(costs, floor)]
    best = np.zeros((n[0] + 1, n[1] + 1))
    taken = np.zeros((len(costs), n[0] + 1, n[1] + 1), dtype=np.int32)
    for g, (bs, vs) in enumerate(zip(bins, values)):
        new = np.full_like(best, np.inf)
        for k, ((b0, b1), v) in enumerate(zip(bs, vs)):
            if b0 > n[0] or b1 > n[1]:
                continue
            candidate = np.full_like(best, np.inf)
            candidate[b0:, b1:] = best[:n[0] + 1 - b0, :n[1] + 1 - b1] + v
            better = candidate < new
            new[better] = candidate[better]
            taken[g, better] = k
        best = new
    picks, room = [], list(n)
    for g in range(len(costs) - 1, -1, -1):
        k = int(taken[g, room[0], room[1]])
        picks.append(k)
        room = [room[d] - bins[g][k][d] for d in range(2)]
    return picks[::-1]


def _knapsack_sized(sizes: list[list[int]], costs: list[list[tuple[int, ...]]], values: list[list[float]], size_cap: int,
                    caps: tuple[int, ...]) -> list[int] | None:
    """`_knapsack2` under the device capacities with a third, the size, as a price: the answer for the least price
    ``lam`` per byte (value + lam * size) whose size fits ``size_cap``, found by doubling then bisection (a larger
    price never gives a larger answer). None when even the smallest recipe inside the device budget is too big."""
    def solve(lam: float) -> tuple[list[int] | None, int]:
        picks = _knapsack2(costs, [[v + lam * c for v, c in zip(vs, cs)] for vs, cs in zip(values, sizes)], caps)
        return picks, 0 if picks is None else sum(cs[k] for cs, k in zip(sizes, picks))

    if sum(min(cs) for cs in sizes) > size_cap:
        return None
    picks, size = solve(0.0)
    if picks is None or size <= size_cap:
        return picks
    span = sum(max(cs) - min(cs) for cs in sizes) or 1
    lo, hi = 0.0, (sum(max(vs) - min(vs) for vs in values) or 1.0) / span  # a price of the whole value range
    best = None
    for _ in range(64):
        picks, size = solve(hi)
        if size <= size_cap:
            best = picks
            break
        lo, hi = hi, hi * 4
    if best is None:
        return None
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        picks, size = solve(mid)
        if size <= size_cap:
            best, hi = picks, mid
        else:
            lo = mid
    return best


def table_allocator(config: StudyConfig, space: SearchSpace, inv: Inventory, table_dir: Path | None,
                    extra_kv: dict[str, str | int] | None) -> Allocator:
    """The allocator over ``space`` from the sensitivity table at ``table_dir`` (or the config's `sensitivity`)."""
    directory = table_dir if table_dir is not None else Path(config.sensitivity) if config.sensitivity else None
    if directory is None:
        raise RecipeSearchError("the surrogate needs a sensitivity table (`sensitivity`, or the study's own sweep)")
    budget = config.device_budget(inv) if config.has_device_budget else None
    return Allocator(Surrogate(SensitivityTable.load(directory), inv), space, extra_kv, budget)


def _band(config: StudyConfig, allocator: Allocator, unit: Literal["bytes", "bpw"]) -> tuple[float, float]:
    """The ladders' size range in ``unit``, inside the study's size band in that unit."""
    lo, hi = allocator.size_range(unit)
    if unit == "bytes":
        return lo, min(hi, config.max_bytes) if config.max_bytes is not None else hi
    return (max(lo, config.min_bpw) if config.min_bpw is not None else lo,
            min(hi, config.max_bpw) if config.max_bpw is not None else hi)


def seed_allocations(config: StudyConfig, space: SearchSpace, inv: Inventory,
                     extra_kv: dict[str, str | int] | None = None, table_dir: Path | None = None) -> list[Allocation]:
    """The surrogate-optimal recipes at each of ``config.target_bpw``, at the size band's upper edge when the
    study has one, then at ``config.surrogate_seeds`` size targets spread evenly over the ladders' size range
    (inside the study's size band); the table is ``table_dir`` or the config's ``sensitivity``. With a device
    budget, its corner comes first and every size is solved inside it.

    They minimise the predicted mean KLD whatever the study's objective: the summed mean ranks measured
    recipes' tails better than the summed per-token tails do (see experiments/reports/sensitivity.md).
    """
    allocator = table_allocator(config, space, inv, table_dir, extra_kv)
    unit: Literal["bytes", "bpw"] = "bpw" if config.max_bpw is not None or config.min_bpw is not None else "bytes"
    lo, hi = _band(config, allocator, unit)
    n = config.surrogate_seeds
    sizes: list[tuple[float, Literal["bytes", "bpw"]]] = [(t, "bpw") for t in config.target_bpw]
    if n and (config.max_bpw is not None or config.max_bytes is not None):
        sizes.append((hi, unit))  # the band's upper edge: where a budget-bound user picks
    sizes += [(lo + (hi - lo) * (i + 1) / (n + 1), unit) for i in range(n)]
    out, seen = [], set()
    if config.has_device_budget:  # the device budget's corner: where a user with that machine picks
        a = allocator.allocate_devices("kld_mean")
        seen.add(tuple(sorted(a.choice.items())))
        out.append(a)
    for target, target_unit in sizes:
        a = allocator.allocate(target, target_unit, "kld_mean")
        key = tuple(sorted(a.choice.items()))
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


def fit_scales(allocator: Allocator, observed: Sequence[tuple[dict[str, int], float]], prior: float = 1.0) -> list[float]:
    """One non-negative factor per parameter (and one for the fixed tensors) that makes the additive mean-KLD
    prediction fit the measured mean KLD of ``observed`` (ladder choice, measured mean KLD) in relative error,
    each factor pulled towards 1 with weight ``prior``: the table was measured once, on a few chunks, one type at
    a time; measured recipes show how far each parameter's cells are off in combination."""
    from scipy.optimize import lsq_linear

    n = len(allocator.options)
    rows, target = [], []
    for choice, measured in observed:
        found = [next((o.mean for o in opts if o.index == choice.get(p.name)), None)
                 for p, opts in zip(allocator.space.parameters, allocator.options)]
        means = [m for m in found if m is not None]
        if measured <= 0 or len(means) < n:
            continue  # a ladder type without a cell, or nothing measured to scale
        rows.append([allocator.fixed_mean / measured, *(m / measured for m in means)])
        target.append(1.0)
    a = np.vstack([np.array(rows).reshape(-1, n + 1), math.sqrt(prior) * np.eye(n + 1)])
    b = np.concatenate([np.array(target), math.sqrt(prior) * np.ones(n + 1)])
    return [float(x) for x in lsq_linear(a, b, bounds=(0.0, np.inf)).x]


def refit_allocation(base: Allocator, config: StudyConfig, observed: Sequence[tuple[dict[str, int], float]],
                     measured_sizes: Sequence[tuple[float, float]], tried: set[tuple], turn: int) -> Allocation | None:
    """The next proposal of ``base`` refitted to the measured trials (`fit_scales`): its allocation at the
    ``turn``-th size in the cycle (each of ``config.target_bpw``, then the middle of the widest gap between
    neighbours on the measured frontier, given as (bpw, objective) pairs), the first of them not in ``tried``,
    solved inside the device budget when ``base`` has one; None when every size gives a recipe already tried."""
    allocator = base.scaled(fit_scales(base, observed))
    lo_bpw, hi_bpw = _band(config, allocator, "bpw")
    sizes = [t for t in config.target_bpw if lo_bpw <= t <= hi_bpw]
    sizes += frontier_gaps(measured_sizes, lo_bpw, hi_bpw)
    for k in range(len(sizes)):
        a = allocator.allocate(sizes[(turn + k) % len(sizes)], "bpw", "kld_mean")
        if tuple(sorted(a.choice.items())) not in tried:
            return a
    return None


def frontier_gaps(points: Sequence[tuple[float, float]], lo: float, hi: float) -> list[float]:
    """Middles of the gaps between neighbouring non-dominated (bpw, objective) points inside [lo, hi], widest
    first."""
    front: list[tuple[float, float]] = []
    for bpw, value in sorted(points):
        if lo <= bpw <= hi and (not front or value < front[-1][1]):
            front.append((bpw, value))
    gaps = sorted(((b[0] - a[0], (a[0] + b[0]) / 2) for a, b in zip(front, front[1:])), reverse=True)
    return [middle for _, middle in gaps]
