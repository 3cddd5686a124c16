"""Speech-to-text engines: the Protocol every engine satisfies, and the loader.

An engine is chosen by TRANSCRIPTION_ENGINE (an alias or a dotted class path, loaded
with `import_string` as Django loads EMAIL_BACKEND). One engine object serves the whole
process; `open()` starts one streaming recognition per WebSocket session.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

ENGINE_ALIASES = {
    "offline": "transcription.engines.whisper.WhisperEngine",
    "pocketsphinx": "transcription.engines.pocketsphinx.PocketsphinxEngine",
    "whisper": "transcription.engines.whisper.WhisperEngine",
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


def audio_backlog_limit(params: StreamParams) -> int:
    """Bytes of audio a session may hold waiting for its engine (SPEC §9).

    MAX_AUDIO_BACKLOG_SECONDS of audio for raw PCM (16-bit), MAX_AUDIO_BACKLOG_BYTES
    for encodings without a fixed byte rate.
    """
    if params.encoding == "pcm":
        return int(settings.MAX_AUDIO_BACKLOG_SECONDS * params.sample_rate * 2)
    return settings.MAX_AUDIO_BACKLOG_BYTES


class AudioBacklog:
    """Audio waiting for an engine, bounded: `put()` waits while it is full.

    The waiting is the flow control of SPEC §3: a consumer blocked in `put()` stops
    reading its socket, so a client streaming faster than the engine decodes is
    slowed down instead of filling the server's memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self._ended = self._closed = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def full(self) -> bool:
        return len(self._data) >= self.limit

    @property
    def ended(self) -> bool:
        """end() was called (there may still be audio to take)."""
        return self._ended

    async def put(self, chunk: bytes) -> None:
        """Add audio once there is room (dropped after end() or close())."""
        while self.full and not self._closed:
            self._room.clear()
            await self._room.wait()
        if not (self._ended or self._closed):
            self._data += chunk
            self._readable.set()

    def end(self) -> None:
        """No more audio will come."""
        self._ended = True
        self._readable.set()

    def close(self) -> None:
        """Drop what is waiting and release every waiter."""
        self._closed = self._ended = True
        self._data.clear()
        self._room.set()
        self._readable.set()

    async def readable(self) -> None:
        """Wait until there is audio to take or the end was announced."""
        while not (self._data or self._ended):
            self._readable.clear()
            await self._readable.wait()

    def take(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of the oldest audio (whole 16-bit samples when cut)."""
        if len(self._data) > max_bytes:
            max_bytes -= max_bytes % 2
        data = bytes(self._data[:max_bytes])
        del self._data[: len(data)]
        if not self.full:
            self._room.set()
        return data


class SpeechToText(Protocol):
    """One streaming recognition: audio in, transcript events out."""

    async def send_audio(self, chunk: bytes) -> None:
        """Queue a chunk of audio (never decode inline); waits while the session's
        audio backlog is full, so that the consumer stops reading its socket."""

    def backlog_full(self) -> bool:
        """True while send_audio() would wait (the backlog holds its limit)."""

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
