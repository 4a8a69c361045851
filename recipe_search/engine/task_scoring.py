"""Task files scored as llama-perplexity scores them (`--hellaswag`, `--winogrande`, `--multiple-choice`).

Mirrors `tools/perplexity/perplexity.cpp`: each choice's text tokenized whole with BOS, the tokens every
choice of a task shares decoded once for all its sequences, tasks packed into one `llama_decode` batch while
their tokens fit the context and their sequences the parallel count (`-np`, at least 4), the log-probabilities
computed in the same float precision, and the same rule per format:

- HellaSwag and multiple-choice: each ending's mean log-probability over its own tokens (the first scored
  from the last shared token); the highest wins, the first of equals.
- WinoGrande: the mean log-probability of the sentence after the option, without its last token (with the
  option itself when either sequence has at most 3 tokens after the shared ones, as llama-perplexity does,
  its index slip included); option 1 wins only when strictly higher.

Where llama-perplexity would read past a sequence (one choice's tokens a prefix of every other's), the shared
prefix stops a token short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import RecipeSearchError
from ..formats.task_files import TaskFile, TaskItem
from .llama import Batch, LlamaModel

_TRAILING_MIN = 3  # winogrande_score's k_min_trailing_ctx
_TASKS_PER_BATCH = {"hellaswag": 32, "winogrande": 128, "multiple-choice": 32}  # max_tasks_per_batch
_SEQS_PER_TASK = {"hellaswag": 4, "winogrande": 2, "multiple-choice": 4}  # max_seq = that product, capped by -np


def task_model(path: str | Path, ctx: int = 512, n_parallel: int = 4, n_threads: int = 2,
               n_gpu_layers: int = 0) -> LlamaModel:
    """A model with llama-perplexity's task context for `-c ctx -np n_parallel`: max(4, n_parallel) sequences
    in one unified KV cache of that many times `ctx` cells."""
    return LlamaModel(path, n_threads=n_threads, n_ctx=ctx, n_seq=max(4, n_parallel), kv_unified=True,
                      n_gpu_layers=n_gpu_layers)


@dataclass
class _Task:
    seqs: list[np.ndarray]
    prefix: int
    bases: tuple[int, int] = (0, 0)  # WinoGrande: the tokens of the text up to and with each option

    @property
    def required(self) -> int:
        return self.prefix + sum(len(seq) - self.prefix for seq in self.seqs)


def _prepare(model: LlamaModel, kind: str, item: TaskItem, number: int, path: Path) -> _Task:
    if kind == "winogrande":
        texts = [item.context + choice + item.suffix for choice in item.choices]
    else:
        texts = [f"{item.context} {choice}" for choice in item.choices]
    seqs = [model.tokenize(text) for text in texts]
    shortest = min(len(seq) for seq in seqs)
    prefix = 0
    while prefix < shortest - 1 and all(seq[prefix] == seqs[0][prefix] for seq in seqs):
        prefix += 1
    if prefix == 0:
        raise RecipeSearchError(f"task {number}: its choices share no first token (the model adds no BOS), "
                                "which llama-perplexity cannot score", path)
    task = _Task(seqs, prefix)
    if kind == "winogrande":
        task.bases = (len(model.tokenize(item.context + item.choices[0])),
                      len(model.tokenize(item.context + item.choices[1])))
        if min(task.bases) < prefix and all(len(seq) - prefix > _TRAILING_MIN for seq in seqs):
            raise RecipeSearchError(f"task {number}: the sentence up to an option tokenizes shorter than the "
                                    "tokens both options share; llama-perplexity would read outside its logits", path)
    return task


def _expf(x: np.ndarray) -> np.ndarray:
    """float32 exp, correctly rounded (glibc's expf) by way of float64."""
    return np.exp(x.astype(np.float64)).astype(np.float32)


def _row_log_probs(row: np.ndarray, tokens: list[int], first: list[bool]) -> list[np.float32]:
    """Log-probabilities of tokens under one row of logits, each as llama-perplexity computes it: in
    compute_logprobs (float32: the logit less the max less the log of the in-order float sum of expf), or for
    an ending's first token in softmax (its float expf over the sum of all in double)."""
    top = row.max()
    exps = _expf(row - top)
    out = []
    log_total, total64 = np.float32(0), np.float64(0)
    if not all(first):
        log_total = np.float32(np.log(np.float64(np.add.accumulate(exps)[-1])))
    if any(first):
        total64 = np.add.accumulate(exps.astype(np.float64))[-1]
    for token, soft in zip(tokens, first, strict=True):
        if soft:
            out.append(np.float32(np.log(np.float64(np.float32(np.float64(exps[token]) / total64)))))
        else:
            out.append(np.float32(row[token] - top) - log_total)
    return out


@dataclass
class _Request:
    row: int  # output row in the batch
    token: int
    first: bool  # scored with softmax (the first token of a HellaSwag / multiple-choice ending)


def _pack(model: LlamaModel, file: TaskFile, tasks: list[_Task]) -> Iterator[range]:
    """The ranges of tasks llama-perplexity decodes together."""
    max_seq = min(_TASKS_PER_BATCH[file.kind] * _SEQS_PER_TASK[file.kind], model.n_seq)
    i0 = 0
    while i0 < len(tasks):
        i1, n_cur, s0 = i0, 0, 0
        while i1 < len(tasks) and n_cur + tasks[i1].required <= model.n_cells:
            if s0 + len(tasks[i1].seqs) > max_seq:
                if s0 == 0:
                    raise RecipeSearchError(f"task {i0 + 1} has {len(tasks[i0].seqs)} choices, more than the "
                                            f"{max_seq} parallel sequences (llama-perplexity's -np)", file.path)
                break
            n_cur += tasks[i1].required
            s0 += len(tasks[i1].seqs)
            i1 += 1
        if i1 == i0:
            raise RecipeSearchError(f"task {i0 + 1} needs {tasks[i0].required} tokens, more than the context's "
                                    f"{model.n_cells}", file.path)
        yield range(i0, i1)
        i0 = i1


def _requests(kind: str, task: _Task, first_row: int) -> list[list[_Request]]:
    """Each sequence's scored tokens as rows of the batch's outputs, in llama-perplexity's order."""
    seqs, prefix = task.seqs, task.prefix
    if kind != "winogrande":
        out, row = [], first_row + 1
        for seq in seqs:
            reqs = [_Request(first_row, int(seq[prefix]), True)]
            for j in range(prefix, len(seq) - 1):
                reqs.append(_Request(row, int(seq[j + 1]), False))
                row += 1
            out.append(reqs)
        return out
    skip = all(len(seq) - prefix > _TRAILING_MIN for seq in seqs)
    out = []
    for s, seq in enumerate(seqs):
        base = task.bases[s] if skip else prefix
        last = 1 if len(seq) - base > 1 else 0
        # winogrande_score's offsets, the second sequence's first one off by a row when the option is scored
        li = base - prefix + (len(seqs[0]) - prefix if s else 0)
        out.append([_Request(first_row + li + k, int(seq[j + 1]), False)
                    for k, j in enumerate(range(base - 1, len(seq) - 1 - last))])
    return out


def _decode(model: LlamaModel, kind: str, tasks: list[_Task], reqs: list[_Request]) -> dict[int, np.float32]:
    """Decode the tasks in one batch as llama-perplexity does; the log-probability of each request, by index."""
    tokens: list[int] = []
    pos: list[int] = []
    seq_ids: list[int] = []
    n_ids: list[int] = []
    output: list[bool] = []
    s0 = 0
    for task in tasks:
        k = len(task.seqs)
        for i in range(task.prefix):
            tokens.append(int(task.seqs[0][i]))
            pos.append(i)
            seq_ids.extend(range(s0, s0 + k))
            n_ids.append(k)
            output.append(i == task.prefix - 1)
        for s, seq in enumerate(task.seqs):
            for i in range(task.prefix, len(seq)):
                tokens.append(int(seq[i]))
                pos.append(i)
                seq_ids.append(s0 + s)
                n_ids.append(1)
                output.append(kind == "winogrande" or i < len(seq) - 1)
        s0 += k
    by_row: dict[int, list[int]] = {}
    for index, req in enumerate(reqs):
        by_row.setdefault(req.row, []).append(index)
    values: dict[int, np.float32] = {}
    model.clear()
    id_start = np.concatenate(([0], np.cumsum(n_ids)))
    row0 = 0
    for start in range(0, len(tokens), model.n_batch):  # decode_helper: n_batch tokens per call
        stop = min(start + model.n_batch, len(tokens))
        batch = Batch(np.array(pos[start:stop]), np.array(seq_ids[id_start[start] : id_start[stop]]),
                      np.array(output[start:stop]), np.array(n_ids[start:stop]))
        batch.token[:] = tokens[start:stop]
        model.decode(batch, stop - start)
        n_out = sum(output[start:stop])
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(model._live()), shape=(n_out, model.n_vocab))
        for row in range(row0, row0 + n_out):
            indices = by_row.get(row, [])
            if indices:
                got = _row_log_probs(logits[row - row0], [reqs[i].token for i in indices],
                                     [reqs[i].first for i in indices])
                values.update(zip(indices, got, strict=True))
        row0 += n_out
    return values


def _choice_scores(kind: str, per_seq: list[list[np.float32]]) -> np.ndarray:
    """Each choice's mean log-probability as llama-perplexity adds them: in order, in double for HellaSwag and
    in float for the others (an empty WinoGrande span gives NaN, as its 0/0 does)."""
    dtype = np.float64 if kind == "hellaswag" else np.float32
    out = []
    for vals in per_seq:
        total = dtype(0)
        for v in vals:
            total = dtype(total + dtype(v))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(dtype(total / dtype(len(vals))))
    return np.array(out, dtype=dtype)


def choice_scores(model: LlamaModel, file: TaskFile, limit: int | None = None) -> list[np.ndarray]:
    """Each task's per-choice figures (mean log-probabilities) as llama-perplexity computes them, in file
    order; the first `limit` tasks, or all. ``model`` needs a unified KV cache (`task_model`)."""
    if not model.kv_unified:
        raise ValueError("task scoring needs a model with a unified KV cache (task_model)")
    items = file.items[:limit] if limit is not None else file.items
    tasks = [_prepare(model, file.kind, item, number, file.path) for number, item in enumerate(items, 1)]
    scores: list[np.ndarray] = []
    for group in _pack(model, file, tasks):
        reqs: list[_Request] = []
        spans: list[list[range]] = []
        row = 0
        for i in group:
            task = tasks[i]
            task_spans = []
            for seq_reqs in _requests(file.kind, task, row):
                task_spans.append(range(len(reqs), len(reqs) + len(seq_reqs)))
                reqs.extend(seq_reqs)
            spans.append(task_spans)
            n_logits = 1 + sum(len(seq) - task.prefix - (file.kind != "winogrande") for seq in task.seqs)
            row += n_logits
        values = _decode(model, file.kind, [tasks[i] for i in group], reqs)
        for task_spans in spans:
            per_seq = [[values[r] for r in span] for span in task_spans]
            scores.append(_choice_scores(file.kind, per_seq))
    return scores


def _chosen(kind: str, scores: np.ndarray) -> int:
    if kind == "winogrande":
        return 0 if scores[0] > scores[1] else 1
    best = 0
    for s in range(1, len(scores)):
        if scores[s] > scores[best]:
            best = s
    return best


def correct_choices(file: TaskFile, scores: list[np.ndarray]) -> np.ndarray:
    """Whether llama-perplexity's rule picks a right choice from each task's `choice_scores` (bool, in order)."""
    return np.array([_chosen(file.kind, s) in item.correct for s, item in zip(scores, file.items, strict=False)],
                    dtype=bool)


def score_tasks(model: LlamaModel, file: TaskFile, limit: int | None = None) -> np.ndarray:
    """Whether llama-perplexity's rule picks a right choice, per task in file order (bool); deterministic.

    Scores every task unless `limit` takes the first ones (`SUBSET_NOTE`: why a subset does not compare)."""
    return correct_choices(file, choice_scores(model, file, limit))


@dataclass(frozen=True)
class TaskAccuracy:
    """llama-perplexity's accuracy of a task run, in percent, with the interval it prints.

    HellaSwag: the Wilson 95% score interval (`low`, `high`). WinoGrande (100 tasks or more) and
    multiple-choice: one standard error either side, printed as ``+/-``; WinoGrande under 100 tasks prints
    no interval (None). `printed` is its final line of figures, as it writes it.
    """

    kind: str
    n_tasks: int
    n_correct: int
    percent: float
    low: float | None
    high: float | None
    printed: str


def task_accuracy(kind: str, correct: np.ndarray) -> TaskAccuracy:
    """The accuracy and interval llama-perplexity prints for these per-task results (all tasks, in any order)."""
    n, k = len(correct), int(np.count_nonzero(correct))
    if n == 0:
        raise ValueError("no tasks")
    if kind == "hellaswag":
        freq, za = k / n, 1.95996398454
        z = za * za / n
        cnf = z * np.sqrt(n * (4.0 * freq * (1 - freq) + z)) / (za + za)
        low, high = (freq + z * 0.5 - cnf) / (1.0 + z), (freq + z * 0.5 + cnf) / (1.0 + z)
        return TaskAccuracy(kind, n, k, 100 * freq, float(100 * low), float(100 * high),
                            f"{n}\t{freq * 100.0:3.8f}%\t[{low * 100.0:3.4f}%, {high * 100.0:3.4f}%]")
    p = np.float32(np.float32(k) / np.float32(n))
    if kind == "winogrande" and n < 100:
        return TaskAccuracy(kind, n, k, 100.0 * k / n, None, None, f"{n}\t{100.0 * k / n:.4f}")
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.float32(np.sqrt(np.float32(p * (np.float32(1) - p) / np.float32(n - 1))))
    percent, err = float(np.float32(100) * p), float(np.float32(100) * sigma)
    line = (f"Final Winogrande score({n} tasks): {percent:.4f} +/- {err:.4f}" if kind == "winogrande"
            else f"Final result: {percent:.4f} +/- {err:.4f}")
    return TaskAccuracy(kind, n, k, percent, percent - err, percent + err, line)
