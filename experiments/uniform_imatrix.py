"""Whole-model uniform quants with and without an importance matrix: does the imatrix help at every width?

Every quantizable tensor goes to one ggml type of the default ladder (llama.cpp's row-size fallback where
a type does not fit), measured once without and once with the imatrix (imatrix-only types: with it only;
a type llama.cpp refuses, such as IQ2_XXS for a token_embd without imatrix data, is skipped).
Measurements are saved after each one, so a rerun resumes.

    python experiments/uniform_imatrix.py MODEL --imatrix FILE --text FILE[0:0.4] --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recipe_search.core.locations import shareable
from recipe_search.core.recipe import uniform_recipe
from recipe_search.core.text import TextSource
from recipe_search.engine.demo import resolve_model_arg
from recipe_search.engine.score import ScoreSettings
from recipe_search.engine.worker import Worker
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.ggml_types import DEFAULT_LADDER, IMATRIX_REQUIRED
from recipe_search.formats.imatrix_file import ImatrixInput

METRICS = ("kld_mean", "kld_p99", "kld_p999", "ppl_ratio", "same_top")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--imatrix", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default="/tmp/rs-cache")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    settings = ScoreSettings(text=TextSource.parse(a.text), ctx=a.ctx, chunks=a.chunks, threads=a.threads)
    cache = Path(a.cache_dir)
    model = resolve_model_arg(a.model)
    imatrix = ImatrixInput.from_file(a.imatrix)
    workers = {False: Worker(model, settings, cache, cache / "work"),
               True: Worker(model, settings, cache, cache / "work", imatrix=imatrix)}
    out = Path(a.json)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["type"], r["imatrix"]) for r in rows}
    for t in DEFAULT_LADDER:
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
    for t in DEFAULT_LADDER:
        plain, im = by.get((t.name, False)), by.get((t.name, True))
        ref = im or plain
        if ref is None:
            continue
        cols = [f"{r['kld_mean']:>11.4f}" if r else f"{'-':>11}" for r in (plain, im)]
        cols += [f"{r['kld_p999']:>11.3f}" if r else f"{'-':>11}" for r in (plain, im)]
        gain = f"{1 - im['kld_mean'] / plain['kld_mean']:>11.1%}" if plain and im else f"{'-':>11}"
        print(f"{t.name:<9}{ref['bpw']:>6.2f}{cols[0]}{cols[1]}{cols[2]}{cols[3]}{gain}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
