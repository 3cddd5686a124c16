"""AWS Transcribe Streaming through the `amazon-transcribe` SDK (the production engine).

One `start_stream_transcription` (one HTTP/2 stream on its own connection) per session.
Region from AWS_REGION, endpoint from AWS_TRANSCRIBE_ENDPOINT when set, credentials from
the standard AWS chain (environment, profile, web identity, container, instance), TLS
trust from the system store or SSL_CERT_FILE. Service errors become EngineErrors with
the close code the client sees; nothing of the SDK's stack trace reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from amazon_transcribe import exceptions as aws_errors
from amazon_transcribe.auth import CredentialResolver
from amazon_transcribe.client import TranscribeStreamingClient
from amazon_transcribe.endpoints import StaticEndpointResolver
from amazon_transcribe.model import StartStreamTranscriptionEventStream
from amazon_transcribe.model import TranscriptEvent as AwsTranscriptEvent
from awscrt.exceptions import AwsCrtError
from django.conf import settings

from transcription.close_codes import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TRY_AGAIN,
)
from transcription.engines import aws_compat
from transcription.engines.aws_compat import SessionHttp
from transcription.engines.aws_languages import (
    ENCODINGS,
    LANGUAGES,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
)
from transcription.engines.early_finals import EarlyFinals
from transcription.engines.options import parse_flag
from transcription.engines.stream import BacklogStream
from transcription.engines.transcode import TRANSCODED, open_transcoded
from transcription.engines.types import (
    Capabilities,
    EngineError,
    SpeechStarted,
    StreamParams,
    TranscriptEvent,
    Word,
)

if TYPE_CHECKING:
    from transcription.engines import SpeechToText

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 10.0  # connect, TLS, credentials and the response headers
CLOSE_TIMEOUT_SECONDS = 5.0
COALESCE_SECONDS = 0.05  # tiny frames wait this long to travel together
MAX_EVENT_BYTES = 32 * 1024  # the service's largest audio event
_NO_AUDIO = re.compile(r"no new audio was received", re.IGNORECASE)
# fullmatch: `$` would also match before a trailing newline ("v1\n").
_NAME = re.compile(r"[0-9A-Za-z._-]{1,200}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(" or ".join(repr(a) for a in allowed))
        return value

    return parse


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("a name of letters, digits, '.', '_' or '-'")
    return value


def _names(value: str) -> list[str]:
    return [_name(part) for part in value.split(",")]


# Query parameter -> (SDK keyword, parser): what users ask AWS for, passed through.
OPTIONS: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "showSpeakerLabel": ("show_speaker_label", parse_flag),
    "enablePartialResultsStabilization": (
        "enable_partial_results_stabilization",
        parse_flag,
    ),
    "partialResultsStability": (
        "partial_results_stability",
        _choice("low", "medium", "high"),
    ),
    "vocabularyName": ("vocabulary_name", _name),
    "vocabularyFilterName": ("vocab_filter_name", _name),
    "vocabularyFilterMethod": (
        "vocab_filter_method",
        _choice("remove", "mask", "tag"),
    ),
    "languageModelName": ("language_model_name", _name),
    "contentRedactionType": ("content_redaction_type", _choice("PII")),
    "contentIdentificationType": ("content_identification_type", _choice("PII")),
    "piiEntityTypes": ("pii_entity_types", _names),
}


def sdk_options(options: Mapping[str, str]) -> dict[str, Any]:
    """The SDK keywords for the pass-through query parameters; EngineError if bad."""
    keywords = {}
    for name, value in options.items():
        if name not in OPTIONS:
            continue
        keyword, parse = OPTIONS[name]
        try:
            keywords[keyword] = parse(value)
        except ValueError as exc:
            raise EngineError(
                f"Invalid {name} {value[:50]!r}: use {exc}.",
                close_code=CLOSE_POLICY,
                kind="parameters",
            ) from None
    return keywords


def engine_error(exc: BaseException) -> EngineError:
    """What the client is told about an SDK failure (never the stack trace)."""
    detail = str(getattr(exc, "message", "") or "")[:200]
    name = type(exc).__name__
    if isinstance(exc, aws_errors.BadRequestException) and _NO_AUDIO.search(detail):
        return EngineError(
            "The transcription service ended the stream: no audio for 15 seconds.",
            close_code=CLOSE_NORMAL,
            kind="aws_timeout",
        )
    if isinstance(exc, aws_errors.LimitExceededException):
        return EngineError(
            f"Transcription service limit exceeded ({name}: {detail}); "
            "try again later.",
            close_code=CLOSE_TRY_AGAIN,
            kind="aws_limit",
        )
    if isinstance(
        exc, aws_errors.BadRequestException | aws_errors.SerializationException
    ):
        return EngineError(
            f"Transcription service refused the request ({name}: {detail}).",
            close_code=CLOSE_POLICY,
            kind="aws_bad_request",
        )
    if isinstance(exc, aws_errors.ServiceException):
        return EngineError(
            f"Transcription service error ({name}: {detail}).",
            close_code=CLOSE_SERVER_ERROR,
            kind="aws_service",
        )
    if isinstance(exc, aws_errors.CredentialsException) or (
        isinstance(exc, AwsCrtError) and exc.name.startswith("AWS_AUTH_")
    ):
        return EngineError(
            "Transcription service unavailable: AWS credentials could not be resolved.",
            close_code=CLOSE_SERVER_ERROR,
            kind="aws_credentials",
        )
    if isinstance(exc, TimeoutError):
        return EngineError(
            "The transcription service did not answer in time.",
            close_code=CLOSE_SERVER_ERROR,
            kind="aws_connection",
        )
    if isinstance(exc, AwsCrtError | aws_errors.HTTPException | OSError):
        cause = exc.name if isinstance(exc, AwsCrtError) else name
        return EngineError(
            f"Could not reach the transcription service ({cause}).",
            close_code=CLOSE_SERVER_ERROR,
            kind="aws_connection",
        )
    return EngineError(
        "Transcription failed: engine error.",
        close_code=CLOSE_SERVER_ERROR,
        kind="engine",
    )


def _event_sizes(params: StreamParams) -> tuple[int, int]:
    """(smallest event worth sending at once, largest allowed) in bytes."""
    if params.encoding != "pcm":
        return 1024, MAX_EVENT_BYTES
    per_second = params.sample_rate * 2
    largest = min(MAX_EVENT_BYTES, per_second)  # ≤ 1 s of audio per event
    return per_second // 20, largest - largest % 2


class AwsTranscribeStream(BacklogStream):
    """One Transcribe stream: a task sends the audio, a task reads the results."""

    def __init__(
        self,
        stream: StartStreamTranscriptionEventStream,
        http: SessionHttp,
        params: StreamParams,
    ):
        super().__init__(params)
        self._stream = stream
        self._http = http
        self._session_id = params.session_id
        self._min_event, self._max_event = _event_sizes(params)
        self._early = EarlyFinals()  # Finalize: the service has no call for it
        self._vad_events = params.vad_events
        self._word_times = params.word_times
        self._last_result = ""  # its first event is the onset (vadEvents)
        self._closed = False
        self._sender = asyncio.create_task(self._send())
        self._reader = asyncio.create_task(self._read())

    async def finalize(self) -> None:
        """The partial in flight made final now (see `early_finals`)."""
        if (final := self._early.finalize()) is not None:
            self._events.put_nowait(final)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backlog.close()
        self._sender.cancel()
        # Closing the connection completes the CRT's stream, so the reader's pending
        # read returns and it ends by itself; cancelling it instead would leave the
        # CRT to resolve a cancelled future.
        self._http.close()
        _, pending = await asyncio.wait(
            {self._sender, self._reader}, timeout=CLOSE_TIMEOUT_SECONDS
        )
        for task in pending:
            task.cancel()
        for task in (self._sender, self._reader):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _send(self) -> None:
        audio = self._stream.input_stream
        backlog = self._backlog
        try:
            while True:
                await backlog.readable()
                if len(backlog) < self._min_event and not backlog.ended:
                    await asyncio.sleep(COALESCE_SECONDS)  # let tiny frames gather
                while backlog:
                    piece = backlog.take(self._max_event)
                    await audio.send_audio_event(audio_chunk=piece)
                if backlog.ended:
                    break
            await audio.end_stream()
        except Exception as exc:
            self._fail(exc)

    async def _read(self) -> None:
        try:
            async for event in self._stream.output_stream:
                if isinstance(event, AwsTranscriptEvent):
                    for item in _transcript_events(event, self._word_times):
                        self._told(item)
            if not self._closed:
                await self._http.check_completed()
        except Exception as exc:
            self._fail(exc)
        finally:
            self._end_events()

    def _told(self, item: TranscriptEvent) -> None:
        # No VAD here: a result's first event is when the service heard speech.
        if self._vad_events and item.result_id != self._last_result:
            self._events.put_nowait(SpeechStarted(timestamp=item.start or 0.0))
        self._last_result = item.result_id
        if (told := self._early.told(item)) is not None:
            self._events.put_nowait(told)

    def _fail(self, exc: Exception) -> None:
        error = engine_error(exc)
        if self._closed:
            return
        log = logger.info if error.close_code == CLOSE_NORMAL else logger.warning
        log("session %s: Transcribe %s: %r", self._session_id, error.kind, exc)
        self._events.put_nowait(error)


def _transcript_events(
    event: AwsTranscriptEvent, word_times: bool = False
) -> list[TranscriptEvent]:
    """Partials and finals in an AWS TranscriptEvent; empty results are skipped.
    `word_times`: with their words (partials too: a Finalize makes one final)."""
    found = []
    for result in event.transcript.results or ():
        if not result.alternatives:
            continue
        alternative = result.alternatives[0]
        text = (alternative.transcript or "").strip()
        if text:
            found.append(
                TranscriptEvent(
                    text=text,
                    is_partial=bool(result.is_partial),
                    start=result.start_time,
                    end=result.end_time,
                    result_id=result.result_id or "",
                    speaker=_main_speaker(alternative.items),
                    words=_words(alternative.items) if word_times else (),
                )
            )
    return found


def _words(items) -> tuple[Word, ...]:
    """A result's words and their times (its items of type pronunciation: the
    others are punctuation, which has no time of its own)."""
    return tuple(
        Word(item.content, item.start_time, item.end_time)
        for item in items or ()
        if item.item_type == "pronunciation"
        and item.content
        and item.start_time is not None
        and item.end_time is not None
    )


def _main_speaker(items) -> str:
    """The speaker of most of a result's words (AWS labels words, not results)."""
    speakers = Counter(item.speaker for item in items or () if item.speaker)
    return speakers.most_common(1)[0][0] if speakers else ""


class AwsTranscribeEngine:
    """AWS Transcribe Streaming: one `start_stream_transcription` per session."""

    name = "aws"
    capabilities = Capabilities(
        languages=LANGUAGES,
        # AWS's own (pcm, ogg-opus, flac) passed through; the others transcoded.
        encodings=ENCODINGS + tuple(e for e in TRANSCODED if e not in ENCODINGS),
        min_sample_rate=MIN_SAMPLE_RATE,
        max_sample_rate=MAX_SAMPLE_RATE,
        options=tuple(OPTIONS),
    )

    def __init__(self) -> None:
        self._credentials: CredentialResolver | None = None

    def client(self) -> tuple[TranscribeStreamingClient, SessionHttp]:
        """A client on its own HTTP/2 connection (closing it ends only this session)."""
        endpoint = settings.AWS_TRANSCRIBE_ENDPOINT
        client, http, self._credentials = aws_compat.session_client(
            region=settings.AWS_REGION,
            endpoint_resolver=StaticEndpointResolver(endpoint) if endpoint else None,
            credentials=self._credentials,
        )
        return client, http

    async def open(self, params: StreamParams) -> SpeechToText:
        """A Transcribe stream; an encoding AWS lacks is decoded to PCM first."""
        if params.encoding not in ENCODINGS:
            return await open_transcoded(self._open_native, params)
        return await self._open_native(params)

    async def _open_native(self, params: StreamParams) -> AwsTranscribeStream:
        keywords = sdk_options(params.options)
        if _is_uuid(params.session_id):
            keywords["session_id"] = params.session_id
        client, http = self.client()
        try:
            stream = await asyncio.wait_for(
                client.start_stream_transcription(
                    language_code=params.language,
                    media_sample_rate_hz=params.sample_rate,
                    media_encoding=params.encoding,
                    **keywords,
                ),
                START_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            http.close()
            error = engine_error(exc)
            logger.warning(
                "session %s: Transcribe start failed, %s: %r",
                params.session_id or "-",
                error.kind,
                exc,
            )
            raise error from None
        return AwsTranscribeStream(stream, http, params)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
