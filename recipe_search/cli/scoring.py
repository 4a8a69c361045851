"""Commands that measure: score."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core import limits
from ..core.placement import Placement
from ..core.size import human_bytes
from ..core.text import ScoreSettings, TextSource, overlapping
from ..errors import RecipeSearchError
from . import _imatrix_input, _int_in, _load_recipe, _model, _print_json, _recipe_args, _warn, command


# -- score -----------------------------------------------------------------------------------------
def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", help="text file to score on, optionally a fraction: FILE[0:0.4] "
                                  "(default: the built-in Python docstring text)")
    p.add_argument("--ctx", type=_int_in(limits.CTX), default=ScoreSettings.ctx)
    p.add_argument("--chunks", type=_int_in(limits.CHUNKS), default=ScoreSettings.chunks)
    p.add_argument("--threads", type=_int_in(limits.THREADS), default=ScoreSettings.threads)
    p.add_argument("--gpu-layers", type=_int_in(limits.GPU_LAYERS), default=0,
                   help="layers to offload to a GPU (-1: all; needs a GPU build of llama-cpp-python)")
    p.add_argument("--cache-dir", help="reference-logits cache (default: $RECIPE_SEARCH_CACHE or ~/.cache/recipe-search)")


def _settings(a: argparse.Namespace) -> ScoreSettings:
    return ScoreSettings(text=TextSource.parse(a.text), ctx=a.ctx, chunks=a.chunks, threads=a.threads,
                         gpu_layers=a.gpu_layers)


def score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized base model (or `demo`)")
    p.add_argument("target", help="a recipe YAML (quantized, scored, removed) or a quantized GGUF of the model")
    _add_scoring_args(p)
    p.add_argument("--imatrix")
    p.add_argument("--allow-partial-imatrix", action="store_true")
    p.add_argument("--speed", action="store_true", help="also measure prompt and generation tokens/s")
    p.add_argument("--placement", metavar="FLAGS",
                   help="the placement --speed times the model under, in llama.cpp's flags: '-ot exps=CPU -ngl all' "
                        "(default: -ngl of --gpu-layers); a build that cannot offload times it on the CPU and says so")
    p.add_argument("--keep", metavar="OUT.gguf", help="keep the quantized file here")
    p.add_argument("--no-tensor-cache", action="store_true",
                   help="quantize the whole model with llama_model_quantize instead of assembling it from cached tensors")
    p.add_argument("--base", metavar="BASE.kld", help="score against a llama-perplexity --kl-divergence-base file "
                                                      "(its tokens; full 16-bit distributions) instead of the cache")
    p.add_argument("--json", action="store_true")
    _recipe_args(p)


@command("score", "KL divergence of a recipe or quant against the base model, as llama-perplexity computes it")
def score(a: argparse.Namespace) -> int:
    import math
    import time

    from ..core.inventory import read_inventory
    from ..core.kld import bootstrap_ci
    from ..core.locations import cache_dir
    from ..core.metrics import TAIL_STATISTICS, statistic_of
    from ..engine.leftovers import TRIAL_PREFIX
    from ..engine.score import score_against_base_file, score_quant
    from ..engine.speed import speed_of
    from ..engine.worker import Worker
    from ..formats.files import check_output_file

    model = _model(a.model)
    settings = _settings(a)
    if a.keep:
        check_output_file(a.keep)
    cache = cache_dir(a.cache_dir)
    imatrix = _imatrix_input(a.imatrix) if a.imatrix else None
    worker = Worker(model, settings, cache, cache / "work", imatrix=imatrix, tensor_cache=not a.no_tensor_cache)
    if a.placement is not None and not a.speed:
        raise RecipeSearchError("--placement is where --speed times the model: it needs --speed")
    placement = _speed_placement(a, worker.inventory) if a.speed else None
    _check_text_overlap(settings, a.imatrix)
    start = time.perf_counter()
    if a.base:
        how = f"llama-perplexity base file {a.base}"
    else:
        ref = worker.reference
        how = (f"cached, {ref.path}" if worker.reference_was_cached else
               f"computed in {worker.reference_seconds:.1f} s, {ref.path}")
        how += f" (text {settings.text.label}, ctx {settings.ctx}, {ref.meta['n_chunks']} chunks)"
    fallbacks: dict = {}
    temporary: list[Path] = []
    if a.target.endswith(".gguf"):
        quant = Path(a.target)
        file_bytes = quant.stat().st_size
    else:
        recipe = _load_recipe(a, a.target)
        resolution = worker.resolve(recipe)
        path = Path(a.keep) if a.keep else worker.workdir / f"{TRIAL_PREFIX}{os.getpid()}-score.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        built = worker.build(resolution, path, single_file=bool(a.keep),
                             allow_partial_imatrix=a.allow_partial_imatrix)
        quant, file_bytes = built.path, built.file_bytes
        temporary = [] if a.keep else built.files
        _warn(built.warnings)
        fallbacks = {k: dict(v) for k, v in resolution.fallbacks().items()}
    try:
        scored = (score_against_base_file(quant, Path(a.base), settings) if a.base
                  else score_quant(quant, worker.reference, settings))
        speed = None if placement is None else speed_of(quant, settings.threads, placement)
        quant_inv = read_inventory(quant)
        bpw = quant_inv.n_bytes * 8 / quant_inv.n_elements
    finally:
        for f in temporary:
            f.unlink(missing_ok=True)
    metrics = scored.summary.to_dict()
    metrics["ppl_ratio"] = math.exp(metrics["ln_ppl_ratio"])
    whole_chunks = len(scored.stats) // scored.chunk_tokens >= 2
    intervals = {m: bootstrap_ci(scored.stats.kld, statistic_of(m), scored.chunk_tokens) if whole_chunks else None
                 for m in TAIL_STATISTICS}
    result = {"reference": how, "file_bytes": file_bytes, "bpw": bpw, "metrics": metrics,
              **{f"{m}_ci95": None if ci is None else list(ci) for m, ci in intervals.items()},
              "speed": None if speed is None else speed.to_dict(), "fallbacks": fallbacks,
              "seconds": time.perf_counter() - start}
    if a.json:
        _print_json(result)
        return 0
    print(f"reference: {how}")
    print(f"size: {file_bytes:,} bytes ({human_bytes(file_bytes)}), {bpw:.3f} bits per weight")
    for kind, moves in fallbacks.items():
        print(f"fallback: {kind}: " + ", ".join(f"{n} x {mv}" for mv, n in moves.items()))
    s = metrics
    print(f"scored tokens:   {s['n_tokens']}")
    print(f"PPL(Q):          {s['ppl_q']:.4f} +/- {s['ppl_q_err']:.4f}")
    print(f"PPL(base):       {s['ppl_base']:.4f} +/- {s['ppl_base_err']:.4f}")
    print(f"ln(PPL(Q)/PPL(base)): {s['ln_ppl_ratio']:.6f} +/- {s['ln_ppl_ratio_err']:.6f}  (ratio {s['ppl_ratio']:.4f})")
    print(f"Mean    KLD:     {s['kld_mean']:.6f} +/- {s['kld_mean_err']:.6f}")
    print(f"Maximum KLD:     {s['kld_max']:.6f}")

    def ci(m: str) -> str:
        interval = intervals[m]
        return f"  (95% chunk-bootstrap CI {interval[0]:.6f} .. {interval[1]:.6f})" if interval else "  (one chunk: no interval)"

    print(f"99.9%   KLD:     {s['kld_p999']:.6f}{ci('kld_p999')}")
    print(f"99.0%   KLD:     {s['kld_p99']:.6f}{ci('kld_p99')}")
    print(f"worst 0.1% mean: {s['kld_cvar999']:.6f}{ci('kld_cvar999')}")
    print(f"worst 1% mean:   {s['kld_cvar99']:.6f}{ci('kld_cvar99')}")
    print(f"95.0%   KLD:     {s['kld_p95']:.6f}")
    print(f"90.0%   KLD:     {s['kld_p90']:.6f}")
    print(f"Median  KLD:     {s['kld_median']:.6f}")
    print(f"Mean    Δp:      {100 * s['dp_mean']:.3f} +/- {100 * s['dp_mean_err']:.3f} %")
    print(f"RMS     Δp:      {100 * s['dp_rms']:.3f} +/- {100 * s['dp_rms_err']:.3f} %")
    print(f"Δp percentiles:  1% {100 * s['dp_p1']:.3f}  5% {100 * s['dp_p5']:.3f}  50% {100 * s['dp_median']:.3f}  "
          f"95% {100 * s['dp_p95']:.3f}  99% {100 * s['dp_p99']:.3f}  max {100 * s['dp_max']:.3f} %")
    print(f"Same top p:      {100 * s['same_top']:.3f} +/- {100 * s['same_top_err']:.3f} %")
    if speed is not None:
        print(f"speed:           {speed.line()}")
    if s["n_tokens"] < 10_000:
        print(f"note: {s['n_tokens']} scored tokens: the 99.9th percentile rests on the top "
              f"{max(1, round(s['n_tokens'] / 1000))} or so tokens; use more --chunks for a firmer tail")
    print(f"time: {result['seconds']:.1f} s")
    return 0


def _speed_placement(a: argparse.Namespace, inv) -> Placement:
    """--placement, else --gpu-layers as ``-ngl``; a pattern that places no tensor of the model is an error."""
    if a.placement is None:
        return Placement((), None if a.gpu_layers < 0 else a.gpu_layers)
    placement = Placement.parse(a.placement)
    placement.place(inv)
    return placement


def _check_text_overlap(settings: ScoreSettings, imatrix_path: str | None) -> None:
    """Warn when the scoring text overlaps the imatrix's calibration text."""
    if not imatrix_path:
        return
    from ..formats.imatrix_file import load_imatrix

    for dataset in overlapping(settings.text, load_imatrix(imatrix_path).datasets):
        _warn([f"the imatrix was computed on {dataset}, which overlaps the scoring text {settings.text.label}"])


# -- base-logits / imatrix -------------------------------------------------------------------------
def base_logits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized base model (or `demo`)")
    _add_scoring_args(p)
    p.add_argument("-o", "--output", required=True, help="file to write (llama-perplexity --kl-divergence-base format)")


@command("base-logits", "write the base model's logits in llama-perplexity's --kl-divergence-base format")
def base_logits(a: argparse.Namespace) -> int:
    from ..engine.score import write_base_file
    from ..formats.files import check_output_file

    check_output_file(a.output)
    n = write_base_file(_model(a.model), _settings(a), Path(a.output))
    print(f"wrote {a.output}: {n} chunks of {a.ctx} tokens ({human_bytes(Path(a.output).stat().st_size)})")
    return 0


def imatrix_cmd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the unquantized model (or `demo`)")
    p.add_argument("--text", required=True, help="calibration text, FILE or FILE[0.4:1]; keep it apart from "
                                                 "the scoring text")
    p.add_argument("-o", "--output", required=True, help="imatrix file to write (llama.cpp's GGUF format)")
    p.add_argument("--ctx", type=_int_in(limits.CTX), default=512)
    p.add_argument("--chunks", type=_int_in(limits.CHUNKS), help="chunks to evaluate (default: all the text holds)")
    p.add_argument("--threads", type=_int_in(limits.THREADS), default=2)
    p.add_argument("--gpu-layers", type=_int_in(limits.GPU_LAYERS), default=0,
                   help="layers to offload to a GPU (-1: all; needs a GPU build of llama-cpp-python)")
    p.add_argument("--process-output", action="store_true", help="also collect output.weight, as llama-imatrix "
                                                                 "--process-output does")


@command("imatrix", "compute an importance matrix in-process, as llama-imatrix does")
def imatrix_cmd(a: argparse.Namespace) -> int:
    import time

    from ..engine.imatrix_collect import collect_imatrix
    from ..formats.files import check_output_file
    from ..formats.imatrix_file import save_imatrix_gguf

    check_output_file(a.output)
    source = TextSource.parse(a.text)
    start = time.perf_counter()
    im = collect_imatrix(_model(a.model), source.read(), ctx=a.ctx, n_chunks=a.chunks, n_threads=a.threads,
                         process_output=a.process_output, dataset=source.label, n_gpu_layers=a.gpu_layers)
    save_imatrix_gguf(im, a.output)
    print(f"wrote {a.output}: {len(im.entries)} entries from {im.chunk_count} chunks of {im.chunk_size} tokens "
          f"of {source.label} in {time.perf_counter() - start:.1f} s")
    return 0
