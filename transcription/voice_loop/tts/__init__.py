"""Text-to-speech: the Protocol every voice satisfies, and the loader (TTS_ENGINE).

Like speech-to-text engines, a voice is named by an alias or a dotted class path and
loaded with `import_string`; one instance serves the whole process.
"""

from __future__ import annotations

import functools
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

TTS_ALIASES = {
    "offline": "transcription.voice_loop.tts.espeak.EspeakSpeech",
    "polly": "transcription.voice_loop.tts.polly.PollySpeech",
}


class TtsError(Exception):
    """Speech could not be made; the reply text is still sent, with no audio."""


class TextToSpeech(Protocol):
    """Turns a reply into MP3 audio, without blocking the event loop."""

    name: str

    async def synthesize(self, text: str, *, language: str) -> bytes:
        """MP3 bytes speaking `text`; raises TtsError on failure."""


@functools.cache
def _load(path: str) -> TextToSpeech:
    return import_string(path)()


def get_tts() -> TextToSpeech:
    """The voice TTS_ENGINE names (one instance per process)."""
    return _load(TTS_ALIASES.get(settings.TTS_ENGINE, settings.TTS_ENGINE))
