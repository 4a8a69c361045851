"""Cross-check `recipe-search score` against llama-perplexity itself, on the same model, text and quant.

Builds (once) llama-perplexity from the pinned llama-cpp-python sdist (experiments/bench_trial.py's
build), writes llama-perplexity's base file, scores a uniform-Q4_0 quant of the model three ways and
prints the statistics side by side:
  1. llama-perplexity --kl-divergence (run with --no-repack: the repack/AMX path dies on some CPUs),
  2. recipe-search score --base on llama-perplexity's own base file (its 16-bit distributions),
  3. recipe-search score with its sparse reference cache (the default).

    python experiments/crosscheck_perplexity.py [--model demo] [--text wiki.test.raw] [--chunks 8]

With --ours-only, llama-perplexity is neither built nor run: the base file of (2) is the one
`recipe-search base-logits` writes (the same format), and only (2) and (3) are printed. The smoke mode
(`--smoke`) is that, on a generated tiny model: it tests our side only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smoke
from bench_trial import build_tools

from recipe_search.core import cache_dir
from recipe_search.engine import resolve_model_arg

STATS = {"Mean    KLD": "kld_mean", "Maximum KLD": "kld_max", "99.9%   KLD": "kld_p999", "99.0%   KLD": "kld_p99",
         "Median  KLD": "kld_median", "RMS Δp    ": "dp_rms", "Same top p": "same_top"}


def parse_perplexity(log: str) -> dict[str, float]:
    out = {}
    for label, key in STATS.items():
        m = re.search(re.escape(label) + r"\s*:\s*([-\d.]+)", log)
        if m:
            value = float(m.group(1))
            out[key] = value / 100 if key in ("dp_rms", "same_top") else value
    return out


def ours(model: Path, quant: Path, extra: list[str]) -> dict[str, float]:
    run = subprocess.run([sys.executable, "-m", "recipe_search.cli", "score", str(model), str(quant), "--json", *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout)["metrics"]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--model", default="demo")
    p.add_argument("--text", default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw"))
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--tools", type=Path, help="a bin/ with llama-perplexity (default: build)")
    p.add_argument("--ours-only", action="store_true", help="no llama-perplexity: the base file from "
                                                            "`recipe-search base-logits`, our two scores only")
    p.add_argument("--out", default="experiments/results/crosscheck_perplexity.json")
    a = p.parse_args(argv)
    model = resolve_model_arg(a.model)
    bin_dir = None if a.ours_only else a.tools or build_tools(cache_dir() / "llama.cpp-tools", "0.3.36")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        recipe, quant, base = tmp / "q40.yaml", tmp / "q40.gguf", tmp / "base.kld"
        recipe.write_text("name: uniform-Q4_0\nunmatched: {type: Q4_0}\n")
        subprocess.run([sys.executable, "-m", "recipe_search.cli", "quantize", str(model), str(recipe), "-o", str(quant)],
                       check=True, capture_output=True)
        rows = {}
        if bin_dir is None:
            subprocess.run([sys.executable, "-m", "recipe_search.cli", "base-logits", str(model), "--text", a.text,
                            "--chunks", str(a.chunks), "--ctx", "512", "-o", str(base)], check=True, capture_output=True)
        else:
            common = ["-c", "512", "-b", "2048", "-t", "2", "--no-repack"]
            env = {"LD_LIBRARY_PATH": str(bin_dir)}
            subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", a.text, "--chunks", str(a.chunks),
                            "--kl-divergence-base", str(base), *common], check=True, capture_output=True, env=env)
            theirs = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(quant), "--kl-divergence-base",
                                     str(base), "--kl-divergence", *common], check=True, capture_output=True, text=True,
                                    env=env)
            rows["llama-perplexity"] = parse_perplexity(theirs.stdout + theirs.stderr)
        rows[f"score --base ({'base-logits' if bin_dir is None else 'its'} file)"] = ours(model, quant, ["--base", str(base)])
        rows["score (sparse cache)"] = ours(model, quant, ["--text", a.text, "--chunks", str(a.chunks)])
    print(f"{'':26}" + "".join(f"{k:>12}" for k in STATS.values()))
    for name, row in rows.items():
        print(f"{name:26}" + "".join(f"{row.get(k, float('nan')):>12.6f}" for k in STATS.values()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


def run_smoke() -> None:
    print("smoke: our side only (--ours-only); llama-perplexity is neither built nor run", flush=True)
    with smoke.directory("crosscheck_perplexity") as tmp:
        main(["--model", str(smoke.dense_model(tmp)), "--text", str(smoke.text_file(tmp)), "--chunks", "2",
              "--ours-only", "--out", str(tmp / "crosscheck.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
