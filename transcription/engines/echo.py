"""The echo engine: no recognition, one partial per frame (for load tests).

Each audio chunk yields a partial naming how many bytes arrived so far; END_OF_STREAM
yields one final, and so does a Finalize (the session goes on). With vadEvents every
audio is speech: the first chunk after the start or a Finalize is an onset.
Its cost is near zero, so a benchmark with it measures the relay.
It holds no audio, only its partials: that queue is bounded, so a sender outrunning
the relay waits like one outrunning a real engine.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from transcription.engines.types import (
    Capabilities,
    SpeechStarted,
    StreamParams,
    TranscriptEvent,
)

_END = None
MAX_QUEUED_EVENTS = 256


class EchoStream:
    """Not a BacklogStream: what it queues is its partials, and aclose() ends them."""

    def __init__(self, params: StreamParams):
        self._bytes_per_second = params.sample_rate * 2
        self._received = 0
        self._final_at = 0  # bytes received at the last final
        self._vad_events = params.vad_events
        self._queue: asyncio.Queue[TranscriptEvent | SpeechStarted | None] = (
            asyncio.Queue(MAX_QUEUED_EVENTS)
        )
        self._closed = False

    async def send_audio(self, chunk: bytes) -> None:
        if self._closed:
            return
        if self._vad_events and chunk and self._received == self._final_at:
            onset = self._received / self._bytes_per_second
            await self._queue.put(SpeechStarted(timestamp=round(onset, 3)))
        self._received += len(chunk)
        await self._queue.put(
            TranscriptEvent(text=f"{self._received} bytes", is_partial=True)
        )

    def backlog_full(self) -> bool:
        return self._queue.full()

    async def end_audio(self) -> None:
        await self._queue.put(self._final())
        await self._queue.put(_END)

    async def finalize(self) -> None:
        if not self._closed and self._received > self._final_at:
            await self._queue.put(self._final())

    def _final(self) -> TranscriptEvent:
        start = self._final_at / self._bytes_per_second
        self._final_at = self._received
        return TranscriptEvent(
            text=f"received {self._received} bytes",
            is_partial=False,
            start=round(start, 3),
            end=round(self._received / self._bytes_per_second, 3),
        )

    async def events(self) -> AsyncIterator[TranscriptEvent | SpeechStarted]:
        while not self._closed and (event := await self._queue.get()) is not _END:
            yield event

    async def aclose(self) -> None:
        self._closed = True
        # Emptied, so that a sender waiting for room returns and a reader ends.
        while not self._queue.empty():
            self._queue.get_nowait()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_END)


class EchoEngine:
    name = "echo"
    capabilities = Capabilities(
        languages=("en-US",),
        encodings=("pcm",),
        min_sample_rate=8000,
        max_sample_rate=48000,
    )

    async def open(self, params: StreamParams) -> EchoStream:
        return EchoStream(params)
