"""Replay the early-stopping rule on a finished study that ran without it.

For every measured trial, in the order it finished, the rule sees the trial's per-token KLD chunk by
chunk (as it would have during scoring) and the size, mean KLD and objectives of the trials
finished before it.
The script reports which trials the rule would have stopped, after how many chunks, and whether any
of them is on the study's final frontier (which would mean the rule loses good recipes). Usage:

    python experiments/prune_replay.py --storage sqlite:///studies/NAME/study.db --study NAME [--out FILE]
    python experiments/prune_replay.py --smoke  # on the tests' synthetic study of the dense tiny model
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import smoke

from recipe_search.core import StudyConfig
from recipe_search.study import (
    MIN_CHUNKS_BEFORE_PRUNING,
    FinishedPoint,
    TrialRecord,
    finished_point,
    frontier_records,
    prune_decision,
    storage_for,
)


def replay(study: optuna.Study) -> dict:
    config = StudyConfig.model_validate_json(study.user_attrs["config"])
    per_chunk = config.ctx - 1 - config.ctx // 2
    in_completion_order = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                                 key=lambda t: t.datetime_complete or datetime.datetime.min)  # set on every complete trial
    trials = [r for r in map(TrialRecord.from_trial, in_completion_order) if r.measured]
    front = {r.number for r in frontier_records(trials, study.directions)}
    done: list[FinishedPoint] = []
    stopped: list[dict[str, Any]] = []
    for t in trials:
        if t.reference is None and t.kld_tokens is not None:  # references are never pruned
            for chunks in range(MIN_CHUNKS_BEFORE_PRUNING, config.chunks):
                why = prune_decision(t.kld_tokens[:chunks * per_chunk], t.file_bytes, done)
                if why:
                    stopped.append({"trial": t.number, "after_chunks": chunks, "on_frontier": t.number in front,
                                    "reason": why})
                    break
        done.append(finished_point(t, config.objectives))
    chunks_saved = sum(config.chunks - s["after_chunks"] for s in stopped)
    return {"measured": len(trials), "frontier": sorted(front), "would_stop": stopped,
            "frontier_points_stopped": [s["trial"] for s in stopped if s["on_frontier"]],
            "chunks_saved": chunks_saved, "chunks_total": len(trials) * config.chunks}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--out")
    a = p.parse_args(argv)
    result = replay(optuna.load_study(study_name=a.study, storage=storage_for(a.storage)))
    print(f"{result['measured']} measured trials, {len(result['frontier'])} on the frontier")
    print(f"the rule would stop {len(result['would_stop'])} trials, saving {result['chunks_saved']} of "
          f"{result['chunks_total']} chunk evaluations")
    print(f"frontier points it would stop: {result['frontier_points_stopped'] or 'none'}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2))


def run_smoke() -> None:
    with smoke.directory("prune_replay") as tmp:
        study = smoke.synthetic_study(tmp)
        main(["--storage", f"sqlite:///{study / 'study.db'}", "--study", "dense", "--out", str(tmp / "replay.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
