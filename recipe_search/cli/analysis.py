"""Commands that turn measurements into decisions: pareto, report, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.size import human_bytes
from . import _device_args, _print_json, _recipe_args, _warn, _warn_text_overlaps, command
from .tasks import TASK_HELP, add_task_options, checker, print_results, print_separation, score_recipes, task_metrics


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (default: the SQLite database in --dir)")
    p.add_argument("--study", help="study name (default: the only study in the storage)")
    p.add_argument("--dir", help="study directory holding study.db (default: studies/<study>)")
    p.add_argument("--objective", help="quality metric to rank by (default: the study's first quality objective; "
                                       "any measured metric, e.g. kld_p99, kld_mean, same_top)")
    p.add_argument("--targets", help="comma-separated size targets: 3.0bpw, 20GiB, 900MiB or bytes, or bytes per device "
                                     "under the study's placement: 24GiB-gpu+64GiB-cpu")


def _selection(a: argparse.Namespace):
    from ..core.pareto import parse_targets
    from ..study._selection import select
    from ..study._storage import load_study, storage_url

    url = storage_url(a.storage, a.dir, a.study)
    targets = parse_targets(a.targets) if a.targets else []
    return select(load_study(url, a.study), url, a.objective, targets)


def _nothing_fits(sel, target) -> str:
    """Why a target has no pick: the smallest measured recipe, in the target's terms."""
    if target.kind != "devices":
        smallest = min(sel.candidates, key=lambda c: c.bpw if target.kind == "bpw" else c.file_bytes)
        return (f"nothing measured fits (smallest: {smallest.name}, {smallest.bpw:.3f} bpw, "
                f"{human_bytes(smallest.file_bytes)})")
    placed = [c for c in sel.candidates if c.device_bytes]
    if not placed:
        return "the study recorded no per-device bytes (made before placements were recorded)"
    where = sel.config.placement or "every layer on the GPU"
    return "nothing measured fits under the study's placement (" + where + "); smallest per device: " + ", ".join(
        f"{human_bytes(min(c.device_bytes[d] for c in placed))} {d.upper()}" for d, _ in target.devices)


def _objective_columns(sel) -> list[str]:
    """The ranking objective, then the study's other quality objectives (mean KLD has a column of its own)."""
    cols = [o for o in dict.fromkeys([sel.objective, *sel.objectives[1:]]) if o in sel.candidates[0].metrics]
    return [o for o in cols if o != "kld_mean"]


def _selection_json(sel, written: dict[int, Path]) -> dict:
    cols = _objective_columns(sel)
    frontier = []
    for p in sel.frontier:
        c = sel.candidates[p.candidate]
        frontier.append({"trial": c.number, "name": c.name, "reference": c.reference, "file_bytes": c.file_bytes,
                         "bpw": c.bpw, **{o: c.metrics[o] for o in cols}, "kld_mean": c.metrics.get("kld_mean"),
                         "status": sel.status(p), "distinct": p.distinct,
                         "vs_smaller_ci95": None if p.test is None else [p.test.low, p.test.high]})
    picks = []
    for i, pick in enumerate(sel.picks):
        c = None if pick.candidate is None else sel.candidates[pick.candidate]
        picks.append({"target": pick.target.label, "trial": c and c.number, "name": c and c.name,
                      "file_bytes": c and c.file_bytes, "bpw": c and c.bpw, "device_bytes": c and c.device_bytes,
                      sel.objective: c and c.metrics[sel.objective],
                      "instead_of": None if pick.instead_of is None else sel.steadier_note(pick),
                      "recipe": str(written[i]) if i in written else None})
    return {"study": sel.study, "storage": sel.storage, "model": str(sel.model), "objective": sel.objective,
            "trials": sel.counts, "measured": len(sel.candidates), "frontier": frontier, "picks": picks}


def _print_frontier(sel) -> None:
    cols = _objective_columns(sel)
    pruned, dups = sel.counts.get("pruned", 0), sel.counts.get("duplicates", 0)
    print(f"study {sel.study}: {len(sel.candidates)} measured trials ({pruned} pruned, {dups} duplicate(s) left out); "
          f"frontier on file size x {sel.objective}: {len(sel.frontier)} recipes")
    width = {o: max(11, len(o) + 2) for o in cols}  # a task figure's name is longer than a KLD statistic's
    print(f"{'trial':>6}  {'name':<18}{'size':>12}{'bpw':>7}" + "".join(f"{o:>{width[o]}}" for o in cols)
          + f"{'mean KLD':>11}  vs next smaller ({sel.objective}, 95% paired chunk bootstrap)")
    for p in sel.frontier:
        c = sel.candidates[p.candidate]
        ci = "" if p.test is None else f"  (diff {p.test.low:+.3g} .. {p.test.high:+.3g})"
        print(f"{c.number:>6}  {c.name[:17]:<18}{human_bytes(c.file_bytes):>12}{c.bpw:>7.3f}"
              + "".join(f"{c.metrics[o]:>{width[o]}.4g}" for o in cols)
              + f"{c.metrics.get('kld_mean', float('nan')):>11.4g}  {sel.status(p)}{ci}")
    tested = [p for p in sel.frontier if p.test is not None]
    if tested:
        print(f"{sum(bool(p.distinct) for p in tested)} of {len(tested)} steps along the frontier are statistically "
              f"distinct; the others tie (the difference's 95% interval holds 0)")


# -- pareto ----------------------------------------------------------------------------------------
def pareto_args(p: argparse.ArgumentParser) -> None:
    _study_args(p)
    p.add_argument("--out", help="directory for the recipes picked at --targets (default: recipes/)")
    p.add_argument("--force", action="store_true", help="replace existing recipe files")
    p.add_argument("--holdout-text", help="also measure each pick on this held-out text, FILE or FILE[a:b], and record "
                                          "it in the recipe (default: the study config's holdout_text)")
    p.add_argument("--tasks", action="append", metavar="TASKS",
                   help="also score each pick, and the recipes its objective cannot tell it from, on these tasks "
                        "(comma-separated: " + TASK_HELP + "), record the figures in the pick's recipe and say "
                        "which task figures separate the tied recipes")
    add_task_options(p)
    p.add_argument("--json", action="store_true")


@command("pareto", "the study's Pareto frontier with statistical ties, and the best recipe at each size target")
def pareto(a: argparse.Namespace) -> int:
    from ..errors import RecipeSearchError
    from ..formats.files import check_output_dir
    from ..study._selection import write_picks

    if a.out and not a.targets:
        raise RecipeSearchError("--out writes the recipes picked at --targets; give the targets too "
                                "(e.g. --targets 3.0bpw,4.5bpw)")
    sel = _selection(a)
    if sel.picks and not sel.model.exists():
        _warn([f"the study's model {sel.model} is not here: the recipes get no `model` block"])
    holdout_text = a.holdout_text or sel.config.holdout_text
    tasks = _tasks_of_picks(a, sel, holdout_text) if a.tasks else {}
    holdout = _holdout_of_picks(sel, holdout_text)
    out = Path(a.out or "recipes")
    written = write_picks(sel, check_output_dir(out) if sel.picks else out, a.force, holdout,
                          {i: task_metrics(t[0][1]) for i, t in tasks.items()})
    if a.json:
        _print_json({**_selection_json(sel, written), "holdout": {sel.picks[i].target.label: h
                                                                  for i, h in holdout.items()},
                     "tasks": {sel.picks[i].target.label: {f"trial {n}": task_metrics(r) for n, r in t}
                               for i, t in tasks.items()}})
        return 0
    _print_frontier(sel)
    if sel.picks:
        print(f"\npicks (the best measured {sel.objective} at or under each target, or of the recipes tied with it "
              "there, the one with a distinctly lower mean KLD):")
    for i, pick in enumerate(sel.picks):
        if pick.candidate is None:
            print(f"  {pick.target.label:>10}  {_nothing_fits(sel, pick.target)}")
            continue
        c = sel.candidates[pick.candidate]
        point = sel.point_of(pick.candidate)
        devices = "".join(f", {human_bytes(c.device_bytes[d])} {d.upper()}" for d, _ in pick.target.devices
                          if c.device_bytes)
        print(f"  {pick.target.label:>10}  trial {c.number} ({c.name}): {c.bpw:.3f} bpw, {human_bytes(c.file_bytes)}"
              f"{devices}, "
              f"{sel.objective} {c.metrics[sel.objective]:.4g}, {sel.status(point) if point else 'off the frontier'}"
              f" -> {written[i]}")
        if pick.instead_of is not None:
            note = sel.steadier_note(pick)
            lo, hi = note["kld_mean_difference_ci95"]
            print(f"  {'':>10}  instead of trial {note['trial']} ({note['bpw']:.3f} bpw, {sel.objective} "
                  f"{note[sel.objective]:.4g}): tied on it, mean KLD distinctly lower (difference {lo:+.3g} .. {hi:+.3g})")
        ties = sel.ties(pick)
        if ties:
            print(f"  {'':>10}  cannot be told apart (95% paired chunk bootstrap of {sel.objective}) from: "
                  + ", ".join(f"trial {t['trial']} ({t['bpw']:.3f} bpw)" for t in ties))
        if i in holdout:
            h = holdout[i]
            print(f"  {'':>10}  held-out {h['text']}: {sel.objective} " + (
                f"{h[sel.objective]:.4g} [95% {h[sel.objective + '_ci95'][0]:.4g}, {h[sel.objective + '_ci95'][1]:.4g}]"
                if sel.objective in h else f"kld_p999 {h['kld_p999']:.4g}"))
        if i in tasks:
            (number, mine), *tied = tasks[i]
            print(f"  {'':>10}  tasks (against the base, item by item; 95% paired intervals):")
            print_results(mine, " " * 16)
            if tied:
                print(f"  {'':>10}  task figures against the recipes it ties with on {sel.objective}:")
                print_separation(f"trial {number}", mine, {f"trial {n}": r for n, r in tied}, " " * 16)
    n_tokens = int(sel.candidates[0].metrics.get("n_tokens", 0))
    if sel.objective in ("kld_p999", "kld_cvar999") and n_tokens < 10_000:
        print(f"note: {n_tokens} scored tokens per trial: the worst 0.1% are the top {max(1, round(n_tokens / 1000))} "
              "or so tokens, hence the ties", file=sys.stderr)
    return 0


def _tasks_of_picks(a: argparse.Namespace, sel, text: str | None) -> dict[int, list]:
    """Each pick, then each recipe it ties with, scored on the tasks: pick index -> [(trial number, results)]."""
    from ..engine.demo import cache_dir
    from ..engine.score import ScoreSettings
    from ..engine.worker import Worker
    from . import _imatrix_input, _log

    cfg = sel.config
    cache = cache_dir(None)
    check = checker(a, sel.model, a.tasks, text, cache, cfg.threads)
    worker = Worker(sel.model, ScoreSettings(threads=cfg.threads), cache, cache / "work",
                    imatrix=_imatrix_input(cfg.imatrix) if cfg.imatrix else None)
    by_number = {c.number: c for c in sel.candidates}
    out = {}
    for i, pick in enumerate(sel.picks):
        if pick.candidate is None:
            continue
        todo = [sel.candidates[pick.candidate], *(by_number[t["trial"]] for t in sel.ties(pick))]
        results = score_recipes(check, worker, [(c.name, c.recipe) for c in todo], _log(False))
        out[i] = [(c.number, r) for c, r in zip(todo, results, strict=True)]
    return out


def _holdout_of_picks(sel, text: str | None) -> dict[int, dict]:
    """Each pick measured on the held-out text (pick index -> what its recipe records); none without a text."""
    if not text or not any(p.candidate is not None for p in sel.picks):
        return {}
    from ..core.text import TextSource
    from ..engine.demo import cache_dir
    from ..engine.score import ScoreSettings
    from ..engine.worker import Worker
    from ..study._holdout import Chosen, holdout_record, validate
    from . import _imatrix_input, _log

    cfg = sel.config
    settings = ScoreSettings(text=TextSource.parse(text), ctx=cfg.ctx, chunks=cfg.chunks, threads=cfg.threads)
    _warn_text_overlaps({"held-out": settings.text, "search": TextSource.parse(cfg.text)}, cfg.imatrix)
    cache = cache_dir(None)
    worker = Worker(sel.model, settings, cache, cache / "work",
                    imatrix=_imatrix_input(cfg.imatrix) if cfg.imatrix else None)
    todo = {i: p.candidate for i, p in enumerate(sel.picks) if p.candidate is not None}
    chosen = [Chosen(sel.candidates[c].name, sel.candidates[c].recipe, sel.candidates[c].metrics) for c in todo.values()]
    results = validate(worker, chosen, log=_log(False))
    return {i: holdout_record(r, settings.text) for i, r in zip(todo, results)}


# -- report ----------------------------------------------------------------------------------------
def report_args(p: argparse.ArgumentParser) -> None:
    _study_args(p)
    p.add_argument("-o", "--output", help="report directory (default: <study dir>/report, or report/)")
    p.add_argument("--sensitivity", action="append", default=[], metavar="DIR",
                   help="a sensitivity sweep directory (its CSV gets a chart); may be repeated")


@command("report", "plots (frontier, sensitivity) and a Markdown page with the frontier table and picks")
def report(a: argparse.Namespace) -> int:
    from ..formats.files import check_output_dir
    from ..report.page import write_report

    out = check_output_dir(Path(a.output) if a.output else (Path(a.dir) / "report" if a.dir else Path("report")))
    sel = _selection(a)
    page = write_report(sel, out, [Path(d) for d in a.sensitivity])
    print(f"wrote {page} and its plots ({len(sel.frontier)} frontier recipes, "
          f"{sum(p.candidate is not None for p in sel.picks)} picks)")
    return 0


# -- compare ---------------------------------------------------------------------------------------
def compare_args(p: argparse.ArgumentParser) -> None:
    from .scoring import _add_scoring_args

    p.add_argument("recipes", nargs="+", metavar="RECIPE_OR_QUANT",
                   help="recipes (YAML or any dialect `import` reads) or quantized GGUFs")
    p.add_argument("--model", help="map every recipe onto this model's tensor table (GGUF, or `demo`)")
    p.add_argument("--score", action="store_true", help="with --model: quantize and measure each mapped recipe")
    p.add_argument("--imatrix", help="with --score: the imatrix to quantize with")
    _add_scoring_args(p)
    _recipe_args(p)
    _device_args(p)
    p.add_argument("--json", action="store_true")


@command("compare", "recipes or quantized GGUFs side by side per tensor type; --model maps them onto another model")
def compare(a: argparse.Namespace) -> int:
    from ..core.comparison import SCORE_METRICS, format_table
    from ..core.comparison import compare as run_compare
    from ..errors import RecipeSearchError
    from . import _dry_run, _imatrix_input, _model, _recipe_options

    if a.score and not a.model:
        raise RecipeSearchError("--score needs --model (the model to quantize and measure on)")
    model = _model(a.model) if a.model else None
    measure = None
    if a.score:
        from ..core.locations import cache_dir
        from ..engine.worker import Worker
        from .scoring import _settings

        cache = cache_dir(a.cache_dir)
        assert model is not None  # --score needs --model, checked above
        worker = Worker(model, _settings(a), cache, cache / "work", imatrix=_imatrix_input(a.imatrix) if a.imatrix else None)

        def measure(recipe):
            m = worker.measure(recipe)
            return {**{k: m.metrics[k] for k in SCORE_METRICS}, "n_tokens": m.metrics["n_tokens"],
                    "file_bytes": m.file_bytes}

    placement = settings = None
    if a.placement is not None or a.run_ctx is not None:
        from ..core.placement import Placement
        from ..core.run_memory import ContextSettings

        if model is None:
            raise RecipeSearchError("--placement and --run-ctx need --model (the model the recipes are sized on)")
        placement = Placement.parse(a.placement)
        if a.run_ctx is not None:
            settings = ContextSettings(a.run_ctx, a.parallel, a.ubatch, a.cache_type_k, a.cache_type_v)
    result = run_compare(a.recipes, model, measure, _dry_run, _recipe_options(a), placement, settings)
    if a.json:
        _print_json(result.to_dict())
    else:
        sys.stdout.write(format_table(result))
    return 0
