"""The seed-004 wire protocol: query parameters, close codes, messages (pure)."""

import json
from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import parse_qs

from transcription.engines import Capabilities, StreamParams, TranscriptEvent

END_OF_STREAM: Final = "END_OF_STREAM"

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013


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


KNOWN_PARAMETERS: Final = frozenset(
    {"token", "language", "encoding", "sampleRate", "sendPartials", "detail"}
)


class ProtocolError(Exception):
    """A client mistake: one {"error"} with this message, then close 1008."""


def parse_flag(value: str) -> bool:
    """A boolean query parameter: 'true' or 'false', nothing else (ValueError)."""
    if value not in ("true", "false"):
        raise ValueError("'true' or 'false'")
    return value == "true"


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


def parse_params(query_string: bytes, caps: Capabilities) -> StreamParams:
    """Validate the connection's query parameters against the engine's capabilities."""
    try:
        query = parse_qs(query_string.decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError("The query string is not valid UTF-8.") from exc

    language = query.get("language", ["en-US"])[-1]
    if language not in caps.languages:
        raise ProtocolError(
            f"Unsupported language {language!r}: this server accepts "
            f"{_listed(caps.languages)}."
        )
    encoding = query.get("encoding", ["pcm"])[-1]
    if encoding not in caps.encodings:
        raise ProtocolError(
            f"Unsupported encoding {encoding!r}: this server accepts "
            f"{_listed(caps.encodings)}."
        )
    rate_text = query.get("sampleRate", ["16000"])[-1]
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
    return StreamParams(
        language=language,
        encoding=encoding,
        sample_rate=sample_rate,
        send_partials=_flag(query, "sendPartials", True),
        detail=_flag(query, "detail", False),
        options=options,
    )


def error_message(message: str) -> str:
    return json.dumps({"error": message})


def event_message(event: TranscriptEvent, *, detail: bool) -> str:
    """`{"partialTranscript"}` or `{"transcript"}`; timings and speaker only when asked
    (detail)."""
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
    return json.dumps(message)
