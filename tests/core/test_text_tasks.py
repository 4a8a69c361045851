"""The text-built tasks' pure rules: cloze passages chosen by hand-checked rule, prompt placement, settings."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_search.core.text_tasks import (
    ClozeCandidate,
    ClozeSettings,
    ContinuationSettings,
    cloze_candidates,
    evenly_spaced,
    is_content_word,
    occurs_in,
    prompt_starts,
)
from recipe_search.errors import RecipeSearchError

# word offsets: 0 Ada | 4 met | 8 an | 11 ox. | 15 The | 19 ox | 22 and | 26 Ada | 30 walked | 37 to | 40 the
# | 44 river, | 51 where | 57 Ada | 61 swam | 66 in | 69 the | 73 river. | 80 The | 84 river | 90 was | 94 cold,
# | 100 so | 103 the | 107 RIVER | 113 froze. | 120 Ada's | 126 ox | 129 saw | 133 the | 137 ox. | 141 A
# | 143 pale | 148 moon | 153 rose, | 159 and | 163 the | 167 moon | 172 set.
TEXT = ("Ada met an ox. The ox and Ada walked to the river, where Ada swam in the river. The river was cold, so the "
       "RIVER froze. Ada's ox saw the ox. A pale moon rose, and the moon set.")


def test_cloze_passages_by_hand() -> None:
    # A window of 40 characters before the space ahead of a target, started at the next word:
    # - "river" at 44: window from 3 is "met an ox. The ox and Ada walked to the", no "river" in it;
    # - "where" at 51: a stop word;
    # - "Ada" at 57: window from 16 starts at the next word, "ox and Ada walked to the river, where": kept;
    # - "river" at 84 and every target up to 100: their windows would begin before 60, where "Ada" ended;
    # - "RIVER" at 107: "river" occurs earlier, but not in the same case; "froze", "saw": not earlier;
    # - "Ada's": not a whole word; "ox": two letters; "the": a stop word;
    # - "moon" at 167: window from 126 starts at "saw the ox. A pale moon rose, and the": kept;
    # - "set" at 172: its window would begin before 171, where "moon" ended.
    assert cloze_candidates(TEXT, 40) == [
        ClozeCandidate(57, "ox and Ada walked to the river, where", "Ada"),
        ClozeCandidate(167, "saw the ox. A pale moon rose, and the", "moon"),
    ]
    for c in cloze_candidates(TEXT, 40):
        assert TEXT[c.offset - 1 - len(c.context):c.offset + len(c.word)] == f"{c.context} {c.word}"


def test_cloze_rule_parts() -> None:
    assert is_content_word("river") and is_content_word("Ada") and is_content_word("RIVER")
    assert not any(map(is_content_word, ["the", "The", "ox", "where", "café", "x2y"]))
    assert occurs_in("moon", "a moon, rose") and occurs_in("moon", "(moon)")
    assert not occurs_in("moon", "moons rose") and not occurs_in("moon", "honeymoon") and not occurs_in("moon", "Moon")
    assert cloze_candidates("", 10) == [] and cloze_candidates("short text", 100) == []
    # a target after two spaces, or after a newline, is not one
    assert cloze_candidates("moon and the moon  moon", 5) == [] and cloze_candidates("moon and\nmoon", 3) == []
    with pytest.raises(ValueError):
        cloze_candidates(TEXT, 0)


def test_evenly_spaced_and_prompt_starts() -> None:
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    starts = prompt_starts(1000, ContinuationSettings(prompts=7, prompt_tokens=64), "text")
    assert len(starts) == 7 and starts[0] == 0 and starts[-1] == 1000 - 64
    assert (np.diff(starts) >= 64).all()  # none overlaps
    fitted = prompt_starts(1000, ContinuationSettings(prompts=200, prompt_tokens=64), "text")
    assert len(fitted) == 1000 // 64 and (np.diff(fitted) >= 64).all() and fitted[-1] + 64 <= 1000
    with pytest.raises(RecipeSearchError, match="^text: the text has 100 tokens: too few for 2 continuation prompts"):
        prompt_starts(100, ContinuationSettings(prompt_tokens=64), "text")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ClozeSettings(items=1), "cloze items must be an integer in 2..100000, not 1"),
    (lambda: ClozeSettings(passage_tokens=4), "cloze passage tokens"),
    (lambda: ClozeSettings(items=2.5), "cloze items"),  # type: ignore[arg-type]
    (lambda: ContinuationSettings(prompts=0), "continuation prompts"),
    (lambda: ContinuationSettings(new_tokens=0), "continuation new tokens"),
    (lambda: ContinuationSettings(prompt_tokens=True), "continuation prompt tokens"),  # type: ignore[arg-type]
])
def test_settings_out_of_range(make, message: str) -> None:
    with pytest.raises(RecipeSearchError, match=message) as err:
        make()
    assert "\n" not in str(err.value)
