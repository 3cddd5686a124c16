"""Test doubles for the voice loop: a words engine and real loopback receivers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from transcription.engines import Capabilities, StreamParams, TranscriptEvent
from transcription.voice_loop.tts import TtsError

_END = None


class WordsStream:
    """Each binary frame, read as UTF-8, is one final transcript (one that starts
    with `~` is a partial of the rest)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()

    async def send_audio(self, chunk: bytes) -> None:
        text = chunk.decode("utf-8")
        partial = text.startswith("~")
        self._queue.put_nowait(
            TranscriptEvent(text=text.removeprefix("~"), is_partial=partial)
        )

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


class StreamingTcpReceiver(TcpReceiver):
    """A receiver that honours `"stream": true`: `script(document)` gives its reply
    as (delay in seconds, line) pairs, each line written after its delay, then it
    closes. `written` keeps (line, time.monotonic()) of each line as it went out.
    A document without the flag gets the lines joined, as one line, at once."""

    def __init__(self, script: Callable[[dict], list[tuple[float, str]]]):
        super().__init__()
        self.script = script
        self.written: list[tuple[str, float]] = []

    async def _handle(self, reader, writer) -> None:
        raw = await asyncio.wait_for(reader.read(), 5)
        document = json.loads(raw)
        self.documents.append(document)
        steps = self.script(document)
        if document.get("stream") is not True:
            steps = [(sum(d for d, _ in steps), " ".join(line for _, line in steps))]
        try:
            for delay, line in steps:
                await asyncio.sleep(delay)
                writer.write(json.dumps({"message": line}).encode() + b"\n")
                await writer.drain()
                self.written.append((line, time.monotonic()))
        except (ConnectionError, asyncio.CancelledError):
            pass  # the worker stopped reading (barge-in), or the test ended
        finally:
            writer.close()


class StreamingHttpReceiver(StreamingTcpReceiver):
    """The same over HTTP/1.1: a chunked body, one line per chunk."""

    async def _handle(self, reader, writer) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(
            line.lower().split(": ", 1) for line in lines[1:] if ": " in line
        )
        body = await reader.readexactly(int(headers["content-length"]))
        document = json.loads(body)
        self.documents.append(document)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        try:
            for delay, line in self.script(document):
                await asyncio.sleep(delay)
                data = json.dumps({"message": line}).encode() + b"\n"
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
                self.written.append((line, time.monotonic()))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reply"
