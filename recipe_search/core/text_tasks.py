"""Tasks built from any text, chosen by rule without looking at a model: a last-word cloze and greedy-continuation
prompts. The settings, the word-level choice of cloze passages, and where continuation prompts are cut.

A cloze passage ends in its target, LAMBADA's way by rule: a content word (letters only, at least 3 of them,
not a stop word) that stands as a whole word after a single space, and that occurs earlier in the passage
as a whole word too. Passages never overlap. The engine cuts each to a fixed token length and keeps it only
where the rule still holds on what the model sees.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import RecipeSearchError

# English function words: articles, pronouns, auxiliaries, prepositions, conjunctions, common adverbs
_STOP = """
a about above after again against all almost also although always am among an and another any are around as at
be became because been before being below between both but by can cannot could did do does doing done down during
each either else ever every few for from further had has have having he her here hers herself him himself his how
however i if in into is it its itself just least less like made make many may me might more most much must my
myself neither never no nor not now of off often on once one only or other others our ours ourselves out over own
per perhaps rather same several shall she should since so some such than that the their theirs them themselves
then there these they this those though through thus to too toward towards under until up upon us very was we were
what when where whether which while who whom whose why will with within without would yet you your yours yourself
yourselves
"""
STOP_WORDS = frozenset(_STOP.split())

# a run of ASCII letters after exactly one space (itself after a non-space), ending a whole word
_TARGET = re.compile(r"(?<=\S )[A-Za-z]+(?![A-Za-z0-9'\u2019-])")
_SPACE = re.compile(r"\s+")


def _bounded(what: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecipeSearchError(f"{what} must be an integer in {low}..{high}, not {value!r}")


@dataclass(frozen=True)
class ClozeSettings:
    """At most ``items`` passages of ``passage_tokens`` tokens (a BOS before them where the model adds one)."""

    items: int = 300
    passage_tokens: int = 64

    def __post_init__(self) -> None:
        _bounded("cloze items", self.items, 2, 100_000)
        _bounded("cloze passage tokens", self.passage_tokens, 8, 4096)

    def key_fields(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ContinuationSettings:
    """At most ``prompts`` prompts of ``prompt_tokens`` tokens; the base continues each by ``new_tokens``."""

    prompts: int = 200
    prompt_tokens: int = 64
    new_tokens: int = 32

    def __post_init__(self) -> None:
        _bounded("continuation prompts", self.prompts, 2, 100_000)
        _bounded("continuation prompt tokens", self.prompt_tokens, 1, 4096)
        _bounded("continuation new tokens", self.new_tokens, 1, 1024)

    def key_fields(self) -> dict:
        return asdict(self)


def is_content_word(word: str) -> bool:
    return len(word) >= 3 and word.isascii() and word.isalpha() and word.lower() not in STOP_WORDS


def occurs_in(word: str, passage: str) -> bool:
    """``word`` as a whole word (no letter either side), same case, somewhere in ``passage``."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", passage) is not None


@dataclass(frozen=True)
class ClozeCandidate:
    """A passage's context (the text before the target's space) and its target word, at ``offset`` in the text."""

    offset: int
    context: str
    word: str


def cloze_candidates(text: str, window_chars: int) -> list[ClozeCandidate]:
    """Every passage the rule allows, in text order: each target's context is the ``window_chars`` characters
    before the space ahead of it, started at the next word, and begins after the previous passage's target."""
    if window_chars < 1:
        raise ValueError("window_chars must be positive")
    out: list[ClozeCandidate] = []
    cursor = 0
    for m in _TARGET.finditer(text):
        word, end = m.group(), m.start() - 1
        if end - window_chars < cursor or not is_content_word(word):
            continue
        space = _SPACE.search(text, end - window_chars, end)
        if space is None:
            continue
        context = text[space.end():end]
        if occurs_in(word, context):
            out.append(ClozeCandidate(m.start(), context, word))
            cursor = m.end()
    return out


def evenly_spaced(n_available: int, n: int) -> np.ndarray:
    """Indices of ``n`` of ``n_available`` things, evenly spread and first and last included (all when n_available <= n)."""
    if n_available <= n:
        return np.arange(n_available)
    return np.linspace(0, n_available - 1, n).round().astype(np.int64)


def prompt_starts(n_tokens: int, settings: ContinuationSettings, source: object) -> np.ndarray:
    """Token offsets of the continuation prompts: as many as fit without overlap (at most ``settings.prompts``),
    evenly spaced from the text's first token to its last whole prompt."""
    size = settings.prompt_tokens
    n = min(settings.prompts, n_tokens // size)
    if n < 2:
        raise RecipeSearchError(f"the text has {n_tokens} tokens: too few for 2 continuation prompts of {size}", source)
    return (np.arange(n) * (n_tokens - size)) // (n - 1)
