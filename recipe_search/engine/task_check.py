"""Task checks of quants: each task's base side once, then every quant scored against it, item by item.

Tasks come as ``KIND:SOURCE`` specs: a task file llama-perplexity reads (``hellaswag:FILE``,
``winogrande:FILE``, ``multiple-choice:FILE``, scored as `task_scoring` mirrors it) or a task built from a
text (``cloze[:TEXT]``, ``continuation[:TEXT]``, see `text_tasks`; TEXT is FILE or FILE[a:b], by default
the held-out text the command was given). The base side of a text task is cached on disk; a task file's
is computed once per checker. Every figure compares the quant with the base on the same items (flips both
ways, paired intervals over items), and two quants' answers can be compared the same way (`separation`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.kld import paired_bootstrap
from ..core.task_flips import ContinuationAgreement, TaskFlips, continuation_agreement, item_flips, item_mean
from ..core.text import TextSource, text_sha256
from ..core.text_tasks import ClozeSettings, ContinuationSettings
from ..errors import RecipeSearchError
from ..formats.task_files import TASK_FILE_KINDS, TaskFile, read_task_file
from .task_scoring import score_tasks, task_model
from .text_tasks import ClozeBase, ContinuationBase, cloze_answers, cloze_base, continuation_base, continuation_divergence

#: tasks built from a text
TEXT_KINDS = ("cloze", "continuation")
TASK_KINDS = (*TASK_FILE_KINDS, *TEXT_KINDS)
#: assumed characters per token of a task file's text, for `TaskChecker.eval_tokens` (English text, BPE vocabularies)
CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class TaskSpec:
    """One task: its kind and its source (a task file, or the text a text task is built from)."""

    kind: str
    source: str

    @property
    def name(self) -> str:
        """The task's metric prefix (``multiple_choice_acc``, ``cloze_flips_lost``, ...)."""
        return self.kind.replace("-", "_")

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.source}"


def parse_task_specs(specs: Sequence[str], default_text: str | None) -> list[TaskSpec]:
    """``KIND:FILE`` or ``cloze[:TEXT]`` / ``continuation[:TEXT]`` specs (comma-separated lists too), each kind
    once; a text task without its TEXT takes ``default_text``. Bad specs are one-line errors."""
    out: list[TaskSpec] = []
    for spec in (s.strip() for item in specs for s in item.split(",")):
        kind, _, source = spec.partition(":")
        if kind not in TASK_KINDS:
            raise RecipeSearchError(f"unknown task {kind!r} in {spec!r}: known are {', '.join(TASK_KINDS)}")
        if kind in TEXT_KINDS:
            source = source or default_text or ""
            if not source:
                raise RecipeSearchError(f"task {kind} needs a text: {kind}:FILE or {kind}:FILE[a:b] (or a held-out "
                                        "text given to the command)")
            TextSource.parse(source)  # checked now, not after the base model has run
        elif not source:
            raise RecipeSearchError(f"task {kind} needs its file: {kind}:FILE")
        if any(s.kind == kind for s in out):
            raise RecipeSearchError(f"task {kind} given twice")
        out.append(TaskSpec(kind, source))
    if not out:
        raise RecipeSearchError("no task given")
    return out


@dataclass(frozen=True)
class TaskResult:
    """One task scored on one quant: its figures against the base and its answers item by item."""

    spec: TaskSpec
    figures: TaskFlips | ContinuationAgreement
    answers: np.ndarray  # per item: right or not (bool), or tokens to the first divergence (continuation)
    seconds: float

    def as_metrics(self) -> dict:
        """What a recipe's ``metrics.tasks`` records of this task."""
        return {"source": self.spec.source, **self.figures.as_metrics(), f"{self.spec.name}_seconds":
                round(self.seconds, 2)}

    def figures_as_numbers(self) -> dict[str, float]:
        """The task's scalar figures (``cloze_acc``, ``cloze_flips_lost``, ...) as a trial's metrics keep them."""
        return {k: float(v) for k, v in self.figures.as_metrics().items() if isinstance(v, (int, float))}

    def items(self) -> dict[str, np.ndarray]:
        """Each task objective of this task (see `metrics.TASK_OBJECTIVES`) item by item, so that its figure is the
        items' mean (``_acc``, ``_identical``, ``_agree_tokens``) or sum (``_flips_lost``)."""
        t, f = self.spec.name, self.figures
        if isinstance(f, ContinuationAgreement):
            return {f"{t}_identical": (self.answers == f.tokens).astype(np.float32),
                    f"{t}_agree_tokens": self.answers.astype(np.float32)}
        lost = np.zeros(f.n, np.float32)
        lost[list(f.lost_items)] = 1.0
        return {f"{t}_acc": self.answers.astype(np.float32), f"{t}_flips_lost": lost}

    @property
    def headline(self) -> tuple[str, float]:
        """The task's one figure (metric name, value): accuracy, or mean tokens to the first divergence."""
        if isinstance(self.figures, ContinuationAgreement):
            return f"{self.spec.name}_agree_tokens", self.figures.agree_tokens
        return f"{self.spec.name}_acc", self.figures.quant_acc


def separation(a: TaskResult, b: TaskResult, n_boot: int = 1000) -> tuple[float, float]:
    """95% paired interval over items of a's headline figure minus b's (the same items of one task)."""
    if a.spec != b.spec or a.answers.shape != b.answers.shape:
        raise ValueError("two results of different tasks")
    return paired_bootstrap(a.answers.astype(np.float64), b.answers.astype(np.float64), item_mean, 1, n_boot)


class TaskChecker:
    """The base model's side of each task (computed on first use), against which quants are scored."""

    def __init__(self, model: Path, specs: Sequence[TaskSpec], cache_dir: Path, threads: int = 2,
                 gpu_layers: int = 0, ctx: int = 512, limit: int | None = None,
                 cloze: ClozeSettings | None = None, continuation: ContinuationSettings | None = None) -> None:
        self.model, self.specs, self.cache_dir = Path(model), list(specs), Path(cache_dir)
        self.threads, self.gpu_layers, self.ctx, self.limit = threads, gpu_layers, ctx, limit
        self.cloze, self.continuation = cloze or ClozeSettings(), continuation or ContinuationSettings()
        self._files: dict[TaskSpec, TaskFile] = {s: read_task_file(s.kind, s.source) for s in self.specs
                                                 if s.kind in TASK_FILE_KINDS}  # a bad file fails before any model runs
        self._base: dict[TaskSpec, np.ndarray | ClozeBase | ContinuationBase] = {}
        #: seconds each base side took here (0 when it came from the cache)
        self.base_seconds: dict[TaskSpec, float] = {}

    def _settings(self, spec: TaskSpec) -> dict:
        if spec.kind == "cloze":
            return self.cloze.key_fields()
        if spec.kind == "continuation":
            return self.continuation.key_fields()
        return {"ctx": self.ctx, "limit": self.limit}

    def identity(self) -> str:
        """What makes two checkers' figures the same: each task's kind, content and sizes (a measurement that
        carries task figures is reused only under the same identity)."""
        fields: list[dict] = []
        for s in self.specs:
            if s.kind in TASK_FILE_KINDS:
                content = hashlib.sha256(repr(self._files[s].items).encode()).hexdigest()
            else:
                content = text_sha256(TextSource.parse(s.source).read())
            fields.append({"kind": s.kind, "content": content, "settings": self._settings(s)})
        if self.gpu_layers:
            fields.append({"gpu_layers": self.gpu_layers})
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]

    def eval_tokens(self, spec: TaskSpec) -> int:
        """About how many tokens scoring one quant on ``spec`` evaluates, without a model: a text task's sizes (at
        most; a short text yields fewer items), a task file's characters at `CHARS_PER_TOKEN`."""
        if spec.kind == "cloze":
            return self.cloze.items * (self.cloze.passage_tokens + 1)  # BOS, the passage, a word's further tokens
        if spec.kind == "continuation":
            return self.continuation.prompts * (self.continuation.prompt_tokens + self.continuation.new_tokens)
        items = self._files[spec].items[:self.limit]
        chars = sum(len(i.context) + sum(len(c) + 1 + len(i.suffix) for c in i.choices) for i in items)
        return round(chars / CHARS_PER_TOKEN)

    def prepare(self) -> None:
        """Every task's base side, now (computed, or read from the cache)."""
        for spec in self.specs:
            self.base(spec)

    def _file_answers(self, path: Path, file: TaskFile) -> np.ndarray:
        with task_model(path, self.ctx, file.max_choices, self.threads, self.gpu_layers) as lm:
            return score_tasks(lm, file, self.limit)

    def base(self, spec: TaskSpec) -> np.ndarray | ClozeBase | ContinuationBase:
        """The base side of ``spec``: its per-item answers (task files) or the cached text-task base."""
        if spec not in self._base:
            start = time.perf_counter()
            if spec.kind in TASK_FILE_KINDS:
                self._base[spec] = self._file_answers(self.model, self._files[spec])
                cached = False
            elif spec.kind == "cloze":
                self._base[spec], cached = cloze_base(self.model, TextSource.parse(spec.source), self.cloze,
                                                      self.cache_dir, self.threads, self.gpu_layers)
            else:
                self._base[spec], cached = continuation_base(self.model, TextSource.parse(spec.source),
                                                             self.continuation, self.cache_dir, self.threads,
                                                             self.gpu_layers)
            self.base_seconds[spec] = 0.0 if cached else time.perf_counter() - start
        return self._base[spec]

    def score(self, quant: Path, spec: TaskSpec) -> TaskResult:
        """One task on ``quant`` against the base."""
        base = self.base(spec)
        start = time.perf_counter()
        figures: TaskFlips | ContinuationAgreement
        if isinstance(base, ClozeBase):
            answers = cloze_answers(Path(quant), base, self.threads, self.gpu_layers)
            figures = item_flips(spec.name, base.base_correct, answers)
        elif isinstance(base, ContinuationBase):
            answers = continuation_divergence(Path(quant), base, self.threads, self.gpu_layers)
            figures = continuation_agreement(answers, base.base_choice.shape[1], spec.name)
        else:
            answers = self._file_answers(Path(quant), self._files[spec])
            figures = item_flips(spec.name, base, answers)
        return TaskResult(spec, figures, np.asarray(answers), time.perf_counter() - start)

    def score_all(self, quant: Path) -> list[TaskResult]:
        return [self.score(quant, spec) for spec in self.specs]
