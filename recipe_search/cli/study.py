"""Commands that run and watch studies: search, worker, status."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import limits
from ..core.size import human_bytes
from ..errors import RecipeSearchError
from . import _int_in, _log, _model, _print_json, _warn, _warn_text_overlaps, command

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from ..core.config import StudyConfig
    from ..study._records import TrialRecord
    from ..study.study import Study


# -- search / worker -------------------------------------------------------------------------------
def search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized model (or `demo`)")
    p.add_argument("--config", help="study YAML (search space, objectives, references; see experiments/)")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite in the study directory; "
                                     "postgresql://... lets workers on other machines join)")
    p.add_argument("--study", help="study name (default: the model file's stem)")
    p.add_argument("--dir", help="study directory (default: studies/<study>)")
    p.add_argument("--trials", type=_int_in(limits.TRIALS), help="trials to run in this call")
    p.add_argument("--timeout", help="stop starting trials after this long (90s, 15m, 8h)")
    p.add_argument("--text", help="scoring text, FILE or FILE[0:0.4] (default: the built-in text)")
    p.add_argument("--holdout-text", help="a second text the study never sees, for `validate` and `pareto`")
    p.add_argument("--ctx", type=_int_in(limits.CTX))
    p.add_argument("--chunks", type=_int_in(limits.CHUNKS))
    p.add_argument("--imatrix")
    p.add_argument("--seed", type=int)
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"])
    p.add_argument("--threads", type=_int_in(limits.THREADS))
    p.add_argument("--gpu-layers", type=int, help="layers to offload to a GPU (-1: all; default 0; needs a GPU build "
                                                  "of llama-cpp-python)")
    p.add_argument("--targets", help="size targets, as pareto takes them (4.5bpw,20GiB): the surrogate's allocation "
                                     "at each is measured first, and refitted proposals come back to them; a device "
                                     "target (24GiB-gpu+64GiB-cpu) sets the study's device budget")
    p.add_argument("--cache-dir")
    _add_tensor_cache_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--estimate", action="store_true",
                   help="run no study: measure this machine's rates on a small slice and print the cost of a "
                        "trial on MODEL (a header-only GGUF will do) and the trials in 8 hours")


def _add_tensor_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tensor-cache", action="store_true",
                   help="quantize each trial's whole model with llama_model_quantize instead of assembling it "
                        "from cached tensors")


@command("search", "run (or resume) a search study: Optuna proposes, the worker measures")
def search(a: argparse.Namespace) -> int:
    from ..core.config import load_study_config, with_overrides
    from ..study.study import Study

    model = _model(a.model)
    config = load_study_config(a.config)
    overrides = {k: getattr(a, k) for k in ("text", "holdout_text", "ctx", "chunks", "imatrix", "seed", "sampler",
                                            "threads", "gpu_layers") if getattr(a, k) is not None}
    if a.targets:
        overrides.update(_target_overrides(model, config, a.targets))
    config = with_overrides(config, overrides)
    if a.estimate:
        from ..core.locations import cache_dir

        return _estimate(model, config, cache_dir(a.cache_dir), a.json)
    _warn_text_overlap(config)
    study = Study.open(model, config, name=a.study, storage=a.storage, directory=a.dir, cache=a.cache_dir,
                       tensor_cache=not a.no_tensor_cache)
    _warn_cpu_only(study.config)  # once the config is known good
    return _run_study(study, a)


def _target_overrides(model: Path, config: StudyConfig, text: str) -> dict:
    """The command line's targets as config keys: size targets join target_bpw (a file size as the bits per
    weight it leaves), a device target (24GiB-gpu+64GiB-cpu) becomes the device budget."""
    from ..core.pareto import parse_targets
    from ..errors import RecipeSearchError

    targets = parse_targets(text)
    devices = [t for t in targets if t.kind == "devices"]
    if len(devices) > 1:
        raise RecipeSearchError(f"--targets: search takes one device target (the study's device budget), not "
                                f"{', '.join(t.label for t in devices)}")
    out: dict = {f"max_{d}_bytes": int(v) for t in devices for d, v in t.devices}
    sizes = [t for t in targets if t.kind != "devices"]
    if sizes:
        out["target_bpw"] = _targets_bpw(model, config, sizes)
    return out


def _targets_bpw(model: Path, config: StudyConfig, targets: list) -> list[float]:
    """The config's target_bpw and size targets, a file size as the bits per weight it leaves."""
    from ..core.inventory import read_inventory
    from ..core.size import bpw_at_file_bytes
    from ..formats.imatrix_file import ImatrixInput

    inv = read_inventory(model)
    extra_kv = ImatrixInput.from_file(config.imatrix).kv() if config.imatrix and any(
        t.kind == "bytes" for t in targets) else None
    return sorted({*config.target_bpw, *(t.value if t.kind == "bpw" else round(bpw_at_file_bytes(inv, t.value, extra_kv), 4)
                                         for t in targets)})


def _warn_cpu_only(config: StudyConfig) -> None:
    """A GPU budget or placement on a build that cannot offload: the recipes are budgeted, not run, that way;
    a `speed` objective whose placement puts anything on a GPU is timed on the CPU alone."""
    from ..engine.allocation import gpu_offload_supported

    if gpu_offload_supported():
        return
    lines = []
    if config.max_gpu_bytes is not None or config.placement:
        lines.append("this llama.cpp build cannot offload to a GPU: the study budgets and records bytes for the "
                     "placement given, and measures every trial on the CPU")
    speed = config.speed_placement()
    if speed is not None and speed.uses_gpu:
        lines.append(f"speed is CPU-only: this llama.cpp build cannot offload, so the speed objective times every "
                     f"recipe on the CPU, not under the placement {speed.describe()}")
    _warn(lines)


def _warn_text_overlap(config: StudyConfig) -> None:
    """Warn when the held-out text overlaps the search text, or either overlaps the imatrix's calibration text."""
    from ..core.text import TextSource

    texts = {"search": TextSource.parse(config.text)}
    if config.holdout_text:
        texts["held-out"] = TextSource.parse(config.holdout_text)
    _warn_text_overlaps(texts, config.imatrix)
    if config.tasks:  # a task built from the search text would reward what the search already fits
        from ..engine.task_check import TEXT_KINDS, parse_task_specs
        from ..study._holdout import text_overlap_warnings

        _warn([line for s in parse_task_specs(config.tasks, config.holdout_text) if s.kind in TEXT_KINDS
               for line in text_overlap_warnings({"search": texts["search"], f"{s.kind} task": TextSource.parse(s.source)})])


def _run_study(study: Study, a: argparse.Namespace) -> int:
    log = _log(a.quiet)
    config = study.config
    log(f"study {study.name}: {len(study.optuna_study.trials)} trials so far, {len(study.space.parameters)} searched "
        f"parameters, objectives {', '.join(config.objectives)}")
    if note := study.space.imatrix_note():
        log(f"note: {note}")
    n_scored = study.scored_tokens_per_trial
    if n_scored < 10_000 and {"kld_p999", "kld_cvar999"} & set(config.objectives):
        log(f"note: {n_scored} scored tokens per trial: the worst 0.1% are ~{max(1, n_scored // 1000)} tokens; "
            "consider more --chunks or the kld_p99 objective")
    prep = study.prepare(log)
    log(f"disk: reference cache <= {human_bytes(prep.disk['reference_cache'])}, temporary GGUF "
        f"{human_bytes(prep.disk['temporary_gguf'])}")
    ref = study.worker.reference
    log(f"reference: {'cached' if prep.reference_cached else 'computed'} in {prep.reference_seconds:.1f} s "
        f"({ref.meta['n_tokens']} scored tokens, text {ref.meta['text']})")
    if prep.presets_measured and prep.presets_seconds / prep.presets_measured > 1:
        log(f"expected time per trial: about {prep.presets_seconds / prep.presets_measured:.0f} s "
            "(measured on the presets)")
    timeout = parse_duration(a.timeout) if a.timeout else None
    progress = Progress(a.trials, timeout, a.quiet)
    with _stop_on_sigint(study, log):
        try:
            outcome = study.run(a.trials, timeout, callbacks=[progress])
        finally:
            progress.close()
    summary = study.summary()
    if a.json:
        _print_json(summary)
        return 0
    print(f"\nstudy {study.name}: {summary['measured']} measured trials "
          f"({', '.join(f'{n} {k}' for k, n in summary['trials'].items() if n)})")
    objs = summary["objectives"]
    print(f"{'trial':>6}  {'name':<18}{'size':>12}{'bpw':>7}  " + "".join(f"{o:>12}" for o in objs[1:]) + f"{'mean KLD':>12}")
    for r in summary["frontier"]:
        print(f"{r['trial']:>6}  {r['name'][:17]:<18}{human_bytes(r['file_bytes']):>12}{r['bpw']:>7.3f}  "
              + "".join(f"{r['values'][o]:>12.5g}" for o in objs[1:]) + f"{r['kld_mean']:>12.5g}")
    print(f"frontier: {len(summary['frontier'])} recipes, {summary['frontier_non_reference']} of them found by the search; "
          f"hypervolume {summary['hypervolume_all']:.4g} vs {summary['hypervolume_references']:.4g} for the "
          f"reference recipes alone")
    if outcome.stopped_by_request:
        print("stopped by Ctrl-C; run the same command again to resume")
    return 0


@contextmanager
def _stop_on_sigint(study: Study, log) -> Iterator[None]:
    """First Ctrl-C: finish the trial in flight, then stop; a second one abandons it (one arriving after the trial
    finished, while the run records it and ends, has nothing to abandon and is ignored)."""
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if study.stop_requested:
            if study.trial_in_flight:
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            return
        study.request_stop()
        log("\nstopping after the trial in flight (Ctrl-C again to abandon it)")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        # after a first Ctrl-C the run has ended with its trials recorded: a second one, arriving while the
        # summary prints or the interpreter exits (which resets Python's handlers), has nothing left to abandon
        signal.signal(signal.SIGINT, signal.SIG_IGN if study.stop_requested else previous)


class Progress:
    """An Optuna callback printing one progress line: trials, frontier size, best quality at a few sizes, ETA."""

    def __init__(self, budget: int | None, timeout: float | None, quiet: bool) -> None:
        self.budget, self.timeout, self.quiet = budget, timeout, quiet
        self.start = time.perf_counter()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from ..study._records import TrialRecord
        from ..study._summary import frontier_records, measured_records

        self.done += 1
        if self.quiet:
            return
        front = frontier_records(measured_records(study), study.directions)
        elapsed = time.perf_counter() - self.start
        per = elapsed / self.done
        eta = []
        if self.budget:
            eta.append((self.budget - self.done) * per)
        if self.timeout:
            eta.append(self.timeout - elapsed)
        eta_txt = f" | ETA {_duration(max(min(eta), 0))}" if eta else ""
        record = TrialRecord.from_trial(trial)
        state = trial.state.name.lower() + (" (dup)" if record.duplicate_of is not None else
                                            " (cached)" if record.cached_measurement else "")
        line = (f"[{self.done}{'/' + str(self.budget) if self.budget else ''}] trial {trial.number} {state} | "
                f"frontier {len(front)} | {_best_at_sizes(front)}{eta_txt}")
        end = "\r" if self.tty else "\n"
        print(line.ljust(110)[:160], end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.quiet and self.tty:
            print(file=sys.stderr)


def _best_at_sizes(front: list[TrialRecord]) -> str:
    if not front:
        return "no frontier yet"
    pts = sorted((r.bpw, r.measured_values[1]) for r in front)
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


def _estimate(model: Path, config: StudyConfig, cache: Path, as_json: bool) -> int:
    from dataclasses import asdict

    from ..core.cache_need import space_cache_need
    from ..core.inventory import read_inventory
    from ..core.space import build_space
    from ..engine.task_check import CHARS_PER_TOKEN, TEXT_KINDS
    from ..engine.tensor_cache import TensorCache
    from ..engine.trial_cost import estimate, measure_rates
    from ..study._checks import study_task_checker

    inv = read_inventory(model)
    tasks = study_task_checker(config, model, cache)
    task_tokens = {s.kind: tasks.eval_tokens(s) for s in tasks.specs} if tasks else {}
    space = build_space(config, inv, has_imatrix=config.imatrix is not None)
    need = TensorCache.under(cache).need_report(space_cache_need(space, inv))
    ladder = list(dict.fromkeys(t for p in space.parameters for t in p.ladder))
    rates = measure_rates(inv, cache, config.threads, ladder)
    arch = inv.headers[0].get("general.architecture")
    used = inv.headers[0].get(f"{arch}.expert_used_count")
    est = estimate(inv, rates, config.chunks * config.ctx, space, None if used is None else int(used),
                   task_tokens=task_tokens)
    if as_json:
        _print_json({"rates": asdict(rates), "estimate": asdict(est), "tensor_cache": asdict(need)})
        return 0
    print(f"{model.name}: {len(inv.tensors)} tensors, {inv.n_elements / 1e9:.2f}B parameters, "
          f"{est.active_params / 1e9:.2f}B active per token; trial recipe {est.recipe} "
          f"({human_bytes(est.file_bytes)}); {config.chunks} x {config.ctx} tokens per trial, {config.threads} threads")
    print("measured here: quantize rate per type (Melements/s): " + ", ".join(
        f"{k} {v / 1e6:.0f}" for k, v in rates.quantize_elements_per_s.items()))
    print(f"measured here: write {rates.write_bytes_per_s / 1e6:.0f} MB/s, page-cache read "
          f"{rates.read_bytes_per_s / 1e6:.0f} MB/s, {1e6 * rates.link_s:.0f} us per linked tensor; CPU evaluation: "
          + (f"{rates.cpu_tokens_per_s_per_active_param / 1e9:.2f}e9 tokens/s x active parameters ({rates.measured_on}), "
             "scaled by active parameters" if rates.cpu_tokens_per_s_per_active_param else rates.measured_on))
    for note in est.notes:
        print(note)
    if config.extra_chunks:
        near = est.phases["cpu"]["evaluation"] * config.reference_chunks / config.chunks
        print(f"with size targets: a trial near one is scored on {config.reference_chunks} x {config.ctx} tokens "
              f"(CPU evaluation {near:.1f} s instead of {est.phases['cpu']['evaluation']:.1f} s), one far from all may "
              f"stop after {config.chunks_far}; the table is for a trial of {config.chunks} chunks")
    if task_tokens:
        kld = {d: est.phases[d]["load"] + est.phases[d]["evaluation"] for d in ("cpu", "gpu")}
        print("tasks every trial is scored on (each loads the quant again; their base side is computed once and "
              "cached): " + "; ".join(
                  f"{kind} about {n} tokens, {est.phases['cpu'][f'task {kind}'] / kld['cpu']:.2f}x the KLD "
                  f"scoring's load and evaluation ({config.chunks * config.ctx} tokens) on the CPU"
                  for kind, n in task_tokens.items()))
        if any(kind not in TEXT_KINDS for kind in task_tokens):
            print(f"assumed: {CHARS_PER_TOKEN:.0f} characters per token of a task file")
    print(f"\n{'phase (s)':<20}{'CPU':>12}{'GPU offload':>14}")
    for phase in est.phases["cpu"]:
        print(f"{phase:<20}{est.phases['cpu'][phase]:>12.1f}{est.phases['gpu'][phase]:>14.1f}")
    print(f"\n{'in 8 hours':<34}{'CPU':>10}{'GPU offload':>14}")
    n = est.trials_per_night
    for key, label in (("without_cache", "trials without the cache"), ("with_cache", "trials with the cache"),
                       ("all_warm", "trials, every tensor cached")):
        print(f"{label:<34}{n['cpu'][key]:>10.0f}{n['gpu'][key]:>14.0f}")
    print(f"{'of which quantizing (min)':<34}{n['cpu']['with_cache_quantize_s'] / 60:>10.0f}"
          f"{n['gpu']['with_cache_quantize_s'] / 60:>14.0f}")
    print(f"{'with the cache, quantizing ahead':<34}{'-':>10}{n['gpu']['with_cache_quantizing_ahead']:>14.0f}")
    print(f"\n{need.line}")
    if need.warning:
        _warn([need.warning])
    return 0


def worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", required=True, help="the study's Optuna storage URL")
    p.add_argument("--study", required=True)
    p.add_argument("--dir", help="work directory for temporary GGUFs (default: studies/<study>)")
    p.add_argument("--trials", type=_int_in(limits.TRIALS))
    p.add_argument("--timeout")
    p.add_argument("--cache-dir")
    _add_tensor_cache_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


@command("worker", "join an existing study (its stored config and model) and run trials")
def worker(a: argparse.Namespace) -> int:
    from ..study._storage import worker_seed
    from ..study.study import Study

    study = Study.open(None, name=a.study, storage=a.storage, directory=a.dir, cache=a.cache_dir,
                       worker_seed=worker_seed(), tensor_cache=not a.no_tensor_cache)
    _warn_cpu_only(study.config)
    return _run_study(study, a)


# -- status ----------------------------------------------------------------------------------------
def status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default: the SQLite database in --dir)")
    p.add_argument("--dir", help="study directory holding study.db (default: studies/<study>)")
    p.add_argument("--grace", type=_int_in((1, 10**7)),
                   help="seconds without a heartbeat before a running trial is stale (default: $RECIPE_SEARCH_GRACE "
                        "or 120, as the workers)")
    p.add_argument("--cache-dir", help="also show this cache's tensor-cache hit rate and disk use")
    p.add_argument("--json", action="store_true")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@command("status", "a study as it runs, from its storage alone: trials by state and why they failed, the running "
                   "trials' heartbeats, the pace, the frontier at a few sizes")
def status(a: argparse.Namespace) -> int:
    from ..study._status import cache_stats, study_status
    from ..study._storage import load_study, storage_url

    st = study_status(load_study(storage_url(a.storage, a.dir, a.study), a.study), grace=a.grace)
    if a.cache_dir:
        st["tensor_cache"] = cache_stats(a.cache_dir)
    if a.json:
        _print_json(st)
        return 0
    n = st["trials"]
    print(f"study {st['study']} ({' x '.join(st['objectives'])}): {n['done']} done ({st['measured']} measured, "
          f"{st['duplicates']} duplicate(s)), {n['running']} running, {n['failed']} failed, {n['pruned']} pruned, "
          f"{n['waiting']} waiting")
    for title, rows in (("failed", st["failures"]), ("pruned", st["pruned_reasons"])):
        if rows:
            print(f"{title}:")
        for row in rows[:8]:
            print(f"  {row['trials']:>4} x {row['reason']}")
        if len(rows) > 8:
            print(f"  ... and {len(rows) - 8} other reason(s) (--json lists them all)")
    for r in st["running"]:
        beat = ("no heartbeat recorded" if r["seconds_since_heartbeat"] is None
                else f"last heartbeat {_ago(r['seconds_since_heartbeat'])} ago")
        stale = (f"  STALE (past the {st['grace_seconds']}s grace: the next worker to start a trial fails and "
                 "retries it)" if r["stale"] else "")
        print(f"running: trial {r['trial']} ({r['name']}) for {_ago(r['seconds_running'])}, {beat}{stale}")
    mean = st["mean_seconds_per_measured_trial"]
    print(f"pace: {st['trials_last_hour']} trial(s) finished in the last hour"
          + (f", {mean:.0f}s per measured trial on average" if mean is not None else "")
          + " (no ETA: each worker's --trials/--timeout is its own)")
    if st["frontier"]:
        print("frontier (the best measured at or under each quartile of the measured size range):")
        for f in st["frontier"]:
            values = ", ".join(f"{k} {v:.4g}" for k, v in f["values"].items() if k != "size")
            print(f"  <= {human_bytes(f['at_most_bytes']):>10}  trial {f['trial']} ({f['name']}): "
                  f"{human_bytes(f['file_bytes'])}, {f['bpw']:.3f} bpw, {values}")
    tc = st.get("tensor_cache")
    if tc:
        rate = "no lookups yet" if tc["hit_rate"] is None else f"hit rate {100 * tc['hit_rate']:.1f}%"
        print(f"tensor cache {tc['path']}: {tc['entries']} entries, {human_bytes(tc['bytes'])}; {tc['hits']} hits, "
              f"{tc['misses']} misses, {rate} (over the cache's life, all studies)")
    return 0
