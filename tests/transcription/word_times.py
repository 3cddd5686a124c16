"""The fixtures' true word times, and how far an engine's word times are from them.

tests/fixtures/word_boundaries.txt holds each word Festival said in the fixtures and
when (its own segmentation of the waves it made: see make_fixtures.sh).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from tests.audio import FIXTURES
from tests.transcription.engine_helpers import words as plain

Timed = tuple[str, float, float]  # (word, start, end), seconds from the file's start


def true_words(fixture: str) -> list[Timed]:
    """The words of tests/fixtures/<fixture>.wav and their times."""
    words = []
    for line in (FIXTURES / "word_boundaries.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, word, start, end = line.split()
            if name == fixture:
                words.append((word, float(start), float(end)))
    return words


def _bare(word: str) -> str:
    return word.lower().strip(".,!?;:'\"")


def matched(words: Iterable[Timed], fixture: str) -> list[tuple[Timed, Timed]]:
    """(heard, true) pairs of the words heard that are the fixture's, in order (a
    word misheard or missed is left out)."""
    heard, truth = list(words), true_words(fixture)
    matcher = difflib.SequenceMatcher(
        a=[_bare(w) for w, _, _ in heard], b=[w for w, _, _ in truth], autojunk=False
    )
    return [
        (heard[block.a + k], truth[block.b + k])
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]


def boundary_errors(words: Sequence[Timed], fixture: str) -> list[float]:
    """How far each matched word's start and end are from the truth (seconds)."""
    return [
        abs(value - true_value)
        for (_, *times), (_, *true_times) in matched(words, fixture)
        for value, true_value in zip(times, true_times, strict=True)
    ]


def check_words(finals: list) -> list[tuple[str, float, float]]:
    """Each final's words are its text's, in order, within the final; all of them."""
    timed = []
    for final in finals:
        said = plain(" ".join(w.text for w in final.words))
        assert said == plain(final.text)  # (plain() splits accented words alike)
        assert all(final.start <= w.start < w.end <= final.end for w in final.words)
        timed += [(w.text, w.start, w.end) for w in final.words]
    starts = [start for _, start, _ in timed]
    assert starts == sorted(starts)
    return timed
