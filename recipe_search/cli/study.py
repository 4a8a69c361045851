"""Commands that run studies: search, worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _human_bytes, _log, _model, _print_json, _warn, command


# -- search / worker -------------------------------------------------------------------------------
def search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized model (or `demo`)")
    p.add_argument("--config", help="study YAML (search space, objectives, references; see experiments/)")
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite in the study directory; "
                                     "postgresql://... lets workers on other machines join)")
    p.add_argument("--study", help="study name (default: the model file's stem)")
    p.add_argument("--dir", help="study directory (default: studies/<study>)")
    p.add_argument("--trials", type=int, help="trials to run in this call")
    p.add_argument("--timeout", help="stop starting trials after this long (90s, 15m, 8h)")
    p.add_argument("--text", help="scoring text, FILE or FILE[0:0.4] (default: the built-in text)")
    p.add_argument("--holdout-text", help="a second text the study never sees, for `validate` and `pareto`")
    p.add_argument("--ctx", type=int)
    p.add_argument("--chunks", type=int)
    p.add_argument("--imatrix")
    p.add_argument("--seed", type=int)
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"])
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")


@command("search", "run (or resume) a search study: Optuna proposes, the worker measures")
def search(a: argparse.Namespace) -> int:
    from ..demo import cache_dir
    from ..search import check_disk, open_study, parse_duration, storage_for
    from ..space import load_study_config

    model = _model(a.model)
    config = load_study_config(a.config)
    overrides = {k: getattr(a, k) for k in ("text", "holdout_text", "ctx", "chunks", "imatrix", "seed", "sampler",
                                            "threads") if getattr(a, k) is not None}
    config = config.model_copy(update=overrides)
    _warn_text_overlap(config)
    name = a.study or model.stem
    directory = Path(a.dir) if a.dir else Path("studies") / name
    directory.mkdir(parents=True, exist_ok=True)
    storage = storage_for(a.storage or f"sqlite:///{(directory / 'study.db').resolve()}")
    cache = cache_dir(a.cache_dir)
    ctx = open_study(storage, name, model, config, directory, cache)
    return _run_study(ctx, a, cache, parse_duration(a.timeout) if a.timeout else None, check_disk)


def _warn_text_overlap(config) -> None:
    """Warn when the held-out text overlaps the search text, or either overlaps the imatrix's calibration text."""
    from ..imatrix_file import load_imatrix
    from ..text import TextSource
    from ..validate import text_overlap_warnings

    texts = {"search": TextSource.parse(config.text)}
    if config.holdout_text:
        texts["held-out"] = TextSource.parse(config.holdout_text)
    _warn(text_overlap_warnings(texts, load_imatrix(config.imatrix).datasets if config.imatrix else ()))


def _run_study(ctx, a: argparse.Namespace, cache: Path, timeout: float | None, check_disk) -> int:
    import time

    from ..search import add_presets, enqueue_references, run, study_summary

    log = _log(a.quiet)
    need = check_disk(ctx, cache)
    log(f"study {ctx.study.study_name}: {len(ctx.study.trials)} trials so far, {len(ctx.space.parameters)} searched "
        f"parameters, objectives {', '.join(ctx.config.objectives)}")
    log(f"disk: reference cache <= {_human_bytes(need['reference_cache'])}, temporary GGUF "
        f"{_human_bytes(need['temporary_gguf'])}")
    n_scored = ctx.config.chunks * (ctx.config.ctx - 1 - ctx.config.ctx // 2)
    if n_scored < 10_000 and "kld_p999" in ctx.config.objectives:
        log(f"note: {n_scored} scored tokens per trial: the 99.9th percentile rests on ~{max(1, n_scored // 1000)} "
            "tokens; consider more --chunks or the kld_p99 objective")
    start = time.perf_counter()
    ref = ctx.worker.reference
    log(f"reference: {'cached' if ctx.worker.reference_was_cached else 'computed'} in "
        f"{time.perf_counter() - start:.1f} s ({ref.meta['n_tokens']} scored tokens, text {ref.meta['text']})")
    enqueue_references(ctx)
    first = time.perf_counter()
    add_presets(ctx, log)
    if len(ctx.config.references.presets):
        per = (time.perf_counter() - first) / max(1, len(ctx.config.references.presets))
        if per > 1:
            log(f"expected time per trial: about {per:.0f} s (measured on the presets)")
    outcome = run(ctx, a.trials, timeout, a.quiet, log)
    summary = study_summary(ctx.study)
    if a.json:
        _print_json(summary)
        return 0
    print(f"\nstudy {ctx.study.study_name}: {summary['measured']} measured trials "
          f"({', '.join(f'{n} {k}' for k, n in summary['trials'].items() if n)})")
    objs = summary["objectives"]
    print(f"{'trial':>6}  {'name':<18}{'size':>12}{'bpw':>7}  " + "".join(f"{o:>12}" for o in objs[1:]) + f"{'mean KLD':>12}")
    for r in summary["frontier"]:
        print(f"{r['trial']:>6}  {r['name'][:17]:<18}{_human_bytes(r['file_bytes']):>12}{r['bpw']:>7.3f}  "
              + "".join(f"{r['values'][o]:>12.5g}" for o in objs[1:]) + f"{r['kld_mean']:>12.5g}")
    print(f"frontier: {len(summary['frontier'])} recipes, {summary['frontier_non_reference']} of them found by the search; "
          f"hypervolume {summary['hypervolume_all']:.4g} vs {summary['hypervolume_references']:.4g} for the "
          f"reference recipes alone")
    if outcome.stopped_by_user:
        print("stopped by Ctrl-C; run the same command again to resume")
    return 0


def worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", required=True, help="the study's Optuna storage URL")
    p.add_argument("--study", required=True)
    p.add_argument("--dir", help="work directory for temporary GGUFs (default: studies/<study>)")
    p.add_argument("--trials", type=int)
    p.add_argument("--timeout")
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


@command("worker", "join an existing study (its stored config and model) and run trials")
def worker(a: argparse.Namespace) -> int:
    from ..demo import cache_dir
    from ..search import check_disk, open_study, parse_duration, storage_for, worker_seed

    directory = Path(a.dir) if a.dir else Path("studies") / a.study
    cache = cache_dir(a.cache_dir)
    ctx = open_study(storage_for(a.storage), a.study, None, None, directory, cache, worker_seed())
    return _run_study(ctx, a, cache, parse_duration(a.timeout) if a.timeout else None, check_disk)
