"""Retries: a killed worker's trial, a failed trial, and never two retries of one trial measuring it twice."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from recipe_search.core.config import StudyConfig
from recipe_search.study._interrupts import fail_silent_trials, retry_failed
from recipe_search.study._storage import storage_for

# trials taken with `ask` on a storage with heartbeats, as a worker takes them, without `optimize`
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def test_killed_trial_without_a_heartbeat_is_failed_and_retried(tmp_path) -> None:
    """A worker killed after taking a trial and before its first heartbeat (seen in the soak test) left the trial
    RUNNING for good: Optuna's stale check only looks at trials with a heartbeat."""
    storage = storage_for(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1}, user_attrs={"seed": "s1"})
    taken = study.ask({"x": optuna.distributions.IntDistribution(0, 3)})  # RUNNING, and no heartbeat thread
    assert fail_silent_trials(study, grace=60) == []  # not silent for long yet
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # Optuna's own check leaves it
    assert fail_silent_trials(study, grace=1) == [taken.number]
    assert fail_silent_trials(study, grace=1) == []
    failed, retry = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.WAITING and retry.system_attrs["failed_trial"] == taken.number
    assert retry.params == {"x": 1} and retry.user_attrs == {"seed": "s1"}


def _study(tmp_path, monkeypatch, model):
    """A study of one parameter on ``model`` whose trials go stale after a second, and the parameter's name."""
    from recipe_search.study.study import Study

    monkeypatch.setenv("RECIPE_SEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("RECIPE_SEARCH_GRACE", "1")
    config = StudyConfig.model_validate({"ctx": 128, "chunks": 2, "objectives": ["size", "kld_p99"],
                                         "surrogate_seeds": 0, "refit_every": 0, "sampler": "random",
                                         "space": {"tensor_types": ["ffn_up"], "ladder": ["Q8_0", "Q4_0"]},
                                         "references": {"uniform": [], "presets": []}})
    study = Study.open(model, config, name="s", storage=f"sqlite:///{tmp_path / 'study.db'}",
                       directory=tmp_path / "s", cache=tmp_path / "cache")
    return study, study.space.parameters[0].name


def test_stale_trial_failed_by_two_workers_is_measured_once(tmp_path, monkeypatch, dense_model) -> None:
    """Two workers failing the same stale trial at once both succeed on SQLite (no row lock), and each enqueues it
    again: the second copy to start is pruned, naming the trial retried."""
    study, name = _study(tmp_path, monkeypatch, dense_model)
    opt = study.optuna_study
    opt.enqueue_trial({name: 1})
    taken = opt.ask()
    taken.suggest_int(name, 0, 1)
    opt.tell(taken, state=TrialState.FAIL)
    retry = opt._storage.get_heartbeat_stale_trial_callback()
    for _ in range(2):  # what each of the two workers does once it has set the trial FAIL
        retry(opt, opt.trials[0])
    study.run(n_trials=2)
    assert [t.state for t in opt.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED]
    assert opt.trials[2].user_attrs["pruned"] == f"trial {taken.number} is retried by another trial already"


def test_failed_trial_killed_before_optuna_records_it_is_measured_once(tmp_path, monkeypatch, dense_model) -> None:
    """A trial that fails is enqueued again before Optuna records the failure; a worker killed in between leaves it
    RUNNING, and its stale heartbeat enqueues it once more. Both copies measured the recipe: the soak test saw it
    COMPLETE twice. The second copy to start is pruned, naming the trial retried."""
    study, name = _study(tmp_path, monkeypatch, dense_model)
    opt = study.optuna_study
    opt.enqueue_trial({name: 1})
    taken = opt.ask()  # the worker that takes it...
    taken.suggest_int(name, 0, 1)
    opt._storage.record_heartbeat(taken._trial_id)
    assert retry_failed(opt, taken, "a damaged entry")  # ...fails it, enqueues it again, and is killed before
    # Optuna records FAIL
    time.sleep(2.2)  # SQLite's clock has whole seconds
    optuna.storages.fail_stale_trials(opt)  # another worker finds it stale and enqueues it again
    assert [t.state for t in opt.trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    study.run(n_trials=2)
    assert [t.state for t in opt.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED]
    assert opt.trials[2].user_attrs["pruned"] == f"trial {taken.number} is retried by another trial already"


def test_two_workers_cannot_both_take_one_waiting_trial(tmp_path, monkeypatch) -> None:
    """Optuna takes a waiting trial by reading it `FOR UPDATE` and writing RUNNING, which SQLite does not lock: two
    workers both took one trial and both ran it (the soak test; and "Cannot tell a COMPLETE trial" under load).
    Here each worker's read is held for a moment before its write, as a loaded machine holds it."""
    import threading

    from optuna.storages._rdb import models

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(storage=storage_for(url, heartbeat=1, grace=1), study_name="s")
    study.enqueue_trial({"x": 1})
    trial_id = study.trials[0]._trial_id
    read = models.TrialModel.find_or_raise_by_id

    def slow_read(*args, **kwargs):
        row = read(*args, **kwargs)
        time.sleep(0.5)
        return row

    monkeypatch.setattr(models.TrialModel, "find_or_raise_by_id", slow_read)
    workers = [storage_for(url, heartbeat=1, grace=1) for _ in range(2)]  # two processes' connections
    taken: list[bool] = []
    threads = [threading.Thread(target=lambda w=w: taken.append(w.set_trial_state_values(trial_id, TrialState.RUNNING)))
               for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [False, True]


def test_failed_trial_whose_retry_was_never_enqueued_is_retried(tmp_path) -> None:
    """A trial is failed and enqueued again in two steps: a worker killed between them (the soak test, at a worker's
    start) left it failed for good. Every failed trial without a retry is enqueued again, up to MAX_RETRIES in its
    line."""
    from recipe_search.study._interrupts import MAX_RETRIES, retry_unretried

    storage = storage_for(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s")
    study.enqueue_trial({"x": 1}, user_attrs={"seed": "s1"})

    def fail() -> None:
        """Fail the next trial with an error, its worker killed before the retry was enqueued."""
        taken = study.ask({"x": optuna.distributions.IntDistribution(0, 3)})
        taken.set_user_attr("failed", "llama.cpp aborted")
        study.tell(taken, state=TrialState.FAIL)

    fail()
    for _ in range(MAX_RETRIES):
        failed = study.trials[-1].number
        assert retry_unretried(study) == [failed]
        assert retry_unretried(study) == []  # retried once
        retry = study.trials[-1]
        assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == {"x": 1}
        assert retry.user_attrs["seed"] == "s1" and retry.user_attrs["requeued_from"] == failed
        fail()
    assert retry_unretried(study) == []  # its line has had MAX_RETRIES retries
    assert len(study.trials) == MAX_RETRIES + 1


def test_a_dropped_copy_of_a_retry_does_not_prune_its_recipe(tmp_path, monkeypatch, dense_model) -> None:
    """Optuna's retry copies its parent's user attributes, the resolved recipe's key among them; a copy dropped as the
    second retry of its parent was then taken for a pruned measurement of that recipe, and the next trial of the
    recipe was pruned "as the same resolved recipe": the recipe was lost (the long soak on PostgreSQL)."""
    from recipe_search.study._interrupts import RETRY_TAKEN
    from recipe_search.study._storage import claim

    study, name = _study(tmp_path, monkeypatch, dense_model)
    opt, worker = study.optuna_study, study.worker
    key = worker.result_key(worker.resolve(study.space.recipe({name: 1})))
    opt.enqueue_trial({name: 1})
    taken = opt.ask()
    taken.suggest_int(name, 0, 1)
    taken.set_user_attr("result_key", key)  # resolved, then its worker was killed
    opt.tell(taken, state=TrialState.FAIL)
    assert claim(opt._storage, taken._trial_id, RETRY_TAKEN)  # another retry of it took it
    opt._storage.get_heartbeat_stale_trial_callback()(opt, opt.trials[0])  # and the stale check retries it again
    study.run(n_trials=1)
    assert opt.trials[1].state == TrialState.PRUNED and opt.trials[1].user_attrs["result_key"] is None
    opt.enqueue_trial({name: 1}, user_attrs={"seed": "again"})
    study.run(n_trials=1)
    assert opt.trials[2].state == TrialState.COMPLETE


def test_a_full_disk_does_not_count_against_a_recipes_retries(tmp_path) -> None:
    """A recipe failed four times by full disks was lost to the retry bound (the long soak on 4 PostgreSQL workers,
    20 full disks a round): a full disk is not the recipe's doing. It does not count against MAX_RETRIES; MAX_ATTEMPTS
    still ends a line a disk that stays full would feed for good."""
    from recipe_search.formats.files import DISK_FULL
    from recipe_search.study._interrupts import MAX_ATTEMPTS, MAX_RETRIES, retry_failed, retry_unretried

    storage = storage_for(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s")
    x = {"x": optuna.distributions.IntDistribution(0, 3)}

    def fail(reason: str) -> None:
        trial = study.ask(x)
        trial.suggest_int("x", 0, 3)
        trial.set_user_attr("failed", reason)
        study.tell(trial, state=TrialState.FAIL)

    study.enqueue_trial({"x": 1})
    for _ in range(MAX_RETRIES + 2):  # full disks: retried past MAX_RETRIES
        fail(f"cannot write: {DISK_FULL}")
        assert retry_unretried(study)
    for _ in range(MAX_RETRIES):  # a crash each time: MAX_RETRIES of them are retried...
        fail("llama.cpp aborted")
        assert retry_unretried(study)
    fail("llama.cpp aborted")  # ...the next one is not
    assert retry_unretried(study) == []
    assert [t.user_attrs.get("retries") for t in study.trials][-1] == MAX_RETRIES
    # a full disk that stays: the line ends after MAX_ATTEMPTS runs, and the study's own retry agrees
    study.enqueue_trial({"x": 2})
    for _ in range(MAX_ATTEMPTS - 1):
        fail(f"cannot write: {DISK_FULL}")
        assert retry_unretried(study)
    trial = study.ask(x)
    trial.suggest_int("x", 0, 3)
    assert trial.user_attrs["attempts"] == MAX_ATTEMPTS - 1 and not retry_failed(study, trial, DISK_FULL)


def test_a_killed_worker_does_not_count_against_a_recipes_retries(tmp_path) -> None:
    """A recipe whose workers were killed four times in a row was lost to the retry bound (the long soak on 4
    PostgreSQL workers): a killed worker is not the recipe's doing. Its trial, failed without a reason by the stale
    check, is retried by Optuna's callback and by the sweep of failed trials until MAX_ATTEMPTS runs, not
    MAX_RETRIES."""
    from recipe_search.study._interrupts import MAX_ATTEMPTS, MAX_RETRIES, retry_unretried

    storage = storage_for(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat=1, grace=1)
    study = optuna.create_study(storage=storage, study_name="s")
    stale_retry = storage.get_heartbeat_stale_trial_callback()
    x = {"x": optuna.distributions.IntDistribution(0, 3)}
    study.enqueue_trial({"x": 1}, user_attrs={"seed": "s1"})
    for run in range(1, MAX_ATTEMPTS + 1):
        trial = study.ask(x)
        study.tell(trial, state=TrialState.FAIL)  # the stale check fails a killed worker's trial...
        stale_retry(study, study.trials[-1])  # ...and retries it
        retried = study.trials[-1].state == TrialState.WAITING
        assert retried == (run < MAX_ATTEMPTS), run
        assert retry_unretried(study) == []  # the sweep adds no second retry, nor one past the bound
    assert MAX_ATTEMPTS > MAX_RETRIES + 1
    # a killed trial whose retry was never enqueued: the sweep retries it past MAX_RETRIES kills too
    study.enqueue_trial({"x": 2})
    for _ in range(MAX_RETRIES + 1):
        killed = study.ask(x)
        study.tell(killed, state=TrialState.FAIL)
        assert retry_unretried(study) == [killed.number]
