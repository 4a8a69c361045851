"""Head to head: does the study beat the ways people choose recipes today, judged on text it never saw?

On one model (a PROFILES entry: tiny-qwen35moe, or the demo with the built-in text as a second held-out domain),
scoring text, context, chunk count, imatrix and objectives (size, 99.9% KLD; 99% KLD beside):

The searched space (`Profile.space`): the big tensor types (tiny-qwen35moe: token_embd, output, routed experts;
block 0 of the experts apart) over the profile's ladder, and every other quantized tensor type as one tied
parameter over its `rest_ladder`.

- (a) `presets`: llama.cpp's presets (PRESETS), with the imatrix;
- (b) `hand`: a hand sweep as uploaders build one: uniform types, one parameter moved a ladder step up or down
  from uniform Q4_K (then Q3_K; the profile's `hand_bases`), random fill to --hand recipes, each measured in full;
- (c) `kld-greedy`: the one-type-at-a-time KLD sweep of the space (every parameter's tensor types over its ladder,
  on the study's `sweep_chunk_count` chunks: a tenth of the search's), then the knapsack allocator at each size
  target, unverified;
- (d) `weight-error`: the same allocator on a zero-evaluation table of imatrix-weighted quantization error
  (a table directory in the sweep's format from --weight-error-table, else built here: the model quantized
  uniformly once per ladder type, each tensor dequantized and compared with the source);
- (e) the study (STUDIES), one per seed, to the largest of --trials; its state after each smaller count is read off
  it. `study-plain`: the config's defaults (uniform references, the Q4_K_M preset, TPE, early stopping, caches);
  `study-seeded`: plus the surrogate options (its own sweep of the space, as (c)'s; the allocations at the size
  targets and at SURROGATE_SEEDS sizes spread over the range, enqueued first); `study`: plus every REFIT_EVERY-th
  trial proposed by the surrogate refitted to the measured trials; before rows: `study-sweep2`, `study` with the
  sweep on 2 chunks whatever the search's, and `study-dense`, that with twice the spread seeds;
- (f) `templates`: role-based "dynamic" recipes (routed experts, the demo's FFN, low; the rest high; the first
  block's of them protected), the largest few that fit each size target.

Every measurement goes through the tool's Worker, so a rerun reads it from the measurement cache and costs
nothing; a method is charged the measuring time each of its measurements took when first made (quantize,
load, decode, KLD), so shared measurements are charged to every method that needs them. The sweep's time is
charged to (c) and to each study that sweeps; the weight-error table's to (d). Hypervolume: 2-D, file bytes x
log10(99.9% KLD), against a reference point fixed before the run (the uniform Q8_0 recipe's size, REFERENCE_KLD).
Each method's best recipe at each size target (by the search text) and the chosen final frontiers
(--holdout-frontiers) are then re-scored on the held-out text (the picks also on the profile's second domain), with
95% chunk-bootstrap intervals, and every method's pick is tested against the study's (paired chunk bootstrap
over the same held-out chunks).

    PYTHONPATH=. python experiments/head_to_head.py [--profile demo] [--work DIR] [--seeds 0 1 2] [--trials 20 40 80] [--hand 121]
        [--methods ...] [--variant-trials N] [--variant-seeds ...] [--holdout-frontiers METHOD...]
    python experiments/head_to_head.py --markdown RESULTS.json      # the report's tables

(PYTHONPATH=. so that the worktree's recipe_search is imported, not an installed one.) experiments/reports/head-to-head.md
gives the command of each run.

Results: experiments/results/head-to-head-PROFILE*.json; figures: experiments/figures/head-to-head-*.png.
The profiles and the shared setup are in h2h_profiles.py, the methods in h2h_methods.py, the results file,
figures and tables in h2h_report.py. `--smoke` (alone) runs every method on a generated tiny model in a
temporary directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import smoke
from h2h_methods import STUDIES, Method, allocated, hand, presets, study, sweep, templates, weight_error_table
from h2h_profiles import CHUNKS, PROFILES, ROOT, Profile, setup, smoke_profile
from h2h_report import markdown, print_tables, results

from recipe_search.formats import atomic_write_text
from recipe_search.sensitivity import SensitivityTable

FIGURES = ROOT / "experiments" / "figures"


def main(argv: Sequence[str] | None = None, profiles: Mapping[str, Profile] = PROFILES, figures: Path = FIGURES) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "recipe-search" / "head-to-head",
                    help="caches, imatrix, sweep, studies (kept between runs: a rerun measures nothing twice)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, nargs="+", default=[20, 40, 80])
    ap.add_argument("--variant-trials", type=int, help="trials of study-plain and study-seeded (default: the largest "
                    "of --trials)")
    ap.add_argument("--variant-seeds", type=int, nargs="+", help="seeds of study-plain and study-seeded (default: --seeds)")
    ap.add_argument("--hand", type=int, default=121)
    ap.add_argument("--weight-error-table", type=Path, help="a weight-error table (sweep format) to use for (d)")
    ap.add_argument("--methods", nargs="+", default=["presets", "templates", "kld-greedy", "weight-error", "study",
                                                      "study-seeded", "study-plain", "hand"])
    ap.add_argument("--holdout-frontiers", nargs="*", default=None,
                    help="methods whose whole final frontier is re-scored on the held-out text (default: all; the "
                         "study's seed 0 only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", choices=sorted(profiles), default="tiny-qwen35moe", help="the model and its space")
    ap.add_argument("--figures", help="file name prefix of the two figures (default: head-to-head, then -PROFILE "
                                      "for another profile than tiny-qwen35moe)")
    ap.add_argument("--chunks", type=int, default=CHUNKS, help=f"search-text chunks every method chooses on (default {CHUNKS})")
    ap.add_argument("--holdout-chunks", type=int, default=CHUNKS,
                    help=f"chunks of the held-out text each pick is re-scored on (default {CHUNKS}; 0: all the range has)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="the results file (default: "
                    "experiments/results/head-to-head-PROFILE.json)")
    a = ap.parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f}s] {msg}", file=sys.stderr, flush=True)

    profile = profiles[a.profile]
    out_json = a.json or ROOT / "experiments" / "results" / f"head-to-head-{a.profile}.json"
    s = setup(profile, a.work, a.threads, log, a.holdout_chunks or None, a.chunks)
    ref = s.reference_point
    log(f"hypervolume reference point (fixed): {ref[0]:.0f} bytes, log10 KLD {ref[1]:.3f}")
    methods: list[Method] = []
    if "presets" in a.methods:
        log("(a) presets")
        methods.append(presets(s))
    if "templates" in a.methods:
        log("(f) templates")
        methods.append(templates(s))
    table_dir, sweep_seconds = None, 0.0
    if "kld-greedy" in a.methods:
        log("(c) KLD sweep")
        table_dir, sweep_seconds = sweep(s)
        log(f"sweep: {sweep_seconds:.0f} s charged")
    if "kld-greedy" in a.methods:
        assert table_dir is not None, "the KLD sweep runs before its allocation"
        methods.append(allocated(s, "kld-greedy", SensitivityTable.load(table_dir), sweep_seconds))
    if "weight-error" in a.methods:
        log("(d) weight-error table")
        if a.weight_error_table:
            we_dir, we_seconds = a.weight_error_table, 0.0
        else:
            we_dir, we_seconds = weight_error_table(s)
        methods.append(allocated(s, "weight-error", SensitivityTable.load(we_dir), we_seconds))
    for key in STUDIES:
        if key in a.methods:
            variant = key != "study"
            for seed in a.variant_seeds or a.seeds if variant else a.seeds:
                log(f"(e) {key} seed {seed}")
                methods.append(study(s, key, seed, a.variant_trials or max(a.trials) if variant else max(a.trials)))
    if "hand" in a.methods:
        log(f"(b) hand sweep of {a.hand}")
        methods.append(hand(s, a.hand))

    result = results(s, methods, profile_name=a.profile, chunks=a.chunks, trials=a.trials, seeds=a.seeds,
                     n_boot=a.n_boot, holdout_frontiers=a.holdout_frontiers, figures=figures,
                     prefix=a.figures or f"head-to-head{'' if a.profile == 'tiny-qwen35moe' else '-' + a.profile}")
    result["wall_s_this_run"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out_json, json.dumps(result, indent=1, default=float) + "\n")
    log(f"wrote {out_json}")
    print_tables(result)
    return 0


def run_smoke() -> int:
    """Every default method on a generated tiny dense model and text (smoke_profile), two seeds of the study to
    a few trials, a short hand sweep; the results file, figures and Markdown tables in a temporary directory."""
    with smoke.directory("head_to_head") as tmp:
        profile = smoke_profile(smoke.dense_model(tmp), smoke.text_file(tmp))
        out = tmp / "head-to-head-smoke.json"
        code = main(["--profile", "smoke", "--work", str(tmp / "work"), "--seeds", "0", "1", "--trials", "2", "4",
                     "--variant-seeds", "0", "--hand", "10", "--chunks", "4", "--holdout-chunks", "4",
                     "--n-boot", "50", "--json", str(out)], {"smoke": profile}, tmp / "figures")
        print(markdown(json.loads(out.read_text())))
        return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--markdown"]:
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit(0)
    smoke.entry(main, run_smoke)
