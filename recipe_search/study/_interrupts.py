"""A trial abandoned by a second Ctrl-C: no Optuna traceback, and the trial is queued again; a trial failed by an
error is queued again too (`retry_failed`), a few times, and so is a killed worker's trial that never beat
(`fail_silent_trials`) and a failed trial whose retry a killed worker never enqueued (`retry_unretried`).

Optuna marks the interrupted trial FAIL and logs the KeyboardInterrupt with its traceback. A reference
recipe (or a surrogate seed) failed that way would never be measured, so the same parameters and the
attributes it was enqueued with are enqueued again, as the retry callback does for a killed worker.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..formats.files import DISK_FULL
from ._records import enqueued_attrs
from ._status import heartbeats
from ._storage import MAX_ATTEMPTS, MAX_RETRIES, claim


class _DropInterrupt(logging.Filter):
    """Drops Optuna's report of a trial failed by KeyboardInterrupt (its traceback, then its value line)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in record.getMessage():
            self.seen = True
            return False
        return not (self.seen and "failed with value" in record.getMessage())


class AbandonGuard:
    """``with guard: study.optimize(guard.track(objective), ...)``; re-queues the trial a Ctrl-C abandons."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.current: int | None = None  # the last trial whose objective started
        self.in_flight = False  # its objective is running now (not the callbacks after it)
        self.requeued: int | None = None
        self._filter = _DropInterrupt()

    def track(self, objective: Callable[[optuna.Trial], list[float]]) -> Callable[[optuna.Trial], list[float]]:
        def run(trial: optuna.Trial) -> list[float]:
            self.current, self.in_flight = trial.number, True
            try:
                return objective(trial)
            finally:
                self.in_flight = False

        return run

    def __enter__(self) -> AbandonGuard:
        logging.getLogger("optuna").addFilter(self._filter)
        for handler in logging.getLogger("optuna").handlers:
            handler.addFilter(self._filter)
        return self

    def __exit__(self, kind, value, tb) -> None:
        logging.getLogger("optuna").removeFilter(self._filter)
        for handler in logging.getLogger("optuna").handlers:
            handler.removeFilter(self._filter)
        if kind is not None and issubclass(kind, KeyboardInterrupt) and self.current is not None:
            self.requeued = requeue(self.study, self.current)


def _counts(reason: str | None) -> bool:
    """Whether a failure counts against `MAX_RETRIES`: an error does, a full disk or a killed worker (no reason)
    does not."""
    return reason is not None and reason != "" and DISK_FULL not in reason


def trial_params(trial: FrozenTrial) -> dict:
    """The parameters a trial was proposed or enqueued with (a trial taken but never run has only the latter)."""
    return trial.params or trial.system_attrs.get("fixed_params") or {}


def _retry(study: optuna.Study, trial: optuna.Trial | FrozenTrial, params: dict, reason: str | None, tries: int,
           attempts: int) -> bool:
    """Enqueue ``trial``, failed for ``reason``, again with ``params`` and its enqueue-time attributes, unless its line
    is at the bound: ``tries`` failures before it that count (`MAX_RETRIES`), ``attempts`` in all (`MAX_ATTEMPTS`);
    whether it was."""
    counts = _counts(reason)
    if (tries >= MAX_RETRIES and counts) or attempts + 1 >= MAX_ATTEMPTS or not params:
        return False
    study.enqueue_trial(params, user_attrs=enqueued_attrs(trial, requeued_from=trial.number, retries=tries + counts,
                                                          attempts=attempts + 1))
    return True


def retry_failed(study: optuna.Study, trial: optuna.Trial, reason: str) -> bool:
    """Enqueue a trial that is failing for ``reason`` (a full disk, a damaged cache entry) again, unless its line was
    retried `MAX_RETRIES` times already (`MAX_ATTEMPTS` with full disks); whether it was."""
    return _retry(study, trial, trial.params, reason, int(trial.user_attrs.get("retries", 0)),
                  int(trial.user_attrs.get("attempts", 0)))


#: the system attribute a retry claims on the trial it retries when it starts: one retry of a trial runs
RETRY_TAKEN = "recipe_search_retry_taken"


def retry_parent(trial: FrozenTrial) -> int | None:
    """The number of the trial that ``trial`` retries: Optuna's stale-trial retry names the chain in
    ``retry_history`` (and copies its parent's user attributes); ours names its parent in ``requeued_from``."""
    history = trial.system_attrs.get("retry_history")
    return history[-1] if history else trial.user_attrs.get("requeued_from")


def retried_elsewhere(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The trial that ``trial`` retries when another retry of it has started already, else None (and ``trial`` is
    now the one that runs).

    A trial can be enqueued again twice: a failed trial's retry is enqueued before Optuna records the failure, and
    a worker killed between the two leaves the trial RUNNING, so that its stale heartbeat enqueues it once more.
    Enqueueing is not atomic with anything, so the retries claim their parent as they start: the first one runs."""
    parent = retry_parent(study._storage.get_trial(trial._trial_id))
    if parent is None:
        return None
    parent_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, parent)
    return None if claim(study._storage, parent_id, RETRY_TAKEN) else parent


def retry_unretried(study: optuna.Study) -> list[int]:
    """Enqueue again every failed trial that has no retry and whose line is not at the bound (see `_retry`); returns
    their numbers.

    A trial is failed and enqueued again in two steps (Optuna's stale-trial callback, `fail_silent_trials`): a worker
    killed between them left the trial failed for good, its recipe lost. Two workers may both enqueue one trial
    here; its retries claim it as they start (`retried_elsewhere`), so one of them measures it."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    parents = {t.number: retry_parent(t) for t in trials}
    retried = set(parents.values())
    enqueued = []
    for t in trials:
        if t.state != TrialState.FAIL or t.number in retried:
            continue
        tries = attempts = 0  # the failures before it in its line: those that count, and all
        up = parents[t.number]
        while up is not None and up in by_number and attempts < MAX_ATTEMPTS:
            tries += _counts(by_number[up].user_attrs.get("failed"))
            attempts, up = attempts + 1, parents[up]
        if _retry(study, t, trial_params(t), t.user_attrs.get("failed"), tries, attempts):
            enqueued.append(t.number)
    return enqueued


def requeue(study: optuna.Study, number: int) -> int | None:
    """Enqueue trial ``number`` again (its parameters and enqueue-time attributes) unless it finished."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return None
    params = trial_params(trial)
    if not params:
        return None
    if trial.state == TrialState.RUNNING:  # interrupted before Optuna recorded the failure
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.enqueue_trial(params, user_attrs=enqueued_attrs(trial, requeued_from=number))
    return number


def fail_silent_trials(study: optuna.Study, grace: float) -> list[int]:
    """Fail, and enqueue again through the storage's stale-trial callback, the running trials that never recorded a
    heartbeat and started more than ``grace`` seconds ago (by this machine's clock); returns their numbers.

    A worker killed between taking a trial and its heartbeat thread's first beat leaves one, and Optuna's stale
    check (`fail_stale_trials`) only looks at trials with a heartbeat: it would stay RUNNING for good."""
    storage = study._storage
    beats, kept = heartbeats(storage, study.study_name)
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if not kept:
        return []
    now = datetime.now()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in beats or t.datetime_start is None or (now - t.datetime_start).total_seconds() <= grace:
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                failed.append(t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            continue
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return [storage.get_trial(i).number for i in failed]
