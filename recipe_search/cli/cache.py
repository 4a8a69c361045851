"""Commands on the quantized-tensor cache: cache info, cache verify, cache clear."""

from __future__ import annotations

import argparse

from ..core.size import human_bytes
from . import _print_json, command


def cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["info", "verify", "clear"],
                   help="info: entries, bytes, hit rate; verify: check every entry against its digest and remove "
                        "the damaged ones; clear: remove them all")
    p.add_argument("--cache-dir", help="default: $RECIPE_SEARCH_CACHE or ~/.cache/recipe-search")
    p.add_argument("--json", action="store_true")


@command("cache", "the quantized-tensor cache: what it holds (info), check it (verify) or empty it (clear)")
def cache(a: argparse.Namespace) -> int:
    from ..engine.demo import cache_dir
    from ..engine.tensor_cache import TensorCache

    tc = TensorCache.under(cache_dir(a.cache_dir))
    if a.action == "clear":
        n = tc.clear()
        print(f"removed {n} cached tensors from {tc.root}")
        return 0
    if a.action == "verify":
        from ..engine.tensor_cache import NO_DIGEST

        checked, bad = tc.verify()
        if a.json:
            _print_json({"path": str(tc.root), "checked": checked,
                         "removed": [{"path": str(p), "problem": why} for p, why in bad]})
            return 0
        for path, why in bad:
            print(f"removed {path}: {'cannot be checked' if why == NO_DIGEST else 'damaged'} ({why})")
        old = sum(why == NO_DIGEST for _, why in bad)
        print(f"tensor cache {tc.root}: {checked} entries checked, {len(bad) - old} damaged (removed)"
              + (f", {old} without a digest (removed; quantized again when used)" if old else ""))
        return 0
    info = tc.info()
    if a.json:
        _print_json({"path": str(tc.root), "entries": info.entries, "bytes": info.bytes, "max_bytes": info.max_bytes,
                     "hits": info.hits, "misses": info.misses, "hit_rate": info.hit_rate})
        return 0
    print(f"tensor cache: {tc.root}")
    print(f"entries: {info.entries}, {human_bytes(info.bytes)} of at most {human_bytes(info.max_bytes)} "
          + ("($RECIPE_SEARCH_TENSOR_CACHE_GB)" if tc.max_bytes is not None else
             "(half the disk it can use; $RECIPE_SEARCH_TENSOR_CACHE_GB sets it)"))
    print(f"hits: {info.hits}, misses: {info.misses}, hit rate {100 * info.hit_rate:.1f}%")
    return 0
