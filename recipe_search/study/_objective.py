"""The objective: one trial = one recipe, proposed, steered into the size band, resolved, reused when an
identical recipe was measured, else measured (with early stopping)."""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..core.config import StudyConfig
from ..core.devices import DeviceBudget
from ..core.metrics import BY_NAME, FORECAST
from ..core.recipe import Recipe
from ..core.size import predict_size
from ..core.space import SearchSpace
from ..engine.measurement import Measurement
from ..engine.prefill import AHEAD
from ..engine.worker import Worker
from ..errors import RecipeSearchError, StopScoring
from ._band import BandSteer
from ._early_stopping import chunk_plan, chunk_pruner
from ._interrupts import retried_elsewhere, retry_failed, trial_params
from ._records import (
    TrialRecord,
    record_duplicate,
    record_failed,
    record_measurement,
    record_pruned,
    record_resolution,
    record_steered,
)


def trial_values(config: StudyConfig, m: Measurement) -> list[float]:
    """The trial's objective values, in the config's order."""
    out = []
    for o in config.objectives:
        if o == "size":
            out.append(float(m.file_bytes))
        elif o == "bpw":
            out.append(m.bpw)
        elif o == "speed":
            out.append(m.speed.tg_tokens_per_s if m.speed else 0.0)
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

    def __init__(self, space: SearchSpace, config: StudyConfig, worker: Worker, study: optuna.Study,
                 on_trial_start: Callable[[int], None] | None = None) -> None:
        self.space, self.config, self.worker, self.study = space, config, worker, study
        self.on_trial_start = on_trial_start
        self._steer: BandSteer | None = None
        self._budget: DeviceBudget | None = None

    def _steered(self, trial: optuna.Trial, choice: dict[str, int]) -> dict[str, int]:
        """The proposal moved into the size band (see `band`); a moved one records where it went."""
        if self._steer is None:
            w = self.worker
            self._steer = BandSteer(self.space, w.inventory, self.config,
                                    w.imatrix.kv() if w.imatrix else None)
        moved = self._steer.steer(choice) if self._steer.active else choice
        if moved != choice:
            record_steered(trial, moved)
        return moved

    def __call__(self, trial: optuna.Trial) -> list[float]:
        space, config, worker = self.space, self.config, self.worker
        parent = retried_elsewhere(self.study, trial)
        if parent is not None:  # a second copy of a retry: one of them measures
            why = f"trial {parent} is retried by another trial already"
            record_pruned(trial, why)
            trial.set_user_attr("result_key", None)  # Optuna's retry copies its parent's: this one measured nothing
            raise optuna.TrialPruned(why)
        choice = {p.name: trial.suggest_int(p.name, 0, len(p.ladder) - 1) for p in space.parameters}
        role = TrialRecord.from_trial(trial)
        if config.band == "steer" and role.reference is None:
            choice = self._steered(trial, choice)
        recipe = space.recipe(choice, name=role.name)
        resolution = worker.resolve(recipe)
        key = worker.result_key(resolution)
        predicted = predict_size(resolution, worker.inventory, worker.imatrix.kv() if worker.imatrix else None)
        if self._budget is None:
            self._budget = config.device_budget(worker.inventory)
        devices = self._budget.totals(predicted)
        record_resolution(trial, key, predicted.file_bytes, devices)
        band = _outside_band(config, predicted.file_bytes, predicted.bits_per_weight) or self._budget.excess(devices)
        if band:
            record_pruned(trial, band)
            raise optuna.TrialPruned(band)
        reference = role.reference is not None
        same = same_measurement(self.study, key, trial.number)
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
        plan = chunk_plan(config, predicted.bits_per_weight, predicted.file_bytes, devices)
        on_chunk = chunk_pruner(self.study, predicted.file_bytes, trial, config, plan) if prune else None
        try:
            m = worker.measure(resolution, on_chunk=on_chunk, speed=config.speed_placement(), chunks=plan.chunks,
                               then=self._ahead())
        except StopScoring as stop:
            raise optuna.TrialPruned(str(stop)) from None
        except (RecipeSearchError, OSError) as err:  # the study records the trial as failed, with the reason
            record_failed(trial, str(err))
            retry_failed(self.study, trial, str(err))  # a full disk or a damaged cache entry is gone the next time
            raise
        record_measurement(trial, recipe, m)
        return trial_values(config, m)

    def _ahead(self) -> list[Recipe]:
        """The recipes of the next enqueued trials (`AHEAD` of them), for a worker that quantizes while scoring."""
        if not self.worker.prefill_threads:
            return []
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        names = {p.name for p in self.space.parameters}
        fixed = (trial_params(t) for t in sorted(waiting, key=lambda t: t.number))
        return [self.space.recipe(f) for f in fixed if set(f) == names][:AHEAD]


def _outside_band(config: StudyConfig, nbytes: int, bpw: float) -> str | None:
    if config.max_bytes is not None and nbytes > config.max_bytes:
        return f"{nbytes} bytes > max_bytes {config.max_bytes}"
    if config.max_bpw is not None and bpw > config.max_bpw:
        return f"{bpw:.3f} bpw > max_bpw {config.max_bpw}"
    if config.min_bpw is not None and bpw < config.min_bpw:
        return f"{bpw:.3f} bpw < min_bpw {config.min_bpw}"
    return None
