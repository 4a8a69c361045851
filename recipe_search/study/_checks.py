"""Everything a study's config can get wrong, checked before the study is created.

A config error found after `optuna.create_study` left a study that refused the corrected config
("exists with another config"); these checks run first, against the model's inventory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.config import StudyConfig
from ..core.kld import MIN_TOKENS, default_max_entries, scored_per_chunk
from ..core.resolution import resolve
from ..core.size import SizePrediction, predict_size
from ..core.space import SearchSpace, reference_recipes
from ..engine.task_check import TaskChecker, parse_task_specs
from ..engine.worker import Worker
from ..errors import RecipeSearchError
from ..formats.ggml_types import bits_per_weight


def check_study_inputs(config: StudyConfig, worker: Worker, space: SearchSpace) -> None:
    """Raise RecipeSearchError for a text that cannot be scored, an impossible size band, bad references
    or surrogate seeds that cannot be made."""
    worker.settings.text.read()
    inv = worker.inventory
    extra_kv = worker.imatrix.kv() if worker.imatrix else None
    def extreme(pick) -> SizePrediction:
        choice = {p.name: pick(range(len(p.ladder)), key=lambda i: bits_per_weight(p.ladder[i]))
                  for p in space.parameters}
        return predict_size(worker.resolve(space.recipe(choice)), inv, extra_kv)

    smallest, largest = extreme(min), extreme(max)
    if config.max_bytes is not None and smallest.file_bytes > config.max_bytes:
        raise RecipeSearchError(f"max_bytes {config.max_bytes} is below the smallest recipe of the space "
                                f"({smallest.file_bytes} bytes): every trial would be pruned")
    if config.max_bpw is not None and smallest.bits_per_weight > config.max_bpw:
        raise RecipeSearchError(f"max_bpw {config.max_bpw} is below the smallest recipe of the space "
                                f"({smallest.bits_per_weight:.3f} bpw): every trial would be pruned")
    if config.min_bpw is not None and largest.bits_per_weight < config.min_bpw:
        raise RecipeSearchError(f"min_bpw {config.min_bpw} is above the largest recipe of the space "
                                f"({largest.bits_per_weight:.3f} bpw): every trial would be pruned")
    budget = config.device_budget(inv)  # a placement pattern that matches no tensor fails here
    over = budget.excess(budget.totals(smallest))
    if over:
        raise RecipeSearchError(f"no recipe of the space fits the device budget: the smallest needs {over}")
    below = [t for t in config.target_bpw if t < smallest.bits_per_weight]
    if below:
        raise RecipeSearchError(f"target_bpw {below[0]} is below the smallest recipe of the space "
                                f"({smallest.bits_per_weight:.3f} bpw)")
    sweep_tokens = config.sweep_chunk_count * scored_per_chunk(config.ctx)
    if config.uses_surrogate and not config.sensitivity and sweep_tokens < MIN_TOKENS:
        raise RecipeSearchError(f"sweep_chunks {config.sweep_chunk_count} at ctx {config.ctx} scores {sweep_tokens} tokens "
                                f"per sweep cell, fewer than the {MIN_TOKENS} KLD statistics need")
    reference_recipes(config, space, inv)
    if config.uses_surrogate and config.sensitivity:
        from ..sensitivity.surrogate import seed_allocations

        seed_allocations(config, space, inv, extra_kv)


def study_task_checker(config: StudyConfig, model: Path, cache_dir: Path) -> TaskChecker | None:
    """The checker of the config's `tasks` (a text task without its text built from `holdout_text`); None
    without tasks. A bad spec or task file fails here, before the study exists or any model runs."""
    if not config.tasks:
        return None
    o = config.task_options
    return TaskChecker(model, parse_task_specs(config.tasks, config.holdout_text), cache_dir, threads=config.threads,
                       gpu_layers=config.gpu_layers, ctx=o.ctx, limit=o.limit, cloze=o.cloze(),
                       continuation=o.continuation())


def estimate_disk(worker: Worker, config: StudyConfig, space: SearchSpace, scored_tokens: int) -> dict[str, int]:
    """Bytes the study needs on disk: reference cache (upper bound), the largest temporary GGUF."""
    inv = worker.inventory
    n_vocab = int(inv.headers[0].get(f"{inv.arch}.vocab_size", 0) or 0) or _vocab_from_header(inv)
    reference = (scored_tokens * (default_max_entries(n_vocab) * 8 + 24)
                 + config.reference_chunks * config.ctx * 4)
    largest = space.recipe({p.name: 0 for p in space.parameters})  # every ladder's biggest type
    biggest = predict_size(resolve(largest, inv), inv).file_bytes
    return {"reference_cache": reference, "temporary_gguf": biggest}


def _vocab_from_header(inv) -> int:
    kv = inv.headers[0].kv.get("tokenizer.ggml.tokens")
    return int(kv.array_len or 0) if kv else 0


def check_disk(worker: Worker, config: StudyConfig, space: SearchSpace, scored_tokens: int, directory: Path) -> dict[str, int]:
    need = estimate_disk(worker, config, space, scored_tokens)
    for where in (worker.cache_dir, directory):
        where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    total = sum(need.values()) + (1 << 28)
    if free < total:
        raise RecipeSearchError(f"the study needs about {total / 2**30:.1f} GiB of disk but "
                                f"{directory} has {free / 2**30:.1f} GiB free")
    return need
