"""Which tail statistic to choose with (issue 21): the rule fixed before looking, applied to `validate --json` files.

    python experiments/tail_statistic_rule.py --model tiny-qwen35moe A.json B.json --model demo C.json [--json OUT]

Each file is `recipe-search validate --dir STUDY --holdout-text ... --json` of one study's frontier: every recipe's
statistics on the search text and held out, with 95% chunk-bootstrap intervals of the held-out ones. Per model, a
statistic's Spearman (search text against held out, over the frontier) is the mean over that model's frontiers, and
its width the median over that model's recipes of the held-out interval's width relative to the value. Per pair
(the percentile and the mean of the same tail): the statistic with the higher Spearman on every model wins; if the
models split, the one with the narrower median width over all recipes wins.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import smoke

#: (percentile, mean of the same tail): the pairs the rule decides between
PAIRS = (("kld_p999", "kld_cvar999"), ("kld_p99", "kld_cvar99"))


def widths(frontier: dict, stat: str) -> list[float]:
    """Each recipe's held-out 95% interval width relative to its held-out value."""
    return [(r["holdout_ci95"][stat][1] - r["holdout_ci95"][stat][0]) / r["holdout"][stat]
            for r in frontier["recipes"] if r["holdout"][stat] > 0]


def decide(models: dict[str, list[dict]]) -> dict:
    """Per model and statistic, Spearman and width; per pair, the winner and why."""
    stats = [s for pair in PAIRS for s in pair]
    table: dict[str, dict[str, dict[str, Any]]] = {
        m: {s: {"spearman": statistics.fmean(f["spearman"][s] for f in fronts),
                "spearman_per_frontier": [f["spearman"][s] for f in fronts],
                "median_width": statistics.median(w for f in fronts for w in widths(f, s)),
                "recipes": sum(len(f["recipes"]) for f in fronts)} for s in stats}
        for m, fronts in models.items()}
    verdicts: dict[str, dict] = {}
    for pct, tail in PAIRS:
        higher = {m: pct if t[pct]["spearman"] > t[tail]["spearman"] else tail for m, t in table.items()}
        if len(set(higher.values())) == 1:
            verdicts[f"{pct} vs {tail}"] = {"winner": next(iter(higher.values())), "by": "Spearman on every model"}
            continue
        pooled = {s: statistics.median(w for fronts in models.values() for f in fronts for w in widths(f, s))
                  for s in (pct, tail)}
        verdicts[f"{pct} vs {tail}"] = {"winner": min(pooled, key=lambda s: pooled[s]),
                                        "by": "the models split on Spearman; narrower median width over all recipes",
                                        "higher_spearman": higher, "pooled_median_width": pooled}
    return {"models": table, "verdicts": verdicts}


def markdown(result: dict) -> str:
    lines = ["| model | statistic | Spearman, search vs held-out (per frontier) | median 95% interval / value |",
             "|---|---|---:|---:|"]
    for m, t in result["models"].items():
        for s, row in t.items():
            per = ", ".join(f"{x:.3f}" for x in row["spearman_per_frontier"])
            lines.append(f"| {m} | {s} | {row['spearman']:.3f} ({per}) | {row['median_width']:.2f} |")
    lines.append("")
    for pair, v in result["verdicts"].items():
        lines.append(f"- {pair}: **{v['winner']}** ({v['by']})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", action="append", required=True, metavar=("NAME", "JSON"),
                    help="a model's name and its validate files (repeat per model)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    models = {}
    for name, *files in a.model:
        if not files:
            ap.error(f"--model {name}: no validate file")
        models[name] = [json.loads(Path(f).read_text()) for f in files]
    result = decide(models)
    print(markdown(result))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def run_smoke() -> int:
    results = smoke.ROOT / "experiments" / "results"
    return main(["--model", "tiny-qwen35moe", str(results / "tail-statistics-tiny-qwen35moe-default-study.json"),
          "--model", "tiny-qwen35moe-plain", str(results / "tail-statistics-tiny-qwen35moe-plain-study.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
