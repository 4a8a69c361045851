"""Does OMP_WAIT_POLICY=passive help or hurt evaluation, on an idle machine and beside a busy process?

llama.cpp's OpenMP threads spin between graph nodes by default; when another process holds a core,
a spinning thread can wait a whole time slice for its partner. Each measurement is a fresh process
(the policy must be set before the OpenMP runtime starts) that loads the model and times the
evaluation of a few chunks; default and passive alternate, first idle, then with one busy-looping
process per core beside them. The script prints median seconds and the passive / default ratio.

    python experiments/omp_wait_policy.py [demo] [--chunks 2] [--rounds 3]
    python experiments/omp_wait_policy.py --smoke   # one round on a generated tiny model
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import smoke

CHILD = """
import sys, time
from recipe_search.core import TextSource
from recipe_search.engine import LlamaModel, chunk_tokens, evaluate
model, ctx, chunks, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with LlamaModel(model, n_threads=threads, n_ctx=ctx) as lm:
    tokens = chunk_tokens(lm.tokenize(TextSource.parse(None).read()), ctx, chunks, lm.add_bos, lm.bos_id)
    start = time.perf_counter()
    for _ in evaluate(lm, tokens, ctx // 2, copy=False):
        pass
    print(time.perf_counter() - start)
"""


def _spin() -> None:
    while True:
        pass


def one_run(model: Path, policy: str | None, ctx: int, chunks: int, threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(ctx), str(chunks), str(threads)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    from recipe_search.engine import resolve_model_arg

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model", nargs="?", default="demo")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="experiments/results/omp_wait_policy.json")
    a = p.parse_args(argv)
    model = resolve_model_arg(a.model)
    result = {"model": model.name, "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads, "rounds": a.rounds}
    for condition in ("idle", "busy"):
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)] \
            if condition == "busy" else []
        for s in spinners:
            s.start()
        try:
            times: dict[str, list[float]] = {"default": [], "passive": []}
            for r in range(a.rounds):
                for policy in (("default", "passive") if r % 2 == 0 else ("passive", "default")):
                    times[policy].append(one_run(model, None if policy == "default" else "PASSIVE", a.ctx,
                                                 a.chunks, a.threads))
        finally:
            for s in spinners:
                s.kill()
        med = {k: statistics.median(v) for k, v in times.items()}
        result[condition] = {"seconds": times, "median": med, "passive_over_default": med["passive"] / med["default"]}
        print(f"{condition:<5} default {med['default']:.2f} s   passive {med['passive']:.2f} s   "
              f"passive/default {med['passive'] / med['default']:.3f}   (all: {times})", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


def run_smoke() -> None:
    with smoke.directory("omp_wait_policy") as tmp:
        main([str(smoke.dense_model(tmp)), "--ctx", "128", "--chunks", "1", "--rounds", "1",
              "--out", str(tmp / "omp_wait_policy.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
