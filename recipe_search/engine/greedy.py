"""Batched greedy decoding: a model's greedy choices on given sequences (teacher-forced) and greedy generation.

Sequences are decoded as parallel sequences of one context, `model.n_seq` at a time, the cache cleared
between rounds, as `llama.evaluate` does with chunks. The rounds depend only on the sequences' order and
lengths, so the same inputs give the same figures run after run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .llama import Batch, LlamaModel

#: the most logits one round requests (at a 262k vocabulary, 512 rows are 0.5 GB)
MAX_OUTPUTS = 512


def _rounds(n_out: Sequence[int], n_seq: int) -> list[range]:
    """Consecutive groups of at most n_seq sequences and MAX_OUTPUTS outputs (one sequence at least)."""
    out: list[range] = []
    start = outputs = 0
    for i, n in enumerate(n_out):
        if i > start and (i - start == n_seq or outputs + n > MAX_OUTPUTS):
            out.append(range(start, i))
            start, outputs = i, 0
        outputs += n
    if len(n_out) > start:
        out.append(range(start, len(n_out)))
    return out


def greedy_choices(model: LlamaModel, sequences: Sequence[np.ndarray], n_out: Sequence[int]) -> list[np.ndarray]:
    """For each sequence, the model's argmax token at each of its last ``n_out[i]`` positions (position j's
    choice predicts token j + 1): what greedy decoding would choose there, the sequence given."""
    if len(sequences) != len(n_out):
        raise ValueError("one output count per sequence")
    for seq, n in zip(sequences, n_out, strict=True):
        if not 0 < n <= len(seq) <= model.n_ctx:
            raise ValueError(f"a sequence of {len(seq)} tokens with {n} outputs does not fit a context of {model.n_ctx}")
    choices: list[np.ndarray] = []
    for group in _rounds(n_out, model.n_seq):
        lengths = [len(sequences[i]) for i in group]
        pos = np.concatenate([np.arange(n) for n in lengths])
        last = np.repeat([n - n_out[i] for n, i in zip(lengths, group, strict=True)], lengths)
        batch = Batch(pos, np.repeat(np.arange(len(group)), lengths), pos >= last)
        batch.token[:] = np.concatenate([sequences[i] for i in group])
        model.clear()
        model.decode(batch, len(pos))
        best = model.output_logits(int((pos >= last).sum())).argmax(axis=1).astype(np.int32)
        choices.extend(np.split(best, np.cumsum([n_out[i] for i in group])[:-1]))
    return choices


def generate_greedy(model: LlamaModel, prompts: np.ndarray, n_new: int) -> np.ndarray:
    """[prompts, n_new] tokens each prompt's greedy decoding produces (an end-of-text token does not stop it)."""
    prompts = np.ascontiguousarray(prompts, dtype=np.int32)
    n, p = prompts.shape
    if n_new < 1 or p + n_new - 1 > model.n_ctx:
        raise ValueError(f"prompts of {p} tokens and {n_new} new ones do not fit a context of {model.n_ctx}")
    out = np.empty((n, n_new), dtype=np.int32)
    for start in range(0, n, model.n_seq):
        rows = prompts[start:start + model.n_seq]
        k = len(rows)
        batch = Batch(np.tile(np.arange(p), k), np.repeat(np.arange(k), p), np.tile(np.arange(p) == p - 1, k))
        batch.token[:] = rows.ravel()
        model.clear()
        model.decode(batch, k * p)
        step = Batch(np.full(k, p), np.arange(k), np.ones(k))
        for j in range(n_new):
            if j:
                step.token[:], step.pos[:] = out[start:start + k, j - 1], p + j - 1
                model.decode(step, k)
            out[start:start + k, j] = model.output_logits(k).argmax(axis=1)
    return out
