"""Reading a study's trials back: the measured records, the Pareto frontier, hypervolumes, the summary."""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import TrialState

from ..core.metrics import MAXIMISE
from ..core.pareto import hypervolume_2d, non_dominated
from ._records import TrialRecord


def searched_trials_done(study: optuna.Study) -> int:
    """Finished trials of the search itself (enqueued references included, added presets not): what a
    trial budget counts when a study resumes."""
    return len([t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                      TrialState.FAIL)) if t.params])


def measured_records(study: optuna.Study) -> list[TrialRecord]:
    """Complete trials with their own measurement (a duplicate proposal repeats another trial's numbers)."""
    records = map(TrialRecord.from_trial, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return [r for r in records if r.measured]


def frontier_records(records: list[TrialRecord], dirs: list) -> list[TrialRecord]:
    """Complete trials on the Pareto front of the study's objectives."""
    if not records:
        return []
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE or d == "minimize" else -1.0 for d in dirs])
    pts = np.array([r.values for r in records]) * signs
    return [records[i] for i in non_dominated(pts)]


def hypervolumes(records: list[TrialRecord], maximise: bool = False) -> tuple[float, float]:
    """2-D hypervolume (size x first quality objective, both minimised: log10 of a KLD-like figure, or the negated
    figure of one to ``maximise``) of all trials and of the reference trials alone, against a reference point just
    beyond the worst of all."""
    pts = np.array([[r.values[0], -r.values[1] if maximise else math.log10(max(r.values[1], 1e-12))]
                    for r in records if r.values])
    ref = pts.max(axis=0) + np.abs(pts.max(axis=0)) * 0.01 + 1e-9
    is_ref = np.array([r.reference is not None for r in records])
    return hypervolume_2d(pts, ref), hypervolume_2d(pts[is_ref], ref) if is_ref.any() else 0.0


def study_summary(study: optuna.Study) -> dict:
    """Frontier, counts and hypervolumes of a study (JSON-able)."""
    complete = measured_records(study)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    front = sorted(frontier_records(complete, study.directions), key=lambda r: r.measured_values[0])
    objectives = study.user_attrs.get("objectives", ["size", "kld_p999"])
    hv_all, hv_ref = hypervolumes(complete, objectives[1] in MAXIMISE) if complete else (0.0, 0.0)
    rows = [{"trial": r.number, "name": r.name, "reference": r.reference is not None, "file_bytes": r.file_bytes,
             "bpw": r.bpw, "values": dict(zip(objectives, r.measured_values)), "kld_mean": r.metrics.get("kld_mean")}
            for r in front]
    return {"trials": states, "measured": len(complete), "frontier": rows,
            "frontier_non_reference": sum(not r["reference"] for r in rows),
            "hypervolume_all": hv_all, "hypervolume_references": hv_ref, "objectives": objectives}
