"""`language=auto`: when a session's language is identified, and what is accepted.

Django-free (the decoding processes import it too). The speech heard first is held
(its finals wait) until Whisper names its language with enough confidence; then the
held speech is decoded in that language and the session goes on in it. The rule,
with the figures of docs/engines.md §2:

- a first try as soon as an utterance ends, or when IDENTIFY_AFTER_SECONDS of
  speech are held in one that goes on;
- accepted when the most probable language this server takes reaches CONFIDENT;
  below, the server waits for more speech and tries again (at the next utterance's
  end, or IDENTIFY_AFTER_SECONDS of speech later);
- the best guess is taken whatever its probability once IDENTIFY_MAX_SECONDS of
  speech are held, after MAX_TRIES tries, or when the stream ends: a session never
  fails for a low probability, and the client reads the probability.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple

from transcription.engines.whisper_model import identified_language

AUTO: Final = "auto"  # the `language` value that asks for identification

IDENTIFY_AFTER_SECONDS = 3.0
IDENTIFY_MAX_SECONDS = 10.0
CONFIDENT = 0.5
MAX_TRIES = 4
# Less speech than this is not worth a try (~1 CPU s) before the stream ends.
MIN_SECONDS = 0.5


class LanguageIdentified(NamedTuple):
    """The language a session's speech was identified as: sent to the client once,
    stored on its record; `language` is the client's code (sv-SE)."""

    language: str
    probability: float


def best_supported(
    probabilities: Iterable[tuple[str, float]],
) -> LanguageIdentified | None:
    """The most probable of Whisper's (code, probability) pairs that has a
    client code (a language Whisper knows but this server does not name, such as
    Latin, is passed over); None if none has."""
    best: LanguageIdentified | None = None
    for code, probability in probabilities:
        language = identified_language(code)
        if language and (best is None or probability > best.probability):
            best = LanguageIdentified(language, round(float(probability), 3))
    return best


def accepted(probability: float, *, seconds: float, tries: int, last: bool) -> bool:
    """Whether a guess is taken now (see the module's rule)."""
    return (
        probability >= CONFIDENT
        or seconds >= IDENTIFY_MAX_SECONDS
        or tries >= MAX_TRIES
        or last
    )


def worth_trying(seconds: float, *, next_try: float, ended: bool) -> bool:
    """Whether held speech of `seconds` calls for a try: at an utterance's end
    (`ended`) or past `next_try` seconds of speech, never under MIN_SECONDS."""
    return seconds >= MIN_SECONDS and (ended or seconds >= next_try)
