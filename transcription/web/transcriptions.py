"""POST /v1/audio/transcriptions: OpenAI's transcription endpoint, over our sessions.

Multipart fields as OpenAI's: `file` (required), `model` (required, any name: this
server has one engine), `language` (ISO 639-1 such as `en`, this server's own codes
such as `en-US`, or `auto` where the engine identifies it), `response_format` (json,
text, srt, vtt, verbose_json), `timestamp_granularities[]` (`segment`, the default,
and/or `word`: verbose_json's `words`, with verbose_json only, as OpenAI's);
`prompt` and `temperature` are accepted and ignored (the engines take none).
Authenticated by an API token (`Authorization: Bearer`), recorded as a session
(transcription.streaming.files).
Errors in OpenAI's shape, with the WebSocket protocol's texts where it has them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.csrf import csrf_exempt

from accounts.api import Refused, api_error, bearer_authenticate, request_address
from transcription.audio_files import AudioFileError, PcmAudio, decode_upload
from transcription.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
)
from transcription.engines import Capabilities, get_engine
from transcription.streaming.access import Grant
from transcription.streaming.admission import Client
from transcription.streaming.files import FileResult, Segment, transcribe_file
from transcription.streaming.protocol import AUTO, no_identification

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MAX_FIELD_CHARS = 256
GRANULARITIES = ("word", "segment")
# OpenAI's client sends the list as `timestamp_granularities[]` (one field a value).
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")


def too_big(size: int | None = None) -> JsonResponse:
    said = f" ({size} bytes)" if size is not None else ""
    return api_error(
        413,
        f"The file is too large{said}: the limit is {settings.MAX_UPLOAD_BYTES} bytes "
        "(MAX_UPLOAD_BYTES).",
        param="file",
        code="file_too_large",
    )


def _language(value: str, languages: tuple[str, ...]) -> str | None:
    """This server's code for `value`: itself, or the first of its region codes."""
    if value in languages:
        return value
    base = value.lower()
    return next(
        (code for code in languages if code.lower().split("-")[0] == base), None
    )


class BadUpload(Exception):
    """The request cannot be transcribed: answer with `response`."""

    def __init__(self, response: JsonResponse) -> None:
        super().__init__(response.content.decode())
        self.response = response


def _bad(message: str, param: str, code: str | None = None) -> BadUpload:
    return BadUpload(api_error(400, message, param=param, code=code))


@dataclasses.dataclass(frozen=True)
class Upload:
    """A request's fields, checked."""

    file: UploadedFile
    response_format: str
    language: str
    granularities: frozenset[str] = frozenset({"segment"})

    @property
    def word_times(self) -> bool:
        return "word" in self.granularities


def _fields(request: HttpRequest):
    return request.POST, request.FILES


def _checked(post, files, caps: Capabilities) -> Upload:
    """The fields, checked in OpenAI's order of importance; raises BadUpload."""
    upload = files.get("file")
    if upload is None:
        raise _bad("Missing the file: send it as the `file` field.", "file")
    if upload.size > settings.MAX_UPLOAD_BYTES:
        raise BadUpload(too_big(upload.size))
    for name in ("model", "language", "response_format"):
        if len(post.get(name, "")) > MAX_FIELD_CHARS:
            raise _bad(
                f"Parameter {name} is too long: at most {MAX_FIELD_CHARS}.", name
            )
    if not post.get("model", "").strip():
        raise _bad("Missing the model: send `model`.", "model")
    response_format = post.get("response_format", "json") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise _bad(
            f"Unsupported response_format {response_format!r}: use "
            f"{', '.join(RESPONSE_FORMATS)}.",
            "response_format",
        )
    asked = post.get("language", "").strip()
    languages = caps.languages
    if asked == AUTO:
        if not caps.identifies_language:
            raise _bad(no_identification(caps), "language")
        language: str | None = AUTO
    else:
        language = _language(asked, languages) if asked else languages[0]
    if language is None:
        shown = ", ".join(languages[:12])
        more = " and more" if len(languages) > 12 else ""
        raise _bad(
            f"Unsupported language {asked!r}: this server accepts {shown}{more} "
            "(or their ISO 639-1 codes).",
            "language",
        )
    return Upload(
        file=upload,
        response_format=response_format,
        language=language,
        granularities=_granularities(post, response_format),
    )


def _granularities(post, response_format: str) -> frozenset[str]:
    """timestamp_granularities[]: `segment` unless the client names others; `word`
    only with verbose_json (the only format with a place for words)."""
    asked = [value for name in GRANULARITY_FIELDS for value in post.getlist(name)]
    for value in asked:
        if value not in GRANULARITIES:
            raise _bad(
                f"Unsupported timestamp_granularities value {value[:50]!r}: use "
                "word and/or segment.",
                "timestamp_granularities",
            )
    if "word" in asked and response_format != "verbose_json":
        raise _bad(
            "timestamp_granularities[]=word needs response_format=verbose_json: "
            "only verbose_json has word times.",
            "timestamp_granularities",
        )
    return frozenset(asked) or frozenset({"segment"})


async def _decoded(upload: UploadedFile) -> PcmAudio:
    """The file's audio (decoded in a thread); raises BadUpload."""
    data = await sync_to_async(upload.read)()
    try:
        audio = await asyncio.to_thread(decode_upload, data)
    except AudioFileError as exc:
        raise _bad(f"Could not read the audio: {exc}.", "file") from None
    if audio.seconds > settings.MAX_UPLOAD_SECONDS:
        raise _bad(
            f"The audio is too long ({audio.seconds:.0f} s): the limit is "
            f"{settings.MAX_UPLOAD_SECONDS:g} seconds (MAX_UPLOAD_SECONDS).",
            "file",
            code="audio_too_long",
        )
    return audio


@csrf_exempt  # programs with a Bearer token; no cookie authenticates here
async def audio_transcriptions(request: HttpRequest) -> HttpResponse:
    """Transcribe one uploaded file; the answer in `response_format`."""
    if request.method != "POST":
        response = api_error(405, "Use POST.", code="method_not_allowed")
        response["Allow"] = "POST"
        return response
    engine = get_engine()
    try:
        token = await bearer_authenticate(request)
        post, files = await sync_to_async(_fields)(request)
        upload = _checked(post, files, engine.capabilities)
        audio = await _decoded(upload.file)
    except Refused as refused:
        return refused.response
    except RequestDataTooBig:
        return too_big()
    except BadUpload as bad:
        return bad.response
    client = Client(
        auth_method="token",
        user=token.user,
        token=token,
        address=request_address(request),
        grant=Grant(token_id=token.pk, user_id=token.user_id),
    )
    result = await transcribe_file(
        client=client,
        audio=audio,
        language=upload.language,
        engine=engine,
        word_times=upload.word_times,
    )
    logger.info(
        "session %s: a file over REST (%.1f s of audio, %s): close %d",
        result.session_id,
        audio.seconds,
        upload.response_format,
        result.close_code,
    )
    if result.close_code != CLOSE_NORMAL:
        return _session_error(result)
    answer = _formatted(result, audio, upload)
    answer["X-Session-Id"] = result.session_id
    add_never_cache_headers(answer)
    return answer


def _session_error(result: FileResult) -> JsonResponse:
    """A session that did not end 1000: its own error text, an HTTP status."""
    message = result.error or "Transcription failed: server error."
    if result.close_code in (CLOSE_TRY_AGAIN, CLOSE_GOING_AWAY):
        status, kind, code = 503, "server_error", "unavailable"
    elif result.close_code == CLOSE_POLICY:
        if message.startswith("Too many concurrent sessions"):
            status, kind, code = 429, "rate_limit_exceeded", "too_many_sessions"
        else:
            status, kind, code = 400, "invalid_request_error", "refused"
    else:
        status, kind, code = 500, "server_error", "transcription_failed"
    response = api_error(status, message, type=kind, code=code)
    if result.session_id:
        response["X-Session-Id"] = result.session_id
    return response


def _formatted(result: FileResult, audio: PcmAudio, upload: Upload) -> HttpResponse:
    response_format = upload.response_format
    if response_format == "json":
        return JsonResponse({"text": result.text})
    if response_format == "text":
        return HttpResponse(
            result.text + "\n", content_type="text/plain; charset=utf-8"
        )
    segments = _timed(result.segments, audio.seconds)
    if response_format == "srt":
        return HttpResponse(srt(segments), content_type="text/plain; charset=utf-8")
    if response_format == "vtt":
        return HttpResponse(vtt(segments), content_type="text/vtt; charset=utf-8")
    answer: dict[str, object] = {
        "task": "transcribe",
        "language": result.language or upload.language,
        "duration": round(audio.seconds, 3),
        "text": result.text,
    }
    # As OpenAI's: words alone when only they are asked for, segments otherwise.
    if "segment" in upload.granularities:
        answer["segments"] = [
            {
                "id": index,
                "seek": 0,
                "start": start,
                "end": end,
                "text": text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for index, (start, end, text) in enumerate(segments)
        ]
    if upload.word_times:
        answer["words"] = _words(result.segments, audio.seconds)
    return JsonResponse(answer)


def _words(segments: list[Segment], duration: float) -> list[dict[str, object]]:
    """Every final's words in order, as OpenAI's `words`, within the file."""
    return [
        {
            "word": word.word,
            "start": round(min(word.start, duration), 3),
            "end": round(min(max(word.end, word.start), duration), 3),
        }
        for segment in segments
        for word in segment.words
    ]


def _timed(segments: list[Segment], duration: float) -> list[tuple[float, float, str]]:
    """Each final with a start and an end: an engine that gives none gets the time
    since the previous final's end (the file's end for the last)."""
    timed = []
    previous_end = 0.0
    for index, segment in enumerate(segments):
        start = segment.start if segment.start is not None else previous_end
        last = index == len(segments) - 1
        end = segment.end if segment.end is not None else (duration if last else start)
        end = max(end, start)
        timed.append((round(start, 3), round(end, 3), segment.text.strip()))
        previous_end = end
    return timed


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[tuple[float, float, str]]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    cues = [
        f"{index}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
        for index, (start, end, text) in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: list[tuple[float, float, str]]) -> str:
    """WebVTT: the header, then `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    cues = [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n"
        for start, end, text in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
