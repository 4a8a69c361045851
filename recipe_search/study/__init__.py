"""The study façade over Optuna. Its objective, early stopping, band, storage, interrupts, records,
selection and hold-out are private modules; their public names are re-exported here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "ChunkPlan": "_early_stopping",
    "study_task_checker": "_checks",
    "FinishedPoint": "_early_stopping",
    "chunk_plan": "_early_stopping",
    "far_decision": "_early_stopping",
    "MIN_CHUNKS_BEFORE_PRUNING": "_early_stopping",
    "finished_point": "_early_stopping",
    "prune_decision": "_early_stopping",
    "Chosen": "_holdout",
    "holdout_record": "_holdout",
    "paired_differences": "_holdout",
    "rank_agreement": "_holdout",
    "text_overlap_warnings": "_holdout",
    "validate": "_holdout",
    "TrialRecord": "_records",
    "Selection": "_selection",
    "record_task_figures": "_selection",
    "select": "_selection",
    "write_picks": "_selection",
    "load_study": "_storage",
    "storage_for": "_storage",
    "storage_url": "_storage",
    "worker_seed": "_storage",
    "frontier_records": "_summary",
    "measured_records": "_summary",
    "searched_trials_done": "_summary",
    "Study": "study",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from ._checks import study_task_checker as study_task_checker
    from ._early_stopping import MIN_CHUNKS_BEFORE_PRUNING as MIN_CHUNKS_BEFORE_PRUNING
    from ._early_stopping import ChunkPlan as ChunkPlan
    from ._early_stopping import FinishedPoint as FinishedPoint
    from ._early_stopping import chunk_plan as chunk_plan
    from ._early_stopping import far_decision as far_decision
    from ._early_stopping import finished_point as finished_point
    from ._early_stopping import prune_decision as prune_decision
    from ._holdout import Chosen as Chosen
    from ._holdout import holdout_record as holdout_record
    from ._holdout import paired_differences as paired_differences
    from ._holdout import rank_agreement as rank_agreement
    from ._holdout import text_overlap_warnings as text_overlap_warnings
    from ._holdout import validate as validate
    from ._records import TrialRecord as TrialRecord
    from ._selection import Selection as Selection
    from ._selection import record_task_figures as record_task_figures
    from ._selection import select as select
    from ._selection import write_picks as write_picks
    from ._storage import load_study as load_study
    from ._storage import storage_for as storage_for
    from ._storage import storage_url as storage_url
    from ._storage import worker_seed as worker_seed
    from ._summary import frontier_records as frontier_records
    from ._summary import measured_records as measured_records
    from ._summary import searched_trials_done as searched_trials_done
    from .study import Study as Study
