"""Speech-to-text engines: the Protocol every engine satisfies, and the loader.

An engine is chosen by TRANSCRIPTION_ENGINE (an alias or a dotted class path, loaded
with `import_string` as Django loads EMAIL_BACKEND). One engine object serves the whole
process; `open()` starts one streaming recognition per WebSocket session.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

ENGINE_ALIASES = {
    "offline": "transcription.engines.offline.OfflineEngine",
    "aws": "transcription.engines.aws_transcribe.AwsTranscribeEngine",
    "echo": "transcription.engines.echo.EchoEngine",
}


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """A partial or final hypothesis; times are seconds from the start of the audio."""

    text: str
    is_partial: bool
    start: float | None = None
    end: float | None = None
    result_id: str = ""
    speaker: str = ""  # when the engine labels speakers (AWS showSpeakerLabel)


@dataclass(frozen=True, slots=True)
class StreamParams:
    """What a client asked for, already validated against the engine's capabilities."""

    language: str = "en-US"
    encoding: str = "pcm"
    sample_rate: int = 16000
    send_partials: bool = True
    detail: bool = False
    session_id: str = ""
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine accepts; validation of client parameters reads only this."""

    languages: tuple[str, ...]
    encodings: tuple[str, ...]
    min_sample_rate: int
    max_sample_rate: int
    options: tuple[str, ...] = ()  # extra query parameters passed through


class EngineError(Exception):
    """A failure to report to the client: one {"error"} then this close code."""

    def __init__(self, message: str, *, close_code: int = 1011, kind: str = "engine"):
        super().__init__(message)
        self.message = message
        self.close_code = close_code
        self.kind = kind


class SpeechToText(Protocol):
    """One streaming recognition: audio in, transcript events out."""

    async def send_audio(self, chunk: bytes) -> None:
        """Queue a chunk of audio; must return quickly (never decode inline)."""

    async def end_audio(self) -> None:
        """No more audio: flush, so that events() ends after the last final."""

    def events(self) -> AsyncIterator[TranscriptEvent]:
        """Partials and finals as they come; raises EngineError on failure."""

    async def aclose(self) -> None:
        """Release everything (tasks, processes, connections); safe to call twice."""


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
