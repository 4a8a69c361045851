"""Where recipe-search keeps derived files (reference logits, measurements, the demo model)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(override: str | Path | None = None) -> Path:
    """``override`` (a command's ``--cache-dir``), else ``$RECIPE_SEARCH_CACHE``, else ~/.cache/recipe-search."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("RECIPE_SEARCH_CACHE", Path.home() / ".cache" / "recipe-search"))
