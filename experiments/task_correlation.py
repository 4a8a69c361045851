"""Do task figures order a frontier as the KLD statistics do? Spearman between them, with bootstrap intervals.

The recipes: the union of the frontiers of the studies given (each recipe on the frontier of the study that
measured it; identical resolutions once), all re-measured on a held-out text. Each is scored on the held-out
KLD statistics, a last-word cloze and greedy-continuation agreement built from the same held-out text (the
base side once). For every (KLD statistic, task metric) pair: Spearman's rank correlation over all the
recipes and over the better half (the half with the lower held-out mean KLD), with a 95% bootstrap interval
over recipes. Task metrics are oriented so that a positive correlation means agreement: the KLD statistics
grow with damage, and so do flips lost and 1 - continuation agreement. Each recipe's quant is also scored
once against the cached reference, as a KLD trial is, so each task's cost is a ratio measured beside it.

    python experiments/task_correlation.py MODEL --studies DIR [DIR ...] --holdout 'TEXT[a:b]' \\
        [--ctx 512 --chunks 16] [--cloze-items 300] [--prompts 200] [--new-tokens 32] --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke

from recipe_search.core import (
    TAIL_STATISTICS,
    ClozeSettings,
    ContinuationSettings,
    ScoreSettings,
    TextSource,
    predict_size,
    spearman,
)
from recipe_search.engine import TRIAL_PREFIX, TaskChecker, Worker, cache_dir, parse_task_specs, resolve_model_arg, score_quant
from recipe_search.study import Chosen, frontier_records, load_study, measured_records, storage_url, validate

KLD = ("kld_mean", *TAIL_STATISTICS)
TEXT_TASKS = ("cloze", "continuation")
#: task figure -> how to orient it so that larger means more damage, as every KLD statistic
TASKS = {"cloze_flips_lost": 1.0, "cloze_acc": -1.0, "continuation_identical": -1.0,
         "continuation_agree_tokens": -1.0}


def frontier_recipes(dirs: Sequence[Path]) -> list[Chosen]:
    """Every study's frontier, once per recipe (by its YAML)."""
    out: dict[str, Chosen] = {}
    for d in dirs:
        study = load_study(storage_url(None, str(d), None), None)
        for r in frontier_records(measured_records(study), study.directions):
            out.setdefault(r.recipe.to_yaml(), Chosen(f"{d.name}-t{r.number}", r.recipe, None))
    return list(out.values())


def spearman_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho and its 95% bootstrap interval over the pairs."""
    rng = np.random.default_rng(seed)
    rho = spearman(a, b)
    draws = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        if len(set(a[i])) > 2 and len(set(b[i])) > 2:
            draws.append(spearman(a[i], b[i]))
    lo, hi = np.quantile(draws, [0.025, 0.975]) if draws else (float("nan"), float("nan"))
    return rho, float(lo), float(hi)


def table(rows: list[dict], n_boot: int) -> dict:
    """{scope: {kld statistic: {task figure: [rho, lo, hi]}}} over all recipes and over the better half."""
    order = np.argsort([r["kld_mean"] for r in rows])
    scopes = {"all": order, "better half": order[: max(4, len(rows) // 2)]}
    out: dict = {}
    for scope, idx in scopes.items():
        out[scope] = {k: {t: list(spearman_ci(np.array([rows[i][k] for i in idx]),
                                              sign * np.array([rows[i][t] for i in idx]), n_boot))
                          for t, sign in TASKS.items()} for k in KLD}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model")
    p.add_argument("--studies", nargs="+", type=Path, required=True, help="study directories (holding study.db)")
    p.add_argument("--holdout", required=True, help="held-out text, FILE[a:b]")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--cloze-items", type=int, default=300)
    p.add_argument("--cloze-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-recipes", type=int, help="at most this many, evenly spaced in size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    model = resolve_model_arg(a.model)
    cache = cache_dir(None)
    chosen = frontier_recipes(a.studies)
    print(f"{len(chosen)} frontier recipes from {len(a.studies)} studies", flush=True)
    worker = Worker(model, ScoreSettings(text=TextSource.parse(a.holdout), ctx=a.ctx, chunks=a.chunks,
                                         threads=a.threads), cache, cache / "work")
    if a.max_recipes and len(chosen) > a.max_recipes:
        chosen.sort(key=lambda c: predict_size(worker.resolve(c.recipe), worker.inventory).file_bytes)
        chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, a.max_recipes).round()]
        print(f"{len(chosen)} of them, evenly spaced in size", flush=True)
    check = TaskChecker(model, parse_task_specs(list(TEXT_TASKS), a.holdout), cache, threads=a.threads,
                        cloze=ClozeSettings(a.cloze_items, a.cloze_tokens),
                        continuation=ContinuationSettings(a.prompts, a.prompt_tokens, a.new_tokens))
    for spec in check.specs:
        check.base(spec)
    rows = []
    for i, (c, v) in enumerate(zip(chosen, validate(worker, chosen), strict=True)):
        quant = worker.workdir / f"{TRIAL_PREFIX}{os.getpid()}-task-correlation.gguf"  # `leftovers` keeps a live pid's
        built = worker.build(worker.resolve(c.recipe), quant)
        start = time.perf_counter()
        try:
            score_quant(built.path, worker.reference, worker.settings)  # one KLD trial's scoring, for the cost
            kld_seconds = time.perf_counter() - start
            results = check.score_all(built.path)
        finally:
            for f in built.files:
                f.unlink(missing_ok=True)
        row: dict = {"name": c.name, "bpw": v.bpw, **{k: v.holdout_metrics[k] for k in KLD}}
        for r in results:
            row.update({k: x for k, x in r.figures.as_metrics().items() if isinstance(x, (int, float))})
        row["kld_seconds"] = kld_seconds
        row.update({f"{r.spec.kind}_seconds": r.seconds for r in results})
        rows.append(row)
        print(f"{i + 1}/{len(chosen)} {c.name}: {v.bpw:.3f} bpw, kld_p99 {row['kld_p99']:.4g}, cloze lost "
              f"{row['cloze_flips_lost']}, continuation identical {row['continuation_identical']:.3f} "
              f"(KLD {kld_seconds:.1f} s, cloze {row['cloze_seconds']:.1f} s, continuation "
              f"{row['continuation_seconds']:.1f} s)", flush=True)
    result = {"model": model.name, "holdout": a.holdout, "ctx": a.ctx, "chunks": a.chunks,
              "cloze": vars(check.cloze), "continuation": vars(check.continuation),
              "base_seconds": {s.kind: t for s, t in check.base_seconds.items()},
              "n_recipes": len(rows), "recipes": rows, "spearman": table(rows, a.n_boot)}
    cost = {t: float(np.median([r[f"{t}_seconds"] / r["kld_seconds"] for r in rows])) for t in TEXT_TASKS}
    result["cost_vs_kld_trial"] = cost
    print(f"per recipe, against one KLD trial's scoring ({a.chunks} x {a.ctx}), median ratio: "
          + ", ".join(f"{t} {x:.2f}x" for t, x in cost.items()))
    for scope, by_kld in result["spearman"].items():
        print(f"\nSpearman, {scope} ({len(rows) if scope == 'all' else max(4, len(rows) // 2)} recipes; "
              "positive = the task agrees with the KLD statistic):")
        print(f"{'':<14}" + "".join(f"{t:>32}" for t in TASKS))
        for k, cells in by_kld.items():
            print(f"{k:<14}" + "".join(f"{rho:>+10.2f} [{lo:+.2f}, {hi:+.2f}]".rjust(32) for rho, lo, hi in cells.values()))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def run_smoke() -> int:
    """Two tiny studies' frontiers on a generated dense model, small tasks, in a temporary directory."""
    with smoke.directory("task_correlation") as tmp:
        study = smoke.synthetic_study(tmp)
        text = smoke.text_file(tmp)
        return main([str(tmp / "dense-f16.gguf"), "--studies", str(study),
                     "--holdout", f"{text}[0.5:1]", "--ctx", "128", "--chunks", "2", "--cloze-items", "6",
                     "--cloze-tokens", "24", "--prompts", "6", "--prompt-tokens", "16", "--new-tokens", "8",
                     "--n-boot", "50"])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
