"""Test doubles for the voice loop: a words engine and real loopback receivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from transcription.engines import Capabilities, StreamParams, TranscriptEvent
from transcription.voice_loop.tts import TtsError

_END = None


class WordsStream:
    """Each binary frame, read as UTF-8, is one final transcript."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()

    async def send_audio(self, chunk: bytes) -> None:
        text = chunk.decode("utf-8")
        self._queue.put_nowait(TranscriptEvent(text=text, is_partial=False))

    def backlog_full(self) -> bool:
        return False

    async def end_audio(self) -> None:
        self._queue.put_nowait(_END)

    async def events(self):
        while (event := await self._queue.get()) is not _END:
            yield event

    async def aclose(self) -> None:
        self._queue.put_nowait(_END)


class WordsEngine:
    """TRANSCRIPTION_ENGINE=tests.transcription.voice_fakes.WordsEngine."""

    name = "words"
    capabilities = Capabilities(
        languages=("en-US",),
        encodings=("pcm",),
        min_sample_rate=8000,
        max_sample_rate=48000,
    )

    async def open(self, params: StreamParams) -> WordsStream:
        return WordsStream()


def message_reply(document: dict) -> bytes:
    texts = " / ".join(t["text"] for t in document["transcriptions"])
    return json.dumps({"message": f"You said {texts}"}).encode() + b"\n"


class TcpReceiver:
    """A receiver on a loopback port that reads each request to EOF (so the client
    must half-close), records the document and answers `reply(document)`."""

    def __init__(self, reply: Callable[[dict], bytes] = message_reply):
        self.reply = reply
        self.documents: list[dict] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> TcpReceiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer) -> None:
        raw = await asyncio.wait_for(reader.read(), 5)  # to EOF: the half-close
        assert raw.endswith(b"\n")
        assert raw.count(b"\n") == 1
        document = json.loads(raw)
        self.documents.append(document)
        writer.write(self.reply(document))
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


class HttpReceiver(TcpReceiver):
    """The same, as a minimal HTTP/1.1 server answering each POST (with `headers`
    added to the answer); the request headers of each are kept in `requests`."""

    def __init__(self, reply=message_reply, status: int = 200, headers=None):
        super().__init__(reply)
        self.status = status
        self.headers: dict[str, str] = headers or {}
        self.requests: list[dict[str, str]] = []

    async def _handle(self, reader, writer) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("POST ")
        headers = dict(
            line.lower().split(": ", 1) for line in lines[1:] if ": " in line
        )
        self.requests.append(headers)
        assert headers["content-type"].startswith("application/json")
        body = await reader.readexactly(int(headers["content-length"]))
        document = json.loads(body)
        self.documents.append(document)
        payload = self.reply(document)
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        writer.write(
            f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(payload)}\r\n"
            f"{extra}Connection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reply"


class BrokenSpeech:
    """A TTS_ENGINE that always fails."""

    name = "broken"

    async def synthesize(self, text: str, *, language: str) -> bytes:
        raise TtsError("speaker unplugged")
