"""Does quantizing while scoring raise a study's trials per hour, side by side in one run?

The same default study (the model, a text, size targets; the given seed), from an empty tensor and measurement
cache each time (the base model's references made beforehand and copied in, as a study finds them after its first
night), run to ``--trials`` trials with ``prefill_threads`` 0 and with ``--prefill-threads`` of the ``--threads``
(by default 1 of 2: one thread scores while one quantizes the next enqueued trials' and sweep cells' missing
tensors), in ABBA order over ``--rounds``. Each run's wall time covers the study's own sweep and its trials. Both
runs must measure the same numbers: every trial's values are compared, bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import smoke

import recipe_search as rs
from recipe_search.core import parse_targets
from recipe_search.engine import demo_model_path


def config(a: argparse.Namespace, prefill: int) -> rs.StudyConfig:
    """The default study with the command line's settings, bpw targets only."""
    return rs.StudyConfig(text=a.text, ctx=a.ctx, chunks=a.chunks, threads=a.threads, seed=a.seed,
                          prefill_threads=prefill, target_bpw=[t.value for t in parse_targets(a.targets)
                                                               if t.kind == "bpw"])


def references(model: Path, c: rs.StudyConfig, base: Path) -> None:
    """The study's and its sweep's references, made once under ``base``."""
    for chunks in (c.chunks, c.sweep_chunk_count):
        settings = c.score_settings()
        settings = settings if chunks == c.chunks else dataclasses.replace(settings, chunks=chunks, more_chunks=0)
        _ = rs.Worker(model, settings, base, base / "work").reference


def one_run(model: Path, c: rs.StudyConfig, work: Path, base: Path, trials: int) -> tuple[float, list]:
    """A fresh study with an empty cache (the references copied in): its wall seconds and every trial's values."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base / "references", work / "cache" / "references")
    start = time.perf_counter()
    study = rs.Study.open(model, c, name="bench", directory=work / "study", cache=work / "cache", worker_seed=0)
    study.prepare()
    study.run(n_trials=trials)
    seconds = time.perf_counter() - start
    values = [(t.number, t.state.name, t.values) for t in study.optuna_study.get_trials(deepcopy=False)]
    shutil.rmtree(work, ignore_errors=True)
    return seconds, values


def run(a: argparse.Namespace) -> dict:
    model = demo_model_path() if a.model == "demo" else Path(a.model)
    work = Path(a.work)
    base = work / "base"
    plain, ahead = config(a, 0), config(a, a.prefill_threads)
    references(model, plain, base)
    seconds: dict[str, list[float]] = {"plain": [], "prefill": []}
    values: dict[str, list] = {}
    for i in range(a.rounds):
        order = ("plain", "prefill") if i % 2 == 0 else ("prefill", "plain")
        for which in order:
            s, v = one_run(model, plain if which == "plain" else ahead, work / which, base, a.trials)
            print(f"round {i + 1} {which}: {s:.1f} s", flush=True)
            seconds[which].append(round(s, 2))
            if values.setdefault(which, v) != v:
                raise SystemExit(f"{which}: two runs measured different values")
    same = values["plain"] == values["prefill"]
    ratio = statistics.median(seconds["plain"]) / statistics.median(seconds["prefill"])
    return {"model": model.name, "text": a.text, "ctx": a.ctx, "chunks": a.chunks, "targets": a.targets,
            "trials": a.trials, "threads": a.threads, "prefill_threads": a.prefill_threads, "seconds": seconds,
            "trials_per_hour": {k: round(3600 * a.trials / statistics.median(v), 1) for k, v in seconds.items()},
            "speedup": round(ratio, 3), "same_values": same}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model", help="a GGUF, or `demo`")
    p.add_argument("--text", required=True, help="search text, FILE[a:b]")
    p.add_argument("--targets", default="5.0bpw,6.0bpw")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="ABBA: each mode runs this many times")
    p.add_argument("--work", required=True, help="a scratch directory (emptied run by run)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    r = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(r, indent=1))
    return 0 if r["same_values"] else 1


def run_smoke() -> int:
    """One round of a few trials on a generated tiny MoE model and text."""
    with smoke.directory("prefill_bench") as tmp:
        model, text = smoke.moe_model(tmp), smoke.text_file(tmp)
        return main([str(model), "--text", f"{text}[0:0.5]", "--ctx", "64", "--chunks", "4", "--trials", "4",
                     "--targets", "5.0bpw", "--rounds", "1", "--work", str(tmp / "work")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
