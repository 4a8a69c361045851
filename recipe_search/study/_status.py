"""A study as it runs, read from its storage alone (no model, no llama.cpp): the trials by state with why
they failed or were pruned, the running trials' heartbeats, the frontier at a few sizes, the pace, and the
tensor cache's hit rate when its directory is given. `recipe-search status` prints it."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from ._records import TrialRecord
from ._storage import grace_period
from ._summary import frontier_records, measured_records

#: what a failed trial without a recorded reason was: its worker died or was interrupted mid-trial
NO_REASON = "no reason recorded (a killed or interrupted worker, or a stale heartbeat)"
#: the quantiles of the measured size range the frontier is shown at
SIZE_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def fail_reason(trial: FrozenTrial) -> str:
    """Why a failed trial failed: the study's record (a RecipeSearchError while measuring), else Optuna's."""
    return str(trial.user_attrs.get("failed") or trial.system_attrs.get("fail_reason") or NO_REASON)


def heartbeats(storage: optuna.storages.BaseStorage, study_name: str) -> tuple[dict[int, float], bool]:
    """Seconds since each trial's last heartbeat by trial number, measured on the database's clock; and
    whether the storage keeps heartbeats at all (an RDB storage does).

    Optuna has no public API for a heartbeat's time (only the private ``_get_stale_trial_ids``), so this reads
    its ``trial_heartbeats`` table (and ``trials``, ``studies``: Optuna's schema) with SQLAlchemy through the
    storage's engine."""
    rdb = getattr(storage, "_backend", storage)  # optuna.Study wraps its RDBStorage in a private cache
    engine = getattr(rdb, "engine", None)
    if engine is None:
        return {}, False
    md = sqlalchemy.MetaData()
    beats = sqlalchemy.Table("trial_heartbeats", md, sqlalchemy.Column("trial_id", sqlalchemy.Integer),
                             sqlalchemy.Column("heartbeat", sqlalchemy.DateTime))
    trials = sqlalchemy.Table("trials", md, sqlalchemy.Column("trial_id", sqlalchemy.Integer),
                              sqlalchemy.Column("number", sqlalchemy.Integer),
                              sqlalchemy.Column("study_id", sqlalchemy.Integer))
    studies = sqlalchemy.Table("studies", md, sqlalchemy.Column("study_id", sqlalchemy.Integer),
                               sqlalchemy.Column("study_name", sqlalchemy.String))
    query = (sqlalchemy.select(trials.c.number, beats.c.heartbeat)
             .join(beats, beats.c.trial_id == trials.c.trial_id)
             .join(studies, studies.c.study_id == trials.c.study_id)
             .where(studies.c.study_name == study_name))
    with engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now().label("now"))).scalar_one()
        rows = conn.execute(query).all()
    now = now.replace(tzinfo=None)  # PostgreSQL's now() is aware, the column naive (as Optuna does)
    return {int(n): max(0.0, (now - beat.replace(tzinfo=None)).total_seconds()) for n, beat in rows}, True


def cache_stats(cache_dir: str | Path) -> dict:
    """The tensor cache's hit and miss totals (its ``stats.json``, plain JSON) and its entries on disk, read
    without importing the engine (which loads llama.cpp). The layout is `engine.tensor_cache.TensorCache`'s."""
    root = Path(cache_dir) / "tensors"
    try:
        d = json.loads((root / "stats.json").read_text())
        hits, misses = int(d["hits"]), int(d["misses"])
    except (OSError, ValueError, KeyError, TypeError):
        hits = misses = 0
    sizes = []
    for p in (root.glob("*/*.gguf") if root.is_dir() else ()):
        with contextlib.suppress(OSError):  # removed by a worker's eviction meanwhile
            sizes.append(p.stat().st_size)
    return {"path": str(root), "entries": len(sizes), "bytes": sum(sizes), "hits": hits, "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else None}


def frontier_at_sizes(records: list[TrialRecord], dirs: list, objectives: list[str]) -> list[dict]:
    """The best measured recipe (first quality objective) at or under each quantile of the measured size range."""
    front = sorted(frontier_records(records, dirs), key=lambda r: r.file_bytes)
    if not front or len(dirs) < 2:
        return []
    sign = -1.0 if dirs[1] in (optuna.study.StudyDirection.MAXIMIZE, "maximize") else 1.0
    lo, hi = min(r.file_bytes for r in records), max(r.file_bytes for r in records)
    rows, seen = [], set()
    for q in SIZE_QUANTILES:
        size = int(lo + q * (hi - lo))
        fitting = [r for r in front if r.file_bytes <= size]
        if not fitting:
            continue
        best = min(fitting, key=lambda r: sign * r.measured_values[1])
        if best.number in seen:
            continue
        seen.add(best.number)
        rows.append({"at_most_bytes": size, "trial": best.number, "name": best.name, "file_bytes": best.file_bytes,
                     "bpw": best.bpw, "values": dict(zip(objectives, best.measured_values))})
    return rows


def study_status(study: optuna.Study, grace: int | None = None, now: datetime | None = None) -> dict:
    """Everything `recipe-search status` prints, JSON-able. ``grace``: seconds of heartbeat silence after which a
    running trial is stale (default the workers', $RECIPE_SEARCH_GRACE); ``now``: the local time Optuna stamps
    trials with (for the pace over the last hour)."""
    grace = grace or grace_period()
    now = now or datetime.now()
    trials = study.get_trials(deepcopy=False)
    by_state = Counter(t.state for t in trials)
    counts = {"done": by_state[TrialState.COMPLETE], "running": by_state[TrialState.RUNNING],
              "failed": by_state[TrialState.FAIL], "pruned": by_state[TrialState.PRUNED],
              "waiting": by_state[TrialState.WAITING]}
    failures = Counter(fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    prunings = Counter(str(t.user_attrs.get("pruned") or "no reason recorded") for t in trials
                       if t.state == TrialState.PRUNED)
    beats, has_beats = heartbeats(study._storage, study.study_name)
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        since = beats.get(t.number)
        started = None if t.datetime_start is None else max(0.0, (now - t.datetime_start).total_seconds())
        running.append({"trial": t.number, "name": TrialRecord.from_trial(t).name, "seconds_running": started,
                        "seconds_since_heartbeat": since, "stale": since is not None and since > grace})
    records = measured_records(study)
    objectives = list(study.user_attrs.get("objectives") or study.metric_names or ["size", "kld_p999"])
    finished = [t for t in trials if t.state.is_finished() and t.datetime_complete is not None]
    last_hour = sum(t.datetime_complete is not None and now - t.datetime_complete <= timedelta(hours=1) for t in finished)
    by_number = {t.number: t for t in trials}
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for r in records
                 if (t := by_number[r.number]).datetime_start is not None and t.datetime_complete is not None]
    return {"study": study.study_name, "objectives": objectives, "trials": counts,
            "measured": len(records), "duplicates": sum(t.user_attrs.get("duplicate_of") is not None for t in trials),
            "failures": [{"reason": why, "trials": n} for why, n in failures.most_common()],
            "pruned_reasons": [{"reason": why, "trials": n} for why, n in prunings.most_common()],
            "heartbeats": has_beats, "grace_seconds": grace, "running": running,
            "trials_last_hour": last_hour,
            "mean_seconds_per_measured_trial": sum(durations) / len(durations) if durations else None,
            "frontier": frontier_at_sizes(records, list(study.directions), objectives)}

