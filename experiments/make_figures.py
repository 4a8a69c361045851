"""Regenerate the reports' figures into experiments/figures/: a study's frontier, sensitivity charts.

    python experiments/make_figures.py --dir ../rs-work/st-pareto --name frontier-tiny-qwen35moe \
        --targets 3.5bpw,4.0bpw,9MiB --sensitivity experiments/results/sensitivity-tiny-qwen35moe \
        --sensitivity-metric kld_mean --sensitivity-metric kld_p999

Each PNG must stay under 200 KB (they are committed); the command fails when one does not.

    python experiments/make_figures.py --smoke  # the tests' synthetic study and a committed sweep, into a temporary directory
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import smoke

from recipe_search import RecipeSearchError, load_study, parse_targets, select
from recipe_search.report import plot_frontier, plot_sensitivity, read_sensitivity, sensitivity_csvs, sensitivity_metric
from recipe_search.study import storage_url

MAX_BYTES = 200_000
FIGURES = Path(__file__).resolve().parent / "figures"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--storage", help="the study's Optuna storage URL")
    p.add_argument("--study", help="study name (default: the only one in the storage)")
    p.add_argument("--dir", help="study directory holding study.db")
    p.add_argument("--objective", help="quality metric (default: the study's first quality objective)")
    p.add_argument("--targets", help="size targets to mark, e.g. 3.5bpw,4.0bpw")
    p.add_argument("--sensitivity", action="append", default=[], metavar="DIR", help="a sensitivity sweep directory")
    p.add_argument("--sensitivity-metric", action="append", default=[], metavar="METRIC",
                   help="metric of the sensitivity charts, one chart each (default: kld_p999)")
    p.add_argument("--name", help="file name of the frontier plot, without .png (default: frontier-<study>)")
    p.add_argument("--out", type=Path, default=FIGURES)
    a = p.parse_args(argv)
    written = []
    try:
        if a.storage or a.dir or a.study:
            url = storage_url(a.storage, a.dir, a.study)
            sel = select(load_study(url, a.study), url, a.objective, parse_targets(a.targets) if a.targets else [])
            path = a.out / f"{a.name or f'frontier-{sel.study}'}.png"
            plot_frontier(sel, path)
            written.append(path)
        for directory in a.sensitivity:
            for csv_path in sensitivity_csvs(Path(directory)):
                rows = read_sensitivity(csv_path)
                for wanted in a.sensitivity_metric or ["kld_p999"]:
                    metric = sensitivity_metric(rows, wanted)
                    sweep = csv_path.parent.name.removeprefix("sensitivity-")
                    path = a.out / f"sensitivity-{sweep}-{metric}.png"
                    plot_sensitivity(rows, path, metric, title=f"sensitivity ({sweep})")
                    written.append(path)
    except RecipeSearchError as err:
        print(f"make_figures: error: {err}", file=sys.stderr)
        return 2
    too_big = [p for p in written if p.stat().st_size > MAX_BYTES]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} KB)")
    if too_big:
        print(f"make_figures: error: over {MAX_BYTES // 1000} KB: {', '.join(map(str, too_big))}", file=sys.stderr)
        return 1
    return 0


def run_smoke() -> int:
    with smoke.directory("make_figures") as tmp:
        return main(["--dir", str(smoke.synthetic_study(tmp)), "--targets", "5.0bpw,900KB", "--sensitivity",
                     str(FIGURES.parent / "results" / "sensitivity-tiny-qwen35moe"), "--sensitivity-metric", "kld_mean",
                     "--out", str(tmp / "figures")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
