"""What quantizing cache misses in a child process costs against quantizing them in process.

Cold fills of a fresh tensor cache, the two ways alternating (medians of `--rounds`): every quantizable tensor
of the demo model at Q4_0 (many small fills: the child's start and the per-miss round trip show most), and one
large BF16 tensor written here (4096 x 16384, random) at Q4_K. Prints seconds and the child / in-process ratio.

    python experiments/fill_isolation.py [--rounds 3] [--json experiments/results/fill_isolation.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke
from gguf import GGMLQuantizationType, GGUFWriter

from recipe_search.core import ScoreSettings, read_inventory
from recipe_search.engine import Worker, resolve_model_arg
from recipe_search.formats import GGMLType


def large_tensor_model(path: Path, n_per_row: int, rows: int) -> Path:
    """A GGUF holding one BF16 ``blk.0.ffn_down.weight`` of random values (enough for the tensor cache)."""
    w = GGUFWriter(str(path), "llama")
    x = np.random.default_rng(0).standard_normal((rows, n_per_row), dtype=np.float32) * 0.02
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("blk.0.ffn_down.weight", bf16, raw_shape=(rows, n_per_row), raw_dtype=GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def cold_fill(model: Path, ggml_type: GGMLType, isolated: bool, threads: int, where: Path) -> float:
    """Seconds to quantize every quantizable tensor of ``model`` to ``ggml_type`` into an empty cache."""
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        tensors = Worker(model, ScoreSettings(threads=threads), Path(tmp), Path(tmp) / "work").tensors
        tensors.isolated = isolated
        start = time.perf_counter()
        for t in read_inventory(model).tensors:
            if t.quantizable:
                tensors.shard(t, ggml_type)
        return time.perf_counter() - start


def measure(cases: dict[str, tuple[Path, GGMLType]], rounds: int, threads: int, where: Path) -> dict:
    out = {}
    for name, (model, ggml_type) in cases.items():
        times: dict[str, list[float]] = {"child": [], "in_process": []}
        for _ in range(rounds):
            for how in ("child", "in_process"):
                times[how].append(cold_fill(model, ggml_type, how == "child", threads, where))
        med = {how: statistics.median(v) for how, v in times.items()}
        out[name] = {"type": ggml_type.name, "seconds": times, "median_s": med,
                     "ratio": med["child"] / med["in_process"]}
        print(f"{name} ({ggml_type.name}): child {med['child']:.2f} s, in process {med['in_process']:.2f} s, "
              f"ratio {out[name]['ratio']:.3f} (medians of {rounds})", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        cases = {"demo, every tensor": (resolve_model_arg("demo"), GGMLType.Q4_0),
                 "one 4096 x 16384 BF16 tensor": (large_tensor_model(where / "large.gguf", 4096, 16384), GGMLType.Q4_K)}
        out = measure(cases, a.rounds, a.threads, where)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def run_smoke() -> int:
    with smoke.directory("fill_isolation") as tmp:
        measure({"tiny dense": (smoke.dense_model(tmp), GGMLType.Q4_0),
                 "one 256 x 64 tensor": (large_tensor_model(tmp / "large.gguf", 256, 64), GGMLType.Q4_K)}, 1, 2, tmp)
    return 0


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
