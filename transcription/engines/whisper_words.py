"""Word times for a Whisper final: its tokens aligned to the audio (CTranslate2).

Django-free (the decoding processes import it). The decoder ran without timestamp
tokens; CTranslate2's `Whisper.align` finds, by dynamic time warping over the
cross-attention of the model's alignment heads (in its config.json: tiny.en's and
base's are OpenAI's), the encoder frame (20 ms) where each token begins; faster-
whisper does the same for its word_timestamps. A word is the tokens the tokenizer
groups (`split_to_word_tokens`: by spaces, or by characters for languages written
without them).

The words are given as OpenAI's whisper-1 gives them: without the spaces and the
punctuation around them; a token of punctuation alone is no word.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np

from transcription.engines.endpointing import Words

MEDIAN_FILTER_WIDTH = 7  # faster-whisper's and OpenAI's
# Alignment makes a word that borders a pause absorb it; no word lasts longer than
# twice the median of the utterance's, the median taken as at most this (as
# faster-whisper's heuristic does).
MAX_MEDIAN_SECONDS = 0.7


def word_times(
    model: Any, tokenizer: Any, encoded: Any, tokens: list[int], frames: int
) -> Words:
    """The words of `tokens` (a final's text tokens) with their times in seconds from
    the start of the audio encoded; `frames`: mel frames of that audio itself."""
    text_tokens = [token for token in tokens if token < tokenizer.eot]
    if not text_tokens or frames <= 0:
        return ()
    (alignment,) = model.model.align(
        encoded,
        tokenizer.sot_sequence,
        [text_tokens],
        frames,
        median_filter_width=MEDIAN_FILTER_WIDTH,
    )
    pairs = np.array(alignment.alignments, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return ()
    # The first frame of each token: where the path moves on to the next token.
    moves = np.diff(pairs[:, 0], prepend=-1).astype(bool)
    token_starts = pairs[moves, 1] / model.tokens_per_second
    spelled, grouped = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    # Word k spans tokens bounds[k] to bounds[k + 1]; the last ends where the end
    # of text begins (the audio's end, if the path never reached it).
    bounds = np.cumsum([0, *(len(group) for group in grouped[:-1])])
    missing = bounds[-1] + 1 - len(token_starts)
    if missing > 0:
        audio_end = frames / model.frames_per_second
        token_starts = np.append(token_starts, [audio_end] * missing)
    timed = [
        (word, float(token_starts[first]), float(token_starts[last]))
        for word, first, last in zip(spelled, bounds[:-1], bounds[1:], strict=False)
    ]
    return _bounded(timed)


def bare(word: str) -> str:
    """A word without the spaces and punctuation around it (any script's)."""
    start, end = 0, len(word)
    while start < end and _around(word[start]):
        start += 1
    while end > start and _around(word[end - 1]):
        end -= 1
    return word[start:end]


def _around(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def _bounded(timed: list[tuple[str, float, float]]) -> Words:
    """Punctuation dropped, and no word longer than twice the median (the first
    word of the utterance cut from its start, where it swallowed the lead-in;
    the others from their end, where they swallowed a pause)."""
    words = [(bare(word), start, end) for word, start, end in timed if bare(word)]
    durations = [end - start for _, start, end in words if end > start]
    if not durations:
        return tuple((word, round(s, 3), round(e, 3)) for word, s, e in words)
    longest = 2 * min(MAX_MEDIAN_SECONDS, float(np.median(durations)))
    bounded = []
    for index, (word, start, end) in enumerate(words):
        if end - start > longest:
            if index == 0:
                start = end - longest
            else:
                end = start + longest
        bounded.append((word, round(start, 3), round(end, 3)))
    return tuple(bounded)
