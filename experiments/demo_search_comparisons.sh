#!/bin/sh
# Sampler comparison and surrogate seeding on the demo model, sharing one measurement cache:
# the `plain` seeding arm is the TPE sampler study of the same seed, so it costs no measurement.
# Scored on the first 40% of wiki.test.raw, ctx 512 x 4 chunks, as experiments/results/sensitivity-demo was.
# Usage: sh experiments/demo_search_comparisons.sh [WIKI_TEST_RAW] [WORK_DIR]
# No smoke mode of its own: it only chains seeding.py, samplers.py and prune_replay.py, whose smoke modes
# tests/test_experiments.py runs.
set -eu
text="${1:-../shared/data/wikitext-2-raw/wiki.test.raw}[0:0.4]"
work="${2:-/tmp/demo-comparisons}"
common="--config experiments/demo-study.yaml --text $text --ctx 512 --chunks 4 --trials 17 --seeds 0 1 2 --no-prune"
python3 experiments/seeding.py demo $common --table experiments/results/sensitivity-demo --surrogate-seeds 5 \
    --dir "$work/seeding" --cache-dir "${RECIPE_SEARCH_CACHE:-$HOME/.cache/recipe-search}" \
    --json experiments/results/seeding-demo.json
python3 experiments/samplers.py demo $common --samplers tpe random nsga2 --keep-dir "$work/samplers" \
    --out experiments/results/samplers-demo.json
for study in "$work"/samplers/*/study.db; do
    name=$(basename "$(dirname "$study")")
    python3 experiments/prune_replay.py --storage "sqlite:///$study" --study s \
        --out "experiments/results/prune-replay-demo-$name.json"
done
