"""How well the additive surrogate predicts measured KLD statistics of full recipes it was not built from,
and how good the allocator's picks are.

Draws random recipes over the search space of the table's tensor types and ggml types (each recipe a
random overall level plus per-tensor-type jitter, so sizes span the ladder), predicts each from the
sensitivity table, measures it with the worker on the table's own reference (same text, ctx, chunks,
imatrix), and reports Spearman rank correlations and relative errors; size-only ranking (-bpw) is the
baseline a surrogate has to beat, and the predicted mean is also tried as a ranking of every tail metric.
Then, at ``--targets`` sizes spread over the ladders' range, the allocator's picks for the mean and for
the 99.9% KLD are measured and compared with the random recipes they should dominate.
Measurements are saved after each one, so a rerun resumes.

    python experiments/surrogate_accuracy.py MODEL --table DIR --json OUT.json [--recipes 30] [--targets 6]
    python experiments/surrogate_accuracy.py --smoke    # a two-type table swept first on a generated tiny model
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from contextlib import chdir
from pathlib import Path

import numpy as np
import smoke
from scipy.stats import spearmanr

from recipe_search.core import (
    SURROGATE_METRICS,
    ScoreSettings,
    SearchSpace,
    SpaceConfig,
    StudyConfig,
    TextSource,
    build_space,
    shareable,
)
from recipe_search.engine import Worker, resolve_model_arg
from recipe_search.formats import ImatrixInput
from recipe_search.sensitivity import Allocator, SensitivityTable, Surrogate


def random_choices(space: SearchSpace, n: int, seed: int, jitter: float) -> list[dict[str, int]]:
    """``n`` ladder-index choices: a level u ~ U(0, 1) per recipe, index = u * (L - 1) + N(0, jitter * L)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        level = rng.uniform()
        out.append({p.name: int(np.clip(round(level * (len(p.ladder) - 1) + rng.normal(0, jitter * len(p.ladder))),
                                        0, len(p.ladder) - 1)) for p in space.parameters})
    return out


def summarise(rows: list[dict]) -> dict:
    """Spearman (surrogate, its mean as the ranking, size only) and relative errors per metric."""
    out = {}
    bpw = np.array([r["bpw"] for r in rows])
    predicted_mean = np.array([r["predicted"]["kld_mean"] for r in rows])
    for m in SURROGATE_METRICS:
        actual = np.array([r["actual"][m] for r in rows])
        predicted = np.array([r["predicted"][m] for r in rows])
        rel = np.abs(predicted - actual) / actual
        out[m] = {"spearman": float(spearmanr(predicted, actual).statistic),
                  "spearman_predicted_mean": float(spearmanr(predicted_mean, actual).statistic),
                  "spearman_size_only": float(spearmanr(-bpw, actual).statistic),
                  "rel_err_median": float(np.median(rel)), "rel_err_p90": float(np.percentile(rel, 90)),
                  "ratio_median": float(np.median(predicted / actual))}
    return out


def dominated_share(picks: list[dict], rows: list[dict], metric: str) -> float:
    """Share of the random recipes that some pick beats: no larger and lower in ``metric`` (measured)."""
    beaten = [any(p["file_bytes"] <= r["file_bytes"] and p["actual"][metric] < r["actual"][metric] for p in picks)
              for r in rows]
    return float(np.mean(beaten))


def measure(worker: Worker, surrogate: Surrogate, recipe) -> dict:
    m = worker.measure(recipe)
    return {"file_bytes": m.file_bytes, "bpw": m.bpw, "predicted": surrogate.predict_recipe(recipe).to_dict(),
            "actual": {k: m.metrics[k] for k in SURROGATE_METRICS}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("model")
    ap.add_argument("--table", required=True, help="sensitivity table directory")
    ap.add_argument("--json", required=True, help="results file (read back to resume)")
    ap.add_argument("--recipes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", type=int, default=6, help="size targets of the allocator's picks")
    ap.add_argument("--jitter", type=float, default=0.25, help="per-tensor-type spread, in ladder lengths")
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "rs-cache"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    table = SensitivityTable.load(a.table)
    meta = table.meta
    imatrix = ImatrixInput.from_file(meta["imatrix_file"]) if meta.get("imatrix_file") else None
    settings = ScoreSettings(text=TextSource.parse(meta["text_spec"]), ctx=meta["ctx"],
                             chunks=meta["chunks"], threads=a.threads)
    cache = Path(a.cache_dir)
    worker = Worker(resolve_model_arg(a.model), settings, cache, cache / "work", imatrix=imatrix)
    if worker.reference.path.name != meta["reference"]:
        raise SystemExit(f"{a.table}: the table was measured on another reference")
    kinds = list(dict.fromkeys(r["tensor_type"] for r in table.rows))
    types = sorted({r["ggml_type"] for r in table.rows}, key=lambda t: -next(r["bpw"] for r in table.rows
                                                                              if r["ggml_type"] == t))
    space = build_space(StudyConfig(space=SpaceConfig(tensor_types=kinds, ladder=types)), worker.inventory,
                        has_imatrix=imatrix is not None)
    surrogate = Surrogate(table, worker.inventory)
    out = Path(a.json)
    saved = json.loads(out.read_text()) if out.exists() else {}
    rows, picks = saved.get("recipes", []), saved.get("picks", [])
    for i, choice in enumerate(random_choices(space, a.recipes, a.seed, a.jitter)[len(rows):], len(rows)):
        rows.append({"choice": choice, **measure(worker, surrogate, space.recipe(choice, name=f"random-{i}"))})
        r = rows[-1]
        print(f"[{i + 1}/{a.recipes}] {r['bpw']:.2f} bpw: mean KLD {r['predicted']['kld_mean']:.4f} predicted, "
              f"{r['actual']['kld_mean']:.4f} measured; 99.9% {r['predicted']['kld_p999']:.3f} / "
              f"{r['actual']['kld_p999']:.3f}", file=sys.stderr, flush=True)
        _save(out, a, meta, rows, picks, None)
    allocator = Allocator(surrogate, space, imatrix.kv() if imatrix else None)
    lo, hi = allocator.size_range()
    wanted = [(lo + (hi - lo) * (i + 1) / (a.targets + 1), metric) for i in range(a.targets)
              for metric in ("kld_mean", "kld_p999")]
    for target, metric in wanted[len(picks):]:
        pick = allocator.allocate(target, metric=metric)
        same = next((p for p in picks if p["choice"] == pick.choice), None)
        picks.append({"target": target, "metric": metric, "choice": pick.choice,
                      **({k: same[k] for k in ("file_bytes", "bpw", "predicted", "actual")} if same else
                         measure(worker, surrogate, pick.recipe))})
        print(f"pick for {metric} at {target:.0f} B: {picks[-1]['bpw']:.2f} bpw, measured mean KLD "
              f"{picks[-1]['actual']['kld_mean']:.4f}, 99.9% {picks[-1]['actual']['kld_p999']:.3f}",
              file=sys.stderr, flush=True)
        _save(out, a, meta, rows, picks, None)
    summary = {"random": summarise(rows),
               "picks_beat_random": {by: {m: dominated_share([p for p in picks if p["metric"] == by], rows, m)
                                          for m in ("kld_mean", "kld_p999")} for by in ("kld_mean", "kld_p999")}}
    _save(out, a, meta, rows, picks, summary)
    print(f"{Path(worker.model).name}: {len(rows)} random recipes, {min(r['bpw'] for r in rows):.2f}-"
          f"{max(r['bpw'] for r in rows):.2f} bpw, table {a.table} ({len(table.rows)} cells)")
    print(f"{'metric':<10}{'spearman':>10}{'by mean':>9}{'size-only':>11}{'rel.err 50%':>13}{'rel.err 90%':>13}"
          f"{'pred/meas 50%':>15}")
    for m, s in summary["random"].items():
        print(f"{m:<10}{s['spearman']:>10.3f}{s['spearman_predicted_mean']:>9.3f}{s['spearman_size_only']:>11.3f}"
              f"{s['rel_err_median']:>13.1%}{s['rel_err_p90']:>13.1%}{s['ratio_median']:>15.3f}")
    print(f"\nallocator picks at {a.targets} sizes ({lo / 2**20:.2f}-{hi / 2**20:.2f} MiB), measured:")
    print(f"{'target MiB':>10}{'by':>10}{'bpw':>7}{'mean KLD':>10}{'99.9% KLD':>11}")
    for p in picks:
        print(f"{p['target'] / 2**20:>10.2f}{p['metric']:>10}{p['bpw']:>7.2f}{p['actual']['kld_mean']:>10.4f}"
              f"{p['actual']['kld_p999']:>11.3f}")
    for by, shares in summary["picks_beat_random"].items():
        print(f"picks by {by} beat (smaller or equal and lower) " + ", ".join(
            f"{share:.0%} of the random recipes on {m}" for m, share in shares.items()))
    return 0


def _save(out: Path, a: argparse.Namespace, meta: dict, rows: list[dict], picks: list[dict],
          summary: dict | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"model": meta["model"], "table": shareable(a.table), "text": meta["text"], "ctx": meta["ctx"],
            "chunks": meta["chunks"], "imatrix": meta.get("imatrix_file"), "seed": a.seed, "jitter": a.jitter,
            "summary": summary, "recipes": rows, "picks": picks}
    out.write_text(json.dumps(data, indent=1))


def run_smoke() -> int:
    """The table swept first (every tensor type at Q8_0 and Q4_0), from inside the temporary directory, since a
    table records its text relative to the working directory."""
    from recipe_search.sensitivity import run_sweep

    with smoke.directory("surrogate_accuracy") as tmp, chdir(tmp):
        model, text = smoke.dense_model(tmp), smoke.text_file(tmp)
        settings = ScoreSettings(TextSource.parse(text.name), ctx=64, chunks=4, threads=2)
        run_sweep(Worker(model, settings, tmp / "cache", tmp / "cache" / "work"), tmp / "table", types=["Q8_0", "Q4_0"])
        return main([str(model), "--table", str(tmp / "table"), "--json", str(tmp / "accuracy.json"), "--recipes", "4",
                     "--targets", "1", "--cache-dir", str(tmp / "cache")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
