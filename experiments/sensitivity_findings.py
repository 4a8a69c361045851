"""Summaries of sensitivity tables for reports/sensitivity.md: per tensor type, the KLD its quantization
alone costs at a few widths, that cost per megabyte saved (the ranking is by it), MXFP4 against Q4_K and IQ4_XS, and
(given a second table measured with an imatrix) what the imatrix changes.

    python experiments/sensitivity_findings.py TABLE.csv [--imatrix-table TABLE.csv] [--json OUT.json]

(TABLE.csv: a sweep directory's sensitivity.csv; the per-token vectors are not needed here.)

    python experiments/sensitivity_findings.py --smoke  # the committed tiny-qwen35moe sweeps, into a temporary file
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import smoke

from recipe_search.formats import bits_per_weight, parse_type

WIDTHS = ("Q6_K", "Q4_K", "Q3_K", "Q2_K")


def read_rows(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v if k in ("tensor_type", "ggml_type") else float(v) for k, v in r.items()}
                for r in csv.DictReader(fh)]


def per_type(rows: list[dict]) -> dict[str, dict]:
    """Per tensor type: its parameters, mean, 99% and 99.9% KLD per ggml type, and its mean KLD at Q3_K per
    megabyte that Q3_K saves against the 16-bit source (whose KLD is zero)."""
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(r["tensor_type"], {"n_elements": int(r["n_elements"]), "mean": {}, "p99": {}, "p999": {}})
        for key, metric in (("mean", "kld_mean"), ("p99", "kld_p99"), ("p999", "kld_p999")):
            d[key][r["ggml_type"]] = r[metric]
        if r["ggml_type"] == "Q3_K":
            d["mean_per_mb_q3k"] = r["kld_mean"] / (r["n_elements"] * (16 - r["bpw"]) / 8 / 1e6)
    for d in out.values():
        for other in ("Q4_K", "IQ4_XS"):
            if {"MXFP4", other} <= set(d["mean"]):
                d[f"mxfp4_over_{other.lower()}_mean"] = d["mean"]["MXFP4"] / d["mean"][other]
                d[f"mxfp4_over_{other.lower()}_p99"] = d["p99"]["MXFP4"] / d["p99"][other]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("table")
    ap.add_argument("--imatrix-table")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    types = per_type(read_rows(a.table))
    total = sum(d["n_elements"] for d in types.values())
    ranked = sorted(types.items(), key=lambda kv: -kv[1].get("mean_per_mb_q3k", 0))
    print(f"{'tensor type':<16}{'params':>7}" + "".join(f"{'mean ' + w:>12}" for w in WIDTHS)
          + "".join(f"{'99% ' + w:>11}" for w in ("Q4_K", "Q2_K"))
          + f"{'mean/MB Q3_K':>14}{'MXFP4/Q4_K':>12}{'MXFP4/IQ4_XS':>14}")
    nan = float("nan")
    for kind, d in ranked:
        print(f"{kind:<16}{d['n_elements'] / total:>7.1%}"
              + "".join(f"{d['mean'].get(w, nan):>12.5f}" for w in WIDTHS)
              + "".join(f"{d['p99'].get(w, nan):>11.4f}" for w in ("Q4_K", "Q2_K"))
              + f"{d.get('mean_per_mb_q3k', nan):>14.4g}{d.get('mxfp4_over_q4_k_mean', nan):>12.2f}"
              + f"{d.get('mxfp4_over_iq4_xs_mean', nan):>14.2f}")
    result: dict = {"table": a.table, "per_type": types}
    if a.imatrix_table:
        with_im = per_type(read_rows(a.imatrix_table))
        gains: dict[str, dict[str, float]] = {}
        for kind, d in with_im.items():
            for t, v in d["mean"].items():
                if t in types.get(kind, {}).get("mean", {}):
                    gains.setdefault(kind, {})[t] = 1 - v / types[kind]["mean"][t]
        result["imatrix_mean_gain"] = gains
        cols = sorted({t for g in gains.values() for t in g}, key=lambda t: -bits_per_weight(parse_type(t)))
        print("\nimatrix: relative reduction of the cell's mean KLD (positive = the imatrix helps)")
        print(f"{'tensor type':<16}" + "".join(f"{t:>9}" for t in cols))
        for kind, g in gains.items():
            print(f"{kind:<16}" + "".join(f"{g[t]:>9.0%}" if t in g else f"{'-':>9}" for t in cols))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


def run_smoke() -> int:
    results = smoke.ROOT / "experiments" / "results"
    with smoke.directory("sensitivity_findings") as tmp:
        return main([str(results / "sensitivity-tiny-qwen35moe" / "sensitivity.csv"), "--imatrix-table",
                     str(results / "sensitivity-tiny-qwen35moe-imatrix" / "sensitivity.csv"), "--json",
                     str(tmp / "findings.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
