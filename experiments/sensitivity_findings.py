"""Summaries of sensitivity tables for FINDINGS-sensitivity.md: per tensor type, the KLD its quantization
alone costs at a few widths, that cost per megabyte saved, MXFP4 against Q4_K, and (given a second table
measured with an imatrix) what the imatrix changes.

    python experiments/sensitivity_findings.py TABLE_DIR [--imatrix-table DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recipe_search.sensitivity import SensitivityTable

WIDTHS = ("Q6_K", "Q4_K", "Q3_K", "Q2_K")


def per_type(table: SensitivityTable) -> dict[str, dict]:
    """Per tensor type: its parameters, mean and 99.9% KLD per ggml type, and mean KLD per MB saved at Q3_K
    (against its Q8_0 cell: the KLD bought by each megabyte that going from 8.5 to 3.44 bits saves)."""
    out: dict[str, dict] = {}
    for r in table.rows:
        d = out.setdefault(r["tensor_type"], {"n_elements": r["n_elements"], "mean": {}, "p999": {}, "bytes": {}})
        d["mean"][r["ggml_type"]] = r["kld_mean"]
        d["p999"][r["ggml_type"]] = r["kld_p999"]
        d["bytes"][r["ggml_type"]] = r["file_bytes"]
    for d in out.values():
        if {"Q8_0", "Q3_K"} <= set(d["mean"]):
            saved = (d["bytes"]["Q8_0"] - d["bytes"]["Q3_K"]) / 1e6
            d["mean_per_mb_q3k"] = (d["mean"]["Q3_K"] - d["mean"]["Q8_0"]) / saved
        if {"MXFP4", "Q4_K"} <= set(d["mean"]):
            d["mxfp4_over_q4k_mean"] = d["mean"]["MXFP4"] / d["mean"]["Q4_K"]
            d["mxfp4_over_q4k_p999"] = d["p999"]["MXFP4"] / d["p999"]["Q4_K"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table")
    ap.add_argument("--imatrix-table")
    ap.add_argument("--json")
    a = ap.parse_args()
    types = per_type(SensitivityTable.load(a.table))
    total = sum(d["n_elements"] for d in types.values())
    ranked = sorted(types.items(), key=lambda kv: -kv[1].get("mean_per_mb_q3k", 0))
    print(f"{'tensor type':<16}{'params':>7}" + "".join(f"{'mean ' + w:>12}" for w in WIDTHS)
          + "".join(f"{'99.9% ' + w:>12}" for w in WIDTHS) + f"{'mean/MB Q3_K':>14}{'MXFP4/Q4_K':>12}")
    for kind, d in ranked:
        print(f"{kind:<16}{d['n_elements'] / total:>7.1%}"
              + "".join(f"{d['mean'].get(w, float('nan')):>12.5f}" for w in WIDTHS)
              + "".join(f"{d['p999'].get(w, float('nan')):>12.4f}" for w in WIDTHS)
              + f"{d.get('mean_per_mb_q3k', float('nan')):>14.4g}{d.get('mxfp4_over_q4k_mean', float('nan')):>12.2f}")
    result: dict = {"table": a.table, "per_type": types}
    if a.imatrix_table:
        with_im = per_type(SensitivityTable.load(a.imatrix_table))
        gains: dict[str, dict[str, float]] = {}
        for kind, d in with_im.items():
            for t, v in d["mean"].items():
                if t in types.get(kind, {}).get("mean", {}):
                    gains.setdefault(kind, {})[t] = 1 - v / types[kind]["mean"][t]
        result["imatrix_mean_gain"] = gains
        cols = sorted({t for g in gains.values() for t in g}, key=lambda t: -len(t))
        print("\nimatrix: relative reduction of the cell's mean KLD (positive = the imatrix helps)")
        print(f"{'tensor type':<16}" + "".join(f"{t:>9}" for t in cols))
        for kind, g in gains.items():
            print(f"{kind:<16}" + "".join(f"{g[t]:>9.0%}" if t in g else f"{'-':>9}" for t in cols))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
