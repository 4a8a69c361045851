"""Where recipe-search keeps derived files (reference logits, measurements, the demo model)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | Path | None = None) -> Path:
    """``override`` (a command's ``--cache-dir``), else ``$RECIPE_SEARCH_CACHE``, else ~/.cache/recipe-search."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("RECIPE_SEARCH_CACHE", Path.home() / ".cache" / "recipe-search"))


def shareable(path: str | Path) -> str:
    """``path`` as a committed file may carry it: relative to the working directory when it lies there or
    beside it (``../shared/data/...``), else only its name; a text spec's ``[a:b]`` range is kept."""
    spec = str(path)
    base, bracket, rest = spec.partition("[")
    relative = os.path.relpath(Path(base).resolve()) if Path(base).is_absolute() else base
    kept = relative if not relative.startswith("../..") else Path(base).name
    return kept + (bracket + rest if bracket else "")
