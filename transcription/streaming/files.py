"""A whole file as one session: the REST endpoint's path through a `StreamSession`.

The file is streamed to the session as a client would stream it (frames of at most
MAX_FRAME_BYTES, then END_OF_STREAM), over a transport that keeps what the session
says: admission, quotas, the record (AudioSession, a Transcript per final), the
engine, timeouts and shutdown are a WebSocket session's, and so are the error texts.
The transport has flow control (`gone` is an event), so a file faster than its
engine waits for room in the backlog rather than being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from urllib.parse import urlencode

from channels.layers import get_channel_layer
from django.conf import settings

from transcription.audio_files import PcmAudio
from transcription.engines import TranscriptionEngine
from transcription.streaming.admission import Client
from transcription.streaming.session import StreamSession

FRAME_SECONDS = 1.0  # audio per frame handed to the session


@dataclass(frozen=True)
class TimedWord:
    """A word of a final and its times (seconds from the file's start)."""

    word: str
    start: float
    end: float


@dataclass
class Segment:
    """One final, with its times (seconds from the start, when the engine says) and,
    when asked, its words'."""

    text: str
    start: float | None
    end: float | None
    words: list[TimedWord] = field(default_factory=list)


@dataclass
class FileResult:
    """What the session said: its finals, and its close."""

    session_id: str
    segments: list[Segment] = field(default_factory=list)
    close_code: int = 1006
    error: str = ""
    language: str = ""  # language=auto: the language identified

    @property
    def text(self) -> str:
        return " ".join(segment.text.strip() for segment in self.segments).strip()


class _KeepingTransport:
    """A session's Transport that keeps its messages; `closed` when it closes."""

    def __init__(self, channel_layer: object, channel_name: str) -> None:
        self.channel_layer = channel_layer
        self.channel_name = channel_name
        self.gone: asyncio.Event | None = asyncio.Event()  # never set: flow control
        self.messages: list[dict] = []
        self.closed = asyncio.Event()
        self.close_code = 1006

    async def send_text(self, text: str) -> None:
        self.messages.append(json.loads(text))

    async def close(self, code: int, reason: str | None) -> None:
        self.close_code = code
        self.closed.set()


def query_for(audio: PcmAudio, language: str, *, word_times: bool = False) -> bytes:
    """The query a WebSocket client would send for this file (and its words'
    times: only when asked, since they cost Whisper a pass per final)."""
    query = {
        "language": language,
        "encoding": "pcm",
        "sampleRate": str(audio.sample_rate),
        "sendPartials": "false",
        "detail": "true",
    }
    if word_times:
        query["wordTimes"] = "true"
    return urlencode(query).encode()


async def transcribe_file(
    *,
    client: Client,
    audio: PcmAudio,
    language: str,
    engine: TranscriptionEngine,
    word_times: bool = False,
) -> FileResult:
    """Run `audio` through one session of `engine` for `client`; its finals (with
    their words' times when `word_times`) and close.

    Cancelled (the HTTP client left), the session ends as a client that left.
    """
    layer = get_channel_layer()
    name = await layer.new_channel() if layer is not None else "rest"
    transport = _KeepingTransport(layer, name)
    session = StreamSession(
        client=client,
        query_string=query_for(audio, language, word_times=word_times),
        engine=engine,
    )
    try:
        await session.open(transport)
        frame = min(
            settings.MAX_FRAME_BYTES, int(FRAME_SECONDS * audio.sample_rate) * 2
        )
        for start in range(0, len(audio.data), frame):
            if not session.takes_frames or transport.closed.is_set():
                break
            await session.receive_audio(audio.data[start : start + frame])
        await session.end_audio()
        await transport.closed.wait()
        if session.supervisor is not None:
            await session.supervisor  # the record written, the engine let go
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(session.transport_lost(1001))
        raise
    finally:
        session.release()
    return _result(session, transport)


def _result(session: StreamSession, transport: _KeepingTransport) -> FileResult:
    result = FileResult(
        session_id=str(session.session_id or ""), close_code=transport.close_code
    )
    for message in transport.messages:
        if "transcript" in message:
            result.segments.append(
                Segment(
                    text=message["transcript"],
                    start=message.get("startTime"),
                    end=message.get("endTime"),
                    words=[
                        TimedWord(word["word"], word["start"], word["end"])
                        for word in message.get("words", ())
                    ],
                )
            )
        elif message.get("type") == "language":
            result.language = message["language"]
        elif "error" in message:
            result.error = message["error"]
    return result
