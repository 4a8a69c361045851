"""recipe-search: per-tensor mixed-precision GGUF quantization recipes, searched and measured.

The front door for a notebook::

    import recipe_search as rs

    inv = rs.read_inventory("model-F16.gguf")
    recipe = rs.load_recipe("recipe.yaml")
    print(rs.predict_size(rs.resolve(recipe, inv), inv).bits_per_weight)

    study = rs.Study.open("model-F16.gguf", rs.StudyConfig(chunks=40))
    study.prepare()
    study.run(n_trials=40)
    sel = rs.select(study.optuna_study, "sqlite:///studies/model-F16/study.db", None, rs.parse_targets("4.5bpw"))

Names load on first use, so ``import recipe_search`` (and the pure modules: inventory, recipe,
resolve, size, kld, pareto) never loads llama.cpp or Optuna.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "RecipeSearchError": "errors",
    "Inventory": "inventory", "read_inventory": "inventory",
    "Recipe": "recipe", "load_recipe": "recipe", "uniform_recipe": "recipe", "preset_recipe": "recipe",
    "resolve": "resolve",
    "predict_size": "size",
    "TextSource": "text",
    "ScoreSettings": "score",
    "Worker": "worker",
    "Measurement": "trial_record", "TrialRecord": "trial_record",
    "StudyConfig": "space", "load_study_config": "space",
    "Study": "study",
    "parse_targets": "pareto",
    "load_study": "selector", "select": "selector", "write_picks": "selector",
}
__all__ = ["__version__", *_API]  # noqa: PLE0604 (the names of _API)

if TYPE_CHECKING:
    from .errors import RecipeSearchError as RecipeSearchError
    from .inventory import Inventory as Inventory
    from .inventory import read_inventory as read_inventory
    from .pareto import parse_targets as parse_targets
    from .recipe import Recipe as Recipe
    from .recipe import load_recipe as load_recipe
    from .recipe import preset_recipe as preset_recipe
    from .recipe import uniform_recipe as uniform_recipe
    from .resolve import resolve as resolve
    from .score import ScoreSettings as ScoreSettings
    from .selector import load_study as load_study
    from .selector import select as select
    from .selector import write_picks as write_picks
    from .size import predict_size as predict_size
    from .space import StudyConfig as StudyConfig
    from .space import load_study_config as load_study_config
    from .study import Study as Study
    from .text import TextSource as TextSource
    from .trial_record import Measurement as Measurement
    from .trial_record import TrialRecord as TrialRecord
    from .worker import Worker as Worker


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
