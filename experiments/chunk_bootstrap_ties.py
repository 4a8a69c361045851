"""Tie calls and interval widths with single tokens resampled against whole chunks, on committed per-token data.

The demo studies the reports quote are not kept in the repository, but the sensitivity sweeps are, with every
cell's per-token KLD in chunk order. Per sweep and tensor type, each ladder step is tested against the next
narrower type (95% paired bootstrap of the 99% and 99.9% KLD), once resampling tokens (chunks of one token, what
the tool did before) and once resampling whole chunks; and each cell's 95% interval of the 99.9% KLD is taken both
ways.

    python experiments/chunk_bootstrap_ties.py experiments/results/sensitivity-demo \\
        experiments/results/sensitivity-tiny-qwen35moe-imatrix --json experiments/results/chunk-bootstrap-ties.json
    python experiments/chunk_bootstrap_ties.py --smoke  # the tiny-qwen35moe sweep, 20 resamples, into a temporary file
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke

from recipe_search.core import bootstrap_quantile_ci, paired_bootstrap, scored_per_chunk, statistic_of
from recipe_search.formats import atomic_write_text
from recipe_search.sensitivity import SensitivityTable

METRICS = ("kld_p99", "kld_p999")


def sweep_ties(directory: Path, n_boot: int) -> dict:
    table = SensitivityTable.load(directory)
    per_chunk = scored_per_chunk(int(table.meta["ctx"]))
    by_type: dict[str, list[dict]] = {}
    for row in table.rows:
        by_type.setdefault(row["tensor_type"], []).append(row)
    ties = {m: {"token": 0, "chunk": 0} for m in METRICS}
    tests = 0
    widths = []
    for kind, rows in by_type.items():
        rows = sorted(rows, key=lambda r: r["bpw"])
        vectors = [np.asarray(table.tokens[f"{kind}|{r['ggml_type']}"], np.float64) for r in rows]
        for v in vectors:
            token = bootstrap_quantile_ci(v, 0.999, 1, n_boot=n_boot)
            chunk = bootstrap_quantile_ci(v, 0.999, per_chunk, n_boot=n_boot)
            widths.append((chunk[1] - chunk[0]) / max(token[1] - token[0], 1e-12))
        for a, b in itertools.pairwise(vectors):
            tests += 1
            for m in METRICS:
                for how, n in (("token", 1), ("chunk", per_chunk)):
                    lo, hi = paired_bootstrap(a, b, statistic_of(m), n, n_boot=n_boot)
                    ties[m][how] += lo <= 0 <= hi
    return {"sweep": directory.name, "text": table.meta["text"], "ctx": table.meta["ctx"],
            "chunks": table.meta["chunks"], "scored_tokens_per_chunk": per_chunk, "cells": len(table.rows),
            "neighbour_tests": tests, "ties": ties,
            "p999_interval_width_chunk_over_token": {"median": float(np.median(widths)),
                                                     "min": float(np.min(widths)), "max": float(np.max(widths))}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    out = [sweep_ties(d, a.n_boot) for d in a.sweeps]
    for r in out:
        w = r["p999_interval_width_chunk_over_token"]
        print(f"{r['sweep']}: {r['neighbour_tests']} neighbour tests, ties 99%: {r['ties']['kld_p99']['token']} "
              f"(tokens) -> {r['ties']['kld_p99']['chunk']} (chunks); 99.9%: {r['ties']['kld_p999']['token']} -> "
              f"{r['ties']['kld_p999']['chunk']}; 99.9% interval width chunk/token: median {w['median']:.2f} "
              f"({w['min']:.2f}..{w['max']:.2f})")
    if a.json:
        atomic_write_text(a.json, json.dumps({"n_boot": a.n_boot, "level": 0.95, "sweeps": out}, indent=1) + "\n")
    return 0


def run_smoke() -> int:
    with smoke.directory("chunk_bootstrap_ties") as tmp:
        return main([str(smoke.ROOT / "experiments" / "results" / "sensitivity-tiny-qwen35moe"), "--n-boot", "20",
                     "--json", str(tmp / "ties.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
