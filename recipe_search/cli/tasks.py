"""Commands that check quants on tasks beside KLD: `tasks`, and the `--tasks` of validate and pareto."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import limits
from . import _imatrix_input, _int_in, _load_recipe, _model, _print_json, _recipe_args, _warn, command

if TYPE_CHECKING:
    from ..core.recipe import Recipe
    from ..engine.task_check import TaskChecker, TaskResult
    from ..engine.worker import Worker

TASK_HELP = ("KIND:FILE for a task file llama-perplexity reads (hellaswag, winogrande, multiple-choice; the "
             "user's own file, nothing is downloaded), or cloze[:TEXT] / continuation[:TEXT] for tasks built "
             "from a text (FILE or FILE[a:b]; default: the held-out text)")


def add_task_options(p: argparse.ArgumentParser) -> None:
    """The options every task check takes (besides the tasks themselves)."""
    from ..core.text_tasks import ClozeSettings, ContinuationSettings
    from ..formats.task_files import SUBSET_NOTE

    p.add_argument("--task-limit", type=_int_in((1, 10**7)), metavar="N",
                   help="score only the first N tasks of each task file (default: all). " + SUBSET_NOTE)
    p.add_argument("--task-ctx", type=_int_in(limits.CTX), default=512,
                   help="context for task files, as llama-perplexity's -c (default 512); a longer task is an error")
    p.add_argument("--cloze-items", type=int, default=ClozeSettings.items, help="cloze passages at most")
    p.add_argument("--cloze-tokens", type=int, default=ClozeSettings.passage_tokens, help="tokens per cloze passage")
    p.add_argument("--prompts", type=int, default=ContinuationSettings.prompts, help="continuation prompts")
    p.add_argument("--prompt-tokens", type=int, default=ContinuationSettings.prompt_tokens)
    p.add_argument("--new-tokens", type=int, default=ContinuationSettings.new_tokens,
                   help="tokens the base generates greedily after each prompt")


def checker(a: argparse.Namespace, model: Path, specs: Sequence[str], default_text: str | None, cache: Path,
            threads: int, gpu_layers: int = 0) -> TaskChecker:
    """The task checker the options describe (bad specs, files and settings fail here, before any model runs)."""
    from ..core.text_tasks import ClozeSettings, ContinuationSettings
    from ..engine.task_check import TaskChecker, parse_task_specs

    return TaskChecker(model, parse_task_specs(specs, default_text), cache, threads=threads, gpu_layers=gpu_layers,
                       ctx=a.task_ctx, limit=a.task_limit,
                       cloze=ClozeSettings(items=a.cloze_items, passage_tokens=a.cloze_tokens),
                       continuation=ContinuationSettings(prompts=a.prompts, prompt_tokens=a.prompt_tokens,
                                                         new_tokens=a.new_tokens))


@contextlib.contextmanager
def built(worker: Worker, recipe: Recipe, tag: str) -> Iterator[Path]:
    """The recipe's model, assembled from the tensor cache for as long as the block runs, then removed."""
    from ..engine.leftovers import TRIAL_PREFIX

    path = worker.workdir / f"{TRIAL_PREFIX}{os.getpid()}-{tag}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    b = worker.build(worker.resolve(recipe), path)
    _warn(b.warnings)
    try:
        yield b.path
    finally:
        for f in b.files:
            f.unlink(missing_ok=True)


def score_recipes(check: TaskChecker, worker: Worker, recipes: Sequence[tuple[str, Recipe]],
                  log: Callable[[str], None]) -> list[list[TaskResult]]:
    """Every task on each named recipe's model (results in recipe order, then task order)."""
    out = []
    for i, (name, recipe) in enumerate(recipes, 1):
        log(f"tasks: {name} ({i}/{len(recipes)})")
        with built(worker, recipe, f"tasks{i}") as quant:
            out.append(check.score_all(quant))
    return out


def task_metrics(results: Sequence[TaskResult]) -> dict:
    """What a recipe's ``metrics.tasks`` records: each task's figures, by task."""
    return {r.spec.kind: r.as_metrics() for r in results}


def print_results(results: Sequence[TaskResult], indent: str = "  ") -> None:
    for r in results:
        print(f"{indent}{r.figures.summary()}  ({r.seconds:.1f} s)")


def print_separation(name: str, results: Sequence[TaskResult], others: dict[str, Sequence[TaskResult]],
                     indent: str) -> None:
    """For recipes the KLD cannot tell from ``name``: which task figures can (paired 95% interval over items)."""
    from ..engine.task_check import separation

    for other, theirs in others.items():
        cells = []
        for mine, their in zip(results, theirs, strict=True):
            (figure, value), (_, other_value) = mine.headline, their.headline
            lo, hi = separation(mine, their)
            verdict = "separates" if lo > 0 or hi < 0 else "ties"
            cells.append(f"{figure} {verdict} ({value - other_value:+.3g}, 95% [{lo:+.3g}, {hi:+.3g}])")
        print(f"{indent}vs {other}: " + "; ".join(cells))


# -- tasks -----------------------------------------------------------------------------------------
def tasks_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized base model (or `demo`)")
    p.add_argument("target", help="a recipe YAML (assembled, scored, removed) or a quantized GGUF of the model")
    p.add_argument("--task", action="append", required=True, metavar="KIND[:SOURCE]", help=TASK_HELP +
                   "; repeat it, or separate tasks by commas")
    p.add_argument("--text", help="the text cloze and continuation are built from when their spec names none; "
                                  "keep it apart from the search text")
    add_task_options(p)
    p.add_argument("--threads", type=_int_in(limits.THREADS), default=2)
    p.add_argument("--gpu-layers", type=_int_in(limits.GPU_LAYERS), default=0,
                   help="layers to offload to a GPU (-1: all; needs a GPU build of llama-cpp-python)")
    p.add_argument("--imatrix", help="the imatrix a recipe is quantized with")
    p.add_argument("--cache-dir")
    p.add_argument("--json", action="store_true")
    _recipe_args(p)


@command("tasks", "score a recipe or quant on tasks against its base model: accuracy, flips both ways and "
                  "continuation agreement, with paired intervals over items")
def tasks(a: argparse.Namespace) -> int:
    import time

    from ..core.text import ScoreSettings
    from ..engine.demo import cache_dir
    from ..engine.worker import Worker

    model = _model(a.model)
    cache = cache_dir(a.cache_dir)
    check = checker(a, model, a.task, a.text, cache, a.threads, a.gpu_layers)
    start = time.perf_counter()
    if a.target.endswith(".gguf"):
        results = check.score_all(Path(a.target))
    else:
        recipe = _load_recipe(a, a.target)
        worker = Worker(model, ScoreSettings(threads=a.threads, gpu_layers=a.gpu_layers), cache, cache / "work",
                        imatrix=_imatrix_input(a.imatrix) if a.imatrix else None)
        results = score_recipes(check, worker, [(recipe.name, recipe)], lambda msg: None)[0]
    seconds = time.perf_counter() - start
    if a.json:
        _print_json({"model": str(model), "target": a.target, "tasks": task_metrics(results),
                     "base_seconds": {s.kind: round(t, 2) for s, t in check.base_seconds.items()},
                     "seconds": round(seconds, 2)})
        return 0
    print(f"{a.target} against {model.name}, item by item (intervals: 95%, paired over items):")
    print_results(results)
    base = ", ".join(f"{s.kind} {t:.1f} s" for s, t in check.base_seconds.items() if t)
    print(f"time: {seconds:.1f} s" + (f", of which the base side: {base}" if base else ""),
          file=sys.stderr)
    return 0
