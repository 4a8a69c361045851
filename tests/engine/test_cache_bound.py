"""The tensor cache's bound: $RECIPE_SEARCH_TENSOR_CACHE_GB, else half the disk the cache can use."""

from __future__ import annotations

import shutil

import pytest

from recipe_search.core.cache_need import DEFAULT_DISK_SHARE
from recipe_search.engine.tensor_cache import TensorCache
from recipe_search.errors import RecipeSearchError


def test_default_bound_is_a_share_of_free_disk_plus_what_it_holds(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RECIPE_SEARCH_TENSOR_CACHE_GB", raising=False)
    cache = TensorCache.under(tmp_path / "not-yet")  # the folder need not exist: its nearest parent's disk counts
    assert cache.max_bytes is None
    free = shutil.disk_usage(tmp_path).free
    bound = cache.bound(held=4 << 30)
    assert abs(bound - DEFAULT_DISK_SHARE * (free + (4 << 30))) < 1 << 26  # free space moves a little meanwhile
    assert cache.info().max_bytes <= DEFAULT_DISK_SHARE * shutil.disk_usage(tmp_path).free + (1 << 26)


def test_the_variable_still_sets_the_bound(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RECIPE_SEARCH_TENSOR_CACHE_GB", "2.5")
    cache = TensorCache.under(tmp_path)
    assert cache.max_bytes == int(2.5 * (1 << 30)) == cache.bound(held=1 << 40) == cache.info().max_bytes
    for bad in ("lots", "-1"):
        monkeypatch.setenv("RECIPE_SEARCH_TENSOR_CACHE_GB", bad)
        with pytest.raises(RecipeSearchError, match="RECIPE_SEARCH_TENSOR_CACHE_GB"):
            TensorCache.under(tmp_path)
