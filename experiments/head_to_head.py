"""Head to head: does the study beat the ways people choose recipes today, judged on text it never saw?

On one model (a PROFILES entry: tiny-qwen35moe, or the demo with the built-in text as a second held-out domain),
scoring text, context, chunk count, imatrix and objectives (size, 99.9% KLD; 99% KLD beside):

The searched space (`Profile.space`): the big tensor types (tiny-qwen35moe: token_embd, output, routed experts;
block 0 of the experts apart) over the profile's ladder, and every other quantized tensor type as one tied
parameter over its `rest_ladder`.

- (a) `presets`: llama.cpp's presets (PRESETS), with the imatrix;
- (b) `hand`: a hand sweep as uploaders build one: uniform types, one parameter moved a ladder step up or down
  from uniform Q4_K (then Q3_K; the profile's `hand_bases`), random fill to --hand recipes, each measured in full;
- (c) `kld-greedy`: the one-type-at-a-time KLD sweep of the space (every parameter's tensor types over its ladder,
  on the study's `sweep_chunk_count` chunks: a tenth of the search's), then the knapsack allocator at each size
  target, unverified;
- (d) `weight-error`: the same allocator on a zero-evaluation table of imatrix-weighted quantization error
  (a table directory in the sweep's format from --weight-error-table, else built here: the model quantized
  uniformly once per ladder type, each tensor dequantized and compared with the source);
- (e) the study (STUDIES), one per seed, to the largest of --trials; its state after each smaller count is read off
  it. `study-plain`: the config's defaults (uniform references, the Q4_K_M preset, TPE, early stopping, caches);
  `study-seeded`: plus the surrogate options (its own sweep of the space, as (c)'s; the allocations at the size
  targets and at SURROGATE_SEEDS sizes spread over the range, enqueued first); `study`: plus every REFIT_EVERY-th
  trial proposed by the surrogate refitted to the measured trials; before rows: `study-sweep2`, `study` with the
  sweep on 2 chunks whatever the search's, and `study-dense`, that with twice the spread seeds;
- (f) `templates`: role-based "dynamic" recipes (routed experts, the demo's FFN, low; the rest high; the first
  block's of them protected), the largest few that fit each size target.

Every measurement goes through the tool's Worker, so a rerun reads it from the measurement cache and costs
nothing; a method is charged the measuring time each of its measurements took when first made (quantize,
load, decode, KLD), so shared measurements are charged to every method that needs them. The sweep's time is
charged to (c) and to each study that sweeps; the weight-error table's to (d). Hypervolume: 2-D, file bytes x
log10(99.9% KLD), against a reference point fixed before the run (the uniform Q8_0 recipe's size, REFERENCE_KLD).
Each method's best recipe at each size target (by the search text) and the chosen final frontiers
(--holdout-frontiers) are then re-scored on the held-out text (the picks also on the profile's second domain), with
95% chunk-bootstrap intervals, and every method's pick is tested against the study's (paired chunk bootstrap
over the same held-out chunks).

    PYTHONPATH=. python experiments/head_to_head.py [--profile demo] [--work DIR] [--seeds 0 1 2] [--trials 20 40 80] [--hand 121]
        [--methods ...] [--variant-trials N] [--variant-seeds ...] [--holdout-frontiers METHOD...]
    python experiments/head_to_head.py --markdown RESULTS.json      # the report's tables

(PYTHONPATH=. so that the worktree's recipe_search is imported, not an installed one.) experiments/reports/head-to-head.md
gives the command of each run.

Results: experiments/results/head-to-head-PROFILE*.json; figures: experiments/figures/head-to-head-*.png.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recipe_search.core.config import SpaceConfig, StudyConfig
from recipe_search.core.kld import bootstrap_ci, paired_bootstrap, scored_per_chunk
from recipe_search.core.metrics import statistic_of
from recipe_search.core.pareto import hypervolume_2d, non_dominated, spearman
from recipe_search.core.recipe import Recipe, Rule, Unmatched, preset_recipe
from recipe_search.core.resolve import resolve
from recipe_search.core.size import predict_size
from recipe_search.core.space import SearchSpace, build_space
from recipe_search.core.text import TextSource, text_sha256
from recipe_search.engine.imatrix_collect import collect_imatrix
from recipe_search.engine.measurement import Measurement
from recipe_search.engine.quantize import ImatrixInput
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.files import atomic_write_text
from recipe_search.formats.ggml_types import GGMLType, bits_per_weight, parse_type
from recipe_search.formats.imatrix_file import save_imatrix_gguf
from recipe_search.sensitivity.surrogate import Allocator, Surrogate
from recipe_search.sensitivity.sweep import run_sweep
from recipe_search.sensitivity.table import SensitivityTable, space_ladders

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
CTX, CHUNKS = 512, 20  # 20 x 255 = 5,100 scored tokens: the 99.9th percentile rests on ~5 tokens
PRESETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "IQ4_XS")
#: fixed before the run: (file bytes of the uniform Q8_0 recipe, log10 of a 99.9% KLD of 10 nats); points beyond
#: either bound add nothing
REFERENCE_KLD = 10.0
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


def _demo_model() -> Path:
    from recipe_search.engine.demo import demo_model_path

    return demo_model_path()


@dataclass(frozen=True)
class Profile:
    """One model's head to head: its texts (byte ranges of wiki.test.raw), searched space, templates and targets."""

    label: str
    model: Callable[[], Path]
    search: tuple[float, float]
    holdout: tuple[float, float]
    calibration: tuple[float, float]
    ladder: tuple[str, ...]  # of each `big` tensor type
    big: tuple[str, ...]
    rest: tuple[str, ...]  # every other quantized tensor type: one tied parameter over `rest_ladder`
    rest_ladder: tuple[str, ...]
    low: tuple[str, ...]  # what the role templates put low, block 0 a band of its own; the last a step higher
    tied: tuple[str, str]  # two of `low` that share a type
    low_types: tuple[str, ...]  # the templates' low types
    hand_bases: tuple[str, str]  # the uniform types the hand sweep moves one parameter away from
    targets: tuple[float, ...]
    second_holdout: TextSource | None = None  # a second domain the picks are also re-scored on

    @property
    def searched(self) -> tuple[str, ...]:
        return (*self.big, *self.rest)

    @property
    def space(self) -> SpaceConfig:
        return SpaceConfig(tensor_types=list(self.searched), ladder=list(self.ladder),
                           ladders={k: list(self.rest_ladder) for k in self.rest},
                           tied=[list(self.tied), list(self.rest)], bands={k: [0, 1] for k in self.low},
                           unmatched="Q8_0")


EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
PROFILES = {
    # the model never trained on wiki.test.raw[0:0.4] (its README); three disjoint ranges of it. The big types
    # (token_embd, output, routed experts) are 86% of the weights; the rest (attention, SSM, shared experts) is
    # one tied parameter, so the role templates' "everything else at Q6_K / Q4_K" is in the space
    "tiny-qwen35moe": Profile(
        "tiny-qwen35moe/model-bf16.gguf", lambda: SHARED / "tiny-qwen35moe" / "model-bf16.gguf",
        (0.0, 0.12), (0.12, 0.24), (0.24, 0.4), ("Q8_0", "Q6_K", "Q4_K", "Q3_K", "Q2_K"),
        ("token_embd", "output", *EXPERTS),
        ("attn_qkv", "attn_gate", "attn_q", "attn_k", "attn_v", "attn_output", "ssm_out", "ssm_alpha", "ssm_beta",
         "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"), ("Q8_0", "Q6_K", "Q4_K"),
        EXPERTS, ("ffn_gate_exps", "ffn_up_exps"), ("Q2_K", "Q3_K"), ("Q4_K", "Q3_K"), (4.0, 5.0)),
    # Gemma 3 270M (F16 from Q4_K_M: its weights sit on Q4_K/Q5_0/Q6_K/Q8_0 grids already, so those types are
    # nearly free; its 640-wide rows send K-quants on most tensors to llama.cpp's fallbacks, which the measurements
    # record: Q6_K -> Q8_0, Q4_K -> Q5_0, Q3_K and Q2_K -> Q4_0, all on the ladder, beside IQ4_NL, a 32-block type).
    # token_embd is 63% of its weights; the held-out picks are also re-scored on the built-in text
    "demo": Profile(
        "gemma-3-270m-f16.gguf (demo)", _demo_model, (0.0, 0.1), (0.1, 0.2), (0.2, 0.3),
        ("Q8_0", "Q6_K", "Q5_0", "Q4_K", "IQ4_NL", "Q4_0", "Q3_K", "Q2_K"), ("token_embd", "ffn_gate", "ffn_up", "ffn_down"),
        ("attn_q", "attn_k", "attn_v", "attn_output"), ("Q8_0", "Q6_K", "Q5_0", "Q4_0"),
        ("ffn_gate", "ffn_up", "ffn_down"), ("ffn_gate", "ffn_up"), ("Q3_K", "Q4_0"), ("Q5_0", "Q4_0"), (5.0, 6.0),
        second_holdout=TextSource()),
}


def text(span: tuple[float, float]) -> TextSource:
    return TextSource(WIKI, *span)


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


# -- setup ------------------------------------------------------------------------------------------
@dataclass
class Setup:
    work: Path
    imatrix_path: Path
    imatrix: ImatrixInput
    search: Worker
    holdout: Worker
    second: Worker | None  # the profile's second held-out domain
    space: SearchSpace
    config: StudyConfig
    reference_point: tuple[float, float]
    log: Callable[[str], None]
    profile: Profile

    @property
    def model(self) -> Path:
        return self.search.model

    @property
    def extra_kv(self) -> dict:
        return self.imatrix.kv()

    def size(self, recipe: Recipe) -> tuple[int, float]:
        s = predict_size(resolve(recipe, self.search.inventory), self.search.inventory, self.extra_kv)
        return s.file_bytes, s.bits_per_weight


def setup(profile: Profile, work: Path, threads: int, log: Callable[[str], None], holdout_chunks: int | None = CHUNKS,
          chunks: int = CHUNKS) -> Setup:
    work.mkdir(parents=True, exist_ok=True)
    model = profile.model()
    calibration = text(profile.calibration)
    cache = work / "cache"
    imatrix_path = work / "imatrix-calibration.gguf"
    if not imatrix_path.exists():
        log(f"imatrix on {calibration.label}")
        im = collect_imatrix(model, calibration.read(), ctx=CTX, n_chunks=None, n_threads=threads,
                             process_output=True, dataset=calibration.label)
        save_imatrix_gguf(im, imatrix_path)
    imatrix = ImatrixInput.from_file(imatrix_path)
    def worker(source: TextSource, n: int | None) -> Worker:
        return Worker(model, ScoreSettings(source, CTX, n, threads), cache, work / "work", imatrix=imatrix)

    search, holdout = worker(text(profile.search), chunks), worker(text(profile.holdout), holdout_chunks)
    second = worker(profile.second_holdout, holdout_chunks) if profile.second_holdout else None
    (a, b), (c, d) = profile.search, profile.holdout
    config = StudyConfig(text=f"{WIKI}[{a}:{b}]", holdout_text=f"{WIKI}[{c}:{d}]",
                         ctx=CTX, chunks=chunks, imatrix=str(imatrix_path), threads=threads,
                         objectives=["size", "kld_p999"], space=profile.space,
                         references={"uniform": "ladder", "presets": ["Q4_K_M"]})
    space = build_space(config, search.inventory, has_imatrix=True)
    q8 = predict_size(resolve(space.recipe(space.nearest({k: GGMLType.Q8_0 for p in space.parameters for k in p.kinds},
                                                         search.inventory)), search.inventory),
                      search.inventory, imatrix.kv())
    for w, what in ((search, "search"), (holdout, "held-out"), *([(second, "second held-out")] if second else [])):
        n = w.reference.meta["n_tokens"]
        log(f"{what} reference: {n} scored tokens of {w.settings.text.label}")
        if n < 5000:
            raise RecipeSearchError(f"the {what} text gives {n} scored tokens, fewer than 5,000")
    return Setup(work, imatrix_path, imatrix, search, holdout, second, space, config,
                 (float(q8.file_bytes), math.log10(REFERENCE_KLD)), log, profile)


def provenance(s: Setup) -> dict:
    """The model by fingerprint, each text by digest, the imatrix by the digest of what the quantizer receives."""
    meta = {what: w.reference.meta for what, w in (("search", s.search), ("holdout", s.holdout), ("second", s.second))
            if w is not None}
    return {"model_fingerprint": meta["search"]["model_fingerprint"],
            "text_sha256": {**{what: m["text_sha256"] for what, m in meta.items()},
                            "imatrix_calibration": text_sha256(text(s.profile.calibration).read())},
            "imatrix_digest": s.imatrix.digest}


def uniform_choice(s: Setup, t: str) -> dict[str, int]:
    return s.space.nearest({k: parse_type(t) for p in s.space.parameters for k in p.kinds}, s.search.inventory)


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
    settings = ScoreSettings(text(s.profile.search), CTX, s.config.sweep_chunk_count, s.search.settings.threads)
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
    each ladder type (token vectors: that constant), built from one uniform quantization per ladder type."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from recipe_search.core.inventory import model_fingerprint, tensor_kind
    from recipe_search.core.recipe import uniform_recipe
    from recipe_search.engine.quantize import quantize_model

    out = s.work / "weight-error"
    if (out / "meta.json").exists():
        return out, json.loads((out / "meta.json").read_text())["seconds"]
    start = time.perf_counter()
    inv = s.search.inventory
    source = {t.name: t for t in GGUFReader(s.model).tensors}
    weights = s.imatrix.arrays
    table = SensitivityTable(out, {"format": 1, "model_fingerprint": model_fingerprint(inv), "proxy": "weight-error",
                                   "text": text(s.profile.calibration).label, "ctx": CTX, "chunks": 0})
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
    searched trials; charged its measurements, the time of trials that measured nothing new (pruned, failed; not a
    killed worker's trial, whose span runs to its resume), and its own sweep's measuring time."""
    from optuna.trial import TrialState

    from recipe_search.study._records import TrialRecord
    from recipe_search.study.study import Study

    config = s.config.model_copy(update={"seed": seed, **study_options(s.profile, key)})
    opened = Study.open(s.model, config, name=f"{key}-{seed}", directory=s.work / f"{key}-{seed}",
                        cache=s.work / "cache")
    opened.prepare(s.log)
    s.log(f"{key} seed {seed}: running to {trials} trials")
    opened.run_to(trials)
    m = Method(key, str(seed))
    m.charge(float(opened.optuna_study.user_attrs.get("sweep_seconds", 0.0)))
    all_trials = opened.optuna_study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in all_trials}  # killed workers' trials: their retry is charged
    finished = [t for t in all_trials if t.datetime_complete and not (t.state == TrialState.FAIL and t.number in retried)]
    for t in sorted(finished, key=lambda t: (t.datetime_complete, t.number)):  # in the order they were known
        r = TrialRecord.from_trial(t)
        if t.state == TrialState.COMPLETE and r.measured and r.measurement is not None:
            cost = measure_cost(r.measurement)
            m.clock += cost
            m.points.append(Point(key, str(seed), r.name, r.recipe, r.file_bytes, r.bpw, dict(r.metrics), cost,
                                  m.clock))
        elif t.datetime_complete and t.datetime_start:  # pruned early, duplicates, failures: their own time
            m.clock += (t.datetime_complete - t.datetime_start).total_seconds()
        if t.params:  # a searched trial (the added presets have none): the study's state after that many
            m.checkpoints[len(m.checkpoints) + 1] = (m.clock, len(m.points))
    return m


# -- (f) templates ----------------------------------------------------------------------------------
def template(s: Setup, experts: str, rest: str, protect: str | None, down_step: bool) -> Recipe:
    """The profile's low tensor types (the routed experts on tiny-qwen35moe) at ``experts`` (the last of them,
    ffn_down, a ladder step higher with ``down_step``), block 0's at ``protect``, everything else at ``rest``."""
    ladder, low = s.profile.ladder, s.profile.low
    i = ladder.index(experts)
    down = ladder[max(i - 1, 0)] if down_step else experts
    rules = []
    if protect:
        rules += [Rule(tensors=k, blocks=[0], type=protect) for k in low]
    rules += [Rule(tensors=k, type=down if k == low[-1] else experts) for k in low]
    name = f"template-exps{experts}{'+down' if down_step else ''}-rest{rest}{'-blk0' + protect if protect else ''}"
    return Recipe(name=name, unmatched=Unmatched(type=rest), rules=rules)


def templates(s: Setup) -> Method:
    m = Method("templates")
    measured: dict[str, Point] = {}
    high = s.profile.rest_ladder  # the rest's types; block 0 protected at its second or third
    for target in s.profile.targets:
        fits = []
        for experts in s.profile.low_types:
            best = None
            for rest in high:
                for protect in (*high[1:3], None):
                    for down_step in (True, False):
                        r = template(s, experts, rest, protect, down_step)
                        bpw = s.size(r)[1]
                        if bpw <= target and (best is None or bpw > best[0]):
                            best = (bpw, r)
            if best:
                fits.append(best)
        for _, r in sorted(fits, key=lambda f: -f[0])[:2]:
            if r.name not in measured:
                measured[r.name] = m.add(r.name, r, s.search.measure(r))
    return m


# -- analysis ---------------------------------------------------------------------------------------
def hv_curve(points: list[Point], ref: tuple[float, float]) -> list[tuple[float, float]]:
    """(time, hypervolume) after each point, in the order the method knew them."""
    out, pts = [], []
    for p in sorted(points, key=lambda p: p.t_s):
        pts.append([p.file_bytes, math.log10(max(p.metrics["kld_p999"], 1e-12))])
        out.append((p.t_s, hypervolume_2d(np.array(pts), ref)))
    return out


def hypervolume(points: list[Point], ref: tuple[float, float]) -> float:
    curve = hv_curve(points, ref)
    return curve[-1][1] if curve else 0.0


def frontier(points: list[Point]) -> list[Point]:
    if not points:
        return []
    pts = np.array([[p.file_bytes, p.metrics["kld_p999"]] for p in points])
    return sorted((points[i] for i in non_dominated(pts)), key=lambda p: p.file_bytes)


def best_at(points: list[Point], target: float) -> Point | None:
    fits = [p for p in points if p.bpw <= target]
    return min(fits, key=lambda p: (p.metrics["kld_p999"], p.file_bytes)) if fits else None


def held_out(s: Setup, p: Point, n_boot: int, second: bool = True) -> dict:
    """``p`` re-scored on the held-out text (and, with ``second``, on the profile's second domain, as `second`), with
    chunk-bootstrap intervals."""
    def scored(worker: Worker) -> dict:
        m = worker.measure(p.recipe)
        tokens = np.asarray(m.kld_tokens, np.float64)
        return {"metrics": {k: m.metrics[k] for k in ("kld_p999", "kld_p99", "kld_mean")},
                "ci95": {k: list(bootstrap_ci(tokens, statistic_of(k), scored_per_chunk(CTX), n_boot=n_boot))
                         for k in ("kld_p999", "kld_p99", "kld_mean")},
                "tokens": tokens, "cost_s": measure_cost(m)}

    out = scored(s.holdout)
    if second and s.second is not None:
        out["second"] = {k: v for k, v in scored(s.second).items() if k in ("metrics", "ci95")}
    return out


def time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((t for t, hv in curve if hv >= level * (1 - 1e-12)), None)


def count_to(curve: list[tuple[float, float]], level: float) -> int | None:
    """Measurements until the hypervolume reaches ``level`` (a steadier axis than time on a loaded machine)."""
    return next((i for i, (_, hv) in enumerate(curve, 1) if hv >= level * (1 - 1e-12)), None)


def plot(methods: list[Method], curves: dict[str, list], holdout_fronts: dict[str, list], out_dir: Path,
         ref: tuple[float, float], prefix: str, model: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"presets": "tab:gray", "hand": "tab:brown", "kld-greedy": "tab:green", "weight-error": "tab:olive",
               "study": "tab:blue", "study-seeded": "tab:red", "study-plain": "tab:cyan", "study-dense": "tab:pink",
               "study-sweep2": "tab:orange",
               "templates": "tab:purple"}
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in methods:
        c = curves[m.label]
        if c:
            t, hv = zip(*c)
            ax.step(np.array(t) / 60, hv, where="post", color=colours[m.key], alpha=0.9 if not m.key.startswith("study") else 0.7,
                    label=m.key if not m.run else f"{m.key} (one line per seed)" if m.run == "0" else None)
    ax.set_xlabel("charged wall time (min; measuring, plus the sweep / table for (c), (d), (e))")
    ax.set_ylabel("hypervolume, file bytes x log10 99.9% KLD (search text)")
    ax.set_title(f"{model}: hypervolume against time (reference {ref[0]:.4g} B, KLD {10 ** ref[1]:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    hv_png = out_dir / f"{prefix}-hypervolume.png"
    fig.savefig(hv_png, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"presets": "s", "hand": "x", "kld-greedy": "^", "weight-error": "v", "study": "o", "study-seeded": "P",
               "study-plain": "*", "study-dense": "p", "study-sweep2": "h", "templates": "D"}
    for label, rows in holdout_fronts.items():
        if not rows:
            continue
        key = label.split(" seed ")[0].removesuffix(" (picks)")
        rows = sorted(rows, key=lambda r: r["bpw"])
        ax.plot([r["bpw"] for r in rows], [r["holdout"]["kld_p999"] for r in rows], marker=markers[key],
                color=colours[key], label=label, alpha=0.85)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("99.9% KLD on the held-out text")
    ax.set_title("chosen on the search text, re-scored on the held-out text\n(the study's final frontier; "
                 "the others' picks at the size targets)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    front_png = out_dir / f"{prefix}-holdout-frontiers.png"
    fig.savefig(front_png, dpi=120)
    plt.close(fig)
    return [str(hv_png.relative_to(ROOT)), str(front_png.relative_to(ROOT))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "recipe-search" / "head-to-head",
                    help="caches, imatrix, sweep, studies (kept between runs: a rerun measures nothing twice)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--variant-trials", type=int, help="trials of study-plain and study-seeded (default: the largest "
                    "of --trials)")
    ap.add_argument("--variant-seeds", type=int, nargs="+", help="seeds of study-plain and study-seeded (default: --seeds)")
    ap.add_argument("--hand", type=int, default=121)
    ap.add_argument("--weight-error-table", type=Path, help="a weight-error table (sweep format) to use for (d)")
    ap.add_argument("--methods", nargs="+", default=["presets", "templates", "kld-greedy", "weight-error", "study",
                                                      "study-seeded", "study-plain", "hand"])
    ap.add_argument("--holdout-frontiers", nargs="*", default=None,
                    help="methods whose whole final frontier is re-scored on the held-out text (default: all; the "
                         "study's seed 0 only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="tiny-qwen35moe", help="the model and its space")
    ap.add_argument("--figures", help="file name prefix of the two figures (default: head-to-head, then -PROFILE "
                                      "for another profile than tiny-qwen35moe)")
    ap.add_argument("--chunks", type=int, default=CHUNKS, help=f"search-text chunks every method chooses on (default {CHUNKS})")
    ap.add_argument("--holdout-chunks", type=int, default=CHUNKS,
                    help=f"chunks of the held-out text each pick is re-scored on (default {CHUNKS}; 0: all the range has)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="the results file (default: "
                    "experiments/results/head-to-head-PROFILE.json)")
    a = ap.parse_args()
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f}s] {msg}", file=sys.stderr, flush=True)

    profile = PROFILES[a.profile]
    out_json = a.json or ROOT / "experiments" / "results" / f"head-to-head-{a.profile}.json"
    s = setup(profile, a.work, a.threads, log, a.holdout_chunks or None, a.chunks)
    ref = s.reference_point
    log(f"hypervolume reference point (fixed): {ref[0]:.0f} bytes, log10 KLD {ref[1]:.3f}")
    methods: list[Method] = []
    if "presets" in a.methods:
        log("(a) presets")
        methods.append(presets(s))
    if "templates" in a.methods:
        log("(f) templates")
        methods.append(templates(s))
    table_dir, sweep_seconds = None, 0.0
    if "kld-greedy" in a.methods:
        log("(c) KLD sweep")
        table_dir, sweep_seconds = sweep(s)
        log(f"sweep: {sweep_seconds:.0f} s charged")
    if "kld-greedy" in a.methods:
        assert table_dir is not None, "the KLD sweep runs before its allocation"
        methods.append(allocated(s, "kld-greedy", SensitivityTable.load(table_dir), sweep_seconds))
    if "weight-error" in a.methods:
        log("(d) weight-error table")
        if a.weight_error_table:
            we_dir, we_seconds = a.weight_error_table, 0.0
        else:
            we_dir, we_seconds = weight_error_table(s)
        methods.append(allocated(s, "weight-error", SensitivityTable.load(we_dir), we_seconds))
    for key in STUDIES:
        if key in a.methods:
            variant = key != "study"
            for seed in a.variant_seeds or a.seeds if variant else a.seeds:
                log(f"(e) {key} seed {seed}")
                methods.append(study(s, key, seed, a.variant_trials or max(a.trials) if variant else max(a.trials)))
    if "hand" in a.methods:
        log(f"(b) hand sweep of {a.hand}")
        methods.append(hand(s, a.hand))

    curves = {m.label: hv_curve(m.points, ref) for m in methods}
    final = {m.label: (curves[m.label][-1][1] if curves[m.label] else 0.0) for m in methods}
    hand_m = next((m for m in methods if m.key == "hand"), None)
    result: dict = {
        "model": profile.label, "search_text": text(profile.search).label,
        "holdout_text": text(profile.holdout).label, "imatrix_text": text(profile.calibration).label,
        **({"second_holdout_text": s.second.settings.text.label} if s.second else {}),
        "provenance": provenance(s), "ctx": CTX, "chunks": a.chunks,
        "scored_tokens": s.search.reference.meta["n_tokens"],
        "holdout_scored_tokens": s.holdout.reference.meta["n_tokens"],
        "ladder": list(profile.ladder), "searched": list(profile.searched), "sweep_chunks": s.config.sweep_chunk_count,
        "rest": list(profile.rest), "rest_ladder": list(profile.rest_ladder),
        "studies": {k: study_options(profile, k) for k in STUDIES},
        "targets_bpw": list(profile.targets), "presets": list(PRESETS),
        "objectives": ["size", "kld_p999"], "reference_point": {"file_bytes": ref[0], "log10_kld_p999": ref[1]},
        "methods": {}, "time_to_hypervolume": {}, "targets": {}, "holdout_frontiers": {}}
    for m in methods:
        entry = {"charged_s": round(m.clock, 1), "measured": len(m.points), "final_hv": final[m.label],
                 "frontier": [p.row() for p in frontier(m.points)]}
        if m.key.startswith("study"):
            entry["checkpoints"] = {str(k): {"charged_s": round(m.checkpoints[k][0], 1),
                                             "hv": hypervolume(m.points[:m.checkpoints[k][1]], ref)}
                                    for k in a.trials if k in m.checkpoints}
        result["methods"][m.label] = entry
    if hand_m:
        goal = final[hand_m.label]
        for m in methods:
            t_goal = time_to(curves[m.label], goal)
            result["time_to_hypervolume"][m.label] = {
                "t_to_hand_final_s": t_goal, "fraction_of_hand_time": None if t_goal is None else t_goal / hand_m.clock,
                "t_to_90pct_hand_final_s": time_to(curves[m.label], 0.9 * goal),
                "measurements_to_hand_final": count_to(curves[m.label], goal)}
    # held-out: each method's pick per target, tested against the study's (seed 0, its largest trial count)
    held: dict[tuple[str, str], dict] = {}

    def measure_held(p: Point, second: bool = True) -> dict:
        key = (p.method + p.run, p.name)
        if key not in held or (second and s.second is not None and "second" not in held[key]):
            held[key] = held_out(s, p, a.n_boot, second)
        return held[key]

    for target in profile.targets:
        rows = {}
        for m in methods:
            p = m.picks.get(target) or best_at(m.points, target)
            if p is None:
                continue
            h = measure_held(p)
            rows[m.label] = {**p.row(), "holdout": h["metrics"], "holdout_ci95": h["ci95"],
                             **({"second": h["second"]} if "second" in h else {})}
        for m in methods:
            if not m.key.startswith("study") or m.label not in rows:
                continue
            p_e = m.picks.get(target) or best_at(m.points, target)
            assert p_e is not None  # it has a row, so it has a pick
            t_e = measure_held(p_e)["tokens"]
            for other in methods:
                if other.key.startswith("study") or other.label not in rows:
                    continue
                p_o = other.picks.get(target) or best_at(other.points, target)
                assert p_o is not None
                t_o = measure_held(p_o)["tokens"]
                lo, hi = paired_bootstrap(t_o, t_e, statistic_of("kld_p999"), scored_per_chunk(CTX), n_boot=a.n_boot)
                rows[m.label].setdefault("vs", {})[other.label] = {
                    "diff_other_minus_study_ci95": [lo, hi],
                    "call": "study better" if lo > 0 else "other better" if hi < 0 else "tie"}
        baselines = [rows[m.label]["holdout"]["kld_p999"] for m in methods
                     if m.key in ("presets", "kld-greedy", "weight-error", "templates") and m.label in rows]
        for m in methods:
            if m.key.startswith("study") and m.label in rows and baselines:
                rows[m.label]["at_least_as_good_as_best_of_a_c_d_f"] = \
                    rows[m.label]["holdout"]["kld_p999"] <= min(baselines)
        result["targets"][f"{target:.2f}bpw"] = rows
    front_methods = set(a.holdout_frontiers) if a.holdout_frontiers is not None else {m.key for m in methods}
    holdout_fronts: dict[str, list] = {}
    for m in methods:
        if m.key not in front_methods or (m.key.startswith("study") and m.run != str(a.seeds[0])):
            continue
        front_rows = []
        for p in frontier(m.points):  # the figure's frontiers: held-out text only
            h = measure_held(p, second=False)
            front_rows.append({**p.row(), "holdout": h["metrics"], "holdout_ci95": h["ci95"]})
        holdout_fronts[m.label] = front_rows
        if len(front_rows) >= 3:
            result["holdout_frontiers"][m.label] = {
                "spearman_kld_p999": spearman([r["kld_p999"] for r in front_rows],
                                              [r["holdout"]["kld_p999"] for r in front_rows]),
                "points": front_rows}
        else:
            result["holdout_frontiers"][m.label] = {"spearman_kld_p999": None, "points": front_rows}
    for m in methods:  # the others: their picks at the targets, measured on the held-out text above
        if m.label not in holdout_fronts:
            picked = [result["targets"][f"{t:.2f}bpw"].get(m.label) for t in profile.targets]
            holdout_fronts[m.label + " (picks)"] = [r for r in picked if r]
    result["figures"] = plot(methods, curves, holdout_fronts, ROOT / "experiments" / "figures", ref,
                             a.figures or f"head-to-head{'' if a.profile == 'tiny-qwen35moe' else '-' + a.profile}",
                             a.profile)
    result["wall_s_this_run"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out_json, json.dumps(result, indent=1, default=float) + "\n")
    log(f"wrote {out_json}")
    print_tables(result)
    return 0


def print_tables(r: dict) -> None:
    print(f"reference point: {r['reference_point']}")
    print(f"{'method':<18}{'charged':>9}{'measured':>9}{'final HV':>12}{'t to hand HV':>14}{'fraction':>9}")
    for label, e in r["methods"].items():
        t = r["time_to_hypervolume"].get(label, {})
        tt, fr = t.get("t_to_hand_final_s"), t.get("fraction_of_hand_time")
        print(f"{label:<18}{e['charged_s']:>8.0f}s{e['measured']:>9}{e['final_hv']:>12.5g}"
              f"{'-' if tt is None else f'{tt:.0f}s':>14}{'-' if fr is None else f'{fr:.2f}':>9}")
    for target, rows in r["targets"].items():
        print(f"\n{target}: best recipe of each method (search text), held-out 99.9% KLD [95% chunk bootstrap]")
        for label, row in rows.items():
            lo, hi = row["holdout_ci95"]["kld_p999"]
            vs = ", ".join(f"{o}: {v['call']}" for o, v in row.get("vs", {}).items())
            print(f"  {label:<16}{row['bpw']:>7.3f} bpw  search {row['kld_p999']:.4f}  held-out "
                  f"{row['holdout']['kld_p999']:.4f} [{lo:.4f}, {hi:.4f}]  {vs}")


def markdown(r: dict) -> str:
    """The report's tables from a results file: time to hypervolume, and the picks at each size target."""
    lines = [("| method | measured | charged time | final HV (search text) | time to (b)'s final HV | fraction of (b)'s "
              "time | measurements to (b)'s final HV |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for label, e in r["methods"].items():
        t = r["time_to_hypervolume"].get(label, {})
        tt, fr, n = t.get("t_to_hand_final_s"), t.get("fraction_of_hand_time"), t.get("measurements_to_hand_final")
        lines.append(f"| {label} | {e['measured']} | {e['charged_s'] / 60:.1f} min | {e['final_hv']:.4g} | "
                     f"{'not reached' if tt is None else f'{tt / 60:.1f} min'} | {'-' if fr is None else f'{fr:.2f}'} | "
                     f"{'-' if n is None else n} |")
    lines += ["", "Each change to the study, before and after (search-text hypervolume after 20 / 40 / 80 searched trials, "
              "fraction of (b)'s time to its final hypervolume, and the held-out 99.9% KLD of the final pick per target):",
              "", "| study | seed | HV @20 | HV @40 | HV @80 | fraction of (b)'s time | "
              + " | ".join(f"held-out 99.9% @ {t}" for t in r["targets"]) + " |",
              "|---|---|---:|---:|---:|---:|" + "---:|" * len(r["targets"])]
    for label, e in r["methods"].items():
        if "checkpoints" not in e:
            continue
        key, seed = label.split(" seed ")
        hv = [e["checkpoints"].get(str(n), {}).get("hv") for n in (20, 40, 80)]
        fr = r["time_to_hypervolume"].get(label, {}).get("fraction_of_hand_time")
        picks = [rows.get(label, {}).get("holdout", {}).get("kld_p999") for rows in r["targets"].values()]
        lines.append(f"| {key} | {seed} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in hv)
                     + f" | {'not reached' if fr is None else f'{fr:.2f}'} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in picks) + " |")
    second = "second_holdout_text" in r
    for target, rows in r["targets"].items():
        lines += ["", (f"**{target}** (the best recipe at or under it by the search text; held-out 99.9% and 99% KLD "
                       "with 95% chunk-bootstrap intervals; the study's picks tested against each other method's, "
                       "paired chunk bootstrap of the held-out 99.9% KLD):"), "",
                  "| method | recipe | bpw | search 99.9% | held-out 99.9% [95%] | held-out 99% [95%] | "
                  + ("second domain 99.9% [95%] | " if second else "") + "vs the study |",
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if second else "") + "---|"]
        calls: dict[str, list[str]] = {}
        for label, row in rows.items():
            for other, v in row.get("vs", {}).items():
                kind, seed = label.split(" seed ")
                calls.setdefault(other, []).append(f"{kind} {seed}: {v['call'].replace('study ', '')}")
        for label, row in rows.items():
            h, ci = row["holdout"], row["holdout_ci95"]
            mark = ""
            if "at_least_as_good_as_best_of_a_c_d_f" in row:
                mark = "at least as good as the best of (a),(c),(d),(f)" if row["at_least_as_good_as_best_of_a_c_d_f"] \
                    else "worse than the best of (a),(c),(d),(f)"
            lines.append(f"| {label} | {row['name']} | {row['bpw']:.3f} | {row['kld_p999']:.3f} | {h['kld_p999']:.3f} "
                         f"[{ci['kld_p999'][0]:.3f}, {ci['kld_p999'][1]:.3f}] | {h['kld_p99']:.3f} "
                         f"[{ci['kld_p99'][0]:.3f}, {ci['kld_p99'][1]:.3f}] | "
                         + (f"{row['second']['metrics']['kld_p999']:.3f} [{row['second']['ci95']['kld_p999'][0]:.3f}, "
                            f"{row['second']['ci95']['kld_p999'][1]:.3f}] | " if second else "")
                         + f"{mark or '; '.join(calls.get(label, []))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit(0)
    sys.exit(main())
