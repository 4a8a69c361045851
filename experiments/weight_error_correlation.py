#!/usr/bin/env python3
"""How well does the weight-error proxy rank cells like the measured one-type-at-a-time KLD sweep?

For each committed sweep table (tiny-qwen35moe without and with an imatrix, the demo), builds the
weight-error table over the same cells (`recipe-search sensitivity MODEL --proxy weight-error`, no model
evaluation) and prints Spearman rank correlations of the proxy against the measured mean KLD: over all
cells, within each tensor type (across its ggml types) and within each ggml type (across tensor types,
what a bit allocation between tensor types depends on); for the imatrix-weighted squared error and for
it relative to the tensor's weighted energy. The imatrix of the imatrix sweep is collected again as the
sweep's findings describe (`wiki.test.raw[0.2:0.4]`, 64 chunks of 256, --process-output) and its digest
checked against the table's.

    python experiments/weight_error_correlation.py [--cases demo ...] [--out experiments/results/weight-error-correlation.json]
    python experiments/weight_error_correlation.py --smoke  # both cases on a generated tiny model, its sweep measured first
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent.parent / "shared" / "data"
TINY = SHARED / "tiny-qwen35moe" / "model-bf16.gguf"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
CASES = [
    ("tiny-qwen35moe", str(TINY), ROOT / "results" / "sensitivity-tiny-qwen35moe", False),
    ("tiny-qwen35moe-imatrix", str(TINY), ROOT / "results" / "sensitivity-tiny-qwen35moe-imatrix", True),
    ("demo", "demo", ROOT / "results" / "sensitivity-demo", False),
]
#: the imatrix of the imatrix sweep, as the sweep's findings describe it: its text and chunks of 256 tokens
IMATRIX_TEXT, IMATRIX_CHUNKS = f"{WIKI}[0.2:0.4]", 64


def _rho(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def correlations(kld: dict[tuple[str, str], float], proxy: dict[tuple[str, str], float]) -> dict:
    cells = sorted(set(kld) & set(proxy))
    out: dict[str, object] = {"cells": len(cells), "overall": _rho([kld[c] for c in cells], [proxy[c] for c in cells])}
    for axis, name in ((0, "per_tensor_type"), (1, "per_ggml_type")):
        groups: dict[str, list] = {}
        for c in cells:
            groups.setdefault(c[axis], []).append(c)
        rhos = {g: _rho([kld[c] for c in cs], [proxy[c] for c in cs]) for g, cs in groups.items()}
        out[name] = rhos
        vals = [v for v in rhos.values() if v is not None]
        out[f"{name}_median"] = float(np.median(vals)) if vals else None
    return out


def run_case(name: str, model_arg: str, table_dir: Path, with_imatrix: bool, cache: Path, work: Path,
             imatrix_text: str = IMATRIX_TEXT, imatrix_chunks: int = IMATRIX_CHUNKS) -> dict:
    from recipe_search.core import ScoreSettings, TextSource
    from recipe_search.engine import Worker, collect_imatrix, resolve_model_arg
    from recipe_search.formats import ImatrixInput, save_imatrix_gguf
    from recipe_search.sensitivity import SensitivityTable, run_weight_error

    measured = SensitivityTable.load(table_dir)
    model = resolve_model_arg(model_arg)
    imatrix = None
    info: dict = {"table": str(table_dir.relative_to(ROOT.parent)) if table_dir.is_relative_to(ROOT.parent)
                  else str(table_dir)}
    if with_imatrix:
        text = TextSource.parse(imatrix_text)
        im = collect_imatrix(model, text.read(), ctx=256, n_chunks=imatrix_chunks, process_output=True,
                             dataset=text.label)
        save_imatrix_gguf(im, work / f"{name}.imatrix.gguf")
        imatrix = ImatrixInput.from_file(work / f"{name}.imatrix.gguf")
        info["imatrix_digest_matches_table"] = imatrix.digest == measured.meta["imatrix"]
    worker = Worker(model, ScoreSettings(), cache, work / "trials", imatrix=imatrix)
    kinds = sorted({r["tensor_type"] for r in measured.rows})
    types = sorted({r["ggml_type"] for r in measured.rows})
    start = time.perf_counter()
    proxy = run_weight_error(worker, work / name, kinds, types)
    info["proxy_seconds"] = time.perf_counter() - start
    kld = {(r["tensor_type"], r["ggml_type"]): float(r["kld_mean"]) for r in measured.rows}
    info["weighted_squared_error"] = correlations(
        kld, {(r["tensor_type"], r["ggml_type"]): r["weight_error"] for r in proxy.rows})
    info["relative_error"] = correlations(
        kld, {(r["tensor_type"], r["ggml_type"]): r["weight_error_rel"] for r in proxy.rows})
    return info


def main(argv: Sequence[str] | None = None, cases: Sequence[tuple[str, str, Path, bool]] = CASES,
         imatrix_text: str = IMATRIX_TEXT, imatrix_chunks: int = IMATRIX_CHUNKS) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=smoke.EPILOG)
    p.add_argument("--cache-dir", type=Path, help="recipe-search cache (default: a temporary one, so every "
                                                  "tensor is quantized here and the time is the proxy's full cost)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "weight-error-correlation.json")
    p.add_argument("--cases", nargs="+", choices=[c[0] for c in cases], default=[c[0] for c in cases])
    a = p.parse_args(argv)
    results = json.loads(a.out.read_text()) if a.out.exists() else {}  # cases not run now are kept
    with tempfile.TemporaryDirectory(prefix="weight-error-") as tmp:
        work = Path(tmp)
        cache = a.cache_dir or work / "cache"
        for name, model_arg, table_dir, with_imatrix in (c for c in cases if c[0] in a.cases):
            r = results[name] = run_case(name, model_arg, table_dir, with_imatrix, cache, work, imatrix_text,
                                         imatrix_chunks)
            for measure in ("weighted_squared_error", "relative_error"):
                c = r[measure]
                print(f"{name:24s} {measure:24s} cells {c['cells']:3d}  overall {c['overall']:.3f}  "
                      f"median within a tensor type {c['per_tensor_type_median']:.3f}  "
                      f"median within a ggml type {c['per_ggml_type_median']:.3f}", flush=True)
                for axis in ("per_tensor_type", "per_ggml_type"):
                    print("    " + axis + ": " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -"
                                                          for k, v in c[axis].items()))
            print(f"    proxy computed in {r['proxy_seconds']:.1f} s", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {a.out}")


def run_smoke() -> None:
    """A KLD sweep of three tensor types over three types measured first; the proxy against it without and with
    an imatrix (collected on the text's second fifth, 4 chunks)."""
    from recipe_search.core import ScoreSettings, TextSource
    from recipe_search.engine import Worker
    from recipe_search.sensitivity import run_sweep

    with smoke.directory("weight_error_correlation") as tmp:
        model, text = smoke.dense_model(tmp), smoke.text_file(tmp)
        worker = Worker(model, ScoreSettings(TextSource.parse(str(text)), ctx=64, chunks=4), tmp / "cache",
                        tmp / "cache" / "work")
        run_sweep(worker, tmp / "sweep", tensor_types=["attn_q", "ffn_up", "ffn_down"], types=["Q8_0", "Q4_0", "Q3_K"])
        main(["--cache-dir", str(tmp / "cache"), "--out", str(tmp / "correlation.json")],
             [("smoke", str(model), tmp / "sweep", False), ("smoke-imatrix", str(model), tmp / "sweep", True)],
             f"{text}[0.2:0.4]", 4)


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
