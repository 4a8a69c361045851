"""The text-built tasks on a model: a last-word cloze and greedy-continuation agreement, base against quant.

The base model's side of each task (the items, its continuations, its greedy choices) is the same for every
quant: it is computed once per (model, text, settings) and cached as one JSON file under
``<cache>/tasks/``, written atomically with its digest, as `score` caches references. A quant is then
teacher-forced on the same token sequences, and its greedy choices compared with the base's.

Both sides' choices come from `greedy.greedy_choices` on a context made the same way, so the base scored
as its own quant gives identical choices: 100% agreement, no flips.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.inventory import model_fingerprint, read_inventory
from ..core.task_flips import ContinuationAgreement, TaskFlips, continuation_agreement, first_divergence, item_flips
from ..core.text import TextSource, text_sha256
from ..core.text_tasks import ClozeSettings, ContinuationSettings, cloze_candidates, evenly_spaced, occurs_in, prompt_starts
from ..errors import RecipeSearchError
from ..formats.files import atomic_write_text
from ..version import __version__
from .digest import json_digest, warn
from .greedy import generate_greedy, greedy_choices
from .llama import LlamaModel
from .score import Stopwatch

TASK_FORMAT = 1
#: parallel sequences per context: teacher-forced rounds, and greedy generation (one token per sequence a step)
N_SEQ_CHOICES = 16
N_SEQ_GENERATE = 32
#: a cloze context window holds this many times the passage's tokens (by the text's characters per token),
#: so that most windows still have the passage's length once tokenized
WINDOW_SLACK = 1.3
#: candidates tokenized at most, per item asked for (evenly spread over the text)
CANDIDATES_PER_ITEM = 4


@dataclass(frozen=True)
class ClozeBase:
    """The cloze items and the base model's answers. Item i is ``contexts[i]`` (BOS and the passage's tokens)
    followed by ``targets[i]``, the word ``words[i]`` at character ``offsets[i]`` of the text."""

    path: Path
    meta: dict
    contexts: list[np.ndarray]
    targets: list[np.ndarray]
    words: list[str]
    offsets: list[int]
    base_correct: np.ndarray

    def sequences(self) -> tuple[list[np.ndarray], list[int]]:
        return _cloze_sequences(self.contexts, self.targets)


def _cloze_sequences(contexts: list[np.ndarray], targets: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """What the model reads of each item (the context and all target tokens but the last), and its output count."""
    return [np.concatenate([c, t[:-1]]) for c, t in zip(contexts, targets, strict=True)], [len(t) for t in targets]


@dataclass(frozen=True)
class ContinuationBase:
    """The prompts [n, prompt (+BOS)], the base's greedy continuations [n, K], and its teacher-forced greedy
    choices on them [n, K] (what a quant's are compared with; equal to the continuations but for near-ties)."""

    path: Path
    meta: dict
    prompts: np.ndarray
    continuations: np.ndarray
    base_choice: np.ndarray

    def sequences(self) -> list[np.ndarray]:
        return _continuation_sequences(self.prompts, self.continuations)


def _continuation_sequences(prompts: np.ndarray, continuations: np.ndarray) -> list[np.ndarray]:
    """What the model reads of each prompt: the prompt and all continuation tokens but the last."""
    return list(np.concatenate([prompts, continuations[:, :-1]], axis=1))


def _open(path: Path, n_ctx: int, n_seq: int, threads: int, gpu_layers: int) -> LlamaModel:
    return LlamaModel(path, n_threads=threads, n_ctx=n_ctx, n_seq=n_seq, n_gpu_layers=gpu_layers)


def _choices(path: Path, sequences: list[np.ndarray], n_out: list[int], threads: int, gpu_layers: int,
             vocab: str | None = None) -> list[np.ndarray]:
    """The model's teacher-forced greedy choices, on a context made the same way for base and quant."""
    with _open(path, max(len(s) for s in sequences), N_SEQ_CHOICES, threads, gpu_layers) as lm:
        if vocab is not None and lm.vocab_fingerprint != vocab:
            raise RecipeSearchError("tokenizer differs from the base model's", path)
        return greedy_choices(lm, sequences, n_out)


def _key(task: str, fingerprint: str, text: bytes, settings: dict, gpu_layers: int) -> str:
    fields = {"task": task, "model": fingerprint, "text": text_sha256(text), "settings": settings,
              "format": TASK_FORMAT, "tool": __version__}
    if gpu_layers:
        fields["gpu_layers"] = gpu_layers
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def _cached(task: str, model: Path, text: TextSource, settings: dict, cache_dir: Path, gpu_layers: int,
            build: Callable[[bytes], dict]) -> tuple[Path, dict, bool]:
    """The cached base side of a task, built and written when missing or damaged: (path, data, was_cached)."""
    fingerprint = model_fingerprint(read_inventory(model))
    data = text.read()
    path = cache_dir / "tasks" / f"{task}-{_key(task, fingerprint, data, settings, gpu_layers)}.json"
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if isinstance(cached, dict) and cached.get("digest") == json_digest(cached):
                return path, cached, True
            problem = "does not match its digest"
        except (OSError, ValueError) as err:
            problem = f"unreadable ({err})"
        warn(f"{path}: damaged {task} cache ({problem}); computing it again")
    clock = Stopwatch()
    meta = {"task": task, "format": TASK_FORMAT, "tool": __version__, "model_fingerprint": fingerprint,
            "model_name": model.name, "text": text.label, "text_sha256": text_sha256(data), "settings": settings}
    built = {**meta, **build(data)}
    clock.lap("build")
    built["seconds"] = clock.seconds
    built["digest"] = json_digest(built)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(built))
    return path, built, False


def _bos(lm: LlamaModel) -> list[int]:
    return [lm.bos_id] if lm.add_bos else []


def _cloze_items(lm: LlamaModel, data: bytes, settings: ClozeSettings,
                 source: object) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[int]]:
    """Contexts (BOS + passage_tokens tokens), target tokens, words and offsets of the items the rule keeps."""
    text = data.decode("utf-8", errors="replace")
    n_tokens = len(lm.tokenize(data, add_special=False))
    size = settings.passage_tokens
    window = math.ceil(WINDOW_SLACK * size * len(text) / max(n_tokens, 1))
    candidates = cloze_candidates(text, window)
    kept: tuple[list, list, list, list] = ([], [], [], [])
    for i in evenly_spaced(len(candidates), CANDIDATES_PER_ITEM * settings.items):
        c = candidates[i]
        context = lm.tokenize(c.context, add_special=False)
        whole = lm.tokenize(f"{c.context} {c.word}", add_special=False)
        # the word's tokens are what the context's tokens are followed by; a boundary that merges is dropped
        if len(context) < size or len(whole) <= len(context) or not np.array_equal(whole[:len(context)], context):
            continue
        passage = context[-size:]
        if not occurs_in(c.word, lm.detokenize(passage).decode("utf-8", errors="replace")):
            continue
        for column, value in zip(kept, (np.array([*_bos(lm), *passage], np.int32), whole[len(context):],
                                        c.word, c.offset), strict=True):
            column.append(value)
    if len(kept[0]) < 2:
        raise RecipeSearchError(f"the text yields {len(kept[0])} cloze items of {size} tokens; at least 2 are needed "
                                "(a longer text, or shorter passages)", source)
    keep = evenly_spaced(len(kept[0]), settings.items)
    return tuple([column[i] for i in keep] for column in kept)  # type: ignore[return-value]


def cloze_base(model: Path, text: TextSource, settings: ClozeSettings, cache_dir: Path, threads: int = 2,
               gpu_layers: int = 0) -> tuple[ClozeBase, bool]:
    """The cloze items of ``text`` and the base model's answers, from the cache or computed: (base, was_cached)."""
    def build(data: bytes) -> dict:
        with _open(model, 1, 1, threads, gpu_layers) as lm:
            vocab = lm.vocab_fingerprint
            contexts, targets, words, offsets = _cloze_items(lm, data, settings, text.path or text.label)
        choice = _choices(model, *_cloze_sequences(contexts, targets), threads, gpu_layers)
        return {"vocab_fingerprint": vocab, "contexts": [c.tolist() for c in contexts], "targets": [t.tolist() for t in targets],
                "words": words, "offsets": offsets, "base_choice": [c.tolist() for c in choice]}

    path, data, was_cached = _cached("cloze", Path(model), text, settings.key_fields(), cache_dir, gpu_layers, build)
    targets = [np.array(t, np.int32) for t in data["targets"]]
    correct = np.array([t == c for t, c in zip(data["targets"], data["base_choice"], strict=True)], dtype=bool)
    meta = {k: v for k, v in data.items() if k not in ("contexts", "targets", "words", "offsets", "base_choice")}
    return ClozeBase(path, meta, [np.array(c, np.int32) for c in data["contexts"]], targets, data["words"],
                     data["offsets"], correct), was_cached


def cloze_answers(quant: Path, base: ClozeBase, threads: int = 2, gpu_layers: int = 0) -> np.ndarray:
    """The quant's cloze answers, item by item: right when every target token is the greedy choice."""
    seqs, n_out = base.sequences()
    choice = _choices(Path(quant), seqs, n_out, threads, gpu_layers, base.meta["vocab_fingerprint"])
    return np.array([np.array_equal(c, t) for c, t in zip(choice, base.targets, strict=True)], dtype=bool)


def score_cloze(quant: Path, base: ClozeBase, threads: int = 2, gpu_layers: int = 0) -> TaskFlips:
    """The quant's cloze answers against the base's."""
    return item_flips("cloze", base.base_correct, cloze_answers(quant, base, threads, gpu_layers))


def continuation_base(model: Path, text: TextSource, settings: ContinuationSettings, cache_dir: Path,
                      threads: int = 2, gpu_layers: int = 0) -> tuple[ContinuationBase, bool]:
    """Prompts cut from ``text``, the base's greedy continuations and its greedy choices on them, from the
    cache or computed: (base, was_cached)."""
    def build(data: bytes) -> dict:
        k = settings.new_tokens
        with _open(model, settings.prompt_tokens + 1 + k, N_SEQ_GENERATE, threads, gpu_layers) as lm:
            vocab = lm.vocab_fingerprint
            tokens = lm.tokenize(data, add_special=False)
            starts = prompt_starts(len(tokens), settings, text.path or text.label)
            prompts = tokens[starts[:, None] + np.arange(settings.prompt_tokens)]
            if lm.add_bos:
                prompts = np.concatenate([np.full((len(prompts), 1), lm.bos_id, np.int32), prompts], axis=1)
            continuations = generate_greedy(lm, prompts, k)
        choice = np.stack(_choices(model, _continuation_sequences(prompts, continuations), [k] * len(prompts),
                                   threads, gpu_layers))
        return {"vocab_fingerprint": vocab, "prompts": prompts.tolist(), "continuations": continuations.tolist(),
                "base_choice": choice.tolist(),
                "prompts_off_generation": int((choice != continuations).any(axis=1).sum())}

    path, data, was_cached = _cached("continuation", Path(model), text, settings.key_fields(), cache_dir, gpu_layers,
                                     build)
    meta = {k: v for k, v in data.items() if k not in ("prompts", "continuations", "base_choice")}
    return ContinuationBase(path, meta, *(np.array(data[k], np.int32) for k in ("prompts", "continuations",
                                                                                "base_choice"))), was_cached


def continuation_divergence(quant: Path, base: ContinuationBase, threads: int = 2, gpu_layers: int = 0) -> np.ndarray:
    """Per prompt, the quant's tokens to the first divergence of its greedy choices from the base's (K: none)."""
    k = base.base_choice.shape[1]
    choice = np.stack(_choices(Path(quant), base.sequences(), [k] * len(base.prompts), threads, gpu_layers,
                               base.meta["vocab_fingerprint"]))
    return first_divergence(base.base_choice, choice)


def score_continuation(quant: Path, base: ContinuationBase, threads: int = 2,
                       gpu_layers: int = 0) -> ContinuationAgreement:
    """The quant's greedy choices on the base's continuations against the base's."""
    return continuation_agreement(continuation_divergence(quant, base, threads, gpu_layers), base.base_choice.shape[1])
