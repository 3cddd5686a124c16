"""Speech-to-text engines: the Protocol every engine satisfies, and the loader.

An engine is chosen by TRANSCRIPTION_ENGINE (an alias or a dotted class path, loaded
with `import_string` as Django loads EMAIL_BACKEND). One engine object serves the whole
process; `open()` starts one streaming recognition per WebSocket session.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from django.conf import settings
from django.utils.module_loading import import_string

from transcription.engines.speech_gate import has_words
from transcription.engines.stream import AudioBacklog
from transcription.engines.types import (
    AUTO,
    Capabilities,
    EngineError,
    LanguageIdentified,
    SpeechStarted,
    StreamEvent,
    StreamParams,
    TranscriptEvent,
    Word,
    audio_backlog_limit,
)

__all__ = [
    "AUTO",
    "ENGINE_ALIASES",
    "AudioBacklog",
    "Capabilities",
    "CountsAudio",
    "EngineError",
    "LanguageIdentified",
    "SpeechStarted",
    "SpeechToText",
    "StreamEvent",
    "StreamParams",
    "TranscriptEvent",
    "TranscriptionEngine",
    "Word",
    "audio_backlog_limit",
    "engine_path",
    "get_engine",
    "has_words",
]

ENGINE_ALIASES = {
    "offline": "transcription.engines.whisper.WhisperEngine",
    "pocketsphinx": "transcription.engines.pocketsphinx.PocketsphinxEngine",
    "whisper": "transcription.engines.whisper.WhisperEngine",
    "aws": "transcription.engines.aws_transcribe.AwsTranscribeEngine",
    "echo": "transcription.engines.echo.EchoEngine",
}


class SpeechToText(Protocol):
    """One streaming recognition: audio in, transcript events out."""

    async def send_audio(self, chunk: bytes) -> None:
        """Queue a chunk of audio (never decode inline); waits while the session's
        audio backlog is full, so that the consumer stops reading its socket."""

    def backlog_full(self) -> bool:
        """True while send_audio() would wait (the backlog holds its limit)."""

    async def end_audio(self) -> None:
        """No more audio: flush, so that events() ends after the last final."""

    async def finalize(self) -> None:
        """End the utterance under way now (the client's Finalize): its final comes
        after the audio sent so far, and the stream goes on."""

    def events(self) -> AsyncIterator[StreamEvent]:
        """Partials, finals, (when asked) speech onsets and (with language=auto)
        the language identified, once, as they come; raises EngineError on
        failure."""

    async def aclose(self) -> None:
        """Release everything (tasks, processes, connections); safe to call twice."""


@runtime_checkable
class CountsAudio(Protocol):
    """A SpeechToText that counts its audio itself, since the client's bytes have no
    fixed rate: a compressed encoding decoded in front of the engine
    (transcode.ContainerStream). The session's audio seconds, and the clock its
    final latency is measured by, are the PCM it handed to the engine."""

    # Called on the event loop with the bytes of PCM (16 kHz, 16-bit) handed so far.
    on_decoded: Callable[[int], None] | None

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio decoded and handed to the engine so far."""


class TranscriptionEngine(Protocol):
    """A process-wide engine that opens one SpeechToText per session."""

    name: str
    capabilities: Capabilities

    async def open(self, params: StreamParams) -> SpeechToText:
        """Start a recognition; raises EngineError when it cannot."""


def engine_path(value: str) -> str:
    return ENGINE_ALIASES.get(value, value)


@functools.cache
def _load(path: str) -> TranscriptionEngine:
    return import_string(path)()


def get_engine() -> TranscriptionEngine:
    """The engine TRANSCRIPTION_ENGINE names (one instance per process)."""
    return _load(engine_path(settings.TRANSCRIPTION_ENGINE))
