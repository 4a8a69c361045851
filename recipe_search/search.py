"""Optuna wiring of a study: storage, sampler, the objective (one trial = one recipe), early stopping,
and reading a study's frontier.

Optuna's storage is the only shared state: SQLite for one machine, PostgreSQL (or any RDB URL) for
many; every ``recipe-search worker`` on the same storage and study joins with the study's stored
config. Heartbeats fail the trials of killed workers and a retry callback re-enqueues them. The
sequence of a study (open, prepare, run, summarise) is `recipe_search.study.Study`'s.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .band import BandSteer
from .errors import RecipeSearchError, StopScoring
from .kld import TokenStats, default_max_entries
from .metrics import BY_NAME, FORECAST, MAXIMISE
from .pareto import hypervolume_2d, non_dominated
from .resolve import resolve
from .size import predict_size
from .space import StudyConfig
from .storage_names import mask_credentials, mask_message
from .trial_record import (
    Measurement,
    TrialRecord,
    record_duplicate,
    record_measurement,
    record_pruned,
    record_resolution,
    record_steered,
)

if TYPE_CHECKING:
    from .study import Study

MIN_CHUNKS_BEFORE_PRUNING = 2


def quiet_optuna() -> None:
    """Optuna's INFO lines off; its experimental-feature warning off for the heartbeats and the retry
    callback, which are the documented way to survive killed workers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(url: str, heartbeat: int | None = None, grace: int | None = None) -> RDBStorage:
    """Optuna RDB storage with heartbeats, so a killed worker's trial is failed and retried.

    A worker beats every ``heartbeat`` seconds ($RECIPE_SEARCH_HEARTBEAT, 30); a trial silent for
    ``grace`` seconds ($RECIPE_SEARCH_GRACE, 120) is failed and retried."""
    quiet_optuna()
    heartbeat = heartbeat or int(os.environ.get("RECIPE_SEARCH_HEARTBEAT", "30"))
    grace = grace or int(os.environ.get("RECIPE_SEARCH_GRACE", "120"))
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # sqlalchemy/driver errors: report, don't trace
        raise RecipeSearchError(f"cannot open study storage {mask_credentials(url)}: "
                                f"{mask_message(str(err).splitlines()[0], url)}") from None


def directions(config: StudyConfig) -> list[Literal["minimize", "maximize"]]:
    return ["maximize" if o in MAXIMISE else "minimize" for o in config.objectives]


def make_sampler(config: StudyConfig, worker_seed: int) -> optuna.samplers.BaseSampler:
    seed = config.seed * 1000 + worker_seed
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


def trial_values(config: StudyConfig, m: Measurement) -> list[float]:
    """The trial's objective values, in the config's order."""
    out = []
    for o in config.objectives:
        if o == "size":
            out.append(float(m.file_bytes))
        elif o == "bpw":
            out.append(m.bpw)
        elif o == "speed":
            out.append(m.speed.get("tg_tokens_per_s", 0.0))
        else:
            out.append(float(m.metrics[BY_NAME[o].metric_key]))
    return out


def same_measurement(study: optuna.Study, key: str, number: int, poll: float = 1.0) -> FrozenTrial | None:
    """The finished trial (complete or pruned) that measured the same resolved recipe, if any.

    When another worker is measuring it right now (an earlier trial, still running), wait for that
    trial instead of measuring it a second time; a killed worker's trial is failed by its heartbeat."""
    while True:
        same = [t for t in study.get_trials(deepcopy=False)
                if t.number != number and TrialRecord.from_trial(t).result_key == key]
        complete = [t for t in same if t.state == TrialState.COMPLETE and TrialRecord.from_trial(t).measurement]
        pruned = [t for t in same if t.state == TrialState.PRUNED]
        if complete or pruned:
            return (complete or pruned)[0]
        if not any(t.state == TrialState.RUNNING and t.number < number for t in same):
            return None
        optuna.storages.fail_stale_trials(study)
        time.sleep(poll)


class Objective:
    """One trial: propose ladder indices, resolve, reuse an identical measurement or measure."""

    def __init__(self, study: Study, on_trial_start: Callable[[int], None] | None = None) -> None:
        self.study = study
        self.on_trial_start = on_trial_start
        self._steer: BandSteer | None = None

    def _steered(self, trial: optuna.Trial, choice: dict[str, int]) -> dict[str, int]:
        """The proposal moved into the size band (see `band`); a moved one records where it went."""
        if self._steer is None:
            w = self.study.worker
            self._steer = BandSteer(self.study.space, w.inventory, self.study.config,
                                    w.imatrix.kv() if w.imatrix else None)
        moved = self._steer.steer(choice) if self._steer.active else choice
        if moved != choice:
            record_steered(trial, moved)
        return moved

    def __call__(self, trial: optuna.Trial) -> list[float]:
        study, config, worker = self.study, self.study.config, self.study.worker
        choice = {p.name: trial.suggest_int(p.name, 0, len(p.ladder) - 1) for p in study.space.parameters}
        role = TrialRecord.from_trial(trial)
        if config.band == "steer" and role.reference is None:
            choice = self._steered(trial, choice)
        recipe = study.space.recipe(choice, name=role.name)
        resolution = worker.resolve(recipe)
        key = worker.result_key(resolution)
        predicted = predict_size(resolution, worker.inventory, worker.imatrix.kv() if worker.imatrix else None)
        record_resolution(trial, key, predicted.file_bytes)
        band = _outside_band(config, predicted.file_bytes, predicted.bits_per_weight)
        if band:
            record_pruned(trial, band)
            raise optuna.TrialPruned(band)
        reference = role.reference is not None
        same = same_measurement(study.optuna_study, key, trial.number)
        if same is not None and same.state == TrialState.PRUNED and not reference:
            why = f"same resolved recipe as pruned trial {same.number}"
            record_pruned(trial, why)
            raise optuna.TrialPruned(why)
        if same is not None and same.state == TrialState.COMPLETE:
            record_duplicate(trial, same)
            return list(same.values)
        if self.on_trial_start:
            self.on_trial_start(trial.number)
        # references anchor the frontier and the report: they are always measured in full; the rule
        # forecasts KLD statistics only
        prune = config.prune and not reference and all(o in FORECAST for o in config.objectives[1:])
        on_chunk = _pruner(study.optuna_study, predicted.file_bytes, trial, config) if prune else None
        try:
            m = worker.measure(recipe, on_chunk=on_chunk, speed="speed" in config.objectives)
        except StopScoring as stop:
            raise optuna.TrialPruned(str(stop)) from None
        record_measurement(trial, recipe, m)
        return trial_values(config, m)


def _outside_band(config: StudyConfig, nbytes: int, bpw: float) -> str | None:
    if config.max_bytes is not None and nbytes > config.max_bytes:
        return f"{nbytes} bytes > max_bytes {config.max_bytes}"
    if config.max_bpw is not None and bpw > config.max_bpw:
        return f"{bpw:.3f} bpw > max_bpw {config.max_bpw}"
    if config.min_bpw is not None and bpw < config.min_bpw:
        return f"{bpw:.3f} bpw < min_bpw {config.min_bpw}"
    return None


@dataclass(frozen=True)
class FinishedPoint:
    """What the early-stopping rule knows of a finished trial: its size, mean KLD and KLD objectives."""

    file_bytes: int
    kld_mean: float
    objectives: dict[str, float]


def prune_decision(running_kld: np.ndarray, size: int, done: list[FinishedPoint], z: float = 3.0) -> str | None:
    """Stop when even an optimistic forecast of the trial's objectives is beaten by a finished recipe
    of the same size or smaller.

    The forecast takes the lower confidence bound of the running mean KLD (never a partial
    percentile) times the smallest objective/mean ratio any finished trial showed, so a recipe whose
    tail is unusually light for its mean is not cut. Objectives other than KLD statistics cannot be
    forecast that way, so with one of them in ``done`` nothing is ever stopped."""
    n = len(running_kld)
    if n < 2 or not done or any(o not in FORECAST for o in done[0].objectives):
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


def finished_point(record: TrialRecord, objectives: list[str]) -> FinishedPoint:
    return FinishedPoint(record.file_bytes, float(record.metrics["kld_mean"]),
                         {o: float(record.metrics[BY_NAME[o].metric_key]) for o in objectives[1:]})


def _pruner(study: optuna.Study, size: int, trial: optuna.Trial, config: StudyConfig) -> Callable[[int, TokenStats], None]:
    done = [finished_point(r, config.objectives) for r in map(TrialRecord.from_trial,
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if r.measurement is not None]

    def on_chunk(i: int, stats: TokenStats) -> None:
        if i + 1 < MIN_CHUNKS_BEFORE_PRUNING or i + 1 >= config.chunks:  # stopping after the last chunk saves nothing
            return
        why = prune_decision(stats.kld, size, done)
        if why:
            record_pruned(trial, f"after chunk {i + 1}: {why}", float(stats.kld.mean()))
            raise StopScoring(why)

    return on_chunk


def searched_trials_done(study: optuna.Study) -> int:
    """Finished trials of the search itself (enqueued references included, added presets not): what a
    trial budget counts when a study resumes."""
    return len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.FAIL)) if t.params])


def measured_records(study: optuna.Study) -> list[TrialRecord]:
    """Complete trials with their own measurement (a duplicate proposal repeats another trial's numbers)."""
    records = map(TrialRecord.from_trial, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return [r for r in records if r.measured]


def frontier_records(records: list[TrialRecord], dirs: list) -> list[TrialRecord]:
    """Complete trials on the Pareto front of the study's objectives."""
    if not records:
        return []
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE or d == "minimize" else -1.0 for d in dirs])
    pts = np.array([r.values for r in records]) * signs
    return [records[i] for i in non_dominated(pts)]


def hypervolumes(records: list[TrialRecord]) -> tuple[float, float]:
    """2-D hypervolume (size x first quality objective, both minimised, on log10 quality) of all trials and of
    the reference trials alone, against a reference point just beyond the worst of all."""
    pts = np.array([[r.values[0], math.log10(max(r.values[1], 1e-12))] for r in records if r.values])
    ref = pts.max(axis=0) + np.abs(pts.max(axis=0)) * 0.01 + 1e-9
    is_ref = np.array([r.reference is not None for r in records])
    return hypervolume_2d(pts, ref), hypervolume_2d(pts[is_ref], ref) if is_ref.any() else 0.0


def estimate_disk(study: Study) -> dict[str, int]:
    """Bytes the study needs on disk: reference cache (upper bound), the largest temporary GGUF."""
    inv, config = study.worker.inventory, study.config
    n_vocab = int(inv.headers[0].get(f"{inv.arch}.vocab_size", 0) or 0) or _vocab_from_header(inv)
    reference = (study.scored_tokens_per_trial * (default_max_entries(n_vocab) * 8 + 24)
                 + config.chunks * config.ctx * 4)
    largest = study.space.recipe({p.name: 0 for p in study.space.parameters})  # every ladder's biggest type
    biggest = predict_size(resolve(largest, inv), inv).file_bytes
    return {"reference_cache": reference, "temporary_gguf": biggest}


def _vocab_from_header(inv) -> int:
    kv = inv.headers[0].kv.get("tokenizer.ggml.tokens")
    return int(kv.array_len or 0) if kv else 0


def check_disk(study: Study) -> dict[str, int]:
    need = estimate_disk(study)
    for where in (study.worker.cache_dir, study.directory):
        where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(study.directory).free
    total = sum(need.values()) + (1 << 28)
    if free < total:
        raise RecipeSearchError(f"the study needs about {total / 2**30:.1f} GiB of disk but "
                                f"{study.directory} has {free / 2**30:.1f} GiB free")
    return need


def worker_seed() -> int:
    """Distinct per process, so concurrent workers do not propose the same trials."""
    return (os.getpid() * 7919 + int(time.time())) % 100_000


def study_summary(study: optuna.Study) -> dict:
    """Frontier, counts and hypervolumes of a study (JSON-able)."""
    complete = measured_records(study)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    front = sorted(frontier_records(complete, study.directions), key=lambda r: r.measured_values[0])
    hv_all, hv_ref = hypervolumes(complete) if complete else (0.0, 0.0)
    objectives = study.user_attrs.get("objectives", ["size", "kld_p999"])
    rows = [{"trial": r.number, "name": r.name, "reference": r.reference is not None, "file_bytes": r.file_bytes,
             "bpw": r.bpw, "values": dict(zip(objectives, r.measured_values)), "kld_mean": r.metrics.get("kld_mean")}
            for r in front]
    return {"trials": states, "measured": len(complete), "frontier": rows,
            "frontier_non_reference": sum(not r["reference"] for r in rows),
            "hypervolume_all": hv_all, "hypervolume_references": hv_ref, "objectives": objectives}
