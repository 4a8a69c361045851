"""Cross-check the task scorer against llama-perplexity's own --hellaswag, --winogrande and --multiple-choice.

Writes one small task file of each format, built deterministically from a text's sentences (the true next
sentence of a paragraph against sentences from elsewhere; for WinoGrande a word of it against a word from
elsewhere), scores every task with recipe_search.engine's task scorer and with llama-perplexity built from
the pinned llama-cpp-python sdist (experiments/bench_trial.py's build, run with --no-repack), and prints both
accuracies side by side, with how many tasks the two call the same way. llama-perplexity reads HellaSwag with
-f as its documentation does, WinoGrande and multiple-choice with -bf (-f would drop a WinoGrande file's
last task, and corrupt a binary file's last byte if it is a newline).

    python experiments/crosscheck_tasks.py [--model demo] [--text wiki.test.raw] [--tasks 60 100 60]

Per-task agreement: WinoGrande and multiple-choice print a line per task in file order; HellaSwag in its
shuffled order, which this script replays (std::mt19937 seeded 1, libstdc++'s uniform_int_distribution).
The smoke mode (`--smoke`) scores our side only, on a generated tiny model and text.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smoke

from recipe_search.core import cache_dir
from recipe_search.engine import (
    LlamaModel,
    choice_scores,
    correct_choices,
    resolve_model_arg,
    score_tasks,
    task_accuracy,
    task_model,
)
from recipe_search.formats import TaskItem, read_task_file, write_task_file

KINDS = ("hellaswag", "winogrande", "multiple-choice")
CTX = 512


def sentence_pairs(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(consecutive sentence pairs of a paragraph, every usable sentence), in text order.

    A usable sentence has 5-40 words and no double quote or underscore."""
    pairs: list[tuple[str, str]] = []
    pool: list[str] = []
    for para in text.splitlines():
        para = para.strip()
        if not para or para.startswith("="):
            continue
        sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", para)]
        ok = [s if 5 <= len(s.split()) <= 40 and not set(s) & set('"_') else None for s in sents]
        pool.extend(s for s in ok if s)
        pairs.extend((a, b) for a, b in zip(ok, ok[1:], strict=False) if a and b)
    return pairs, pool


def build_tasks(text: str, counts: dict[str, int], seed: int = 0) -> dict[str, list[TaskItem]]:
    """Each format's tasks: a paragraph's sentence, its true next sentence (or word) and ones from elsewhere."""
    pairs, pool = sentence_pairs(text)
    rng = np.random.default_rng(seed)
    words = sorted({w for s in pool for w in s.split() if w.isalpha() and len(w) >= 4})
    tasks: dict[str, list[TaskItem]] = {k: [] for k in KINDS}
    for i in rng.permutation(len(pairs)):
        todo = [k for k in KINDS if len(tasks[k]) < counts[k]]
        if not todo:
            return tasks
        context, true = pairs[i]
        kind = todo[0]
        if kind == "winogrande":  # a word of the next sentence (not its first) against a word from elsewhere
            split = true.split()
            spots = [j for j, w in enumerate(split) if j > 0 and w.isalpha() and len(w) >= 4]
            if not spots:
                continue
            at = spots[int(rng.integers(len(spots)))]
            other = split[at]
            while other == split[at]:
                other = words[int(rng.integers(len(words)))]
            label = int(rng.integers(2))
            options = (split[at], other) if label == 0 else (other, split[at])
            after = " ".join(split[at + 1 :])
            tasks[kind].append(TaskItem(" ".join([context, *split[:at]]) + " ", options, (label,),
                                        f" {after}" if after else ""))
            continue
        n_choices = 4 if kind == "hellaswag" else 2 + int(rng.integers(3))
        others = [s for s in (pool[int(j)] for j in rng.choice(len(pool), n_choices + 2, replace=False))
                  if s not in (context, true)][: n_choices - 1]
        label = int(rng.integers(n_choices))
        tasks[kind].append(TaskItem(context, (*others[:label], true, *others[label:]), (label,)))
    if any(len(tasks[k]) < counts[k] for k in KINDS):
        raise SystemExit(f"the text has too few sentence pairs for {counts}")
    return tasks


def hellaswag_order(n: int) -> list[int]:
    """The file indices of llama-perplexity's HellaSwag tasks in the order it scores them: std::mt19937(1)
    draws, each through libstdc++'s uniform_int_distribution (Lemire's method for a 32-bit engine), from the
    tasks not yet taken."""
    state = np.random.RandomState(1).get_state(legacy=False)  # init_genrand(1), as std::mt19937 rng(1)
    engine = np.random.MT19937()
    engine.state = {"bit_generator": "MT19937", "state": state["state"]}
    left, order = list(range(n)), []
    while left:
        span = len(left)
        product = int(engine.random_raw()) * span
        if product & 0xFFFFFFFF < span:
            threshold = (2**32 - span) % span
            while product & 0xFFFFFFFF < threshold:
                product = int(engine.random_raw()) * span
        order.append(left.pop(product >> 32))
    return order


def running_correct(counts: list[float], n_done: list[int]) -> list[bool]:
    """Per-task correctness from a running accuracy in percent after each task."""
    hits = [round(c * n / 100) for c, n in zip(counts, n_done, strict=True)]
    return [b > a for a, b in zip([0, *hits], hits, strict=False)]


def theirs(bin_dir: Path, model: Path, kind: str, path: Path, n: int) -> tuple[list[bool], dict[str, object]]:
    """llama-perplexity's per-task results (file order), and its command and final printed line of figures."""
    read = "-f" if kind == "hellaswag" else "-bf"
    cmd = [str(bin_dir / "llama-perplexity"), "-m", str(model), read, str(path), f"--{kind}", f"--{kind}-tasks",
           str(n), "-c", str(CTX), "-b", "2048", "-t", "2", "--no-repack"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={"LD_LIBRARY_PATH": str(bin_dir), "OMP_WAIT_POLICY": "passive"})
    log = run.stdout + run.stderr
    if run.returncode:
        raise SystemExit(f"llama-perplexity failed:\n{log[-3000:]}")
    out: dict[str, object] = {"command": " ".join(["llama-perplexity", "-m", model.name, read, path.name,
                                                    *cmd[5:]])}
    if kind == "hellaswag":
        rows = re.findall(r"^(\d+)\t([\d.]+)%\t\[([\d.]+)%, ([\d.]+)%\]$", log, re.M)
        hits = running_correct([float(r[1]) for r in rows], [int(r[0]) for r in rows])
        correct = [False] * n
        for index, hit in zip(hellaswag_order(n), hits, strict=True):
            correct[index] = hit
        out["printed"] = "\t".join(rows[-1][:1]) + f"\t{rows[-1][1]}%\t[{rows[-1][2]}%, {rows[-1][3]}%]"
    elif kind == "winogrande":
        rows = re.findall(r"^(\d+)\t([\d.]+)\t\s*(-?[\d.]+|nan|-nan)\s+(-?[\d.]+|nan|-nan)\s+(\d)\s+(\d)$", log, re.M)
        correct = [r[4] == r[5] for r in rows]
        out["scores"] = [[float(r[2]), float(r[3])] for r in rows]
        final = re.search(r"Final Winogrande score\(\d+ tasks\): [\d.]+ \+/- [\d.]+", log)
        out["printed"] = final.group(0) if final else f"{rows[-1][0]}\t{rows[-1][1]}"
    else:
        rows = re.findall(r"^(\d+)\t([\d.]+)$", log, re.M)
        correct = running_correct([float(r[1]) for r in rows], [int(r[0]) for r in rows])
        final = re.search(r"Final result: [\d.]+ \+/- [\d.]+", log)
        out["printed"] = final.group(0) if final else ""
    return correct, out


def option_scored(llama: LlamaModel, item: TaskItem) -> bool:
    """Whether llama-perplexity scores a WinoGrande task from its option on (a sequence with at most 3 tokens
    after the tokens both share), the span with its index slip, rather than the sentence after the option."""
    seqs = [llama.tokenize(item.context + choice + item.suffix) for choice in item.choices]
    shared = 0
    while shared < min(map(len, seqs)) - 1 and seqs[0][shared] == seqs[1][shared]:
        shared += 1
    return any(len(seq) - shared <= 3 for seq in seqs)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=smoke.EPILOG)
    p.add_argument("--model", default="demo")
    p.add_argument("--text", default=str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw"))
    p.add_argument("--tasks", type=int, nargs=3, default=[60, 100, 60], metavar=("HS", "WG", "MC"),
                   help="tasks per format (WinoGrande prints its final score from 100 tasks)")
    p.add_argument("--tools", type=Path, help="a bin/ with llama-perplexity (default: build)")
    p.add_argument("--ours-only", action="store_true", help="no llama-perplexity: our scores only")
    p.add_argument("--out", default="experiments/results/crosscheck_tasks.json")
    a = p.parse_args(argv)
    model = resolve_model_arg(a.model)
    bin_dir = None
    if not a.ours_only:
        from bench_trial import build_tools
        bin_dir = a.tools or build_tools(cache_dir() / "llama.cpp-tools", "0.3.36")
    tasks = build_tasks(Path(a.text).read_text(encoding="utf-8"), dict(zip(KINDS, a.tasks, strict=True)))
    results = {}
    with tempfile.TemporaryDirectory() as tmp, task_model(model, ctx=CTX, n_parallel=4) as llama:
        for kind in KINDS:
            path = write_task_file(kind, tasks[kind], Path(tmp) / f"tasks.{kind}")
            file = read_task_file(kind, path)
            scores = choice_scores(llama, file)
            ours = correct_choices(file, scores)
            if not np.array_equal(ours, score_tasks(llama, file)):
                raise SystemExit(f"{kind}: two runs differ")
            row: dict[str, object] = {"tasks": len(ours), "ours": task_accuracy(kind, ours).printed}
            if bin_dir is not None:
                correct, them = theirs(bin_dir, model, kind, path, len(ours))
                agree = int(np.sum(np.array(correct) == ours)) if len(correct) == len(ours) else None
                row |= {"llama-perplexity": them["printed"], "same_accuracy": row["ours"] == them["printed"],
                        "tasks_called_alike": agree, "command": them["command"]}
                if kind == "winogrande":  # it prints both options' figures to 6 decimals
                    row["tasks_scoring_the_option"] = sum(option_scored(llama, item) for item in file.items)
                    theirs_scores = np.array(them.pop("scores"), dtype=np.float64)
                    diff = np.abs(np.array(scores, dtype=np.float64) - theirs_scores)
                    row["max_score_difference"] = float(np.nanmax(diff))
                    row["tasks_printing_the_same_scores"] = sum(
                        [f"{a:.6f}" for a in ours_row] == [f"{b:.6f}" for b in theirs_row]
                        for ours_row, theirs_row in zip(scores, theirs_scores, strict=True))
            results[kind] = row
    print(f"{'format':16}{'tasks':>6}  {'ours':38}{'llama-perplexity':38}{'alike':>6}")
    for kind, row in results.items():
        shown = [str(row.get(k, "-")).replace("\t", " ") for k in ("ours", "llama-perplexity", "tasks_called_alike")]
        print(f"{kind:16}{row['tasks']:>6}  {shown[0]:38}{shown[1]:38}{shown[2]:>6}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"model": str(a.model), "ctx": CTX, "formats": results}, indent=2) + "\n")


def run_smoke() -> None:
    print("smoke: our side only (--ours-only); llama-perplexity is neither built nor run", flush=True)
    with smoke.directory("crosscheck_tasks") as tmp:
        main(["--model", str(smoke.dense_model(tmp)), "--text", str(smoke.text_file(tmp)), "--tasks", "6", "6", "6",
              "--ours-only", "--out", str(tmp / "crosscheck.json")])


if __name__ == "__main__":
    smoke.entry(main, run_smoke)
