"""Commands across model families: carry (with --target and --score), roles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core import limits
from ..core.size import human_bytes
from ..errors import RecipeSearchError
from . import _dry_run, _int_in, _log, _model, _print_json, _warn, _warn_text_overlaps, command


def carry_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="a recipe made for the source model (any dialect `import` reads)")
    p.add_argument("--from", dest="source", required=True, help="the model the recipe was made for (or `demo`)")
    p.add_argument("--onto", required=True, help="the model to carry it onto (a header-only GGUF will do)")
    p.add_argument("--target", help="rescale the carried recipe to this size (4.5bpw, 900MiB, bytes) in the order of "
                                    "the target model's sensitivity table")
    p.add_argument("--sensitivity", help="the target model's sensitivity table (default: studies/<model stem>-"
                                         "sensitivity, as `sensitivity` writes it; a study's DIR/sweep will do)")
    p.add_argument("--score", metavar="TEXT", help="measure the carried recipe on the target model on this held-out "
                                                   "text, FILE or FILE[a:b], next to each --against recipe")
    p.add_argument("--against", action="append", default=[], metavar="RECIPE",
                   help="the target model's own recipe (a pick) to measure next to it; repeat it")
    p.add_argument("--ctx", type=_int_in(limits.CTX), default=512)
    p.add_argument("--chunks", type=_int_in(limits.CHUNKS), default=8)
    p.add_argument("--threads", type=_int_in(limits.THREADS), default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--cache-dir")
    p.add_argument("-o", "--output", help="write the carried recipe here")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")


@command("carry", "carry a recipe onto a model of another family: each tensor gets the type its role had in the "
                  "source at the same depth")
def carry_cmd(a: argparse.Namespace) -> int:
    from ..core.dialects import load_any_recipe
    from ..core.inventory import read_inventory
    from ..core.resolution import resolve
    from ..core.roles import carry
    from ..core.size import predict_size
    from ..formats.files import check_output_file

    if a.output:
        check_output_file(a.output)
    if a.against and not a.score:
        raise RecipeSearchError("--against names recipes to score next to the carried one: give --score TEXT too")
    onto = _model(a.onto)
    source, target = read_inventory(_model(a.source)), read_inventory(onto)
    recipe = load_any_recipe(a.recipe)
    against = [load_any_recipe(path) for path in a.against]
    carried = carry(recipe, source, target, _dry_run)
    out = carried.recipe
    before = predict_size(resolve(recipe, source, _dry_run), source).bits_per_weight
    _warn([f"rule {rule}: names no tensor of the {source.arch} model; not carried" for rule in carried.unused_rules] +
          [f"{kind}: a tensor type of no role llama.cpp names in the {source.arch} model; not carried"
           for kind in carried.no_role] +
          [f"{kind}: no counterpart in the {source.arch} recipe; it gets the recipe's unmatched type"
           for kind in carried.no_counterpart])
    report: dict = {"counterparts": carried.counterparts, "no_counterpart": carried.no_counterpart,
                    "no_role": carried.no_role, "unused_rules": carried.unused_rules, "source_bpw": before}
    size = predict_size(resolve(out, target), target)
    lines = [f"{recipe.name}: {before:.3f} bpw on {source.arch} ({_model(a.source).name}) -> {size.bits_per_weight:.3f} "
             f"bpw on {target.arch} ({onto.name}), {human_bytes(size.file_bytes)}"]
    lines += [f"  {kind:<22} <- {came_from}" for kind, came_from in carried.counterparts.items()]
    table_text = None
    if a.target:
        rescaled, table_text = _rescale(a, out, target, onto)
        out, size = rescaled.recipe, rescaled.size
        _warn([f"{group}: no cell in the sensitivity table; kept" for group in rescaled.kept])
        report["rescaled"] = {"moves": rescaled.moves, "kept": rescaled.kept,
                              "prediction": rescaled.prediction and rescaled.prediction.to_dict()}
        lines.append(f"rescaled to {a.target}: {size.bits_per_weight:.3f} bpw, {human_bytes(size.file_bytes)} "
                     f"({size.file_bytes} bytes), {rescaled.moves} moves")
    if a.output:
        out.save(Path(a.output), overwrite=a.force)
    if a.score:
        report["score"] = _score(a, onto, out, against, table_text, lines)
    if a.json:
        _print_json(report | {"prediction": size.to_dict() | {"tensors": None},
                              "recipe": out.model_dump(exclude_none=True)})
        return 0
    print("\n".join(lines))
    if not a.output:
        sys.stdout.write(out.to_yaml())
    return 0


def _rescale(a: argparse.Namespace, recipe, target, onto: Path):
    """The carried recipe rescaled to ``a.target`` with the target model's sensitivity table, and the text
    spec the table was measured on."""
    from ..core.pareto import parse_target
    from ..sensitivity.rescaling import rescale
    from ..sensitivity.surrogate import Surrogate
    from ..sensitivity.sweep import default_out
    from ..sensitivity.table import META_FILE, SensitivityTable

    size_target = parse_target(a.target)
    table = Path(a.sensitivity) if a.sensitivity else default_out(onto)
    if not (table / META_FILE).exists():
        raise RecipeSearchError(f"--target rescales with the target model's sensitivity table and there is none at "
                                f"{table}: measure one (`recipe-search sensitivity {a.onto}`) or pass --sensitivity DIR")
    loaded = SensitivityTable.load(table)
    return rescale(recipe, Surrogate(loaded, target), size_target), loaded.meta.get("text_spec")


def _score(a: argparse.Namespace, onto: Path, carried, against: list, table_text: str | None,
           lines: list[str]) -> dict:
    """Measure the carried recipe and each --against recipe on the held-out text (warning when the sensitivity
    table that rescaled it, measured on ``table_text``, saw it); paired intervals of the differences; the lines
    to print go onto ``lines``."""
    from ..core.text import TextSource
    from ..engine.demo import cache_dir
    from ..engine.score import ScoreSettings
    from ..engine.worker import Worker
    from ..study._holdout import Chosen, paired_differences, validate

    settings = ScoreSettings(text=TextSource.parse(a.score), ctx=a.ctx, chunks=a.chunks, threads=a.threads)
    if a.target:
        _warn_text_overlaps({"held-out": settings.text, "sensitivity table's": TextSource.parse(table_text)}, None)
    cache = cache_dir(a.cache_dir)
    worker = Worker(onto, settings, cache, cache / "work")
    results = validate(worker, [Chosen(r.name, r) for r in [carried, *against]], n_boot=a.n_boot, log=_log(a.quiet))
    chunk_tokens = worker.reference.n_scored_per_chunk
    diffs = {r.name: paired_differences(results[0], r, chunk_tokens, n_boot=a.n_boot) for r in results[1:]}
    shown = ("kld_mean", "kld_p99", "kld_p999")
    lines.append(f"held-out text {settings.text.label}: ctx {a.ctx} x {a.chunks} chunks, "
                 f"{int(results[0].holdout_metrics['n_tokens'])} scored tokens; intervals: 95% bootstrap over chunks")
    lines.append(f"{'recipe':<44}{'size':>11}{'bpw':>7}" + "".join(f"{m + ' [95%]':>30}" for m in shown))
    for r in results:
        lines.append(f"{r.name[-43:]:<44}{human_bytes(r.file_bytes):>11}{r.bpw:>7.3f}" + "".join(
            f"{r.holdout_metrics[m]:.3g} [{r.intervals[m][0]:.3g}, {r.intervals[m][1]:.3g}]".rjust(30) for m in shown))
    for name, d in diffs.items():
        lines.append(f"{'carried - ' + name[-34:]:<62}" + "".join(f"[{d[m][0]:+.3g}, {d[m][1]:+.3g}]".rjust(30)
                                                                   for m in shown))
    return {"holdout_text": settings.text.label, "ctx": a.ctx, "chunks": a.chunks,
            "recipes": [r.to_dict() for r in results],
            "carried_minus": {name: {m: list(v) for m, v in d.items()} for name, d in diffs.items()}}


def roles_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", nargs=2, action="append", metavar=("MODEL", "RECIPE"), required=True,
                   help="a recipe and the model it is for (`demo`, a GGUF, a header-only GGUF); repeat it")
    p.add_argument("--plot", help="draw bits per weight against relative depth, per role group, into this PNG")
    p.add_argument("--json", action="store_true")


@command("roles", "recipes of any families side by side by tensor role and depth (first, middle, last third)")
def roles_cmd(a: argparse.Namespace) -> int:
    from ..core.dialects import load_any_recipe
    from ..core.inventory import read_inventory
    from ..core.roles import BANDS, role_profile

    profiles = {}
    for model, path in a.recipe:
        recipe = load_any_recipe(path)
        profiles[f"{recipe.name} ({read_inventory(_model(model)).arch})"] = role_profile(recipe, read_inventory(_model(model)))
    bands = {label: p.bands() for label, p in profiles.items()}
    if a.plot:
        from ..formats.files import check_output_file
        from ..report.plots import plot_role_profiles

        plot_role_profiles(profiles, check_output_file(a.plot))
    if a.json:
        _print_json(bands)
        return 0
    groups = sorted({g for b in bands.values() for g in b})
    print(f"{'bits per weight':<24}" + "".join(f"{label[-30:]:>32}" for label in bands))  # names end apart
    for group in groups:
        for band in BANDS:
            cells = [b.get(group, {}).get(band) for b in bands.values()]
            if any(c is not None for c in cells):
                print(f"{group + ' ' + band:<24}" + "".join(f"{'-' if c is None else f'{c:.2f}':>32}" for c in cells))
    return 0
