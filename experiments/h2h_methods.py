"""Head to head (experiments/head_to_head.py): the competitors. Each returns a `Method`: its measured recipes
(on the search text) with the time each cost, and, where the method fixes one, its recipe per size target.

(a) llama.cpp's presets; (b) a hand sweep; (c) the KLD sweep and the allocator; (d) the allocator on a
weight-error table; (e) the study variants; (f) role-based templates. The module docstring of head_to_head.py
says what each does."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from h2h_profiles import Profile, Setup, uniform_choice

from recipe_search.core import Recipe, Rule, ScoreSettings, Unmatched, model_fingerprint, preset_recipe, tensor_kind
from recipe_search.engine import Measurement, Worker
from recipe_search.formats import bits_per_weight, parse_type
from recipe_search.sensitivity import Allocator, SensitivityTable, Surrogate, run_sweep, space_ladders

if TYPE_CHECKING:
    import optuna

PRESETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "IQ4_XS")
SURROGATE_SEEDS = 8
REFIT_EVERY = 2
#: the study variants: the config's defaults (before), then the tool's surrogate options added one at a time (each
#: with the profile's size targets as `target_bpw`)
STUDIES: dict[str, dict] = {
    "study-plain": {},
    "study-seeded": {"surrogate_seeds": SURROGATE_SEEDS},
    "study": {"surrogate_seeds": SURROGATE_SEEDS, "refit_every": REFIT_EVERY},
    # before the sweep's fidelity followed the search's: 2 sweep chunks whatever the search's
    "study-sweep2": {"surrogate_seeds": SURROGATE_SEEDS, "refit_every": REFIT_EVERY, "sweep_chunks": 2},
    # twice the spread seeds: a denser first frontier, for the 60-chunk run where each measurement costs 3x
    "study-dense": {"surrogate_seeds": 2 * SURROGATE_SEEDS, "sweep_chunks": 2, "refit_every": REFIT_EVERY},
}


@dataclass
class Point:
    """One measured recipe of a method, with the method's cumulative cost when it was known."""

    method: str
    run: str
    name: str
    recipe: Recipe
    file_bytes: int
    bpw: float
    metrics: dict[str, float]
    cost_s: float  # this measurement's own time
    t_s: float  # the method's cumulative time when this point was known

    def row(self) -> dict:
        return {"name": self.name, "file_bytes": self.file_bytes, "bpw": round(self.bpw, 4),
                **{m: self.metrics[m] for m in ("kld_p999", "kld_p99", "kld_mean")},
                "cost_s": round(self.cost_s, 2), "t_s": round(self.t_s, 2)}


@dataclass
class Method:
    key: str
    run: str = ""
    points: list[Point] = field(default_factory=list)
    clock: float = 0.0  # charged seconds so far
    picks: dict[float, Point] = field(default_factory=dict)  # target -> this method's recipe for it, if fixed by it
    checkpoints: dict[int, tuple[float, int]] = field(default_factory=dict)  # searched trials -> (clock, points)

    @property
    def label(self) -> str:
        return self.key + (f" seed {self.run}" if self.run else "")

    def charge(self, seconds: float) -> None:
        self.clock += seconds

    def add(self, name: str, recipe: Recipe, m: Measurement) -> Point:
        cost = measure_cost(m)
        self.clock += cost
        p = Point(self.key, self.run, name, recipe, m.file_bytes, m.bpw, dict(m.metrics), cost, self.clock)
        self.points.append(p)
        return p


def measure_cost(m: Measurement) -> float:
    return sum(m.seconds.values())


# -- (a) presets ------------------------------------------------------------------------------------
def presets(s: Setup) -> Method:
    m = Method("presets")
    for name in PRESETS:
        r = preset_recipe(name)
        m.add(r.name, r, s.search.measure(r))
    return m


# -- (b) hand sweep ---------------------------------------------------------------------------------
def hand_recipes(s: Setup, n: int, seed: int = 0) -> list[tuple[str, dict[str, int]]]:
    """Uniform ladder recipes; one parameter a step up and a step down from each of the profile's two uniform bases
    (Q4_K, then Q3_K on tiny-qwen35moe); random fill."""
    params = s.space.parameters
    out: dict[tuple, tuple[str, dict[str, int]]] = {}

    def put(name: str, choice: dict[str, int]) -> None:
        out.setdefault(tuple(choice[p.name] for p in params), (name, choice))

    for t in s.profile.ladder:
        put(f"uniform-{t}", uniform_choice(s, t))
    for base in s.profile.hand_bases:
        c = uniform_choice(s, base)
        for p in params:
            for step, word in ((-1, "up"), (1, "down")):
                j = c[p.name] + step
                if 0 <= j < len(p.ladder):
                    put(f"{base}-{p.name}-{word}", {**c, p.name: j})
    rng = random.Random(seed)
    i = 0
    while len(out) < n:
        i += 1
        put(f"random-{i}", {p.name: rng.randrange(len(p.ladder)) for p in params})
    return list(out.values())[:n]


def hand(s: Setup, n: int) -> Method:
    m = Method("hand")
    for name, choice in hand_recipes(s, n):
        r = s.space.recipe(choice, name)
        m.add(name, r, s.search.measure(r))
    return m


# -- (c) KLD sweep + allocator ----------------------------------------------------------------------
def sweep(s: Setup) -> tuple[Path, float]:
    """(c)'s one-type-at-a-time sweep of the space (every parameter's tensor types over its ladder, the cells a
    sweeping study measures), scored on the study's `sweep_chunk_count` chunks; the measuring seconds its cells cost
    when first measured (each row records them)."""
    settings = ScoreSettings(s.profile.text(s.profile.search), s.profile.ctx, s.config.sweep_chunk_count,
                             s.search.settings.threads)
    worker = Worker(s.model, settings, s.search.cache_dir, s.work / "work", imatrix=s.imatrix)
    out = s.work / f"kld-sweep-{settings.chunks}chunks"
    table = run_sweep(worker, out, ladders=space_ladders(s.space), log=s.log)
    return out, sum(float(row["seconds"]) for row in table.rows)


def allocated(s: Setup, key: str, table: SensitivityTable, charged: float) -> Method:
    """The allocator's recipe at each target, measured (on the search text) to place it on the plots."""
    m = Method(key)
    m.charge(charged)
    alloc = Allocator(Surrogate(table, s.search.inventory), s.space, s.extra_kv)
    for target in s.profile.targets:
        a = alloc.allocate(target, "bpw", "kld_mean")
        recipe = a.recipe.model_copy(update={"name": f"{key}-{target:.2f}bpw"})
        m.picks[target] = m.add(recipe.name, recipe, s.search.measure(recipe))
    return m


# -- (d) weight-error table -------------------------------------------------------------------------
def weight_error_table(s: Setup) -> tuple[Path, float]:
    """A table in the sweep's format whose `kld_mean` is Σ imatrix-weighted squared error of each tensor type at
    each ladder type (token vectors: that constant), built from one uniform quantization per ladder type.

    Not the library's proxy (`recipe_search.sensitivity.run_weight_error`, which --weight-error-table can pass in):
    that one also weights each expert by the share of tokens routed to it, and on tiny-qwen35moe its table
    allocates other recipes at both size targets, so it would change the committed results of (d)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from recipe_search.core import uniform_recipe
    from recipe_search.engine import quantize_model

    out = s.work / "weight-error"
    if (out / "meta.json").exists():
        return out, json.loads((out / "meta.json").read_text())["seconds"]
    start = time.perf_counter()
    inv = s.search.inventory
    source = {t.name: t for t in GGUFReader(s.model).tensors}
    weights = s.imatrix.arrays
    table = SensitivityTable(out, {"format": 1, "model_fingerprint": model_fingerprint(inv), "proxy": "weight-error",
                                   "text": s.profile.text(s.profile.calibration).label, "ctx": s.profile.ctx,
                                   "chunks": 0})
    n_tokens = 100
    for t in s.profile.ladder:
        path = s.work / f"uniform-{t}.gguf"
        quantize_model(s.model, uniform_recipe(t), path, imatrix=s.imatrix, threads=s.search.settings.threads,
                       inventory=inv)
        errors: dict[str, float] = {}
        for q in GGUFReader(path).tensors:
            kind = tensor_kind(q.name)
            if kind not in inv.kinds or not inv.kinds[kind].quantizable:
                continue
            src = source[q.name]
            w = dequantize(src.data, src.tensor_type).astype(np.float64)
            wq = dequantize(q.data, q.tensor_type).astype(np.float64)
            imp = weights.get(q.name)
            sq = np.square(w - wq)
            if imp is not None:
                sq = sq * imp.reshape(sq.shape[0], 1, -1) if sq.ndim == 3 else sq * imp.reshape(1, -1)
            errors[kind] = errors.get(kind, 0.0) + float(sq.sum())
        path.unlink()
        for kind, err in errors.items():
            row = {"tensor_type": kind, "ggml_type": t, "bpw": bits_per_weight(parse_type(t)),
                   "n_elements": inv.kinds[kind].n_elements, "file_bytes": 0, "kld_mean": err, "kld_p99": err,
                   "kld_p999": err}
            table.add(row, np.full(n_tokens, err, np.float32))
    seconds = time.perf_counter() - start
    table.meta["seconds"] = seconds
    table.save()
    return out, seconds


# -- (e) the study ----------------------------------------------------------------------------------
def study_options(profile: Profile, key: str) -> dict:
    """The config options of study variant ``key``: STUDIES', the profile's size targets with the surrogate's."""
    options = STUDIES[key]
    return {**options, "target_bpw": list(profile.targets)} if options.get("surrogate_seeds") else dict(options)


def study(s: Setup, key: str, seed: int, trials: int) -> Method:
    """One study variant of STUDIES (the config's defaults, or with the surrogate options), run to ``trials``
    searched trials, as `study_points` charges it."""
    from recipe_search.study import Study

    config = s.config.model_copy(update={"seed": seed, **study_options(s.profile, key)})
    opened = Study.open(s.model, config, name=f"{key}-{seed}", directory=s.work / f"{key}-{seed}",
                        cache=s.work / "cache")
    opened.prepare(s.log)
    s.log(f"{key} seed {seed}: running to {trials} trials")
    opened.run_to(trials)
    return study_points(opened.optuna_study, key, str(seed))


def sweep_seconds(optuna_study: optuna.Study) -> float:
    """The measuring time of a study's own sweep, as the study stored it (0 without one)."""
    return float(optuna_study.user_attrs.get("sweep_seconds", 0.0))


def study_points(optuna_study: optuna.Study, key: str, run: str) -> Method:
    """A finished study as a method: charged its measurements, the time of trials that measured nothing new (pruned,
    failed; not a killed worker's trial, whose span runs to its resume), and its own sweep's measuring time."""
    from optuna.trial import TrialState

    from recipe_search.study import TrialRecord

    m = Method(key, run)
    m.charge(sweep_seconds(optuna_study))
    all_trials = optuna_study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in all_trials}  # killed workers' trials: their retry is charged
    finished = [t for t in all_trials if t.datetime_complete and not (t.state == TrialState.FAIL and t.number in retried)]
    for t in sorted(finished, key=lambda t: (t.datetime_complete, t.number)):  # in the order they were known
        r = TrialRecord.from_trial(t)
        if t.state == TrialState.COMPLETE and r.measured and r.measurement is not None:
            cost = measure_cost(r.measurement)
            m.clock += cost
            m.points.append(Point(key, run, r.name, r.recipe, r.file_bytes, r.bpw, dict(r.metrics), cost,
                                  m.clock))
        elif t.datetime_complete and t.datetime_start:  # pruned early, duplicates, failures: their own time
            m.clock += (t.datetime_complete - t.datetime_start).total_seconds()
        if t.params:  # a searched trial (the added presets have none): the study's state after that many
            m.checkpoints[len(m.checkpoints) + 1] = (m.clock, len(m.points))
    return m


# -- (f) templates ----------------------------------------------------------------------------------
def template(profile: Profile, experts: str, rest: str, protect: str | None, down_step: bool) -> Recipe:
    """The profile's low tensor types (the routed experts on tiny-qwen35moe) at ``experts`` (the last of them,
    ffn_down, a ladder step higher with ``down_step``), block 0's at ``protect``, everything else at ``rest``."""
    ladder, low = profile.ladder, profile.low
    i = ladder.index(experts)
    down = ladder[max(i - 1, 0)] if down_step else experts
    rules = []
    if protect:
        rules += [Rule(tensors=k, blocks=[0], type=protect) for k in low]
    rules += [Rule(tensors=k, type=down if k == low[-1] else experts) for k in low]
    name = f"template-exps{experts}{'+down' if down_step else ''}-rest{rest}{'-blk0' + protect if protect else ''}"
    return Recipe(name=name, unmatched=Unmatched(type=rest), rules=rules)


def template_fits(profile: Profile, bpw_of: Callable[[Recipe], float], target: float) -> list[Recipe]:
    """The role templates for one size target: per low type, the largest template at or under it (by ``bpw_of``);
    the two largest."""
    fits = []
    high = profile.rest_ladder  # the rest's types; block 0 protected at its second or third
    for experts in profile.low_types:
        best = None
        for rest in high:
            for protect in (*high[1:3], None):
                for down_step in (True, False):
                    r = template(profile, experts, rest, protect, down_step)
                    bpw = bpw_of(r)
                    if bpw <= target and (best is None or bpw > best[0]):
                        best = (bpw, r)
        if best:
            fits.append(best)
    return [r for _, r in sorted(fits, key=lambda f: -f[0])[:2]]


def templates(s: Setup) -> Method:
    m = Method("templates")
    measured: dict[str, Point] = {}
    for target in s.profile.targets:
        for r in template_fits(s.profile, lambda r: s.size(r)[1], target):
            if r.name not in measured:
                measured[r.name] = m.add(r.name, r, s.search.measure(r))
    return m
