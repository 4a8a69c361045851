"""Does a new user's first study beat a role template made in seconds, at the template's size?

The template (another tool's band-probe template): routed experts Q2_K except their first two blocks at
Q4_K, shared experts Q8_0, output Q6_K, everything else Q4_K. Its size is the target. Two study
configurations choose on the search text, both scoring ``--ctx`` x ``--chunks``:

- ``before``: what a user got by writing the few lines they needed before the defaults changed: the size
  band (max_bpw at the target), TPE from the start (surrogate_seeds 0, refit_every 0, no first-blocks band);
- ``after``: today's defaults with the target on the command line (`search --targets`): the study sweeps its
  own space, enqueues the surrogate's allocations and refits it as it goes, the experts' first blocks apart.

Each study's pick at the target (best kld_p99 at or under it) and the template are re-scored on the
held-out text, and each pick is tested against the template by a paired chunk bootstrap of every tail
statistic. With ``--imatrix-chunks N`` an imatrix is collected in process on N chunks of the search text (as
llama-imatrix collects one: no token_embd, no output) and both the studies and the template use it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import smoke

import recipe_search as rs
from recipe_search.core import TAIL_STATISTICS, Target, paired_bootstrap, statistic_of
from recipe_search.engine import collect_imatrix
from recipe_search.formats import ImatrixInput, save_imatrix_gguf
from recipe_search.study import Chosen, searched_trials_done, validate

COMPARED = ("kld_mean", *TAIL_STATISTICS)


def template(inv: rs.Inventory) -> rs.Recipe:
    """The band-probe template, for this model's blocks."""
    exps = sorted(k for k in inv.kinds if k.endswith("_exps"))
    first = sorted({b for k in exps for b in inv.kinds[k].blocks})[:2]
    rules = [{"tensors": k, "blocks": first, "type": "Q4_K"} for k in exps]
    rules += [{"tensors": k, "type": "Q2_K"} for k in exps]
    rules += [{"tensors": k, "type": "Q8_0"} for k in sorted(inv.kinds) if k.endswith("_shexp")]
    rules += [{"tensors": "output", "type": "Q6_K"}] if "output" in inv.kinds else []
    return rs.Recipe.model_validate({"name": "template", "unmatched": {"type": "Q4_K"}, "rules": rules})


def study_config(variant: str, a: argparse.Namespace, target: float, seed: int, imatrix: Path | None) -> rs.StudyConfig:
    common = {"text": a.text, "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads, "seed": seed,
              "objectives": ["size", "kld_p99"], "imatrix": None if imatrix is None else str(imatrix)}
    if variant == "before":
        return rs.StudyConfig.model_validate({**common, "max_bpw": target, "surrogate_seeds": 0, "refit_every": 0,
                                              "space": {"expert_first_blocks": 0}})
    return rs.StudyConfig.model_validate({**common, "target_bpw": [target]})


def run(a: argparse.Namespace) -> dict:
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    inv = rs.read_inventory(a.model)
    imatrix = None
    if a.imatrix_chunks:
        imatrix = work / f"imatrix-{a.imatrix_chunks}.gguf"
        if not imatrix.exists():
            text = rs.TextSource.parse(a.text)
            save_imatrix_gguf(collect_imatrix(a.model, text.read(), ctx=a.ctx, n_chunks=a.imatrix_chunks,
                                              n_threads=a.threads, dataset=text.label), imatrix)
    imatrix_input = ImatrixInput.from_file(imatrix) if imatrix else None
    tmpl = template(inv)
    tmpl_bpw = rs.predict_size(rs.resolve(tmpl, inv), inv).bits_per_weight
    target = float(f"{tmpl_bpw:.4f}") + 1e-4  # the template fits its own size, printed to 4 places
    holdout = rs.Worker(Path(a.model), rs.ScoreSettings(text=rs.TextSource.parse(a.holdout), ctx=a.ctx,
                                                        chunks=a.holdout_chunks, threads=a.threads),
                        work / "cache", work / "holdout", imatrix=imatrix_input)
    chosen = [Chosen("template", tmpl)]
    studies: dict[str, dict] = {}
    for variant in a.variants:
        for seed in a.seeds:
            label = f"{variant} seed {seed}"
            directory = work / f"{variant}-{seed}"
            start = time.perf_counter()
            study = rs.Study.open(a.model, study_config(variant, a, target, seed, imatrix), directory=directory,
                                  cache=work / "cache", worker_seed=0)
            study.prepare()
            study.run(n_trials=a.trials - searched_trials_done(study.optuna_study))  # a rerun resumes
            seconds = time.perf_counter() - start
            sel = rs.select(study.optuna_study, f"sqlite:///{directory / 'study.db'}", "kld_p99",
                            [Target("bpw", target, f"{target:.4f}bpw")])
            pick = sel.picks[0].candidate
            counts = {k: v for k, v in sel.counts.items() if v}
            if pick is None:
                studies[label] = {"pick": None, "trials": counts, "seconds": seconds}
                continue
            c = sel.candidates[pick]
            studies[label] = {"pick": c.name, "bpw": c.bpw, "search": {m: c.metrics[m] for m in COMPARED},
                              "trials": counts, "seconds": seconds}
            chosen.append(Chosen(label, c.recipe, c.metrics))
    results = validate(holdout, chosen, n_boot=a.n_boot)
    by_name = {r.name: r for r in results}
    base = by_name["template"]
    per_chunk = holdout.reference.n_scored_per_chunk
    out = {"model": Path(a.model).name, "text": a.text, "holdout": a.holdout, "ctx": a.ctx, "chunks": a.chunks,
           "holdout_chunks": a.holdout_chunks, "trials": a.trials, "imatrix_chunks": a.imatrix_chunks,
           "target_bpw": target, "template": {"bpw": base.bpw, "holdout": {m: base.holdout_metrics[m] for m in COMPARED},
                                              "ci95": {m: base.intervals[m] for m in COMPARED if m in base.intervals}},
           "studies": studies}
    for label, row in studies.items():
        if label not in by_name:
            continue
        r = by_name[label]
        row["holdout"] = {m: r.holdout_metrics[m] for m in COMPARED}
        row["ci95"] = {m: r.intervals[m] for m in COMPARED if m in r.intervals}
        row["vs_template"] = {}
        for m in COMPARED:
            lo, hi = paired_bootstrap(np.asarray(r.kld_tokens, np.float64), np.asarray(base.kld_tokens, np.float64),
                                      statistic_of(m), per_chunk, n_boot=a.n_boot)
            row["vs_template"][m] = {"diff_ci95": [lo, hi], "call": "better" if hi < 0 else "worse" if lo > 0 else "tie"}
    return out


def print_table(r: dict) -> None:
    print(f"{r['model']}: target {r['target_bpw']:.4f} bpw (the template's), search {r['text']}, held out "
          f"{r['holdout']} ({r['holdout_chunks']} chunks of {r['ctx']}), imatrix chunks {r['imatrix_chunks']}")
    head = "".join(f"{m:>22}" for m in COMPARED)
    print(f"{'':<16}{'bpw':>7}{head}   trials")
    t = r["template"]
    print(f"{'template':<16}{t['bpw']:>7.3f}" + "".join(f"{t['holdout'][m]:>22.4f}" for m in COMPARED))
    for label, row in r["studies"].items():
        if row.get("pick") is None:
            print(f"{label:<16}  nothing fits the target; trials {row['trials']}")
            continue
        cells = "".join(f"{row['holdout'][m]:>13.4f} {row['vs_template'][m]['call']:>7}" + " " for m in COMPARED)
        print(f"{label:<16}{row['bpw']:>7.3f}{cells}  {row['trials']} {row['seconds']:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("model")
    p.add_argument("--text", required=True, help="search text, FILE[a:b]")
    p.add_argument("--holdout", required=True, help="held-out text, FILE[a:b]")
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--holdout-chunks", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=["before", "after"], default=["before", "after"])
    p.add_argument("--imatrix-chunks", type=int, default=0, help="collect an imatrix on this many search chunks")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--work", required=True, help="studies, cache and imatrix (kept: a rerun resumes)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    r = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
    print_table(r)
    return 0


def run_smoke() -> int:
    """Both variants, one seed, a few trials on a generated tiny MoE model and text, in a temporary directory."""
    with smoke.directory("default_study") as tmp:
        model = smoke.moe_model(tmp)
        text = smoke.text_file(tmp)
        return main([str(model), "--text", f"{text}[0:0.5]", "--holdout", f"{text}[0.5:1]", "--ctx", "64",
                     "--chunks", "4", "--holdout-chunks", "4", "--trials", "3", "--seeds", "0", "--n-boot", "50",
                     "--work", str(tmp / "work")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
