"""The types every speech-to-text engine and its callers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

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
    "Word",
    "audio_backlog_limit",
]


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a final and when it was said (seconds from the start of the
    audio); what engines give when StreamParams.word_times asks."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """A partial or final hypothesis; times are seconds from the start of the audio."""

    text: str
    is_partial: bool
    start: float | None = None
    end: float | None = None
    result_id: str = ""
    speaker: str = ""  # when the engine labels speakers (AWS showSpeakerLabel)
    # Its words with their times, in order: finals only, and only when
    # StreamParams.word_times asked (empty otherwise, or from an engine without).
    words: tuple[Word, ...] = ()


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
    # Word times on finals (TranscriptEvent.words; docs/protocol.md §5): off unless
    # asked, since Whisper aligns each final once more to find them.
    word_times: bool = False


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


# The encodings whose byte rate is fixed, and their bytes per sample: raw 16-bit PCM
# and G.711 (telephony). The others (webm, ogg-opus, mp4, flac) are compressed.
SAMPLE_BYTES: Final[Mapping[str, int]] = {"pcm": 2, "mulaw": 1, "alaw": 1}
# G.711 is telephony's: 8 kHz unless the client says otherwise (docs/protocol.md §3).
TELEPHONY_SAMPLE_RATE: Final = 8000


def default_sample_rate(encoding: str) -> int:
    """The sampleRate a client that names none gets for `encoding`."""
    return TELEPHONY_SAMPLE_RATE if encoding in ("mulaw", "alaw") else 16000


def bytes_per_second(params: StreamParams) -> int | None:
    """What a second of the client's audio weighs; None for compressed encodings."""
    width = SAMPLE_BYTES.get(params.encoding)
    return params.sample_rate * width if width else None


def audio_backlog_limit(params: StreamParams) -> int:
    """Bytes of audio a session may hold waiting for its engine (docs/protocol.md §7),
    counted as the client sent them (compressed audio before it is decoded).

    MAX_AUDIO_BACKLOG_SECONDS of audio for PCM and G.711, MAX_AUDIO_BACKLOG_BYTES for
    encodings without a fixed byte rate.
    """
    if rate := bytes_per_second(params):
        return int(settings.MAX_AUDIO_BACKLOG_SECONDS * rate)
    return settings.MAX_AUDIO_BACKLOG_BYTES
