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

The layers are the folders: `formats` (files), `core` (recipes, sizes, statistics; pure),
`engine` (llama.cpp), `sensitivity` (sweeps and the surrogate), `study` (Optuna), `report`, `cli`.
Names load on first use, so ``import recipe_search`` never loads llama.cpp or Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from .version import __version__

#: public name -> the module that defines it
_API = {
    "RecipeSearchError": "errors",
    "Inventory": "core.inventory", "read_inventory": "core.inventory",
    "Recipe": "core.recipe", "load_recipe": "core.recipe", "uniform_recipe": "core.recipe",
    "preset_recipe": "core.recipe",
    "resolve": "core.resolution",
    "predict_size": "core.size",
    "TextSource": "core.text", "ScoreSettings": "core.text",
    "StudyConfig": "core.config", "load_study_config": "core.config",
    "parse_targets": "core.pareto",
    "Worker": "engine.worker", "Measurement": "engine.measurement",
    "TrialRecord": "study._records", "Study": "study.study",
    "load_study": "study._storage", "select": "study._selection", "write_picks": "study._selection",
}
__all__ = ["__version__", *_API]  # noqa: PLE0604 (the names of _API)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _API)

if TYPE_CHECKING:
    from .core.config import StudyConfig as StudyConfig
    from .core.config import load_study_config as load_study_config
    from .core.inventory import Inventory as Inventory
    from .core.inventory import read_inventory as read_inventory
    from .core.pareto import parse_targets as parse_targets
    from .core.recipe import Recipe as Recipe
    from .core.recipe import load_recipe as load_recipe
    from .core.recipe import preset_recipe as preset_recipe
    from .core.recipe import uniform_recipe as uniform_recipe
    from .core.resolution import resolve as resolve
    from .core.size import predict_size as predict_size
    from .core.text import ScoreSettings as ScoreSettings
    from .core.text import TextSource as TextSource
    from .engine.measurement import Measurement as Measurement
    from .engine.worker import Worker as Worker
    from .errors import RecipeSearchError as RecipeSearchError
    from .study._records import TrialRecord as TrialRecord
    from .study._selection import select as select
    from .study._selection import write_picks as write_picks
    from .study._storage import load_study as load_study
    from .study.study import Study as Study
