"""The `recipe-search` command: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import RecipeSearchError

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``fn`` (taking parsed args) with an ``add_args(parser)`` companion named ``<fn>_args``."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (fn, globals()[f"{fn.__name__}_args"], help)
        return fn

    return wrap


def _model(arg: str) -> Path:
    from .demo import resolve_model_arg

    return resolve_model_arg(arg)


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


# -- demo-model ------------------------------------------------------------------------------------
def demo_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", help="cache directory (default: $RECIPE_SEARCH_CACHE or ~/.cache/recipe-search)")


@command("demo-model", "build (once) and print the path of the F16 Gemma 3 270M demo model")
def demo_model(a: argparse.Namespace) -> int:
    from .demo import demo_model_path

    print(demo_model_path(a.dir))
    return 0


# -- inspect ---------------------------------------------------------------------------------------
def inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file (any shard of a split model), or `demo`")
    p.add_argument("--json", action="store_true")


@command("inspect", "list a model's tensor types from its GGUF header")
def inspect(a: argparse.Namespace) -> int:
    from .inventory import inventory_rows, read_inventory

    inv = read_inventory(_model(a.model))
    rows = inventory_rows(inv)
    if a.json:
        _print_json({"path": str(inv.path), "architecture": inv.arch, "blocks": inv.n_blocks,
                     "tensors": len(inv.tensors), "params": inv.n_elements, "bytes": inv.n_bytes,
                     "file_type": inv.file_type_label(), "tensor_types": rows})
        return 0
    print(f"{inv.path}  arch={inv.arch}  blocks={inv.n_blocks}  tensors={len(inv.tensors)}  "
          f"params={inv.n_elements:,}  size={_human_bytes(inv.n_bytes)}  file_type={inv.file_type_label()}")
    head = f"{'tensor type':<22}{'n':>4}  {'blocks':<12}{'params':>13}{'share':>7}  {'type(s)':<12}{'bytes':>12}{'bpw':>7}  {'quant':<6}{'rows':<8}admits without fallback"
    print(head)
    print("-" * len(head))
    for r in rows:
        admits = " ".join(t for t in r["admits"] if t not in ("F32", "F16", "BF16")) if r["quantized_by_llama_cpp"] else "-"
        rows_txt = ",".join(map(str, r["row_lengths"]))
        print(f"{r['tensor_type']:<22}{r['count']:>4}  {r['blocks']:<12}{r['params']:>13,}{r['share'] * 100:>6.1f}%  "
              f"{'/'.join(r['ggml_types']):<12}{r['bytes']:>12,}{r['bpw']:>7.2f}  "
              f"{'yes' if r['quantized_by_llama_cpp'] else 'no':<6}{rows_txt:<8}{admits}")
    narrow = [r["tensor_type"] for r in rows if r["quantized_by_llama_cpp"] and "Q4_K" not in r["admits"]]
    if narrow:
        print(f"\nK- and I-quants fall back on: {', '.join(narrow)} (row length not a multiple of 256)")
    return 0


# -- size ------------------------------------------------------------------------------------------
def size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("recipe")
    p.add_argument("--imatrix", help="imatrix file the quantization will use (adds its metadata keys)")
    p.add_argument("--json", action="store_true")


@command("size", "predict the exact output size of a recipe without quantizing")
def size(a: argparse.Namespace) -> int:
    from .inventory import read_inventory
    from .recipe import load_recipe
    from .resolve import lint, resolve
    from .size import predict_size

    inv = read_inventory(_model(a.model))
    recipe = load_recipe(a.recipe)
    _warn(lint(recipe, inv))
    resolution = resolve(recipe, inv)
    extra = _imatrix_input(a.imatrix).kv() if a.imatrix else None
    pred = predict_size(resolution, inv, extra)
    if a.json:
        _print_json({**pred.to_dict(), "fallbacks": {k: dict(v) for k, v in resolution.fallbacks().items()}})
        return 0
    by_kind: dict[str, list] = {}
    for t in pred.tensors:
        by_kind.setdefault(t.kind, []).append(t)
    print(f"{'tensor type':<22}{'types':<24}{'bytes':>14}{'bpw':>7}")
    for kind, ts in by_kind.items():
        types = sorted({t.ggml_type for t in ts})
        nbytes, nel = sum(t.bytes for t in ts), sum(t.n_elements for t in ts)
        print(f"{kind:<22}{'/'.join(types):<24}{nbytes:>14,}{nbytes * 8 / nel:>7.2f}")
    for kind, moves in resolution.fallbacks().items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {m}" for m, n in moves.items()))
    print(f"\nfile: {pred.file_bytes:,} bytes ({_human_bytes(pred.file_bytes)}), metadata {pred.metadata_bytes:,} bytes, "
          f"{pred.bits_per_weight:.3f} bits per weight")
    return 0


def _imatrix_input(path: str):
    from .imatrix_file import load_imatrix, quantizer_arrays
    from .quantize import ImatrixInput

    im = load_imatrix(path)
    return ImatrixInput(quantizer_arrays(im), file=str(path), dataset=(im.datasets or [None])[0],
                        chunk_count=im.chunk_count)


# -- export / import -------------------------------------------------------------------------------
def export_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.add_argument("--format", choices=["tensor-type-file", "args", "custom-q"], default="tensor-type-file")
    p.add_argument("-o", "--output", help="write here instead of standard output")


@command("export", "write a recipe as llama-quantize's --tensor-type-file, its command line, or --custom-q")
def export_cmd(a: argparse.Namespace) -> int:
    from .export import export
    from .recipe import atomic_write_text, load_recipe

    text = export(load_recipe(a.recipe), a.format)
    if a.output:
        atomic_write_text(Path(a.output), text)
    else:
        sys.stdout.write(text)
    return 0


def import_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("quant", help="an existing quantized GGUF")
    p.add_argument("-o", "--output", help="recipe YAML to write (default: standard output)")
    p.add_argument("--name")
    p.add_argument("--force", action="store_true", help="replace an existing output file")


@command("import", "recover the recipe of an existing quantized GGUF")
def import_cmd(a: argparse.Namespace) -> int:
    from .importer import import_recipe

    recipe = import_recipe(_model(a.quant), a.name)
    if a.output:
        recipe.save(a.output, overwrite=a.force)
        print(f"wrote {a.output} ({len(recipe.rules)} rules)")
    else:
        sys.stdout.write(recipe.to_yaml())
    return 0


# -- quantize --------------------------------------------------------------------------------------
def quantize_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")
    p.add_argument("recipe")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--imatrix")
    p.add_argument("--allow-partial-imatrix", action="store_true")
    p.add_argument("--threads", type=int, default=2)


@command("quantize", "apply a recipe with llama.cpp's quantizer and check every tensor's type")
def quantize_cmd(a: argparse.Namespace) -> int:
    from .inventory import read_inventory
    from .quantize import quantize_model
    from .recipe import load_recipe
    from .resolve import lint

    model = _model(a.model)
    recipe = load_recipe(a.recipe)
    imatrix_path = a.imatrix or recipe.imatrix
    inv = read_inventory(model)
    _warn(lint(recipe, inv))
    result = quantize_model(model, recipe, a.output, imatrix=_imatrix_input(imatrix_path) if imatrix_path else None,
                            threads=a.threads, allow_partial_imatrix=a.allow_partial_imatrix, inventory=inv)
    _warn(result.warnings)
    for kind, moves in result.resolution.fallbacks().items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {m}" for m, n in moves.items()))
    print(f"wrote {result.path} ({result.file_bytes:,} bytes) in {result.seconds:.1f} s; every tensor has its recipe type")
    return 0


# -- score -----------------------------------------------------------------------------------------
def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", help="text file to score on, optionally a fraction: FILE[0:0.4] "
                                  "(default: the built-in Python docstring text)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", help="reference-logits cache (default: $RECIPE_SEARCH_CACHE or ~/.cache/recipe-search)")


def _settings(a: argparse.Namespace):
    from .score import ScoreSettings
    from .text import TextSource

    return ScoreSettings(text=TextSource.parse(a.text), ctx=a.ctx, chunks=a.chunks, threads=a.threads)


def score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized base model (or `demo`)")
    p.add_argument("target", help="a recipe YAML (quantized, scored, removed) or a quantized GGUF of the model")
    _add_scoring_args(p)
    p.add_argument("--imatrix")
    p.add_argument("--allow-partial-imatrix", action="store_true")
    p.add_argument("--speed", action="store_true", help="also measure prompt and generation tokens/s")
    p.add_argument("--keep", metavar="OUT.gguf", help="keep the quantized file here")
    p.add_argument("--json", action="store_true")


@command("score", "KL divergence of a recipe or quant against the base model, as llama-perplexity computes it")
def score(a: argparse.Namespace) -> int:
    import time

    from .demo import cache_dir
    from .kld import bootstrap_quantile_ci
    from .recipe import load_recipe
    from .worker import Worker

    model = _model(a.model)
    settings = _settings(a)
    cache = cache_dir(a.cache_dir)
    worker = Worker(model, settings, cache, cache / "work", imatrix=_imatrix_input(a.imatrix) if a.imatrix else None)
    _check_text_overlap(settings, a.imatrix)
    start = time.perf_counter()
    ref = worker.reference
    how = f"cached, {ref.path}" if worker.reference_was_cached else f"computed in {worker.reference_seconds:.1f} s"
    if a.target.endswith(".gguf"):
        from .inventory import read_inventory
        from .score import score_quant

        scored = score_quant(Path(a.target), ref, settings)
        metrics = {**scored.summary.to_dict()}
        kld_tokens = scored.stats.kld
        quant_inv = read_inventory(a.target)
        file_bytes, bpw = Path(a.target).stat().st_size, quant_inv.n_bytes * 8 / quant_inv.n_elements
        speed, fallbacks = {}, {}
        if a.speed:
            from .llama import LlamaModel

            with LlamaModel(Path(a.target), n_threads=settings.threads) as lm:
                pp, tg = lm.generate_speed()
            speed = {"pp_tokens_per_s": pp, "tg_tokens_per_s": tg}
    else:
        recipe = load_recipe(a.target)
        m = worker.measure(recipe, speed=a.speed, out=Path(a.keep) if a.keep else None)
        metrics, kld_tokens, file_bytes, bpw, speed, fallbacks = (m.metrics, m.kld_tokens, m.file_bytes, m.bpw,
                                                                   m.speed, m.fallbacks)
    import math

    metrics.setdefault("ppl_ratio", math.exp(metrics["ln_ppl_ratio"]))
    lo, hi = bootstrap_quantile_ci(kld_tokens, 0.999)
    result = {"reference": {"cached": worker.reference_was_cached, "path": str(ref.path),
                            "seconds": worker.reference_seconds, "text": settings.text.label},
              "file_bytes": file_bytes, "bpw": bpw, "metrics": metrics, "kld_p999_ci95": [lo, hi],
              "speed": speed, "fallbacks": fallbacks, "seconds": time.perf_counter() - start}
    if a.json:
        _print_json(result)
        return 0
    s = metrics
    print(f"reference: {how}  (text {settings.text.label}, ctx {settings.ctx}, {ref.meta['n_chunks']} chunks)")
    print(f"size: {file_bytes:,} bytes ({_human_bytes(file_bytes)}), {bpw:.3f} bits per weight")
    for kind, moves in fallbacks.items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {mv}" for mv, n in moves.items()))
    print(f"scored tokens:   {s['n_tokens']}")
    print(f"PPL(Q):          {s['ppl_q']:.4f} +/- {s['ppl_q_err']:.4f}")
    print(f"PPL(base):       {s['ppl_base']:.4f} +/- {s['ppl_base_err']:.4f}")
    print(f"ln(PPL(Q)/PPL(base)): {s['ln_ppl_ratio']:.6f} +/- {s['ln_ppl_ratio_err']:.6f}  (ratio {s['ppl_ratio']:.4f})")
    print(f"Mean    KLD:     {s['kld_mean']:.6f} +/- {s['kld_mean_err']:.6f}")
    print(f"Maximum KLD:     {s['kld_max']:.6f}")
    print(f"99.9%   KLD:     {s['kld_p999']:.6f}  (95% bootstrap CI {lo:.6f} .. {hi:.6f})")
    print(f"99.0%   KLD:     {s['kld_p99']:.6f}")
    print(f"95.0%   KLD:     {s['kld_p95']:.6f}")
    print(f"90.0%   KLD:     {s['kld_p90']:.6f}")
    print(f"Median  KLD:     {s['kld_median']:.6f}")
    print(f"Mean    Δp:      {100 * s['dp_mean']:.3f} +/- {100 * s['dp_mean_err']:.3f} %")
    print(f"RMS     Δp:      {100 * s['dp_rms']:.3f} +/- {100 * s['dp_rms_err']:.3f} %")
    print(f"Δp percentiles:  1% {100 * s['dp_p1']:.3f}  5% {100 * s['dp_p5']:.3f}  50% {100 * s['dp_median']:.3f}  "
          f"95% {100 * s['dp_p95']:.3f}  99% {100 * s['dp_p99']:.3f}  max {100 * s['dp_max']:.3f} %")
    print(f"Same top p:      {100 * s['same_top']:.3f} +/- {100 * s['same_top_err']:.3f} %")
    if speed:
        print(f"speed:           prompt {speed['pp_tokens_per_s']:.1f} tok/s, generation {speed['tg_tokens_per_s']:.1f} tok/s")
    if s["n_tokens"] < 10_000:
        print(f"note: {s['n_tokens']} scored tokens: the 99.9th percentile rests on the top "
              f"{max(1, round(s['n_tokens'] / 1000))} or so tokens; use more --chunks for a firmer tail")
    print(f"time: {result['seconds']:.1f} s")
    return 0


def _check_text_overlap(settings, imatrix_path: str | None) -> None:
    """Warn when the scoring text overlaps the imatrix's calibration text."""
    if not imatrix_path:
        return
    from .imatrix_file import load_imatrix
    from .text import TextSource

    for dataset in load_imatrix(imatrix_path).datasets:
        try:
            calib = TextSource.parse(dataset)
        except RecipeSearchError:
            continue
        same_name = calib.path is not None and settings.text.path is not None and \
            calib.path.name == settings.text.path.name
        if same_name and calib.start < settings.text.end and settings.text.start < calib.end:
            _warn([f"the imatrix was computed on {dataset}, which overlaps the scoring text {settings.text.label}"])


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
    p.add_argument("--ctx", type=int)
    p.add_argument("--chunks", type=int)
    p.add_argument("--imatrix")
    p.add_argument("--seed", type=int)
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"])
    p.add_argument("--threads", type=int)
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


@command("search", "run (or resume) a search study: Optuna proposes, the worker measures")
def search(a: argparse.Namespace) -> int:
    from .demo import cache_dir
    from .search import check_disk, open_study, parse_duration, storage_for
    from .space import load_study_config

    model = _model(a.model)
    config = load_study_config(a.config)
    overrides = {k: getattr(a, k) for k in ("text", "ctx", "chunks", "imatrix", "seed", "sampler", "threads")
                 if getattr(a, k) is not None}
    config = config.model_copy(update=overrides)
    name = a.study or model.stem
    directory = Path(a.dir) if a.dir else Path("studies") / name
    directory.mkdir(parents=True, exist_ok=True)
    storage = storage_for(a.storage or f"sqlite:///{(directory / 'study.db').resolve()}")
    cache = cache_dir(a.cache_dir)
    ctx = open_study(storage, name, model, config, directory, cache)
    return _run_study(ctx, a, cache, parse_duration(a.timeout) if a.timeout else None, check_disk)


def _run_study(ctx, a: argparse.Namespace, cache: Path, timeout: float | None, check_disk) -> int:
    import time

    from .search import add_presets, enqueue_references, run, study_summary

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
    from .demo import cache_dir
    from .search import check_disk, open_study, parse_duration, storage_for, worker_seed

    directory = Path(a.dir) if a.dir else Path("studies") / a.study
    cache = cache_dir(a.cache_dir)
    ctx = open_study(storage_for(a.storage), a.study, None, None, directory, cache, worker_seed())
    return _run_study(ctx, a, cache, parse_duration(a.timeout) if a.timeout else None, check_disk)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipe-search", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, add_args, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeSearchError as err:
        print(f"recipe-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recipe-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
