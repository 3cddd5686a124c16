"""The types every speech-to-text engine and its callers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings

from transcription.close_codes import CLOSE_SERVER_ERROR
from transcription.engines.language_id import AUTO, LanguageIdentified

__all__ = [
    "AUTO",
    "Capabilities",
    "EngineError",
    "LanguageIdentified",
    "SpeechStarted",
    "StreamEvent",
    "StreamParams",
    "TranscriptEvent",
    "audio_backlog_limit",
]


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
class SpeechStarted:
    """Speech began, `timestamp` seconds of audio from the start (vadEvents=true)."""

    timestamp: float


# What a stream yields: transcripts, speech onsets (vadEvents=true) and, with
# language=auto, its language, once, before the first final.
StreamEvent = TranscriptEvent | SpeechStarted | LanguageIdentified


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
    # The voice loop's opt-in extensions (docs/protocol.md §11): replies spoken
    # sentence by sentence, barge-in, this session's pause before a batch goes.
    reply_stream: bool = False
    barge_in: bool = False
    silence_ms: int | None = None
    # End of turn (docs/protocol.md §15): the pause that ends an utterance (None:
    # the engine's own), and whether SpeechStarted events are wanted.
    endpointing_ms: int | None = None
    vad_events: bool = False


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine accepts; validation of client parameters reads only this."""

    languages: tuple[str, ...]
    encodings: tuple[str, ...]
    min_sample_rate: int
    max_sample_rate: int
    options: tuple[str, ...] = ()  # extra query parameters passed through
    # Whether it takes language=auto (identifies the language of the speech).
    identifies_language: bool = False
    endpointing: bool = False  # honours endpointingMs (the pause ending an utterance)


class EngineError(Exception):
    """A failure to report to the client: one {"error"} then this close code."""

    def __init__(
        self,
        message: str,
        *,
        close_code: int = CLOSE_SERVER_ERROR,
        kind: str = "engine",
    ):
        super().__init__(message)
        self.message = message
        self.close_code = close_code
        self.kind = kind


def audio_backlog_limit(params: StreamParams) -> int:
    """Bytes of audio a session may hold waiting for its engine (docs/protocol.md §7).

    MAX_AUDIO_BACKLOG_SECONDS of audio for raw PCM (16-bit), MAX_AUDIO_BACKLOG_BYTES
    for encodings without a fixed byte rate.
    """
    if params.encoding == "pcm":
        return int(settings.MAX_AUDIO_BACKLOG_SECONDS * params.sample_rate * 2)
    return settings.MAX_AUDIO_BACKLOG_BYTES
