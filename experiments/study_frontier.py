"""One study through the public API with a fixed sampler seed, its summary (frontier, hypervolume, trial
counts) written as JSON: run it at two commits and compare the files to show a change left a study's
results as they were (the regrouping of issue 20 was checked so, on tiny-qwen35moe and the demo).

A pid-derived sampler seed makes `recipe-search search` runs differ; here the worker seed is 0, so the same
code, model, config and measurements give the same trials.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import smoke

import recipe_search as rs
from recipe_search.engine import demo_model_path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model", help="a GGUF, or `demo`")
    p.add_argument("config", help="study config YAML")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--dir", required=True, help="study directory (a new one for a fresh run)")
    p.add_argument("--cache", required=True, help="recipe-search cache (a new one so nothing is reused)")
    p.add_argument("--json", required=True, help="the summary goes here")
    a = p.parse_args(argv)
    model = demo_model_path() if a.model == "demo" else Path(a.model)
    study = rs.Study.open(model, rs.load_study_config(a.config), directory=a.dir, cache=a.cache, worker_seed=0)
    study.prepare()
    study.run(n_trials=a.trials)
    summary = study.summary()
    Path(a.json).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    for row in summary["frontier"]:
        print(f"trial {row['trial']:>3} {row['name']:<24} {row['bpw']:.3f} bpw  {row['values']}")
    return 0


def run_smoke() -> int:
    with smoke.directory("study_frontier") as tmp:
        config = tmp / "study.yaml"
        config.write_text("ctx: 128\nchunks: 2\nobjectives: [size, kld_p99]\nsurrogate_seeds: 0\nrefit_every: 0\n"
                          "space: {ladder: [Q8_0, Q4_0]}\nreferences: {uniform: [Q8_0], presets: []}\n")
        return main([str(smoke.dense_model(tmp)), str(config), "--trials", "2", "--dir", str(tmp / "s"),
                     "--cache", str(tmp / "cache"), "--json", str(tmp / "summary.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
