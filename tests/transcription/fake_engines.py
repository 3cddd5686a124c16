"""Engines for consumer tests, loaded by dotted path like any TRANSCRIPTION_ENGINE."""

import asyncio

from transcription.engines import (
    Capabilities,
    EngineError,
    StreamParams,
    TranscriptEvent,
)

CAPS = Capabilities(
    languages=("en-US",),
    encodings=("pcm",),
    min_sample_rate=8000,
    max_sample_rate=48000,
)


class _Stream:
    def __init__(self, flush):
        self._flush = flush
        self._ended = asyncio.Event()

    async def send_audio(self, chunk: bytes) -> None:
        pass

    def backlog_full(self) -> bool:
        return False

    async def end_audio(self) -> None:
        self._ended.set()

    async def events(self):
        await self._ended.wait()
        async for event in self._flush():
            yield event

    async def aclose(self) -> None:
        self._ended.set()


class SlowFlushEngine:
    """After END_OF_STREAM: three finals, 0.2 s apart (a long backlog being decoded)."""

    name = "slow-flush"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        async def flush():
            for number in range(3):
                await asyncio.sleep(0.2)
                yield TranscriptEvent(text=f"final {number}", is_partial=False)

        return _Stream(flush)


class StuckEngine:
    """After END_OF_STREAM: nothing, ever."""

    name = "stuck"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        async def flush():
            await asyncio.sleep(3600)
            yield TranscriptEvent(text="never", is_partial=False)

        return _Stream(flush)


class BrokenEngine:
    """Fails mid-stream with an unexpected exception (a bug, not an EngineError)."""

    name = "broken"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        async def flush():
            raise RuntimeError("decoder exploded with secret internals")
            yield  # pragma: no cover

        return _Stream(flush)


class RefusingEngine:
    """Cannot start a recognition."""

    name = "refusing"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        raise EngineError("Speech service unavailable.", close_code=1011)
