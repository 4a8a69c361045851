"""Whole-model uniform quants with and without an importance matrix: does the imatrix help at every width?

Every quantizable tensor goes to one ggml type of the default ladder (llama.cpp's row-size fallback where
a type does not fit), measured once without and once with the imatrix (imatrix-only types: with it only;
a type llama.cpp refuses, such as IQ2_XXS for a token_embd without imatrix data, is skipped).
Measurements are saved after each one, so a rerun resumes.

    python experiments/uniform_imatrix.py MODEL --imatrix FILE --text FILE[0:0.4] --json OUT.json
    python experiments/uniform_imatrix.py --smoke   # three types on a generated tiny model, its imatrix collected first
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import smoke

from recipe_search import RecipeSearchError
from recipe_search.core import ScoreSettings, TextSource, shareable, uniform_recipe
from recipe_search.engine import Worker, resolve_model_arg
from recipe_search.formats import DEFAULT_LADDER, IMATRIX_REQUIRED, ImatrixInput, parse_type

METRICS = ("kld_mean", "kld_p99", "kld_p999", "ppl_ratio", "same_top")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("model")
    ap.add_argument("--imatrix", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "rs-cache"))
    ap.add_argument("--json", required=True)
    ap.add_argument("--types", nargs="+", type=parse_type, default=list(DEFAULT_LADDER),
                    help="the ggml types to quantize to (default: the default ladder)")
    a = ap.parse_args(argv)
    settings = ScoreSettings(text=TextSource.parse(a.text), ctx=a.ctx, chunks=a.chunks, threads=a.threads)
    cache = Path(a.cache_dir)
    model = resolve_model_arg(a.model)
    imatrix = ImatrixInput.from_file(a.imatrix)
    workers = {False: Worker(model, settings, cache, cache / "work"),
               True: Worker(model, settings, cache, cache / "work", imatrix=imatrix)}
    out = Path(a.json)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["type"], r["imatrix"]) for r in rows}
    for t in a.types:
        for with_imatrix in (False, True):
            if (t.name, with_imatrix) in done or (t in IMATRIX_REQUIRED and not with_imatrix):
                continue
            try:
                m = workers[with_imatrix].measure(uniform_recipe(t))
            except RecipeSearchError as err:  # e.g. an imatrix-only type for token_embd, which has no imatrix data
                print(f"{t.name} imatrix={with_imatrix}: skipped ({err})", file=sys.stderr, flush=True)
                continue
            rows.append({"type": t.name, "imatrix": with_imatrix, "bpw": m.bpw, "file_bytes": m.file_bytes,
                         "fallbacks": m.fallbacks, **{k: m.metrics[k] for k in METRICS}})
            print(f"{t.name} imatrix={with_imatrix}: {m.bpw:.2f} bpw, mean KLD {m.metrics['kld_mean']:.4f}",
                  file=sys.stderr, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"model": model.name, "imatrix": shareable(a.imatrix), "text": shareable(a.text),
                                       "ctx": a.ctx, "chunks": a.chunks, "rows": rows}, indent=1))
    by = {(r["type"], r["imatrix"]): r for r in rows}
    print(f"{'type':<9}{'bpw':>6}{'mean KLD':>11}{'+imatrix':>11}{'99.9% KLD':>11}{'+imatrix':>11}{'mean gain':>11}")
    for t in a.types:
        plain, im = by.get((t.name, False)), by.get((t.name, True))
        ref = im or plain
        if ref is None:
            continue
        cols = [f"{r['kld_mean']:>11.4f}" if r else f"{'-':>11}" for r in (plain, im)]
        cols += [f"{r['kld_p999']:>11.3f}" if r else f"{'-':>11}" for r in (plain, im)]
        gain = f"{1 - im['kld_mean'] / plain['kld_mean']:>11.1%}" if plain and im else f"{'-':>11}"
        print(f"{t.name:<9}{ref['bpw']:>6.2f}{cols[0]}{cols[1]}{cols[2]}{cols[3]}{gain}")
    return 0


def run_smoke() -> int:
    """Q8_0, Q4_0 and an imatrix-only type, the imatrix collected first on the text the quants are scored on."""
    from recipe_search.engine import collect_imatrix
    from recipe_search.formats import save_imatrix_gguf

    with smoke.directory("uniform_imatrix") as tmp:
        model, text = smoke.dense_model(tmp), smoke.text_file(tmp)
        source = TextSource.parse(str(text))
        save_imatrix_gguf(collect_imatrix(model, source.read(), ctx=64, n_chunks=8, dataset=source.label),
                          tmp / "imatrix.gguf")
        return main([str(model), "--imatrix", str(tmp / "imatrix.gguf"), "--text", str(text), "--ctx", "64", "--chunks",
                     "4", "--cache-dir", str(tmp / "cache"), "--json", str(tmp / "uniform.json"),
                     "--types", "Q8_0", "Q4_0", "IQ2_XXS"])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
