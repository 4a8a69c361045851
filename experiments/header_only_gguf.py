"""Write a header-only GGUF (tensor table, sparse data) from a ``tensors.<qtype>.map`` listing.

    python experiments/header_only_gguf.py /work/shared/data/qwen3.5-35b-a3b/tensors.bf16.map \
        /tmp/qwen3.5-35b-a3b-bf16.gguf --arch qwen35moe

The file takes a few hundred KiB on disk however large the model; `recipe-search inspect`, `size`
and `compare --model` read it like the real model. Keep it outside the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recipe_search.formats.tensor_map import read_map, write_header_only


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("map", type=Path, help="tensors.<qtype>.map (name, shape, dtype, bytes per line)")
    p.add_argument("out", type=Path, help="the GGUF to write")
    p.add_argument("--arch", required=True, help="general.architecture, e.g. qwen35moe")
    a = p.parse_args()
    rows = read_map(a.map)
    write_header_only(a.out, a.arch, rows)
    print(f"wrote {a.out}: {len(rows)} tensors, {a.out.stat().st_size:,} bytes apparent size")


if __name__ == "__main__":
    main()
