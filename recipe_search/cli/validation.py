"""Commands that check choices on text the search never saw: validate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.metrics import TAIL_STATISTICS
from ..core.size import human_bytes
from ..errors import RecipeSearchError
from . import _imatrix_input, _log, _model, _print_json, _warn_text_overlaps, command
from .tasks import TASK_HELP, add_task_options, checker, print_results, score_recipes, task_metrics


def validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe YAMLs to validate (or a study: --dir/--storage)")
    p.add_argument("--model", help="the unquantized model (or `demo`); default: the study's")
    p.add_argument("--holdout-text", help="the held-out text, FILE or FILE[a:b] (default: the study's holdout_text)")
    p.add_argument("--storage", help="validate this study's whole frontier (Optuna storage URL)")
    p.add_argument("--study", help="study name (default: the only study in the storage)")
    p.add_argument("--dir", help="study directory holding study.db")
    p.add_argument("--objective", help="the frontier's quality metric (default: the study's first quality objective)")
    p.add_argument("--ctx", type=int, help="default: the study's, else 512")
    p.add_argument("--chunks", type=int, help="default: the study's, else 8")
    p.add_argument("--imatrix", help="default: the study's")
    p.add_argument("--search-text", help="the text the recipes were chosen on, only to warn of overlap "
                                         "(default: the study's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--tasks", action="append", metavar="TASKS",
                   help="also score each recipe on these tasks (comma-separated: " + TASK_HELP + ") and write the "
                        "figures into the recipe files given (a study's frontier: into the study, for `report`)")
    add_task_options(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


def _chosen(a: argparse.Namespace):
    """(recipes to validate, the study's config or None, the model path or None, the study or None and the trial
    number of each of its recipes)."""
    from ..core.recipe import load_recipe
    from ..study._holdout import Chosen

    chosen = [Chosen(Path(r).stem, rec, {k: v for k, v in (rec.metrics or {}).items() if isinstance(v, (int, float))}
                     or None) for r in a.recipes for rec in [load_recipe(r)]]
    if not (a.storage or a.dir or a.study):
        if not chosen:
            raise RecipeSearchError("nothing to validate: give recipe files or a study (--dir, --storage)")
        return chosen, None, None, None, []
    from ..study._selection import select
    from ..study._storage import load_study, storage_url

    url = storage_url(a.storage, a.dir, a.study)
    study = load_study(url, a.study)
    sel = select(study, url, a.objective, [], n_boot=100)
    numbers = []
    for p in sel.frontier:
        c = sel.candidates[p.candidate]
        chosen.append(Chosen(c.name, c.recipe, c.metrics))
        numbers.append(c.number)
    return chosen, sel.config, sel.model, study, numbers


@command("validate", "re-score chosen recipes (or a study's frontier) on a held-out text, with chunk-bootstrap "
                     "intervals and the rank agreement with the search text")
def validate(a: argparse.Namespace) -> int:
    from ..core.text import TextSource
    from ..engine.demo import cache_dir
    from ..engine.score import ScoreSettings
    from ..engine.worker import Worker
    from ..study._holdout import rank_agreement
    from ..study._holdout import validate as run_validate

    chosen, config, study_model, study, numbers = _chosen(a)
    holdout = a.holdout_text or (config.holdout_text if config else None)
    if not holdout:
        raise RecipeSearchError("no held-out text: pass --holdout-text (or set holdout_text in the study config)")
    model = _model(a.model) if a.model else study_model
    if model is None:
        raise RecipeSearchError("which model? pass --model (a study names its own)")
    ctx = a.ctx or (config.ctx if config else 512)
    chunks = a.chunks or (config.chunks if config else 8)
    imatrix = a.imatrix or (config.imatrix if config else None)
    settings = ScoreSettings(text=TextSource.parse(holdout), ctx=ctx, chunks=chunks, threads=a.threads)
    texts = {"held-out": settings.text}
    search_text = a.search_text or (config.text if config else None)
    if search_text or config is not None:
        texts["search"] = TextSource.parse(search_text)
    _warn_text_overlaps(texts, imatrix)
    cache = cache_dir(a.cache_dir)
    worker = Worker(model, settings, cache, cache / "work", imatrix=_imatrix_input(imatrix) if imatrix else None)
    check = checker(a, model, a.tasks, holdout, cache, a.threads) if a.tasks else None
    results = run_validate(worker, chosen, n_boot=a.n_boot, log=_log(a.quiet))
    agreement = rank_agreement(results)
    tasks = score_recipes(check, worker, [(c.name, c.recipe) for c in chosen], _log(a.quiet)) if check else []
    if tasks:
        _record_tasks(a.recipes, chosen, tasks)
        if study is not None:  # the frontier's figures, for `report`
            from ..study._selection import record_task_figures

            record_task_figures(study, {n: task_metrics(t) for n, t in zip(numbers, tasks[len(a.recipes):],
                                                                             strict=True)})
    if a.json:
        _print_json({"holdout_text": settings.text.label, "ctx": ctx, "chunks": chunks,
                     "n_tokens": int(results[0].holdout_metrics["n_tokens"]) if results else 0,
                     "recipes": [{**r.to_dict(), **({"tasks": task_metrics(tasks[i])} if tasks else {})}
                                 for i, r in enumerate(results)], "spearman": agreement})
        return 0
    n = int(results[0].holdout_metrics["n_tokens"]) if results else 0
    print(f"held-out text {settings.text.label}: ctx {ctx} x {chunks} chunks, {n} scored tokens; "
          "intervals: 95% bootstrap over chunks")
    columns = [(f"search {m}", f"held-out {m} [95%]") for m in TAIL_STATISTICS]
    cells = []  # per recipe, per statistic: the search figure and the held-out one with its interval
    for r in results:
        cells.append([("-" if (s := (r.search_metrics or {}).get(m)) is None else f"{s:.4g}",
                       f"{r.holdout_metrics[m]:.4g} [{r.intervals[m][0]:.4g}, {r.intervals[m][1]:.4g}]")
                      for m in TAIL_STATISTICS])
    widths = [(max([len(h[0]), *(len(c[i][0]) for c in cells)]), max([len(h[1]), *(len(c[i][1]) for c in cells)]))
              for i, h in enumerate(columns)]

    def line(lead: str, row: list[tuple[str, str]]) -> str:
        return (lead + "".join(f"  {a:>{w[0]}}  {b:<{w[1]}}" for (a, b), w in zip(row, widths, strict=True))).rstrip()

    print(line(f"{'recipe':<28}{'size':>11}{'bpw':>7}", columns))
    for r, row in zip(results, cells, strict=True):
        print(line(f"{r.name[:27]:<28}{human_bytes(r.file_bytes):>11}{r.bpw:>7.3f}", row))
    shown = ", ".join(f"{m} {'-' if v is None else f'{v:.3f}'}" for m, v in agreement.items())
    print(f"Spearman rank correlation, search text vs held-out ({sum(bool(r.search_metrics) for r in results)} "
          f"recipes with search figures): {shown}", file=sys.stdout)
    if tasks:
        print("tasks (against the base model, item by item; intervals: 95%, paired over items):")
        for c, task_results in zip(chosen, tasks, strict=True):
            print(f"  {c.name}")
            print_results(task_results, "    ")
    return 0


def _record_tasks(files: list[str], chosen: list, tasks: list) -> None:
    """Write each recipe file's task figures into its ``metrics.tasks`` (the files come first among the chosen,
    each recipe as `_chosen` read it)."""
    for path, c, results in zip(files, chosen, tasks, strict=False):
        metrics = {**(c.recipe.metrics or {}), "tasks": task_metrics(results)}
        c.recipe.model_copy(update={"metrics": metrics}).save(path)
