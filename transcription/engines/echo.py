"""The echo engine: no recognition, one partial per frame (for load tests).

Each audio chunk yields a partial naming how many bytes arrived so far; END_OF_STREAM
yields one final. Its cost is near zero, so a benchmark with it measures the relay.
"""

import asyncio
from collections.abc import AsyncIterator

from transcription.engines import Capabilities, StreamParams, TranscriptEvent

_END = None


class EchoStream:
    def __init__(self, params: StreamParams):
        self._bytes_per_second = params.sample_rate * 2
        self._received = 0
        self._queue: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()

    async def send_audio(self, chunk: bytes) -> None:
        self._received += len(chunk)
        self._queue.put_nowait(
            TranscriptEvent(text=f"{self._received} bytes", is_partial=True)
        )

    async def end_audio(self) -> None:
        seconds = self._received / self._bytes_per_second
        self._queue.put_nowait(
            TranscriptEvent(
                text=f"received {self._received} bytes",
                is_partial=False,
                start=0.0,
                end=round(seconds, 3),
            )
        )
        self._queue.put_nowait(_END)

    async def events(self) -> AsyncIterator[TranscriptEvent]:
        while (event := await self._queue.get()) is not _END:
            yield event

    async def aclose(self) -> None:
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
