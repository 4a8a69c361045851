"""Does seeding a study with surrogate-optimal recipes reach a better frontier in the same number of trials?

For each seed, two studies of the same config and trial budget run one after the other: `plain` (the
uniform references, then TPE) and `seeded` (the same, plus `--surrogate-seeds` recipes the sensitivity
table's surrogate rates best at sizes spread over the ladder's range). The frontiers (size x log10 of the
objective) are compared by hypervolume against one reference point shared by every run (the worst
size and objective of all of them, as `search.hypervolumes` places it), at a few trial counts on the way.
Each study is stored under --dir and resumes if rerun.

    python experiments/seeding.py MODEL --table DIR --text FILE[0:0.4] --json OUT.json [--trials 40] [--seeds 0 1 2]
        [--config STUDY.yaml] [--no-prune]

With the same --config, --no-prune and cache directory as `samplers.py`, the `plain` arm proposes
exactly what that script's TPE study of the same seed proposed, so its measurements come from the
measurement cache.

    python experiments/seeding.py --smoke       # a two-type space on a generated tiny model, its table swept first
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import smoke

from recipe_search.core import ReferenceConfig, StudyConfig, hypervolume_2d, load_study_config, non_dominated, shareable
from recipe_search.engine import resolve_model_arg
from recipe_search.study import Study, measured_records

ARMS = ("plain", "seeded")


def run_arm(a: argparse.Namespace, model: Path, arm: str, seed: int) -> dict:
    """Run (or resume) one study; return its measured points in trial order and its own summary."""
    base = (load_study_config(a.config) if a.config
            else StudyConfig(objectives=["size", a.objective], references=ReferenceConfig(uniform="ladder", presets=[])))
    config = base.model_copy(update={
        "text": a.text, "ctx": a.ctx, "chunks": a.chunks, "seed": seed, "threads": a.threads, "prune": not a.no_prune,
        "surrogate_seeds": a.surrogate_seeds if arm == "seeded" else 0,
        "sensitivity": str(Path(a.table).resolve()) if arm == "seeded" else None})
    study = Study.open(model, config, name=f"{arm}-{seed}", directory=Path(a.dir) / f"{arm}-{seed}",
                       cache=a.cache_dir)
    study.prepare()
    start = time.perf_counter()
    study.run_to(a.trials)
    seconds = time.perf_counter() - start
    trials = sorted(measured_records(study.optuna_study), key=lambda t: t.number)
    return {"arm": arm, "seed": seed, "seconds_this_call": seconds,
            "points": [[t.number, t.measured_values[0], math.log10(max(t.measured_values[1], 1e-12)),
                        t.surrogate_seed is not None, t.metrics["kld_mean"]] for t in trials],
            "summary": study.summary()}


def frontier_stats(points: list[list], ref: np.ndarray, checkpoints: list[int], sizes: list[float]) -> dict:
    """Hypervolume after each checkpoint's trials, the final frontier, and the best measured mean KLD at or
    under each of ``sizes`` (the mean is the steadier statistic on a few thousand tokens)."""
    pts = np.array([[p[1], p[2]] for p in points])
    numbers = np.array([p[0] for p in points])
    out: dict[str, Any] = {f"hv@{k}": hypervolume_2d(pts[numbers < k], ref) for k in checkpoints}
    out["best_mean_at"] = [min((p[4] for p in points if p[1] <= size), default=None) for size in sizes]
    front = non_dominated(pts)
    out["frontier"] = len(front)
    out["frontier_from_seeds"] = int(sum(points[i][3] for i in front))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("model")
    ap.add_argument("--table", required=True, help="sensitivity table directory (for the seeded arm)")
    ap.add_argument("--text", required=True, help="scoring text, as the table was measured on")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--config", help="study config the arms start from (default: uniform ladder references, no presets)")
    ap.add_argument("--objective", default="kld_p999", help="quality objective when no --config is given")
    ap.add_argument("--no-prune", action="store_true", help="measure every trial in full")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--surrogate-seeds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "rs-seeding"))
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "rs-cache"))
    ap.add_argument("--json", required=True)
    a = ap.parse_args(argv)
    model = resolve_model_arg(a.model)
    if a.config:
        a.objective = load_study_config(a.config).objectives[1]
    runs = []
    for seed in a.seeds:
        for arm in ARMS:
            print(f"running {arm} seed {seed}", file=sys.stderr, flush=True)
            runs.append(run_arm(a, model, arm, seed))
    every = np.array([[p[1], p[2]] for r in runs for p in r["points"]])
    ref = every.max(axis=0) + np.abs(every.max(axis=0)) * 0.01 + 1e-9
    checkpoints = sorted({max(a.trials // 2, 1), a.trials * 3 // 4, a.trials})
    lo, hi = every[:, 0].min(), every[:, 0].max()
    sizes = [float(lo + (hi - lo) * f) for f in (0.15, 0.3, 0.45, 0.6)]
    for r in runs:
        r.update(frontier_stats(r["points"], ref, checkpoints, sizes))
    final = f"hv@{a.trials}"
    table = {arm: [r[final] for r in runs if r["arm"] == arm] for arm in ARMS}
    result = {"model": model.name, "table": shareable(a.table), "text": shareable(a.text), "ctx": a.ctx, "chunks": a.chunks,
              "objective": a.objective, "trials": a.trials, "surrogate_seeds": a.surrogate_seeds,
              "hv_reference_point": ref.tolist(), "checkpoints": checkpoints, "best_mean_sizes": sizes,
              "mean": {arm: float(np.mean(v)) for arm, v in table.items()},
              "std": {arm: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for arm, v in table.items()},
              "runs": runs}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"{model.name}: {a.trials} trials per study, objectives size x {a.objective}; hypervolume on "
          f"(bytes, log10 {a.objective}) against the shared point {ref[0]:.4g} B, {ref[1]:.3f}")
    head = "".join(f"{'hv@' + str(k):>12}" for k in checkpoints)
    means = "".join(f"{f'mean<={s / 2**20:.1f}M':>13}" for s in sizes)
    print(f"{'arm':<8}{'seed':>5}{head}{'frontier':>10}{'of seeds':>10}{'own hv':>12}{means}")
    for r in runs:
        print(f"{r['arm']:<8}{r['seed']:>5}" + "".join(f"{r[f'hv@{k}']:>12.5g}" for k in checkpoints)
              + f"{r['frontier']:>10}{r['frontier_from_seeds']:>10}{r['summary']['hypervolume_all']:>12.5g}"
              + "".join(f"{m:>13.4f}" if m is not None else f"{'-':>13}" for m in r["best_mean_at"]))
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm]
        cols = "".join(f"{np.mean([r[f'hv@{k}'] for r in arm_runs]):>12.5g}" for k in checkpoints)
        best = [[r["best_mean_at"][i] for r in arm_runs if r["best_mean_at"][i] is not None] for i in range(len(sizes))]
        print(f"{arm:<8}{'mean':>5}{cols}{'':>32}" + "".join(f"{np.mean(b):>13.4f}" if b else f"{'-':>13}" for b in best)
              + f"   (hv sd at {a.trials}: {result['std'][arm]:.4g})")
    return 0


#: the smoke mode's study config: every tensor type over two types, so that its table is a few cells
SMOKE_CONFIG = """\
objectives: [size, kld_p99]
space: {ladder: [Q8_0, Q4_0], unmatched: Q8_0}
references: {uniform: ladder, presets: []}
"""


def run_smoke() -> int:
    """The sensitivity table of SMOKE_CONFIG's space swept first, on the text, context and chunks of the arms."""
    from recipe_search.core import ScoreSettings, TextSource, build_space
    from recipe_search.engine import Worker
    from recipe_search.sensitivity import run_sweep, space_ladders

    with smoke.directory("seeding") as tmp:
        model, text = smoke.dense_model(tmp), smoke.text_file(tmp)
        config = tmp / "study.yaml"
        config.write_text(SMOKE_CONFIG)
        settings = ScoreSettings(TextSource.parse(str(text)), ctx=64, chunks=4, threads=2)
        worker = Worker(model, settings, tmp / "cache", tmp / "work")
        space = build_space(load_study_config(str(config)), worker.inventory, has_imatrix=False)
        run_sweep(worker, tmp / "table", ladders=space_ladders(space))
        return main([str(model), "--table", str(tmp / "table"), "--text", str(text), "--ctx", "64", "--chunks", "4",
                     "--config", str(config), "--trials", "4", "--seeds", "0", "--surrogate-seeds", "2",
                     "--dir", str(tmp / "studies"), "--cache-dir", str(tmp / "cache"), "--json", str(tmp / "seeding.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
