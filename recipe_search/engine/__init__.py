"""llama.cpp in process: load and evaluate, quantize, collect an imatrix, the tensor cache, score,
task files scored, the worker. Never Optuna."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "cache_dir": "demo",
    "demo_model_path": "demo",
    "resolve_model_arg": "demo",
    "original_path": "demo",
    "estimate": "trial_cost",
    "measure_rates": "trial_cost",
    "collect_imatrix": "imatrix_collect",
    "TRIAL_PREFIX": "leftovers",
    "clean_workdir": "leftovers",
    "remove_stale": "leftovers",
    "LlamaModel": "llama",
    "ContextAllocation": "allocation",
    "LoadedPlacement": "allocation",
    "context_allocation": "allocation",
    "gpu_offload_supported": "allocation",
    "load_placement": "allocation",
    "chunk_tokens": "llama",
    "evaluate": "llama",
    "scored_range": "llama",
    "Measurement": "measurement",
    "StoredMeasurement": "measurement",
    "ImatrixInput": "quantize",
    "dry_run_types": "quantize",
    "quantize_model": "quantize",
    "ScoreSettings": "score",
    "get_reference": "score",
    "score_against_base_file": "score",
    "score_quant": "score",
    "write_base_file": "score",
    "TaskAccuracy": "task_scoring",
    "choice_scores": "task_scoring",
    "correct_choices": "task_scoring",
    "score_tasks": "task_scoring",
    "task_accuracy": "task_scoring",
    "task_model": "task_scoring",
    "TensorCache": "tensor_cache",
    "ClozeBase": "text_tasks",
    "ContinuationBase": "text_tasks",
    "cloze_base": "text_tasks",
    "continuation_base": "text_tasks",
    "score_cloze": "text_tasks",
    "score_continuation": "text_tasks",
    "TaskChecker": "task_check",
    "TaskResult": "task_check",
    "TaskSpec": "task_check",
    "parse_task_specs": "task_check",
    "separation": "task_check",
    "generate_greedy": "greedy",
    "greedy_choices": "greedy",
    "Worker": "worker",
    "speed_of": "speed",
    "speed_run": "speed",
    "SpeedRun": "speed",
    "Speed": "measurement",
    "tool_versions": "worker",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .allocation import ContextAllocation as ContextAllocation
    from .allocation import LoadedPlacement as LoadedPlacement
    from .allocation import context_allocation as context_allocation
    from .allocation import gpu_offload_supported as gpu_offload_supported
    from .allocation import load_placement as load_placement
    from .demo import cache_dir as cache_dir
    from .demo import demo_model_path as demo_model_path
    from .demo import original_path as original_path
    from .demo import resolve_model_arg as resolve_model_arg
    from .greedy import generate_greedy as generate_greedy
    from .greedy import greedy_choices as greedy_choices
    from .imatrix_collect import collect_imatrix as collect_imatrix
    from .leftovers import TRIAL_PREFIX as TRIAL_PREFIX
    from .leftovers import clean_workdir as clean_workdir
    from .leftovers import remove_stale as remove_stale
    from .llama import LlamaModel as LlamaModel
    from .llama import chunk_tokens as chunk_tokens
    from .llama import evaluate as evaluate
    from .llama import scored_range as scored_range
    from .measurement import Measurement as Measurement
    from .measurement import Speed as Speed
    from .measurement import StoredMeasurement as StoredMeasurement
    from .quantize import ImatrixInput as ImatrixInput
    from .quantize import dry_run_types as dry_run_types
    from .quantize import quantize_model as quantize_model
    from .score import ScoreSettings as ScoreSettings
    from .score import get_reference as get_reference
    from .score import score_against_base_file as score_against_base_file
    from .score import score_quant as score_quant
    from .score import write_base_file as write_base_file
    from .speed import SpeedRun as SpeedRun
    from .speed import speed_of as speed_of
    from .speed import speed_run as speed_run
    from .task_check import TaskChecker as TaskChecker
    from .task_check import TaskResult as TaskResult
    from .task_check import TaskSpec as TaskSpec
    from .task_check import parse_task_specs as parse_task_specs
    from .task_check import separation as separation
    from .task_scoring import TaskAccuracy as TaskAccuracy
    from .task_scoring import choice_scores as choice_scores
    from .task_scoring import correct_choices as correct_choices
    from .task_scoring import score_tasks as score_tasks
    from .task_scoring import task_accuracy as task_accuracy
    from .task_scoring import task_model as task_model
    from .tensor_cache import TensorCache as TensorCache
    from .text_tasks import ClozeBase as ClozeBase
    from .text_tasks import ContinuationBase as ContinuationBase
    from .text_tasks import cloze_base as cloze_base
    from .text_tasks import continuation_base as continuation_base
    from .text_tasks import score_cloze as score_cloze
    from .text_tasks import score_continuation as score_continuation
    from .trial_cost import estimate as estimate
    from .trial_cost import measure_rates as measure_rates
    from .worker import Worker as Worker
    from .worker import tool_versions as tool_versions
