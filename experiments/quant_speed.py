"""Do I-quants cost inference speed? Uniform quants side by side, timed in alternation.

Each pair sets an I-quant against the K- or legacy quant of about the same bits. Every quant is made
once, then the rounds time prompt processing (512 tokens) and generation (64 tokens) of every quant
in turn, so a change of machine load hits all of them alike; the script prints median speeds and the
I-quant / partner ratios. Models load without llama.cpp's repacked CPU buffers (as recipe-search
scores them), so repacking kernels are not part of the comparison. Usage:

    python experiments/quant_speed.py ../shared/data/tiny-qwen35moe/model-bf16.gguf demo [--rounds 5]
    python experiments/quant_speed.py --smoke   # one round on a generated tiny model
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import smoke

from recipe_search.core import Placement, uniform_recipe
from recipe_search.engine import quantize_model, resolve_model_arg, speed_of

PAIRS = [("IQ4_XS", "Q4_K"), ("IQ4_NL", "Q4_0"), ("IQ3_S", "Q3_K")]


def measure(model: Path, rounds: int, threads: int) -> dict:
    types = sorted({t for pair in PAIRS for t in pair})
    with tempfile.TemporaryDirectory() as tmp:
        quants, sizes, fallbacks = {}, {}, {}
        for t in types:
            q = quantize_model(model, uniform_recipe(t), Path(tmp) / f"{t}.gguf", threads=threads)
            quants[t], sizes[t] = q.path, q.file_bytes
            fallbacks[t] = {k: dict(v) for k, v in q.resolution.fallbacks().items()}
        runs: dict[str, list[dict]] = {t: [] for t in types}
        for r in range(rounds):
            for t in types if r % 2 == 0 else reversed(types):
                runs[t].append(speed_of(quants[t], threads, Placement.parse("-ngl 0")).to_dict())
    med = {t: {k: statistics.median(run[k] for run in runs[t]) for k in ("pp_tokens_per_s", "tg_tokens_per_s")}
           for t in types}
    ratios = {f"{i}/{k}": {m: med[i][m] / med[k][m] for m in ("pp_tokens_per_s", "tg_tokens_per_s")} for i, k in PAIRS}
    return {"model": model.name, "rounds": rounds, "threads": threads, "file_bytes": sizes, "fallbacks": fallbacks,
            "median": med,
            "ratios": ratios, "runs": runs}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("models", nargs="+")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="experiments/results/quant_speed.json")
    a = p.parse_args(argv)
    results = []
    for name in a.models:
        r = measure(resolve_model_arg(name), a.rounds, a.threads)
        results.append(r)
        print(f"\n{Path(r['model']).name} ({a.rounds} rounds, {a.threads} threads; medians)")
        print(f"{'type':<8}{'MiB':>8}{'pp tok/s':>11}{'tg tok/s':>11}  fallbacks")
        for t, m in r["median"].items():
            counts: Counter[str] = Counter()
            for per_type in r["fallbacks"][t].values():
                counts.update(per_type)
            fb = ", ".join(f"{k} on {n} tensors" for k, n in counts.items()) or "-"
            print(f"{t:<8}{r['file_bytes'][t] / 2**20:>8.2f}{m['pp_tokens_per_s']:>11.1f}{m['tg_tokens_per_s']:>11.1f}  {fb}")
        for pair, ratio in r["ratios"].items():
            print(f"{pair:<14} prompt {ratio['pp_tokens_per_s']:.3f}   generation {ratio['tg_tokens_per_s']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


def run_smoke() -> None:
    with smoke.directory("quant_speed") as tmp:
        main([str(smoke.dense_model(tmp)), "--rounds", "1", "--out", str(tmp / "quant_speed.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
