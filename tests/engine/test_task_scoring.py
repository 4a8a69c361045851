"""Task files scored as llama-perplexity scores them: deterministic, checked against a direct computation."""

from __future__ import annotations

import math
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from recipe_search.engine.llama import Batch, LlamaModel
from recipe_search.engine.task_scoring import choice_scores, score_tasks, task_accuracy, task_model
from recipe_search.errors import RecipeSearchError
from recipe_search.formats.task_files import TaskFile, TaskItem, read_task_file, write_task_file

pytestmark = pytest.mark.llama

CTX = 64  # 4 sequences: 256 cells
TOLERANCE = 1e-3  # the logits of tokens decoded in a batch of several sequences vs alone differ by ~1e-4
NAMES = ("Tom", "Ann", "the farmer", "my aunt", "the old dog", "Sam")
ENDINGS = ("sat down by the river.", "ate the red apple slowly.", "went home.", "sang a song about the sea.",
           "painted the door blue, then slept.", "read the paper.")


def _hellaswag(n: int) -> list[TaskItem]:
    return [TaskItem(f"Story {i}: In the morning {NAMES[i % 6]} woke up and",
                     tuple(ENDINGS[(i + k) % 6] for k in range(4)), (i % 4,)) for i in range(n)]


def _winogrande(n: int) -> list[TaskItem]:
    # a long suffix scores the sentence after the option; a short one (up to 3 tokens) the option too
    suffixes = (" was hungry after the long walk home.", " ran.")
    return [TaskItem(f"{NAMES[i % 6]} gave bread to {NAMES[(i + 1) % 6]} because ",
                     (NAMES[i % 6], NAMES[(i + 1) % 6]), (i % 2,), suffixes[i % 2]) for i in range(n)]


def _multiple_choice(n: int) -> list[TaskItem]:
    return [TaskItem(f"Question {i}: what did {NAMES[i % 6]} do?", tuple(ENDINGS[k] for k in range(2 + i % 3)),
                     (i % 2,)) for i in range(n)]


BUILDERS = {"hellaswag": _hellaswag, "winogrande": _winogrande, "multiple-choice": _multiple_choice}


def _file(tmp_path: Path, kind: str, items: list[TaskItem]) -> TaskFile:
    return read_task_file(kind, write_task_file(kind, items, tmp_path / f"tasks.{kind}"))


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("fixture", ["dense_model", "qwen35_model"])
def test_scores_every_task_deterministically(tmp_path: Path, request: pytest.FixtureRequest, kind: str,
                                             fixture: str) -> None:
    model_path = request.getfixturevalue(fixture)
    file = _file(tmp_path, kind, BUILDERS[kind](9))
    with task_model(model_path, ctx=CTX, n_threads=1) as model:
        first = score_tasks(model, file)
        scores = choice_scores(model, file)
        assert first.dtype == bool and first.shape == (9,)
        assert np.array_equal(first, score_tasks(model, file))
        assert [len(s) for s in scores] == [len(item.choices) for item in file.items]
        assert all(np.isfinite(s).all() and (s < 0).all() for s in scores)
        # the first tasks pack into the same batches alone as among the rest
        assert np.array_equal(score_tasks(model, file, limit=4), first[:4])
    with task_model(model_path, ctx=CTX, n_threads=1) as fresh:
        assert all(np.array_equal(a, b) for a, b in zip(scores, choice_scores(fresh, file), strict=True))


def _direct_log_probs(model: LlamaModel, tokens: np.ndarray) -> np.ndarray:
    """log p(tokens[j+1] | tokens[..j]) for every j, from all logits of one sequence decoded alone, in float64."""
    n = len(tokens)
    batch = Batch(np.arange(n), np.zeros(n), np.ones(n))
    batch.token[:] = tokens
    model.clear()
    model.decode(batch, n)
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(model._live()), shape=(n, model.n_vocab))
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return log_softmax[np.arange(n - 1), tokens[1:]]


def test_hellaswag_and_multiple_choice_scores_are_mean_log_probs_of_each_ending(tmp_path: Path,
                                                                                 dense_model: Path) -> None:
    for kind in ("hellaswag", "multiple-choice"):
        file = _file(tmp_path, kind, BUILDERS[kind](3))
        with task_model(dense_model, ctx=CTX, n_threads=1) as model:
            scores = choice_scores(model, file)
        with LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as plain:
            for item, got in zip(file.items, scores, strict=True):
                seqs = [plain.tokenize(f"{item.context} {choice}") for choice in item.choices]
                shared = 0
                while all(s[shared] == seqs[0][shared] for s in seqs):
                    shared += 1
                # the ending's tokens: from the first that differs, each scored from the tokens before it
                log_probs = [_direct_log_probs(plain, s) for s in seqs]
                assert got == pytest.approx([lp[shared - 1 :].mean() for lp in log_probs], abs=TOLERANCE)
                assert got != pytest.approx([lp[shared:].mean() for lp in log_probs], abs=TOLERANCE)  # a token off


def test_winogrande_scores_the_sentence_after_the_option(tmp_path: Path, dense_model: Path) -> None:
    file = _file(tmp_path, "winogrande", _winogrande(1))  # the long suffix: the option itself is not scored
    (item,) = file.items
    with task_model(dense_model, ctx=CTX, n_threads=1) as model:
        (got,) = choice_scores(model, file)
    with LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as plain:
        want, off = [], []
        for choice in item.choices:
            seq = plain.tokenize(item.context + choice + item.suffix)
            base = len(plain.tokenize(item.context + choice))
            assert len(seq) - base > 3
            # tokens base .. len-2 (the last, the full stop, left out), each from the tokens before it
            log_probs = _direct_log_probs(plain, seq)
            want.append(log_probs[base - 1 : len(seq) - 2].mean())
            off.append(log_probs[base - 1 :].mean())
    assert got == pytest.approx(want, abs=TOLERANCE)
    assert got != pytest.approx(off, abs=TOLERANCE)  # with the full stop


def test_a_task_longer_than_the_context_names_the_file_and_the_task(tmp_path: Path, dense_model: Path) -> None:
    items = _hellaswag(3)
    items[1] = TaskItem(" ".join(["word"] * 300), items[1].choices, (0,))
    file = _file(tmp_path, "hellaswag", items)
    with task_model(dense_model, ctx=CTX, n_threads=1) as model, \
            pytest.raises(RecipeSearchError, match=r"tasks.hellaswag: task 2 needs \d+ tokens, more than the "
                                                   r"context's 256$"):
        score_tasks(model, file)


def test_more_choices_than_parallel_sequences(tmp_path: Path, dense_model: Path) -> None:
    file = _file(tmp_path, "multiple-choice", [TaskItem("Q?", ENDINGS[:5], (0,))])
    assert file.max_choices == 5
    with task_model(dense_model, ctx=CTX, n_threads=1) as model, \
            pytest.raises(RecipeSearchError, match="task 1 has 5 choices, more than the 4 parallel sequences"):
        score_tasks(model, file)
    with task_model(dense_model, ctx=CTX, n_parallel=5, n_threads=1) as model:
        assert score_tasks(model, file).shape == (1,)
    with LlamaModel(dense_model, n_threads=1, n_ctx=CTX) as plain, pytest.raises(ValueError, match="unified"):
        score_tasks(plain, file)


def test_accuracy_and_interval_as_llama_perplexity_prints_them() -> None:
    correct = np.array([True] * 3 + [False] * 7)
    hs = task_accuracy("hellaswag", correct)
    z, n, p = 1.95996398454, 10, 0.3  # Wilson's score interval, from its textbook form
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert hs.percent == 30 and hs.low == pytest.approx(100 * (centre - half) / (1 + z * z / n))
    assert hs.high == pytest.approx(100 * (centre + half) / (1 + z * z / n))
    assert hs.printed == f"10\t30.00000000%\t[{hs.low:.4f}%, {hs.high:.4f}%]"
    wg = task_accuracy("winogrande", correct)
    assert (wg.low, wg.high, wg.printed) == (None, None, "10\t30.0000")
    many = np.tile(correct, 12)  # 120 tasks: the final score with one standard error
    sigma = 100 * math.sqrt(0.3 * 0.7 / 119)
    assert task_accuracy("winogrande", many).printed == f"Final Winogrande score(120 tasks): 30.0000 +/- {sigma:.4f}"
    mc = task_accuracy("multiple-choice", correct)
    assert mc.printed == f"Final result: 30.0000 +/- {100 * math.sqrt(0.21 / 9):.4f}"
    assert mc.low == pytest.approx(30 - 100 * math.sqrt(0.21 / 9), abs=1e-4)
