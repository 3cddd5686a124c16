"""The seed-004 wire protocol: query parameters, closes, messages (pure).

The close codes come from `transcription.close_codes` (engines use them too); every
close a session decides is in the catalogue below, with its text and kind.
"""

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import parse_qs

from django.conf import settings

from transcription.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
)
from transcription.engines import (
    AUTO,
    Capabilities,
    EngineError,
    LanguageIdentified,
    StreamParams,
    TranscriptEvent,
)
from transcription.engines.options import parse_flag
from transcription.engines.types import SAMPLE_BYTES, default_sample_rate

END_OF_STREAM: Final = "END_OF_STREAM"


class CloseMeaning(NamedTuple):
    label: str  # for operators: the admin, its dashboard and timeline
    text: str  # for users: what the Talk page says when a session closes so


# What each close code means: the one home, served to the Talk page as JSON.
CLOSE_MEANINGS: Final[Mapping[int, CloseMeaning]] = {
    CLOSE_NORMAL: CloseMeaning("normal", "The session ended."),
    CLOSE_GOING_AWAY: CloseMeaning(
        "going away (server shutdown)", "The server is going away (restart or deploy)."
    ),
    # Never sent: a client sees it when the connection drops without a close frame.
    1006: CloseMeaning("dropped (no close frame)", "The connection dropped."),
    CLOSE_POLICY: CloseMeaning(
        "policy (auth, parameters, quota)", "The server refused the session."
    ),
    CLOSE_TOO_BIG: CloseMeaning("frame too big", "An audio frame was too large."),
    CLOSE_SERVER_ERROR: CloseMeaning(
        "server or engine error", "The server hit an error while transcribing."
    ),
    CLOSE_TRY_AGAIN: CloseMeaning("try again later", "The server is busy."),
}


def close_code_label(code: int | None) -> str:
    """A close code for operators: `1008 policy (auth, parameters, quota)`."""
    if code is None:
        return "none"
    meaning = CLOSE_MEANINGS.get(code)
    return f"{code} {meaning.label}" if meaning else str(code)


def close_texts() -> dict[int, str]:
    """What the Talk page tells a user for each close code."""
    return {code: meaning.text for code, meaning in CLOSE_MEANINGS.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """How a session ends: a plain close (`kind` empty) or an error of that kind.

    `kind` labels the error for operators: the SessionError row, the log line.
    """

    code: int
    message: str = ""
    kind: str = ""

    @property
    def is_error(self) -> bool:
        return bool(self.kind)

    @property
    def is_failure(self) -> bool:
        """Recorded as failed: an error other than the server shutting down."""
        return self.is_error and self.kind != SHUTDOWN


# The catalogue: every close a session decides, with the text the client reads.
SHUTDOWN: Final = "shutdown"  # the kind of the closes a server's shutdown causes
GOING_AWAY: Final = Close(
    CLOSE_GOING_AWAY,
    "The server is going away: it is shutting down. Reconnect to continue.",
    SHUTDOWN,
)
SHUTTING_DOWN: Final = Close(
    CLOSE_TRY_AGAIN, "The server is shutting down: try again later.", SHUTDOWN
)
AT_CAPACITY: Final = Close(
    CLOSE_TRY_AGAIN, "Server at capacity: try again later.", "capacity"
)
UNEXPECTED_TEXT: Final = Close(
    CLOSE_POLICY,
    "Unexpected text frame: send audio as binary frames and the text "
    "END_OF_STREAM when done (or a control message: "
    '{"type": "KeepAlive"}, {"type": "Finalize"}, {"type": "CloseStream"}).',
    "frame",
)
ENGINE_DID_NOT_START: Final = Close(
    CLOSE_SERVER_ERROR,
    "Transcription is unavailable: the engine did not start.",
    "engine",
)
ENGINE_FAILED: Final = Close(
    CLOSE_SERVER_ERROR, "Transcription failed: engine error.", "engine"
)
ENGINE_TOO_SLOW: Final = Close(
    CLOSE_SERVER_ERROR,
    "Transcription failed: the engine did not finish in time.",
    "engine",
)
NOT_STORED: Final = Close(
    CLOSE_SERVER_ERROR,
    "Transcription stopped: the server could not store the transcript.",
    "database",
)
SERVER_ERROR: Final = Close(
    CLOSE_SERVER_ERROR, "Transcription failed: server error.", "server"
)
DATABASE_UNAVAILABLE: Final = Close(
    CLOSE_TRY_AGAIN, "The database is unavailable: try again later.", "database"
)


def database_away(seconds: float) -> Close:
    """The database stayed away too long (DB_OUTAGE_SECONDS): what was heard is
    kept, and stored once it answers."""
    return Close(
        CLOSE_SERVER_ERROR,
        f"Transcription stopped: the database has been unavailable for {seconds:g} "
        "seconds. What was transcribed is kept and stored once it is back.",
        "database",
    )


def ended(reason: str = "") -> Close:
    """A plain 1000 close, with its reason (a timeout) or none (END_OF_STREAM)."""
    return Close(CLOSE_NORMAL, reason)


def refused_auth(message: str) -> Close:
    return Close(CLOSE_POLICY, message, "auth")


def bad_parameters(message: str) -> Close:
    return Close(CLOSE_POLICY, message, "parameters")


def over_quota(who: str, limit: int) -> Close:
    return Close(
        CLOSE_POLICY,
        f"Too many concurrent sessions for this {who} (limit {limit}).",
        "quota",
    )


def frame_too_big(size: int, limit: int) -> Close:
    return Close(
        CLOSE_TOO_BIG,
        f"Frame of {size} bytes is larger than the limit of {limit} bytes "
        "(MAX_FRAME_BYTES).",
        "frame",
    )


def backlog_full(held: str, setting: str) -> Close:
    return Close(
        CLOSE_POLICY,
        f"Audio arrives faster than it can be transcribed: {held} are already "
        f"waiting (the limit, {setting}). Send audio no faster than real time.",
        "backlog",
    )


RESUME_REFUSED: Final = Close(
    CLOSE_POLICY,
    "This session cannot be resumed: it is not yours, it ended, or it was not "
    "resumed within RESUME_SECONDS. Open a new session.",
    "resume",
)
RESUME_BUSY: Final = Close(
    CLOSE_TRY_AGAIN,
    "The server that holds this session did not hand it over: try again.",
    "resume",
)

UNKNOWN_PATH: Final = Close(
    CLOSE_POLICY,
    "Unknown path: connect to / (or /ws/transcribe/).",
    "path",
)


def not_reading(pending: int, limit: int) -> Close:
    """Not sent (the client does not read): recorded when the server drops a
    connection whose unsent data passed MAX_OUTBOUND_BYTES; the client sees 1006."""
    return Close(
        1006,
        f"The client did not read what it was sent: {pending} bytes waited, more "
        f"than the limit of {limit} bytes (MAX_OUTBOUND_BYTES). Connection dropped.",
        "outbound",
    )


def access_ended(reason: str) -> Close:
    """The token was revoked or expired, the user deactivated or logged out."""
    return Close(CLOSE_POLICY, reason, "revoked")


def engine_error(exc: EngineError) -> Close:
    """What an engine reported; a 1000 from the engine is a plain close."""
    if exc.close_code == CLOSE_NORMAL:
        return ended(exc.message)
    return Close(exc.close_code, exc.message, exc.kind)


KNOWN_PARAMETERS: Final = frozenset(
    {
        "token",
        "language",
        "encoding",
        "sampleRate",
        "sendPartials",
        "detail",
        "resumable",
        "resume",
        "after",
        # The voice loop's extensions (docs/protocol.md §11).
        "replyStream",
        "bargeIn",
        "silenceMs",
        # End of turn (docs/protocol.md §15).
        "endpointingMs",
        "vadEvents",
        # Word times on finals (docs/protocol.md §5).
        "wordTimes",
    }
)
# The longest value a parameter the server reads may have (the token excepted: the
# middleware reads it). Checked before any parsing: `int()` of 5,000 digits raises.
MAX_PARAMETER_CHARS: Final = 256


class ProtocolError(Exception):
    """A client mistake: one {"error"} with this message, then close 1008."""


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    values = query.get(name)
    if not values:
        return default
    value = values[-1]
    try:
        return parse_flag(value)
    except ValueError:
        raise ProtocolError(
            f"Invalid {name} {value!r}: allowed values are 'true' and 'false'."
        ) from None


def _listed(allowed: tuple[str, ...], limit: int = 12) -> str:
    shown = ", ".join(allowed[:limit])
    return shown + (f" and {len(allowed) - limit} more" if len(allowed) > limit else "")


def no_identification(caps: Capabilities) -> str:
    """Why language=auto is refused by an engine that does not identify languages
    (the WebSocket's 1008 and the REST endpoint's 400 say the same)."""
    return (
        "Language identification (language=auto) is not available with this "
        f"server's engine: ask for one of {_listed(caps.languages)}."
    )


def _check_lengths(query: dict[str, list[str]], caps: Capabilities) -> None:
    read = (KNOWN_PARAMETERS - {"token"}) | set(caps.options)
    for name in sorted(read & query.keys()):
        if (length := len(query[name][-1])) > MAX_PARAMETER_CHARS:
            raise ProtocolError(
                f"Parameter {name} is too long: {length} characters, at most "
                f"{MAX_PARAMETER_CHARS}."
            )


def parse_params(query_string: bytes, caps: Capabilities) -> StreamParams:
    """Validate the connection's query parameters against the engine's capabilities."""
    try:
        query = parse_qs(query_string.decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError("The query string is not valid UTF-8.") from exc
    _check_lengths(query, caps)

    language = _language(query, caps)
    encoding = query.get("encoding", ["pcm"])[-1]
    if encoding not in caps.encodings:
        raise ProtocolError(
            f"Unsupported encoding {encoding!r}: this server accepts "
            f"{_listed(caps.encodings)}."
        )
    # G.711 defaults to telephony's 8 kHz; a container's own rate wins over this one.
    rate_text = query.get("sampleRate", [str(default_sample_rate(encoding))])[-1]
    allowed_rates = f"an integer from {caps.min_sample_rate} to {caps.max_sample_rate}"
    if not rate_text.isascii() or not rate_text.isdigit():
        raise ProtocolError(f"Invalid sampleRate {rate_text!r}: use {allowed_rates}.")
    sample_rate = int(rate_text)
    if not caps.min_sample_rate <= sample_rate <= caps.max_sample_rate:
        raise ProtocolError(
            f"Unsupported sampleRate {sample_rate}: use {allowed_rates}."
        )
    options = {
        name: values[-1] for name, values in query.items() if name in caps.options
    }
    detail = _flag(query, "detail", False)
    word_times = _flag(query, "wordTimes", False)
    if word_times and not detail:
        raise ProtocolError(
            "wordTimes=true needs detail=true: a final's words come with its other "
            "times."
        )
    return StreamParams(
        reply_stream=_flag(query, "replyStream", False),
        barge_in=_flag(query, "bargeIn", False),
        silence_ms=_silence_ms(query),
        endpointing_ms=_endpointing_ms(query, caps),
        vad_events=_flag(query, "vadEvents", False),
        language=language,
        encoding=encoding,
        sample_rate=sample_rate,
        send_partials=_flag(query, "sendPartials", True),
        detail=detail,
        word_times=word_times,
        options=options,
    )


def _language(query: dict[str, list[str]], caps: Capabilities) -> str:
    """A code the engine takes, or `auto` where it identifies languages."""
    language = query.get("language", ["en-US"])[-1]
    if language == AUTO and not caps.identifies_language:
        raise ProtocolError(no_identification(caps))
    if language != AUTO and language not in caps.languages:
        raise ProtocolError(
            f"Unsupported language {language!r}: this server accepts "
            f"{_listed(caps.languages)}."
        )
    return language


def _silence_ms(query: dict[str, list[str]]) -> int | None:
    """silenceMs: this session's pause before a batch goes, within the settings'
    bounds (SILENCE_MS_MIN, SILENCE_MS_MAX); None: SILENCE_SECONDS."""
    return _milliseconds(
        query, "silenceMs", settings.SILENCE_MS_MIN, settings.SILENCE_MS_MAX
    )


def _endpointing_ms(query: dict[str, list[str]], caps: Capabilities) -> int | None:
    """endpointingMs: the pause that ends an utterance, within the settings' bounds
    (ENDPOINTING_MS_MIN, ENDPOINTING_MS_MAX), for an engine that can honour it;
    None: the engine's own."""
    value = _milliseconds(
        query,
        "endpointingMs",
        settings.ENDPOINTING_MS_MIN,
        settings.ENDPOINTING_MS_MAX,
    )
    if value is not None and not caps.endpointing:
        raise ProtocolError(
            "Unsupported endpointingMs: this server's engine decides by itself when "
            "an utterance ends; leave endpointingMs out (or send "
            '{"type": "Finalize"} to end one now).'
        )
    return value


def _milliseconds(
    query: dict[str, list[str]], name: str, low: int, high: int
) -> int | None:
    values = query.get(name)
    if not values:
        return None
    text = values[-1]
    allowed = f"an integer from {low} to {high} (milliseconds)"
    if not text.isascii() or not text.isdigit():
        raise ProtocolError(f"Invalid {name} {text!r}: use {allowed}.")
    value = int(text)
    if not low <= value <= high:
        raise ProtocolError(f"Unsupported {name} {value}: use {allowed}.")
    return value


# --- control messages (JSON text frames; docs/protocol.md §15) ---------------------

KEEP_ALIVE: Final = "KeepAlive"
FINALIZE: Final = "Finalize"
CLOSE_STREAM: Final = "CloseStream"
CONTROL_TYPES: Final = frozenset({KEEP_ALIVE, FINALIZE, CLOSE_STREAM})


def control_type(text: str) -> str | None:
    """The type of a control message (`{"type": "KeepAlive"}`…), or None when the
    text is none (not JSON, not an object, another type). Other keys are ignored."""
    if not text.startswith("{"):
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) and kind in CONTROL_TYPES else None


def speech_started_message(timestamp: float) -> str:
    """vadEvents=true: speech began, `timestamp` seconds of the session's audio."""
    return json.dumps({"type": "SpeechStarted", "timestamp": round(timestamp, 3)})


def metadata_message(
    *, session_id: uuid.UUID | None, audio_seconds: float, finals: int, duration: float
) -> str:
    """The last message before the close, after a CloseStream."""
    return json.dumps(
        {
            "type": "Metadata",
            "session_id": str(session_id) if session_id else None,
            "audio_seconds": round(audio_seconds, 3),
            "finals": finals,
            "duration": round(duration, 3),
        }
    )


def error_message(message: str) -> str:
    return json.dumps({"error": message})


def language_message(found: LanguageIdentified) -> str:
    """language=auto: the language the speech was identified as, sent once."""
    return json.dumps(
        {
            "type": "language",
            "language": found.language,
            "probability": found.probability,
        }
    )


def event_message(
    event: TranscriptEvent, *, detail: bool, word_times: bool = False
) -> str:
    """`{"partialTranscript"}` or `{"transcript"}`; timings and speaker only when asked
    (detail), and a final's words with their times too (wordTimes)."""
    key = "partialTranscript" if event.is_partial else "transcript"
    if not detail:
        return json.dumps({key: event.text})
    message = {
        key: event.text,
        "isPartial": event.is_partial,
        "startTime": event.start,
        "endTime": event.end,
        "resultId": event.result_id,
    }
    if event.speaker:
        message["speaker"] = event.speaker
    if word_times and not event.is_partial:
        message["words"] = [
            {"word": word.text, "start": word.start, "end": word.end}
            for word in event.words
        ]
    return json.dumps(message)


# --- resume (resumable=true; docs/protocol.md, "Resume") -------------------------


class ResumeRequest(NamedTuple):
    session_id: uuid.UUID
    after: int  # the last seq the client received


def resumable(query_string: bytes) -> bool:
    """Whether a new session asks to be resumable (ProtocolError if malformed, or
    with a container encoding: its stream cannot be taken up mid-file)."""
    query = _query(query_string)
    wanted = _flag(query, "resumable", False)
    encoding = query.get("encoding", ["pcm"])[-1]
    if wanted and encoding not in SAMPLE_BYTES:
        raise ProtocolError(
            "resumable=true needs an encoding with a fixed byte rate (pcm, mulaw, "
            f"alaw): {encoding[:20]} is a container, whose stream cannot be resumed "
            "in the middle."
        )
    return wanted


def resume_request(query_string: bytes) -> ResumeRequest | None:
    """`?resume=<id>&after=<seq>`, or None when the connection opens a new session."""
    query = _query(query_string)
    if not (ids := query.get("resume")):
        return None
    try:
        session_id = uuid.UUID(ids[-1][:64])
    except ValueError:
        raise ProtocolError("Invalid resume: a session id is expected.") from None
    after_text = query.get("after", ["0"])[-1]
    if not after_text.isascii() or not after_text.isdigit() or len(after_text) > 12:
        raise ProtocolError(f"Invalid after {after_text[:20]!r}: a seq is expected.")
    return ResumeRequest(session_id, int(after_text))


def _query(query_string: bytes) -> dict[str, list[str]]:
    try:
        return parse_qs(query_string.decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError("The query string is not valid UTF-8.") from exc


def session_message(session_id: uuid.UUID, resume_within: float) -> str:
    """The first message of a resumable session."""
    return json.dumps(
        {"type": "session", "id": str(session_id), "resumeWithin": resume_within}
    )


def resumed_message(session_id: uuid.UUID, after: int, audio_seconds: float) -> str:
    """The first message of a resumed session: what follows is every stored message
    after `after`; audio up to `audio_seconds` is the server's (send the rest)."""
    return json.dumps(
        {
            "type": "resumed",
            "id": str(session_id),
            "after": after,
            "audioSeconds": round(audio_seconds, 3),
        }
    )


def numbered(message: str, seq: int) -> str:
    """A JSON object message with its `seq` added. A streamed reply's piece number
    (its own `seq` without resume, §11) moves to `piece`: in a resumable session
    `seq` is the message's place in the session."""
    fields = json.loads(message)
    if "seq" in fields:
        fields["piece"] = fields.pop("seq")
    return json.dumps({**fields, "seq": seq})
