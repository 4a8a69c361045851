"""The study façade: open or resume a study, prepare it, run trials, summarise.

It owns the sequence that every front end shares (the CLI, a worker on another machine, the
experiments, a notebook)::

    study = Study.open("model-F16.gguf", StudyConfig(chunks=40), directory="studies/m")
    study.prepare()                  # reference logits, enqueued references and seeds, presets
    study.run(n_trials=40)           # Ctrl-C handling and progress come in as callbacks
    study.summary()

Progress and stopping are the caller's: `run` takes Optuna-style callbacks, and `request_stop`
ends the run after the trial in flight (a signal handler can call it).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..core.cache_need import space_cache_need
from ..core.config import StudyConfig
from ..core.kld import scored_per_chunk
from ..core.locations import cache_dir as default_cache_dir
from ..core.metrics import MAXIMISE
from ..core.resolution import resolve
from ..core.size import predict_size
from ..core.space import SearchSpace, build_space, reference_recipes, seed_recipes
from ..engine.digest import warn
from ..engine.leftovers import clean_workdir
from ..engine.tensor_cache import NeedReport
from ..engine.worker import Worker, tool_versions
from ..errors import RecipeSearchError
from ..formats.files import check_output_dir
from ..formats.ggml_types import GGMLType
from ..formats.imatrix_file import ImatrixInput
from ..sensitivity.surrogate import Allocator, refit_allocation, seed_allocations, table_allocator
from ..sensitivity.sweep import run_sweep
from ..sensitivity.table import surrogate_ladders
from ._checks import check_disk, check_study_inputs, study_task_checker
from ._interrupts import AbandonGuard, fail_silent_trials, retry_unretried
from ._objective import Objective, trial_values
from ._records import TrialRecord, measured_choice, role_attrs
from ._storage import check_study_name, directions, grace_period, make_sampler, storage_for
from ._summary import frontier_records, measured_records, searched_trials_done, study_summary

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class Preparation:
    """What `Study.prepare` did: disk needed, the reference, trials enqueued, presets measured."""

    disk: dict[str, int]
    reference_seconds: float
    reference_cached: bool
    enqueued: int
    presets_measured: int
    presets_seconds: float
    tensor_cache: NeedReport | None = None  # the space's need against the cache's bound (None: no tensor cache)


@dataclass(frozen=True)
class RunOutcome:
    trials_run: int
    stopped_by_request: bool


class Study:
    """A study opened for running: Optuna's study, the stored config, the search space and the worker."""

    def __init__(self, study: optuna.Study, config: StudyConfig, space: SearchSpace, worker: Worker,
                 directory: Path) -> None:
        self.optuna_study, self.config, self.space, self.worker, self.directory = study, config, space, worker, directory
        self._stop_requested = False
        self._guard: AbandonGuard | None = None  # the running `run`'s, which knows the trial in flight
        self._refit_base: Allocator | None = None  # the surrogate the refitted proposals rescale, read once
        self._frontier_pairs: dict[int, tuple[tuple[str, GGMLType], ...]] = {}  # trial number -> its (tensor, type)s

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, model: str | Path | None, config: StudyConfig | None = None, *, name: str | None = None,
             storage: str | None = None, directory: str | Path | None = None, cache: str | Path | None = None,
             worker_seed: int = 0, tensor_cache: bool = True) -> Study:
        """Create the study (storing its config and model) or resume it with its stored config.

        ``model`` None joins an existing study (a worker on another machine); ``name`` defaults to the
        model file's stem, ``directory`` to ``studies/<name>``, ``storage`` to SQLite in the directory;
        ``tensor_cache`` False quantizes every trial's whole model with llama_model_quantize."""
        if name is None:
            if model is None:
                raise RecipeSearchError("name the study to join")
            name = Path(model).stem
        name = check_study_name(name)
        where = check_output_dir(Path(directory) if directory is not None else Path("studies") / name)
        rdb = storage_for(storage or f"sqlite:///{(where / 'study.db').resolve()}")
        summaries = {s.study_name: s for s in optuna.get_all_study_summaries(rdb)}
        model_path = Path(model) if model is not None else None
        if name in summaries:
            stored = summaries[name].user_attrs
            stored_config = StudyConfig.model_validate(json.loads(stored["config"]))
            if config is not None and config != stored_config:
                raise RecipeSearchError(f"study {name!r} exists with another config; use --study to start a new one")
            config = stored_config
            stored_model = Path(stored["model"])
            if model_path is not None and model_path.resolve() != stored_model:
                raise RecipeSearchError(f"study {name!r} belongs to model {stored_model}")
            model_path = stored_model
        if model_path is None:
            raise RecipeSearchError(f"no study {name!r} in this storage (start it with `recipe-search search MODEL`)")
        config = config or StudyConfig()
        imatrix = ImatrixInput.from_file(config.imatrix) if config.imatrix else None
        tasks = study_task_checker(config, model_path, default_cache_dir(cache))
        worker = Worker(model_path, config.score_settings(), default_cache_dir(cache),
                        where / "work" / socket.gethostname(), imatrix=imatrix, tensor_cache=tensor_cache, tasks=tasks,
                        prefill_threads=config.prefill_thread_count)
        space = build_space(config, worker.inventory, has_imatrix=imatrix is not None,
                            imatrix_tensors=None if imatrix is None else imatrix.arrays.keys())
        check_study_inputs(config, worker, space)  # before the study exists: a bad config leaves nothing behind
        study = optuna.create_study(storage=rdb, study_name=name, directions=directions(config),
                                    sampler=make_sampler(config, worker_seed), load_if_exists=True)
        if study.metric_names != list(config.objectives):  # optuna-dashboard labels the axes with them
            study.set_metric_names(list(config.objectives))
        if "config" not in study.user_attrs:
            study.set_user_attr("config", config.model_dump_json())
            study.set_user_attr("model", str(model_path.resolve()))
            study.set_user_attr("objectives", list(config.objectives))
            study.set_user_attr("tools", tool_versions())
        return cls(study, config, space, worker, where)

    @property
    def name(self) -> str:
        return self.optuna_study.study_name

    @property
    def scored_tokens_per_trial(self) -> int:
        return self.config.chunks * scored_per_chunk(self.config.ctx)

    # -- the sequence ----------------------------------------------------------------------------
    def prepare(self, log: Callable[[str], None] = lambda msg: None) -> Preparation:
        """Check the disk, compute (or read) the reference, enqueue the references and surrogate seeds
        once per study, and measure the llama.cpp presets that are not measured yet."""
        disk = check_disk(self.worker, self.config, self.space,
                          self.config.reference_chunks * scored_per_chunk(self.config.ctx), self.directory)
        need = self.tensor_cache_need(log)
        removed = clean_workdir(self.worker.workdir)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by a killed worker")
        _ = self.worker.reference
        if (tasks := self.worker.tasks) is not None:
            tasks.prepare()
            log("tasks, the base side: " + ", ".join(f"{s.label} {f'computed in {t:.1f} s' if t else 'cached'}"
                                                    for s, t in tasks.base_seconds.items()))
        self.sensitivity_table(log)
        enqueued = self.enqueue_references()
        start = time.perf_counter()
        presets = self.add_presets(log)
        return Preparation(disk, self.worker.reference_seconds, bool(self.worker.reference_was_cached), enqueued,
                           presets, time.perf_counter() - start, need)

    def tensor_cache_need(self, log: Callable[[str], None] = lambda msg: None) -> NeedReport | None:
        """The bytes the space's (tensor, type) pairs take in the tensor cache against its bound and the disk
        under it: logged, and one warning line on stderr when either is smaller. None without the tensor cache."""
        if not self.worker.tensor_cache:
            return None
        report = self.worker.tensors.cache.need_report(space_cache_need(self.space, self.worker.inventory))
        log(report.line)
        if report.warning:
            warn(report.warning)
        return report

    @property
    def table_directory(self) -> Path | None:
        """Where the surrogate's sensitivity table is: the config's `sensitivity`, else the study's own sweep;
        None when the config uses no surrogate."""
        if not self.config.uses_surrogate:
            return None
        return Path(self.config.sensitivity) if self.config.sensitivity else self.directory / "sweep"

    def sensitivity_table(self, log: Callable[[str], None] = lambda msg: None) -> Path | None:
        """`table_directory`, with the study's own sweep measured there first when the config gives no table
        (every parameter's tensor types over its ladder, each alone, on `sweep_chunk_count` chunks; once, its
        measuring time stored as `sweep_seconds`)."""
        out, config = self.table_directory, self.config
        if out is None or config.sensitivity:
            return out
        w = self.worker
        settings = dataclasses.replace(w.settings, chunks=config.sweep_chunk_count, more_chunks=0)
        sweeper = Worker(w.model, settings, w.cache_dir, w.workdir,
                         imatrix=w.imatrix, tensor_cache=w.tensor_cache, prefill_threads=w.prefill_threads)
        try:
            table = run_sweep(sweeper, out, ladders=surrogate_ladders(self.space, self.worker.inventory), log=log)
        finally:
            sweeper.close()
        if "sweep_seconds" not in self.optuna_study.user_attrs:
            seconds = sweeper.reference_seconds * (not sweeper.reference_was_cached)
            seconds += sum(float(r.get("seconds") or 0.0) for r in table.rows)
            self.optuna_study.set_user_attr("sweep_seconds", round(seconds, 3))
        return out

    def enqueue_references(self) -> int:
        """Enqueue the uniform recipes over the ladder, the config's seed recipes and the surrogate's
        allocations (from `table_directory`), once per study."""
        study = self.optuna_study
        if study.user_attrs.get("references_enqueued"):
            return 0
        n = 0
        for recipe, choice in reference_recipes(self.config, self.space, self.worker.inventory):
            if choice is not None:
                study.enqueue_trial(choice, user_attrs=role_attrs(reference=recipe.name), skip_if_exists=True)
                n += 1
        for recipe, choice in seed_recipes(self.config, self.space, self.worker.inventory):
            study.enqueue_trial(choice, user_attrs=role_attrs(seed=recipe.name), skip_if_exists=True)
            n += 1
        if self.config.surrogate_seeds or self.config.target_bpw:
            extra_kv = self.worker.imatrix.kv() if self.worker.imatrix else None
            for a in seed_allocations(self.config, self.space, self.worker.inventory, extra_kv, self.table_directory):
                study.enqueue_trial(a.choice, user_attrs=role_attrs(surrogate_seed=a.recipe.name,
                                                                    surrogate_prediction=a.prediction.to_dict()),
                                    skip_if_exists=True)
                n += 1
        study.set_user_attr("references_enqueued", True)
        return n

    def add_presets(self, log: Callable[[str], None] = lambda msg: None) -> int:
        """Measure the llama.cpp presets (outside the search space) once and add them as finished trials; a preset
        outside the device budget cannot be picked and is left out, with one log line."""
        done = {TrialRecord.from_trial(t).reference for t in self.optuna_study.get_trials(deepcopy=False)}
        budget = self.config.device_budget(self.worker.inventory)
        extra_kv = self.worker.imatrix.kv() if self.worker.imatrix else None
        n = 0
        for recipe, choice in reference_recipes(self.config, self.space, self.worker.inventory):
            if choice is not None or recipe.name in done:
                continue
            resolution = self.worker.resolve(recipe)
            devices = budget.totals(predict_size(resolution, self.worker.inventory, extra_kv))
            if why := budget.excess(devices):
                log(f"reference {recipe.name} left out: {why}")
                continue
            log(f"measuring reference {recipe.name}")
            m = self.worker.measure(resolution, speed=self.config.speed_placement())
            record = TrialRecord(-1, reference=recipe.name, recipe_yaml=recipe.to_yaml(), measurement=m,
                                 result_key=self.worker.result_key(resolution), device_bytes=devices)
            self.optuna_study.add_trial(optuna.trial.create_trial(
                values=trial_values(self.config, m), params={}, distributions={}, user_attrs=record.to_attrs()))
            n += 1
        return n

    def propose_refit(self) -> str | None:
        """Enqueue the refitted surrogate's next proposal when it is its turn: every `refit_every`-th trial after
        the enqueued ones, with none waiting (see `surrogate.refit_allocation`). Its name, or None."""
        config, study = self.config, self.optuna_study
        if not config.refit_every:
            return None
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return None
        records = [(t, TrialRecord.from_trial(t)) for t in trials]
        free = [r for t, r in records if t.params and r.reference is None and r.seed is None and r.surrogate_seed is None]
        if (len(free) + 1) % config.refit_every:
            return None
        measured = [(t, r) for t, r in records if r.measured]
        observed = [(measured_choice(t), r.metrics["kld_mean"]) for t, r in measured if t.params]
        sign = -1.0 if config.objectives[1] in MAXIMISE else 1.0  # the frontier's gaps are found on a minimised figure
        sizes = [(r.bpw, sign * r.measured_values[1]) for _, r in measured]
        tried = {tuple(sorted(measured_choice(t).items())) for t in trials if t.params}
        if self._refit_base is None:
            self._refit_base = table_allocator(config, self.space, self.worker.inventory, self.table_directory,
                                               self.worker.imatrix.kv() if self.worker.imatrix else None)
        a = refit_allocation(self._refit_base, config, observed, sizes, tried, sum(r.refit is not None for r in free))
        if a is None:
            return None
        name = f"refit-{a.bpw:.3f}bpw"
        study.enqueue_trial(a.choice, user_attrs=role_attrs(refit=name), skip_if_exists=True)
        return name

    def run(self, n_trials: int | None = None, timeout: float | None = None,
            callbacks: Sequence[Callback] = (), on_trial_start: Callable[[int], None] | None = None) -> RunOutcome:
        """Run trials until the budget (trials or seconds) is spent or `request_stop` is called."""
        self._stop_requested = False
        counted = [0]

        def count_and_stop(study: optuna.Study, trial: FrozenTrial) -> None:
            counted[0] += 1
            fail_silent_trials(study, grace_period())
            retry_unretried(study)
            self.pin_frontier()
            if self._stop_requested:
                study.stop()
            else:
                self.propose_refit()

        self.pin_frontier()
        fail_silent_trials(self.optuna_study, grace_period())  # a killed worker's trial that never beat
        retry_unretried(self.optuna_study)  # a failed trial whose retry a killed worker never enqueued
        guard = self._guard = AbandonGuard(self.optuna_study)  # a second Ctrl-C: no traceback, the trial queued again
        with guard:
            objective = Objective(self.space, self.config, self.worker, self.optuna_study, on_trial_start)
            try:
                self.optuna_study.optimize(guard.track(objective), n_trials=n_trials, timeout=timeout,
                                           callbacks=[*callbacks, count_and_stop],
                                           catch=(RecipeSearchError, OSError, MemoryError))
            finally:
                self.worker.close()  # what it quantizes ahead ends with the run
        return RunOutcome(counted[0], self._stop_requested)

    def pin_frontier(self) -> int:
        """Pin the tensor-cache entries of the current frontier's recipes, so that the evictions after each trial
        keep them (llama.cpp mixtures, the presets, are left out: resolving them takes a llama.cpp dry run).
        Returns the number of entries pinned (0 without the tensor cache)."""
        if not self.worker.tensor_cache:
            return 0
        inv = self.worker.inventory
        pairs: set[tuple[str, GGMLType]] = set()
        for r in frontier_records(measured_records(self.optuna_study), self.optuna_study.directions):
            if r.number not in self._frontier_pairs:
                recipe = r.recipe if r.recipe_yaml is not None else None
                self._frontier_pairs[r.number] = () if recipe is None or recipe.uses_mixture else tuple(
                    (x.tensor.name, x.ggml_type) for x in resolve(recipe, inv).tensors)
            pairs.update(self._frontier_pairs[r.number])
        self.worker.tensors.pin((inv.by_name[name], t) for name, t in pairs)
        return len(pairs)

    def run_to(self, total_trials: int) -> RunOutcome:
        """Run until the search itself has finished ``total_trials`` (a resumed study counts what it did)."""
        left = total_trials - searched_trials_done(self.optuna_study)
        return self.run(n_trials=left) if left > 0 else RunOutcome(0, False)

    @property
    def trial_in_flight(self) -> bool:
        """Whether a trial's objective is running now (not the callbacks after it)."""
        return self._guard is not None and self._guard.in_flight

    def request_stop(self) -> None:
        """End `run` once the trial in flight is finished (safe to call from a signal handler)."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    # -- reading -----------------------------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        return [TrialRecord.from_trial(t) for t in self.optuna_study.get_trials(deepcopy=False)]

    def summary(self) -> dict:
        """Frontier, counts and hypervolumes (JSON-able)."""
        return study_summary(self.optuna_study)
