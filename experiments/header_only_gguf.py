"""Write a header-only GGUF (tensor table, sparse data) from a ``tensors.<qtype>.map`` listing.

    python experiments/header_only_gguf.py ../shared/data/qwen3.5-35b-a3b/tensors.bf16.map \
        q35.gguf --arch qwen35moe

The file takes a few hundred KiB on disk however large the model; `recipe-search inspect`, `size`
and `compare --model` read it like the real model. Keep it outside the repository.

    python experiments/header_only_gguf.py --smoke  # a map listed from a generated tiny model, into a temporary directory
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import smoke

from recipe_search.formats import read_map, write_header_only


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("map", type=Path, help="tensors.<qtype>.map (name, shape, dtype, bytes per line)")
    p.add_argument("out", type=Path, help="the GGUF to write")
    p.add_argument("--arch", required=True, help="general.architecture, e.g. qwen35moe")
    a = p.parse_args(argv)
    rows = read_map(a.map)
    write_header_only(a.out, a.arch, rows)
    print(f"wrote {a.out}: {len(rows)} tensors, {a.out.stat().st_size:,} bytes apparent size")


def write_map(model: Path, out: Path) -> Path:
    """List ``model``'s tensors as the shared data's maps do (one line each, zero digests): a map of a generated
    tiny model for the smoke modes."""
    from recipe_search import read_inventory

    lines = [f"{model.name}:{'0' * 64}:{t.name}:shape=({', '.join(map(str, t.shape))}):"
             f"dtype={t.ggml_type.name.lower()}:elements={t.n_elements}:bytes={t.n_bytes}"
             for t in read_inventory(model).tensors]
    out.write_text("\n".join(lines) + "\n")
    return out


def run_smoke() -> None:
    """The map lists a generated tiny model's tensors."""
    with smoke.directory("header_only_gguf") as tmp:
        main([str(write_map(smoke.dense_model(tmp), tmp / "tensors.map")), str(tmp / "header-only.gguf"),
              "--arch", "llama"])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
