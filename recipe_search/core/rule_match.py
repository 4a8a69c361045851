"""Which tensors each of a recipe's regexes matches, found fast for recipes of very many rules.

llama.cpp tries a recipe's patterns on a tensor name in order with an unanchored ``std::regex_search`` and the
first that matches wins. Doing that tensor by tensor costs (tensors x rules) regex searches and a compile per
rule: minutes for 300,000 rules on a model of 733 tensors. Here each distinct regex is tried once, and only on
the names that contain the literal text every match of it must contain (``nothing_7`` is looked up in an index of
the names' 4-character pieces and never compiled when no name holds it). The answers are the regex's own: the
literals only narrow the names a real ``re.search`` then decides on.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any

# the regex parser of the standard library (private: where it is missing or changes, nothing is narrowed)
try:
    _parser: Any = importlib.import_module("re._parser")
    _constants: Any = importlib.import_module("re._constants")
    _LITERAL, _SUBPATTERN = _constants.LITERAL, _constants.SUBPATTERN
except (ImportError, AttributeError):  # pragma: no cover - another Python
    _parser = None

#: a pattern that is literal text, escaped dots and anchors only (``^blk\.3\.ffn_up\.weight$``): a valid, portable
#: regex whose literal is read off without a parser
SIMPLE = re.compile(r"\^?((?:[A-Za-z0-9_\-]|\\\.)+)\$?")
_GRAM = 4  # names are indexed by their substrings of this length
_MAX_CACHED = 1 << 18


def required_literals(pattern: str) -> list[str]:
    """Pieces of text every match of ``pattern`` contains (longest first; empty: nothing is known)."""
    simple = SIMPLE.fullmatch(pattern)
    if simple:
        return [simple.group(1).replace("\\.", ".")]
    if _parser is None:
        return []
    try:
        parsed = _parser.parse(pattern)
        if parsed.state.flags & re.IGNORECASE:
            return []
        runs: list[str] = []
        _literal_runs(parsed.data, runs)
    except Exception:  # noqa: BLE001 - an unexpected parse tree only means nothing is narrowed
        return []
    return sorted((r for r in runs if r), key=len, reverse=True)


def _literal_runs(items: Sequence, runs: list[str]) -> None:
    """Runs of consecutive literal characters in a sequence that a match consumes in order; a group that is
    not repeated is part of the sequence, anything else (a class, a repetition, a branch, an anchor) ends a run."""
    run = []
    for op, av in items:
        if op == _LITERAL:
            run.append(chr(av))
            continue
        if op == _SUBPATTERN and not (av[1] & re.IGNORECASE) and not (av[2] & re.IGNORECASE):
            runs.append("".join(run))
            run = []
            _literal_runs(av[3].data, runs)
            continue
        runs.append("".join(run))
        run = []
    runs.append("".join(run))


class NameIndex:
    """A model's tensor names, searched by many regexes (each regex's answer is kept, so a rule repeated or
    resolved again costs nothing)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.grams: dict[str, list[int]] = {}  # every substring of _GRAM characters -> the names holding it
        for j, name in enumerate(self.names):
            for gram in {name[k:k + _GRAM] for k in range(len(name) - _GRAM + 1)}:
                self.grams.setdefault(gram, []).append(j)
        self._cache: dict[str, tuple[int, ...]] = {}

    def matches(self, regex: str) -> tuple[int, ...]:
        """The indices of the names ``re.search(regex, name)`` matches, in order."""
        hit = self._cache.get(regex)
        if hit is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            hit = self._cache[regex] = self._search(regex)
        return hit

    def _search(self, regex: str) -> tuple[int, ...]:
        literals = required_literals(regex)
        candidates: Sequence[int] = range(len(self.names)) if not literals else self._containing(literals)
        if not candidates:
            return ()
        search = re.compile(regex).search
        names = self.names
        return tuple(j for j in candidates if search(names[j]))

    def _containing(self, literals: list[str]) -> Sequence[int]:
        """The names holding every one of ``literals``: those of the rarest substring of the longest literal,
        checked; every name where that literal is too short to narrow anything."""
        first = literals[0]
        candidates: Sequence[int] = range(len(self.names))
        grams = self.grams
        for k in range(len(first) - _GRAM + 1):
            holding = grams.get(first[k:k + _GRAM], ())
            if len(holding) < len(candidates):
                candidates = holding
                if not holding:
                    return []
        names = self.names
        if len(literals) == 1:
            return [j for j in candidates if first in names[j]]
        return [j for j in candidates if all(r in names[j] for r in literals)]


def first_matches(regexes: Sequence[str], index: NameIndex) -> list[int | None]:
    """For each name of ``index``: the position in ``regexes`` of the first that matches it (llama.cpp's
    first-match rule), or None."""
    first: list[int | None] = [None] * len(index.names)
    left = len(first)
    seen: set[str] = set()
    for i, regex in enumerate(regexes):
        if left == 0:
            break
        if regex in seen:  # a repeated regex matches only what its first occurrence already took
            continue
        seen.add(regex)
        for j in index.matches(regex):
            if first[j] is None:
                first[j] = i
                left -= 1
    return first
