"""Which Optuna sampler finds the better frontier for the same number of trials?

Runs one study per (sampler, seed) on a model, all with the same references and trial budget, and
compares the hypervolume of their final frontiers (size x log10 quality objective) against one
common reference point. Usage:

    python experiments/samplers.py MODEL --text 'FILE[0:0.4]' --ctx 256 --chunks 8 --trials 40 \
        --seeds 0 1 2 --samplers tpe nsga2 random --out experiments/results/samplers-tiny-qwen35moe.json

With --keep-dir each study is kept and a rerun resumes it; measurements come from the measurement
cache when another study (or `seeding.py`) measured the same resolved recipe before.

    python experiments/samplers.py --smoke      # two samplers, two seeds, a few trials on a generated tiny model
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import smoke

from recipe_search.core import StudyConfig, cache_dir, hypervolume_2d, load_study_config, shareable
from recipe_search.engine import resolve_model_arg
from recipe_search.study import Study, measured_records

#: arguments that are paths: committed results keep them relative or by name
SHARED_PATHS = ("model", "config", "text", "keep_dir", "out")


def run_one(model: Path, config: StudyConfig, trials: int, cache: Path, keep: Path | None) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        where = keep / f"{config.sampler}-{config.seed}" if keep else Path(tmp)
        study = Study.open(model, config, name="s", directory=where, cache=cache)
        study.prepare()
        study.run_to(trials)  # a kept study resumes
        return [(t.measured_values[0], t.measured_values[1]) for t in measured_records(study.optuna_study)]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model")
    p.add_argument("--config")
    p.add_argument("--text")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "random"])
    p.add_argument("--no-prune", action="store_true", help="measure every trial in full (for prune_replay.py)")
    p.add_argument("--keep-dir", help="keep each study's database here (default: discarded)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    model = resolve_model_arg(a.model)
    base = load_study_config(a.config).model_copy(update={"text": a.text, "ctx": a.ctx, "chunks": a.chunks,
                                                          "prune": not a.no_prune})
    points: dict[str, dict[int, list]] = {}
    for sampler in a.samplers:
        for seed in a.seeds:
            cfg = base.model_copy(update={"sampler": sampler, "seed": seed})
            keep = Path(a.keep_dir) if a.keep_dir else None
            points.setdefault(sampler, {})[seed] = run_one(model, cfg, a.trials, cache_dir(), keep)
            print(f"{sampler} seed {seed}: {len(points[sampler][seed])} measured recipes", flush=True)
    every = np.array([[s, math.log10(max(q, 1e-12))] for runs in points.values() for pts in runs.values() for s, q in pts])
    ref = every.max(axis=0) + np.abs(every.max(axis=0)) * 0.01 + 1e-9
    table: dict[str, dict[str, Any]] = {}
    for sampler, runs in points.items():
        hv = {seed: hypervolume_2d(np.array([[s, math.log10(max(q, 1e-12))] for s, q in pts]), ref)
              for seed, pts in runs.items()}
        table[sampler] = {"hypervolume": hv, "mean": statistics.mean(hv.values()),
                          "stdev": statistics.stdev(hv.values()) if len(hv) > 1 else 0.0}
    print(f"\n{'sampler':<8}" + "".join(f"{'seed ' + str(s):>14}" for s in a.seeds) + f"{'mean':>14}{'stdev':>12}")
    for sampler, row in table.items():
        print(f"{sampler:<8}" + "".join(f"{row['hypervolume'][s]:>14.5g}" for s in a.seeds)
              + f"{row['mean']:>14.5g}{row['stdev']:>12.3g}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args = {k: shareable(v) if k in SHARED_PATHS and v else v for k, v in vars(a).items()}
    out.write_text(json.dumps({"args": args, "reference_point": ref.tolist(), "samplers": table}, indent=2))


def run_smoke() -> None:
    with smoke.directory("samplers") as tmp:
        main([str(smoke.dense_model(tmp)), "--text", str(smoke.text_file(tmp)), "--ctx", "64", "--chunks", "4",
              "--trials", "3", "--seeds", "0", "1", "--samplers", "tpe", "random", "--keep-dir", str(tmp / "studies"),
              "--out", str(tmp / "samplers.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
