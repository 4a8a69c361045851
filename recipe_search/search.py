"""The overnight study: Optuna searches ggml types per tensor type, the worker measures each proposal.

Optuna's storage is the only shared state: SQLite for one machine, PostgreSQL (or any RDB URL) for
many; every ``recipe-search worker`` on the same storage and study joins with the study's stored
config. Heartbeats fail the trials of killed workers and a retry callback re-enqueues them.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .errors import RecipeSearchError
from .kld import TokenStats, default_max_entries
from .pareto import hypervolume_2d, non_dominated
from .quantize import ImatrixInput
from .recipe import Recipe, recipe_from_dict
from .resolve import resolve
from .score import ScoreSettings, StopScoring
from .size import predict_size
from .space import MAXIMISE, SearchSpace, StudyConfig, build_space, reference_recipes
from .surrogate import enqueue_seeds
from .text import TextSource
from .worker import Measurement, Worker, clean_workdir, encode_array

#: a worker beats every HEARTBEAT seconds; a trial silent for GRACE seconds is failed and retried
HEARTBEAT_SECONDS = int(os.environ.get("RECIPE_SEARCH_HEARTBEAT", "30"))
GRACE_SECONDS = int(os.environ.get("RECIPE_SEARCH_GRACE", "120"))
MIN_CHUNKS_BEFORE_PRUNING = 2
#: metric name of each quality objective in the worker's metrics
METRIC_OF = {"kld_p999": "kld_p999", "kld_p99": "kld_p99", "kld_mean": "kld_mean", "ppl_ratio": "ppl_ratio",
             "same_top": "same_top", "speed": "tg_tokens_per_s"}

optuna.logging.set_verbosity(optuna.logging.WARNING)
# heartbeats and the retry callback are marked experimental; they are the documented way to survive killed workers
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(url: str, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> RDBStorage:
    """Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried."""
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # sqlalchemy/driver errors: report, don't trace
        shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)  # never print a password
        raise RecipeSearchError(f"cannot open study storage {shown}: {str(err).splitlines()[0]}") from None


def directions(config: StudyConfig) -> list[str]:
    return ["maximize" if o in MAXIMISE else "minimize" for o in config.objectives]


def make_sampler(config: StudyConfig, worker_seed: int) -> optuna.samplers.BaseSampler:
    seed = config.seed * 1000 + worker_seed
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


@dataclass
class StudyContext:
    """A study opened for running: storage, config, search space and the worker measuring trials."""

    study: optuna.Study
    config: StudyConfig
    space: SearchSpace
    worker: Worker
    directory: Path


def open_study(storage: RDBStorage, name: str, model: Path | None, config: StudyConfig | None,
               directory: Path, cache_dir: Path, worker_seed: int = 0) -> StudyContext:
    """Create the study (storing its config and model) or load it and its stored config."""
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if name in summaries:
        stored = summaries[name].user_attrs
        stored_config = StudyConfig.model_validate(json.loads(stored["config"]))
        if config is not None and config != stored_config:
            raise RecipeSearchError(f"study {name!r} exists with another config; use --study to start a new one")
        config = stored_config
        stored_model = Path(stored["model"])
        if model is not None and model.resolve() != stored_model:
            raise RecipeSearchError(f"study {name!r} belongs to model {stored_model}")
        model = stored_model
    if model is None:
        raise RecipeSearchError(f"no study {name!r} in this storage (start it with `recipe-search search MODEL`)")
    config = config or StudyConfig()
    study = optuna.create_study(storage=storage, study_name=name, directions=directions(config),
                                sampler=make_sampler(config, worker_seed), load_if_exists=True)
    if "config" not in study.user_attrs:
        study.set_user_attr("config", config.model_dump_json())
        study.set_user_attr("model", str(model.resolve()))
        study.set_user_attr("objectives", list(config.objectives))
    imatrix = ImatrixInput.from_file(config.imatrix) if config.imatrix else None
    settings = ScoreSettings(text=TextSource.parse(config.text), ctx=config.ctx, chunks=config.chunks,
                             threads=config.threads)
    worker = Worker(model, settings, cache_dir, directory / "work" / socket.gethostname(), imatrix=imatrix)
    space = build_space(config, worker.inventory, has_imatrix=imatrix is not None)
    return StudyContext(study, config, space, worker, directory)


def trial_values(config: StudyConfig, m: Measurement) -> list[float]:
    out = []
    for o in config.objectives:
        if o == "size":
            out.append(float(m.file_bytes))
        elif o == "bpw":
            out.append(m.bpw)
        elif o == "speed":
            out.append(m.speed.get("tg_tokens_per_s", 0.0))
        else:
            out.append(float(m.metrics[METRIC_OF[o]]))
    return out


MEASUREMENT_ATTRS = ("recipe", "file_bytes", "bpw", "metrics", "fallbacks", "seconds", "speed", "kld_tokens")


def measurement_attrs(recipe: Recipe, m: Measurement) -> dict:
    """What a trial stores of its measurement (optuna-dashboard shows these)."""
    return {"recipe": recipe.to_yaml(), "file_bytes": m.file_bytes, "bpw": m.bpw, "metrics": m.metrics,
            "fallbacks": m.fallbacks, "seconds": m.seconds, "speed": m.speed,
            "kld_tokens": encode_array(m.kld_tokens)}


def same_measurement(study: optuna.Study, key: str, number: int, poll: float = 1.0) -> FrozenTrial | None:
    """The finished trial (complete or pruned) that measured the same resolved recipe, if any.

    When another worker is measuring it right now (an earlier trial, still running), wait for that
    trial instead of measuring it a second time; a killed worker's trial is failed by its heartbeat."""
    while True:
        same = [t for t in study.get_trials(deepcopy=False) if t.number != number and t.user_attrs.get("result_key") == key]
        complete = [t for t in same if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs]
        pruned = [t for t in same if t.state == TrialState.PRUNED]
        if complete or pruned:
            return (complete or pruned)[0]
        if not any(t.state == TrialState.RUNNING and t.number < number for t in same):
            return None
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll)


class Objective:
    """One trial: propose ladder indices, resolve, reuse an identical measurement or measure."""

    def __init__(self, ctx: StudyContext, on_trial_start: Callable[[int], None] | None = None) -> None:
        self.ctx = ctx
        self.on_trial_start = on_trial_start
        self._steer = None

    def _steered(self, trial: optuna.Trial, choice: dict[str, int]) -> dict[str, int]:
        """The proposal moved into the size band (see `band`); a moved one records where it went."""
        from .band import BandSteer

        if self._steer is None:
            w = self.ctx.worker
            self._steer = BandSteer(self.ctx.space, w.inventory, self.ctx.config, w.imatrix.kv() if w.imatrix else None)
        moved = self._steer.steer(choice) if self._steer.active else choice
        if moved != choice:
            trial.set_user_attr("steered_to", moved)
        return moved

    def __call__(self, trial: optuna.Trial) -> list[float]:
        ctx, config = self.ctx, self.ctx.config
        choice = {p.name: trial.suggest_int(p.name, 0, len(p.ladder) - 1) for p in ctx.space.parameters}
        if config.band == "steer" and "reference" not in trial.user_attrs:
            choice = self._steered(trial, choice)
        recipe = ctx.space.recipe(choice, name=trial.user_attrs.get("reference") or f"trial-{trial.number}")
        resolution = ctx.worker.resolve(recipe)
        key = ctx.worker.result_key(resolution)
        trial.set_user_attr("result_key", key)
        predicted = predict_size(resolution, ctx.worker.inventory, ctx.worker.imatrix.kv() if ctx.worker.imatrix else None)
        trial.set_user_attr("predicted_bytes", predicted.file_bytes)
        band = _outside_band(config, predicted.file_bytes, predicted.bits_per_weight)
        if band:
            trial.set_user_attr("pruned", band)
            raise optuna.TrialPruned(band)
        reference = "reference" in trial.user_attrs
        same = same_measurement(ctx.study, key, trial.number)
        if same is not None and same.state == TrialState.PRUNED and not reference:
            trial.set_user_attr("pruned", f"same resolved recipe as pruned trial {same.number}")
            raise optuna.TrialPruned(f"same resolved recipe as pruned trial {same.number}")
        if same is not None and same.state == TrialState.COMPLETE:
            for k in MEASUREMENT_ATTRS:
                trial.set_user_attr(k, same.user_attrs[k])
            trial.set_user_attr("duplicate_of", same.number)
            return list(same.values)
        if self.on_trial_start:
            self.on_trial_start(trial.number)
        # references anchor the frontier and the report: they are always measured in full
        prune = config.prune and not reference
        on_chunk = _pruner(ctx.study, predicted.file_bytes, trial, config) if prune else None
        try:
            m = ctx.worker.measure(recipe, on_chunk=on_chunk, speed="speed" in config.objectives)
        except StopScoring as stop:
            raise optuna.TrialPruned(str(stop)) from None
        for k, v in measurement_attrs(recipe, m).items():
            trial.set_user_attr(k, v)
        if m.cached:
            trial.set_user_attr("cached_measurement", True)
        return trial_values(config, m)


def _outside_band(config: StudyConfig, nbytes: int, bpw: float) -> str | None:
    if config.max_bytes is not None and nbytes > config.max_bytes:
        return f"{nbytes} bytes > max_bytes {config.max_bytes}"
    if config.max_bpw is not None and bpw > config.max_bpw:
        return f"{bpw:.3f} bpw > max_bpw {config.max_bpw}"
    if config.min_bpw is not None and bpw < config.min_bpw:
        return f"{bpw:.3f} bpw < min_bpw {config.min_bpw}"
    return None


#: objectives the early-stopping rule can bound from the running mean KLD
KLD_OBJECTIVES = ("kld_mean", "kld_p99", "kld_p999")


@dataclass(frozen=True)
class Measured:
    """What the early-stopping rule knows of a finished trial: its size, mean KLD and KLD objectives."""

    file_bytes: int
    kld_mean: float
    objectives: dict[str, float]


def prune_decision(running_kld: np.ndarray, size: int, done: list[Measured], z: float = 3.0) -> str | None:
    """Stop when even an optimistic forecast of the trial's objectives is beaten by a finished recipe
    of the same size or smaller.

    The forecast takes the lower confidence bound of the running mean KLD (never a partial
    percentile) times the smallest objective/mean ratio any finished trial showed, so a recipe whose
    tail is unusually light for its mean is not cut. Objectives other than KLD statistics cannot be
    forecast that way, so with one of them in ``done`` nothing is ever stopped."""
    n = len(running_kld)
    if n < 2 or not done or any(o not in KLD_OBJECTIVES for o in done[0].objectives):
        return None
    mean = float(running_kld.mean())
    lower = mean - z * float(running_kld.std(ddof=1)) / math.sqrt(n)
    if lower <= 0:
        return None
    forecast = {o: lower * min(d.objectives[o] / d.kld_mean for d in done if d.kld_mean > 0)
                for o in done[0].objectives}
    for d in done:
        if d.file_bytes <= size and all(v < forecast[o] for o, v in d.objectives.items()):
            shown = ", ".join(f"{o} >= {forecast[o]:.4g} vs {v:.4g}" for o, v in d.objectives.items())
            return f"mean KLD {mean:.4g} (lower bound {lower:.4g}): {shown} of a recipe of <= size"
    return None


def measured_for_pruning(trial: FrozenTrial, objectives: list[str]) -> Measured:
    metrics = trial.user_attrs["metrics"]
    return Measured(int(trial.user_attrs["file_bytes"]), float(metrics["kld_mean"]),
                    {o: float(metrics[METRIC_OF[o]]) for o in objectives[1:]})


def _pruner(study: optuna.Study, size: int, trial: optuna.Trial, config: StudyConfig) -> Callable[[int, TokenStats], None]:
    done = [measured_for_pruning(t, config.objectives)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]

    def on_chunk(i: int, stats: TokenStats) -> None:
        if i + 1 < MIN_CHUNKS_BEFORE_PRUNING or i + 1 >= config.chunks:  # stopping after the last chunk saves nothing
            return
        why = prune_decision(stats.kld, size, done)
        if why:
            trial.set_user_attr("pruned", f"after chunk {i + 1}: {why}")
            trial.set_user_attr("partial_kld_mean", float(stats.kld.mean()))
            raise StopScoring(why)

    return on_chunk


def add_presets(ctx: StudyContext, log: Callable[[str], None]) -> None:
    """Measure the llama.cpp presets (outside the search space) once and add them as finished trials."""
    done = {t.user_attrs.get("reference") for t in ctx.study.get_trials(deepcopy=False)}
    for recipe, choice in reference_recipes(ctx.config, ctx.space, ctx.worker.inventory):
        if choice is not None or recipe.name in done:
            continue
        log(f"measuring reference {recipe.name}")
        m = ctx.worker.measure(recipe, speed="speed" in ctx.config.objectives)
        attrs = {"reference": recipe.name, "result_key": ctx.worker.result_key(ctx.worker.resolve(recipe)),
                 **measurement_attrs(recipe, m)}
        ctx.study.add_trial(optuna.trial.create_trial(values=trial_values(ctx.config, m), params={},
                                                      distributions={}, user_attrs=attrs))


def searched_trials_done(study: optuna.Study) -> int:
    """Finished trials of the search itself (enqueued references included, added presets not): what a
    trial budget counts when a study resumes."""
    return len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.FAIL)) if t.params])


def enqueue_references(ctx: StudyContext) -> int:
    """Enqueue the uniform recipes over the ladder (and surrogate seeds) once per study."""
    if ctx.study.user_attrs.get("references_enqueued"):
        return 0
    n = 0
    for recipe, choice in reference_recipes(ctx.config, ctx.space, ctx.worker.inventory):
        if choice is not None:
            ctx.study.enqueue_trial(choice, user_attrs={"reference": recipe.name}, skip_if_exists=True)
            n += 1
    n += enqueue_seeds(ctx)
    ctx.study.set_user_attr("references_enqueued", True)
    return n


# -- progress --------------------------------------------------------------------------------------
class Progress:
    """A one-line progress display: trials, frontier size, best quality at a few sizes, ETA."""

    def __init__(self, ctx: StudyContext, budget: int | None, timeout: float | None, quiet: bool) -> None:
        self.ctx, self.budget, self.timeout, self.quiet = ctx, budget, timeout, quiet
        self.start = time.perf_counter()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.done += 1
        if self.quiet:
            return
        front = frontier_trials(measured_trials(study), study.directions)
        elapsed = time.perf_counter() - self.start
        per = elapsed / self.done
        eta = []
        if self.budget:
            eta.append((self.budget - self.done) * per)
        if self.timeout:
            eta.append(self.timeout - elapsed)
        eta_txt = f" | ETA {_duration(max(min(eta), 0))}" if eta else ""
        best = _best_at_sizes(front)
        state = trial.state.name.lower() + (" (dup)" if "duplicate_of" in trial.user_attrs else
                                            " (cached)" if trial.user_attrs.get("cached_measurement") else "")
        line = (f"[{self.done}{'/' + str(self.budget) if self.budget else ''}] trial {trial.number} {state} | "
                f"frontier {len(front)} | {best}{eta_txt}")
        end = "\r" if self.tty else "\n"
        print(line.ljust(110)[:160], end=end, file=sys.stderr, flush=True)


def _best_at_sizes(front: list[FrozenTrial]) -> str:
    if not front:
        return "no frontier yet"
    pts = sorted((t.user_attrs.get("bpw", 0.0), t.values[1]) for t in front)
    marks = [pts[0], pts[len(pts) // 2], pts[-1]]
    return "best " + ", ".join(f"{v:.3g}@{b:.2f}bpw" for b, v in dict(marks).items())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``8h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise RecipeSearchError(f"bad duration {text!r} (use e.g. 90s, 15m, 8h)") from None


def measured_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials with their own measurement (a duplicate proposal repeats another trial's numbers)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and "duplicate_of" not in t.user_attrs and "metrics" in t.user_attrs]


def frontier_trials(trials: list[FrozenTrial], dirs: list) -> list[FrozenTrial]:
    """Complete trials on the Pareto front of the study's objectives."""
    if not trials:
        return []
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE or d == "minimize" else -1.0 for d in dirs])
    pts = np.array([t.values for t in trials]) * signs
    return [trials[i] for i in non_dominated(pts)]


def hypervolumes(trials: list[FrozenTrial]) -> tuple[float, float]:
    """2-D hypervolume (size x first quality objective, both minimised, on log10 quality) of all trials and of
    the reference trials alone, against a reference point just beyond the worst of all."""
    pts = np.array([[t.values[0], math.log10(max(t.values[1], 1e-12))] for t in trials])
    ref = pts.max(axis=0) + np.abs(pts.max(axis=0)) * 0.01 + 1e-9
    is_ref = np.array(["reference" in t.user_attrs for t in trials])
    return hypervolume_2d(pts, ref), hypervolume_2d(pts[is_ref], ref) if is_ref.any() else 0.0


@dataclass
class RunOutcome:
    trials_run: int
    stopped_by_user: bool


def run(ctx: StudyContext, n_trials: int | None, timeout: float | None, quiet: bool,
        log: Callable[[str], None]) -> RunOutcome:
    """Run trials until the budget (trials or time) is spent; Ctrl-C finishes the trial in flight first."""
    removed = clean_workdir(ctx.worker.workdir)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by a killed worker")
    stop_requested = {"flag": False}
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if stop_requested["flag"]:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop_requested["flag"] = True
        log("\nstopping after the trial in flight (Ctrl-C again to abandon it)")

    def stop_if_asked(study: optuna.Study, trial: FrozenTrial) -> None:
        if stop_requested["flag"]:
            study.stop()

    progress = Progress(ctx, n_trials, timeout, quiet)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        ctx.study.optimize(Objective(ctx), n_trials=n_trials, timeout=timeout, callbacks=[progress, stop_if_asked],
                           catch=(RecipeSearchError, OSError, MemoryError))
    finally:
        signal.signal(signal.SIGINT, previous)
        if not quiet and progress.tty:
            print(file=sys.stderr)
    return RunOutcome(progress.done, stop_requested["flag"])


def estimate_disk(ctx: StudyContext) -> dict[str, int]:
    """Bytes the study needs on disk: reference cache (upper bound), the largest temporary GGUF."""
    inv = ctx.worker.inventory
    n_tokens = ctx.config.chunks * (ctx.config.ctx - 1 - ctx.config.ctx // 2)
    n_vocab = int(inv.headers[0].get(f"{inv.arch}.vocab_size", 0) or 0) or _vocab_from_header(inv)
    reference = n_tokens * (default_max_entries(n_vocab) * 8 + 24) + ctx.config.chunks * ctx.config.ctx * 4
    largest = ctx.space.recipe({p.name: 0 for p in ctx.space.parameters})  # every ladder's biggest type
    biggest = predict_size(resolve(largest, inv), inv).file_bytes
    return {"reference_cache": reference, "temporary_gguf": biggest}


def _vocab_from_header(inv) -> int:
    kv = inv.headers[0].kv.get("tokenizer.ggml.tokens")
    return int(kv.array_len or 0) if kv else 0


def check_disk(ctx: StudyContext, cache_dir: Path) -> dict[str, int]:
    need = estimate_disk(ctx)
    for where in (cache_dir, ctx.directory):
        where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(ctx.directory).free
    total = sum(need.values()) + (1 << 28)
    if free < total:
        raise RecipeSearchError(f"the study needs about {total / 2**30:.1f} GiB of disk but "
                                f"{ctx.directory} has {free / 2**30:.1f} GiB free")
    return need


def load_trial_recipe(t: FrozenTrial) -> Recipe:
    import yaml

    return recipe_from_dict(yaml.safe_load(t.user_attrs["recipe"]), f"trial {t.number}")


def worker_seed() -> int:
    """Distinct per process, so concurrent workers do not propose the same trials."""
    return (os.getpid() * 7919 + int(time.time())) % 100_000


def study_summary(study: optuna.Study) -> dict:
    """Frontier, counts and hypervolumes of a study (JSON-able)."""
    complete = measured_trials(study)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    front = sorted(frontier_trials(complete, study.directions), key=lambda t: t.values[0])
    hv_all, hv_ref = hypervolumes(complete) if complete else (0.0, 0.0)
    objectives = study.user_attrs.get("objectives", ["size", "kld_p999"])
    rows = [{"trial": t.number, "name": t.user_attrs.get("reference") or f"trial-{t.number}",
             "reference": "reference" in t.user_attrs, "file_bytes": t.user_attrs.get("file_bytes"),
             "bpw": t.user_attrs.get("bpw"), "values": dict(zip(objectives, t.values)),
             "kld_mean": t.user_attrs.get("metrics", {}).get("kld_mean")} for t in front]
    return {"trials": states, "measured": len(complete), "frontier": rows,
            "frontier_non_reference": sum(not r["reference"] for r in rows),
            "hypervolume_all": hv_all, "hypervolume_references": hv_ref, "objectives": objectives}
