"""Text-to-speech: the Protocol every voice satisfies, and the loader (TTS_ENGINE).

Like speech-to-text engines, a voice is named by an alias or a dotted class path and
loaded with `import_string`; one instance serves the whole process.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

TTS_ALIASES = {
    "offline": "transcription.voice_loop.tts.piper.PiperSpeech",
    "piper": "transcription.voice_loop.tts.piper.PiperSpeech",
    "espeak": "transcription.voice_loop.tts.espeak.EspeakSpeech",
    "polly": "transcription.voice_loop.tts.polly.PollySpeech",
}


class TtsError(Exception):
    """Speech could not be made; the reply text is still sent, with no audio."""


class TextToSpeech(Protocol):
    """Turns a reply into MP3 audio, without blocking the event loop."""

    name: str

    async def synthesize(self, text: str, *, language: str) -> bytes:
        """MP3 bytes speaking `text` (the pieces joined); raises TtsError."""


class SentenceSpeech(TextToSpeech, Protocol):
    """A voice that also speaks a reply piece by piece (every built-in one)."""

    def synthesize_sentences(self, text: str, *, language: str) -> AsyncIterator[bytes]:
        """MP3 pieces speaking `text` in order (a sentence each, or more), each
        made when the one before has been taken; raises TtsError on failure.
        The pieces concatenated are one playable MP3."""


async def speech_pieces(
    tts: TextToSpeech, text: str, *, language: str
) -> AsyncIterator[bytes]:
    """`tts`'s pieces of `text`: its sentences, or the whole MP3 as one piece when
    the voice speaks only whole replies (a TTS_ENGINE class of yours)."""
    sentences = getattr(tts, "synthesize_sentences", None)
    if sentences is None:
        yield await tts.synthesize(text, language=language)
        return
    async for piece in sentences(text, language=language):
        yield piece


@functools.cache
def _load(path: str) -> TextToSpeech:
    return import_string(path)()


def get_tts() -> TextToSpeech:
    """The voice TTS_ENGINE names (one instance per process)."""
    return _load(TTS_ALIASES.get(settings.TTS_ENGINE, settings.TTS_ENGINE))
