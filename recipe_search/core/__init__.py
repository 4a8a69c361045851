"""Recipes, inventories, resolution, sizes, KLD statistics, Pareto fronts, configs, dialects.
Pure: loads neither llama.cpp nor Optuna."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_API = {
    "Role": "roles",
    "carry": "roles",
    "recipe_of_types": "roles",
    "role_of": "roles",
    "SCORE_METRICS": "comparison",
    "compare": "comparison",
    "format_table": "comparison",
    "ReferenceConfig": "config",
    "RunConfig": "config",
    "SpaceConfig": "config",
    "StudyConfig": "config",
    "load_study_config": "config",
    "Dialect": "dialects",
    "load_any_recipe": "dialects",
    "parse_substitutions": "dialects",
    "read_source": "dialects",
    "EXPORTABLE": "tool_formats",
    "EXPORT_FORMATS": "tool_formats",
    "run_command": "tool_formats",
    "export": "tool_formats",
    "quantize_args": "tool_formats",
    "tensor_type_file": "tool_formats",
    "import_recipe": "importer",
    "recipe_from_inventory": "importer",
    "Inventory": "inventory",
    "Tensor": "inventory",
    "inventory_rows": "inventory",
    "model_fingerprint": "inventory",
    "read_inventory": "inventory",
    "tensor_kind": "inventory",
    "KLDSummary": "kld",
    "MIN_TOKENS": "kld",
    "SparseReference": "kld",
    "TokenStats": "kld",
    "bootstrap_ci": "kld",
    "bootstrap_quantile_ci": "kld",
    "default_max_entries": "kld",
    "log_softmax": "kld",
    "paired_bootstrap": "kld",
    "shared_chunks": "kld",
    "percentile": "kld",
    "scored_per_chunk": "kld",
    "summarize": "kld",
    "token_stats_from_logprobs": "kld",
    "token_stats_sparse": "kld",
    "KLDBaseFile": "kld_base_file",
    "KLDBaseFileWriter": "kld_base_file",
    "cache_dir": "locations",
    "shareable": "locations",
    "BY_NAME": "metrics",
    "FORECAST": "metrics",
    "LABELS": "metrics",
    "MAXIMISE": "metrics",
    "SIZE_OBJECTIVES": "metrics",
    "SURROGATE_METRICS": "metrics",
    "TAIL_STATISTICS": "metrics",
    "statistic_of": "metrics",
    "NeighbourTest": "pareto",
    "Target": "pareto",
    "frontier_2d": "pareto",
    "hypervolume_2d": "pareto",
    "neighbour_tests": "pareto",
    "non_dominated": "pareto",
    "parse_targets": "pareto",
    "parse_byte_size": "pareto",
    "pick_at_target": "pareto",
    "pick_on_shared_chunks": "pareto",
    "spearman": "pareto",
    "ModelRef": "recipe",
    "Recipe": "recipe",
    "Rule": "recipe",
    "Unmatched": "recipe",
    "load_recipe": "recipe",
    "preset_recipe": "recipe",
    "recipe_from_dict": "recipe",
    "uniform_recipe": "recipe",
    "Resolution": "resolution",
    "ResolvedTensor": "resolution",
    "resolve": "resolution",
    "coverage": "rule_coverage",
    "lint": "rule_coverage",
    "ContextMemory": "run_memory",
    "ContextSettings": "run_memory",
    "compute_estimate": "run_memory",
    "context_memory": "run_memory",
    "DEVICES": "devices",
    "DeviceBudget": "devices",
    "DeviceMemory": "devices",
    "device_memory": "devices",
    "Placement": "placement",
    "TensorPlace": "placement",
    "SizePrediction": "size",
    "TensorSize": "size",
    "human_bytes": "size",
    "padded_bytes": "size",
    "predict_size": "size",
    "Parameter": "space",
    "SearchSpace": "space",
    "build_space": "space",
    "reference_recipes": "space",
    "seed_recipes": "space",
    "ScoreSettings": "text",
    "TextSource": "text",
    "overlapping": "text",
    "text_sha256": "text",
    "ContinuationAgreement": "task_flips",
    "TaskFlips": "task_flips",
    "continuation_agreement": "task_flips",
    "first_divergence": "task_flips",
    "item_flips": "task_flips",
    "ClozeCandidate": "text_tasks",
    "ClozeSettings": "text_tasks",
    "ContinuationSettings": "text_tasks",
    "cloze_candidates": "text_tasks",
}
__all__ = list(_API)  # noqa: PLE0604
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .comparison import SCORE_METRICS as SCORE_METRICS
    from .comparison import compare as compare
    from .comparison import format_table as format_table
    from .config import ReferenceConfig as ReferenceConfig
    from .config import RunConfig as RunConfig
    from .config import SpaceConfig as SpaceConfig
    from .config import StudyConfig as StudyConfig
    from .config import load_study_config as load_study_config
    from .devices import DEVICES as DEVICES
    from .devices import DeviceBudget as DeviceBudget
    from .devices import DeviceMemory as DeviceMemory
    from .devices import device_memory as device_memory
    from .dialects import Dialect as Dialect
    from .dialects import load_any_recipe as load_any_recipe
    from .dialects import parse_substitutions as parse_substitutions
    from .dialects import read_source as read_source
    from .importer import import_recipe as import_recipe
    from .importer import recipe_from_inventory as recipe_from_inventory
    from .inventory import Inventory as Inventory
    from .inventory import Tensor as Tensor
    from .inventory import inventory_rows as inventory_rows
    from .inventory import model_fingerprint as model_fingerprint
    from .inventory import read_inventory as read_inventory
    from .inventory import tensor_kind as tensor_kind
    from .kld import MIN_TOKENS as MIN_TOKENS
    from .kld import KLDSummary as KLDSummary
    from .kld import SparseReference as SparseReference
    from .kld import TokenStats as TokenStats
    from .kld import bootstrap_ci as bootstrap_ci
    from .kld import bootstrap_quantile_ci as bootstrap_quantile_ci
    from .kld import default_max_entries as default_max_entries
    from .kld import log_softmax as log_softmax
    from .kld import paired_bootstrap as paired_bootstrap
    from .kld import percentile as percentile
    from .kld import scored_per_chunk as scored_per_chunk
    from .kld import shared_chunks as shared_chunks
    from .kld import summarize as summarize
    from .kld import token_stats_from_logprobs as token_stats_from_logprobs
    from .kld import token_stats_sparse as token_stats_sparse
    from .kld_base_file import KLDBaseFile as KLDBaseFile
    from .kld_base_file import KLDBaseFileWriter as KLDBaseFileWriter
    from .locations import cache_dir as cache_dir
    from .locations import shareable as shareable
    from .metrics import BY_NAME as BY_NAME
    from .metrics import FORECAST as FORECAST
    from .metrics import LABELS as LABELS
    from .metrics import MAXIMISE as MAXIMISE
    from .metrics import SIZE_OBJECTIVES as SIZE_OBJECTIVES
    from .metrics import SURROGATE_METRICS as SURROGATE_METRICS
    from .metrics import TAIL_STATISTICS as TAIL_STATISTICS
    from .metrics import statistic_of as statistic_of
    from .pareto import NeighbourTest as NeighbourTest
    from .pareto import Target as Target
    from .pareto import frontier_2d as frontier_2d
    from .pareto import hypervolume_2d as hypervolume_2d
    from .pareto import neighbour_tests as neighbour_tests
    from .pareto import non_dominated as non_dominated
    from .pareto import parse_byte_size as parse_byte_size
    from .pareto import parse_targets as parse_targets
    from .pareto import pick_at_target as pick_at_target
    from .pareto import pick_on_shared_chunks as pick_on_shared_chunks
    from .pareto import spearman as spearman
    from .placement import Placement as Placement
    from .placement import TensorPlace as TensorPlace
    from .recipe import ModelRef as ModelRef
    from .recipe import Recipe as Recipe
    from .recipe import Rule as Rule
    from .recipe import Unmatched as Unmatched
    from .recipe import load_recipe as load_recipe
    from .recipe import preset_recipe as preset_recipe
    from .recipe import recipe_from_dict as recipe_from_dict
    from .recipe import uniform_recipe as uniform_recipe
    from .resolution import Resolution as Resolution
    from .resolution import ResolvedTensor as ResolvedTensor
    from .resolution import resolve as resolve
    from .roles import Role as Role
    from .roles import carry as carry
    from .roles import recipe_of_types as recipe_of_types
    from .roles import role_of as role_of
    from .rule_coverage import coverage as coverage
    from .rule_coverage import lint as lint
    from .run_memory import ContextMemory as ContextMemory
    from .run_memory import ContextSettings as ContextSettings
    from .run_memory import compute_estimate as compute_estimate
    from .run_memory import context_memory as context_memory
    from .size import SizePrediction as SizePrediction
    from .size import TensorSize as TensorSize
    from .size import human_bytes as human_bytes
    from .size import padded_bytes as padded_bytes
    from .size import predict_size as predict_size
    from .space import Parameter as Parameter
    from .space import SearchSpace as SearchSpace
    from .space import build_space as build_space
    from .space import reference_recipes as reference_recipes
    from .space import seed_recipes as seed_recipes
    from .task_flips import ContinuationAgreement as ContinuationAgreement
    from .task_flips import TaskFlips as TaskFlips
    from .task_flips import continuation_agreement as continuation_agreement
    from .task_flips import first_divergence as first_divergence
    from .task_flips import item_flips as item_flips
    from .text import ScoreSettings as ScoreSettings
    from .text import TextSource as TextSource
    from .text import overlapping as overlapping
    from .text import text_sha256 as text_sha256
    from .text_tasks import ClozeCandidate as ClozeCandidate
    from .text_tasks import ClozeSettings as ClozeSettings
    from .text_tasks import ContinuationSettings as ContinuationSettings
    from .text_tasks import cloze_candidates as cloze_candidates
    from .tool_formats import EXPORT_FORMATS as EXPORT_FORMATS
    from .tool_formats import EXPORTABLE as EXPORTABLE
    from .tool_formats import export as export
    from .tool_formats import quantize_args as quantize_args
    from .tool_formats import run_command as run_command
    from .tool_formats import tensor_type_file as tensor_type_file
