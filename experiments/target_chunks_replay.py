"""Replay "tokens where the decision is" on finished studies: trials near a size target scored longer, trials far
from every target stopped early, against today's early stopping at equal total tokens.

A study stored every measured trial's per-token KLD on its `chunks` chunks (N). The replay takes fewer as the
standard (`--chunks`, default N/2) and N as `chunks_near_target`: each measured trial, in the order it finished,
is planned by the library's `chunk_plan` and stopped chunk by chunk by its `prune_decision` and `far_decision`
against the trials finished before it, as the study's objective would have. Today's rule (early stopping alone,
every trial on `b` chunks) is replayed with the smallest `b` whose total chunk evaluations reach the new plan's.
Both sets of surviving trials go through `select` (the picks `pareto` makes); the report compares the width of
each pick's 95% chunk-bootstrap interval of the study's objective, counts the frontier points the plan stopped
(the frontier of all N chunks) and whether each pick is the one all N chunks of every trial make. Usage:

    python experiments/target_chunks_replay.py STUDY.db ... [--targets 4.3757bpw] [--json FILE]
    python experiments/target_chunks_replay.py --smoke  # on the tests' synthetic study of the dense tiny model
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import smoke

from recipe_search.core import StudyConfig, bootstrap_ci, parse_targets, scored_per_chunk, statistic_of
from recipe_search.engine import Measurement
from recipe_search.study import (
    MIN_CHUNKS_BEFORE_PRUNING,
    FinishedPoint,
    TrialRecord,
    chunk_plan,
    far_decision,
    frontier_records,
    prune_decision,
    select,
    storage_for,
)


def _finished(t: TrialRecord, kld: np.ndarray, objectives: list[str]) -> FinishedPoint:
    """What the rule knows of a finished trial, its statistics on the standard chunks ``kld``."""
    return FinishedPoint(t.file_bytes, float(kld.mean()), {o: float(statistic_of(o)(kld)) for o in objectives[1:]})


def play(trials: list[TrialRecord], config: StudyConfig, plan_on: bool) -> tuple[list[tuple[TrialRecord, int]], int]:
    """Each trial's chunks under the config (None: stopped), as the objective would have scored it; the
    chunk evaluations spent. ``plan_on``: the plan (near, far); else every trial on `chunks` (today's rule)."""
    pc = scored_per_chunk(config.ctx)
    done: list[FinishedPoint] = []
    kept: list[tuple[TrialRecord, int]] = []
    spent = 0
    for t in trials:
        assert t.kld_tokens is not None
        plan = chunk_plan(config, t.bpw, t.file_bytes, t.device_bytes)
        n, far = (plan.chunks, plan.far) if plan_on else (config.chunks, False)
        stop = None
        if t.reference is None:  # references are never stopped
            for k in range(MIN_CHUNKS_BEFORE_PRUNING, n):
                running = t.kld_tokens[:k * pc]
                if prune_decision(running, t.file_bytes, done) or (far and k == config.chunks_far
                                                                   and far_decision(running, t.file_bytes, done)):
                    stop = k
                    break
        spent += stop or n
        if stop is None:
            kept.append((t, n))
            done.append(_finished(t, t.kld_tokens[:config.chunks * pc].astype(np.float64), config.objectives))
    return kept, spent


def picks(kept: list[tuple[TrialRecord, int]], config: StudyConfig, targets: list, objective: str) -> list[dict]:
    """`select`'s picks among the surviving trials, each scored on its chunks, and their intervals."""
    pc = scored_per_chunk(config.ctx)
    study = optuna.create_study(directions=["minimize"] * len(config.objectives))
    study.set_user_attr("config", config.model_dump_json())
    study.set_user_attr("model", "replay.gguf")
    for t, n in kept:
        assert t.kld_tokens is not None
        kld = t.kld_tokens[:n * pc]
        standard = kld[:config.chunks * pc].astype(np.float64)
        metrics = {**t.metrics, "kld_mean": float(standard.mean()),
                   **{o: float(statistic_of(o)(standard)) for o in config.objectives[1:]}}
        record = TrialRecord(-1, reference=t.reference, recipe_yaml=t.recipe_yaml, device_bytes=t.device_bytes,
                             measurement=Measurement(t.file_bytes, t.bpw, metrics, kld, {}, {}))
        attrs = {**record.to_attrs(), "replayed": t.number}
        study.add_trial(optuna.trial.create_trial(values=[float(t.file_bytes), *(metrics[o] for o in config.objectives[1:])],
                                                  user_attrs=attrs))
    sel = select(study, "replay", objective, targets)
    out: list[dict[str, Any]] = []
    for p in sel.picks:
        if p.candidate is None:
            out.append({"target": p.target.label, "trial": None})
            continue
        c = sel.candidates[p.candidate]
        assert c.kld_tokens is not None
        lo, hi = bootstrap_ci(c.kld_tokens.astype(np.float64), statistic_of(objective), pc)
        out.append({"target": p.target.label, "trial": study.trials[c.number].user_attrs["replayed"],
                    "bpw": c.bpw, "chunks": len(c.kld_tokens) // pc, objective: float(c.metrics[objective]),
                    "ci95": [lo, hi], "width": hi - lo, "ties": len(sel.ties(p))})
    return out


def reordered(trials: list[TrialRecord], order: np.ndarray, pc: int) -> list[TrialRecord]:
    """The trials with their chunks in ``order`` (the same for all: as if the text's chunks came in that order)."""
    out: list[TrialRecord] = []
    for t in trials:
        assert t.kld_tokens is not None and t.measurement is not None
        m = Measurement(t.file_bytes, t.bpw, t.metrics, t.kld_tokens.reshape(-1, pc)[order].ravel(), {}, {})
        out.append(dataclasses.replace(t, measurement=m))
    return out


def replay(study: optuna.Study, extra_targets: list, chunks: int | None, chunks_far: int, near_target: float,
           order_seed: int) -> dict:
    """One replay, the chunks in the study's order (``order_seed`` 0) or in a random order drawn from the seed."""
    stored = StudyConfig.model_validate_json(study.user_attrs["config"])
    complete = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda t: t.datetime_complete or datetime.datetime.min)
    trials = [r for r in map(TrialRecord.from_trial, complete) if r.measured and r.kld_tokens is not None]
    front = {r.number for r in frontier_records(trials, study.directions)}
    order = np.arange(stored.chunks)
    if order_seed:
        order = np.random.default_rng(order_seed).permutation(stored.chunks)
        trials = reordered(trials, order, scored_per_chunk(stored.ctx))
    c = chunks or stored.chunks // 2
    bpw = [t.value for t in extra_targets] or stored.target_bpw  # --targets replace the config's
    plan = stored.model_copy(update={"chunks": c, "chunks_near_target": stored.chunks, "chunks_far": chunks_far,
                                     "near_target": near_target, "target_bpw": bpw})
    targets = plan.size_targets()
    objective = stored.objectives[1]
    kept, spent = play(trials, plan, plan_on=True)
    near = sum(n > c for _, n in kept)
    # today's rule on b chunks a trial, the smallest b that spends at least as many chunk evaluations
    for b in range(c, stored.chunks + 1):
        today = plan.model_copy(update={"chunks": b, "chunks_near_target": b, "target_bpw": []})
        kept_today, spent_today = play(trials, today, plan_on=False)
        if spent_today >= spent:
            break
    full = plan.model_copy(update={"chunks": stored.chunks, "chunks_near_target": stored.chunks, "target_bpw": []})
    best = picks([(t, stored.chunks) for t in trials], full, targets, objective)
    result: dict[str, Any] = {"order": order.tolist(), "measured": len(trials), "frontier": len(front), "chunks": c,
              "chunks_near_target": stored.chunks,
              "chunks_far": chunks_far, "near_target": near_target, "targets": [t.label for t in targets],
              "objective": objective,
              "plan": {"chunk_evaluations": spent, "near_target_trials": near,
                       "stopped": len(trials) - len(kept),
                       "frontier_points_stopped": sorted(front - {t.number for t, _ in kept}),
                       "picks": picks(kept, plan, targets, objective)},
              "today": {"chunks": b, "chunk_evaluations": spent_today, "stopped": len(trials) - len(kept_today),
                        "frontier_points_stopped": sorted(front - {t.number for t, _ in kept_today}),
                        "picks": picks(kept_today, today, targets, objective)},
              "all_chunks_picks": best}
    for arm in ("plan", "today"):
        for p, q in zip(result[arm]["picks"], best):
            p["same_as_all_chunks"] = p["trial"] == q["trial"]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("studies", nargs="+", help="study.db files (one study each) or storage URLs")
    p.add_argument("--targets", help="size targets in bits per weight besides the config's target_bpw (4.3757bpw)")
    p.add_argument("--chunks", type=int, help="the standard chunks (default: half the stored ones)")
    p.add_argument("--chunks-far", type=int, default=StudyConfig().chunks_far)
    p.add_argument("--near-target", type=float, default=StudyConfig().near_target)
    p.add_argument("--orders", type=int, default=10,
                   help="replays per study: the study's chunk order, then random orders (the chunks of a text differ "
                        "in how heavy their tails are, so which come first decides which intervals look narrow)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    extra = parse_targets(a.targets) if a.targets else []
    if any(t.kind != "bpw" for t in extra):
        p.error("--targets takes bits per weight")
    results: dict[str, list[dict]] = {}
    for spec in a.studies:
        url = spec if "://" in spec else f"sqlite:///{Path(spec).resolve()}"
        study = optuna.load_study(study_name=None, storage=storage_for(url))
        results[spec] = [replay(study, extra, a.chunks, a.chunks_far, a.near_target, seed) for seed in range(a.orders)]
        for arm in ("plan", "today"):
            x = results[spec][0][arm]
            widths = ", ".join(f"{q['target']}: #{q['trial']} ±{q['width'] / 2:.4g}"
                               for q in x["picks"] if q["trial"] is not None)
            print(f"{spec} {arm} (its own chunk order): {x['chunk_evaluations']} chunk evaluations, {x['stopped']} stopped, "
                  f"frontier points stopped {x['frontier_points_stopped'] or 'none'}; picks {widths}")
    runs = [r for rs in results.values() for r in rs]
    pairs = [(p, q) for r in runs for p, q in zip(r["plan"]["picks"], r["today"]["picks"])
             if p["trial"] is not None and q["trial"] is not None and q["width"] > 0]
    ratios = [p["width"] / q["width"] for p, q in pairs]
    summary = {"studies": len(results), "orders": a.orders, "picks": len(ratios),
               "median_width_ratio": float(np.median(ratios)) if ratios else math.nan,
               "narrower": sum(x < 1 for x in ratios),
               "same_as_all_chunks": {arm: sum(r[arm]["picks"][i]["same_as_all_chunks"] for r in runs
                                               for i in range(len(r[arm]["picks"]))) for arm in ("plan", "today")},
               "ties": {arm: sum(r[arm]["picks"][i].get("ties", 0) for r in runs for i in range(len(r[arm]["picks"])))
                        for arm in ("plan", "today")},
               "frontier_points_stopped": sum(len(r["plan"]["frontier_points_stopped"]) for r in runs),
               "plan_chunk_evaluations": sum(r["plan"]["chunk_evaluations"] for r in runs),
               "today_chunk_evaluations": sum(r["today"]["chunk_evaluations"] for r in runs)}
    print(json.dumps(summary))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"summary": summary, "studies": results}, indent=2))


def run_smoke() -> None:
    with smoke.directory("target_chunks_replay") as tmp:
        study = smoke.synthetic_study(tmp)
        main([str(study / "study.db"), "--targets", "5.0bpw", "--orders", "2", "--json", str(tmp / "replay.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
