"""Engines for consumer tests, loaded by dotted path like any TRANSCRIPTION_ENGINE."""

import asyncio
import contextlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from transcription.close_codes import CLOSE_SERVER_ERROR
from transcription.engines import (
    Capabilities,
    EngineError,
    LanguageIdentified,
    StreamParams,
    TranscriptEvent,
)
from transcription.engines.pool import DecoderPool, OfflineStream, _Worker
from transcription.engines.stream import BacklogStream

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


class SteppedFlushEngine:
    """After END_OF_STREAM: three finals, each when the test puts a step in `steps`."""

    name = "stepped-flush"
    capabilities = CAPS
    steps: asyncio.Queue[None]  # set by the test

    async def open(self, params: StreamParams):
        steps = type(self).steps

        async def flush():
            for number in range(3):
                await steps.get()
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


class _StalledStream(BacklogStream):
    """Takes audio into its backlog and decodes none: once full, it stays full."""

    async def aclose(self) -> None:
        self._backlog.close()
        self._end_events()


class StalledEngine:
    """An engine that never takes audio from its backlog: a session that fills it
    waits for room for ever (until the client leaves)."""

    name = "stalled"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        return _StalledStream(params)


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
        raise EngineError("Speech service unavailable.", close_code=CLOSE_SERVER_ERROR)


class _ThrottledStream(BacklogStream):
    """Takes audio from a bounded backlog at `rate` bytes a second, like an engine
    that decodes slower than the client sends; its final counts every byte taken."""

    def __init__(self, params: StreamParams, rate: int, chunk: int):
        super().__init__(params)
        self._rate, self._chunk = rate, chunk
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        taken = 0
        while True:
            await self._backlog.readable()
            data = self._backlog.take(self._chunk)
            taken += len(data)
            if data:
                await asyncio.sleep(len(data) / self._rate)
            if self._backlog.ended and not self._backlog:
                break
        self._events.put_nowait(
            TranscriptEvent(text=f"received {taken} bytes", is_partial=False)
        )
        self._end_events()

    async def aclose(self) -> None:
        self._backlog.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class ThrottledEngine:
    """Decodes 1 MB of audio a second (100 kB at a time), whatever arrives."""

    name = "throttled"
    capabilities = CAPS
    rate = 1_000_000
    chunk = 100_000

    async def open(self, params: StreamParams):
        return _ThrottledStream(params, self.rate, self.chunk)


class SlowEngine(ThrottledEngine):
    """Decodes 16 kB a second, 1.6 kB at a time."""

    rate = 16_000
    chunk = 1_600


class BurstyEngine(ThrottledEngine):
    """Takes 16 kB of audio, then works on it for a second."""

    rate = 16_000
    chunk = 16_000


class FailingOpenEngine:
    """Cannot start a recognition, with a bug rather than an EngineError."""

    name = "failing-open"
    capabilities = CAPS

    async def open(self, params: StreamParams):
        raise RuntimeError("engine bug while opening")


class FastThrottledEngine(ThrottledEngine):
    """Decodes 4 MB of audio a second: still far slower than a client on loopback."""

    rate = 4_000_000
    chunk = 400_000


class _BusyDecoder:
    """A worker module (see `pool`) whose every call decodes until the test lets
    it go: `busy` is set while a call runs, `free` ends it. Threads, not
    processes, so that the test holds the decoder."""

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.free = threading.Event()

    def feed(
        self, key: str, data: bytes, last: bool, partials: bool, finalize: bool = False
    ) -> list:
        self.busy.set()
        self.free.wait(30)  # bounded: a failing test does not hang the run
        return []

    def session_close(self, key: str) -> None:
        pass


class BusyDecoderEngine:
    """The offline engines' own stream (`OfflineStream`: its decode loop, its
    aclose()) over a decoder that stays busy until `decoder.free` is set; one
    decoding thread for every session (shut it down with `executor`)."""

    name = "busy-decoder"
    capabilities = CAPS

    def __init__(self) -> None:
        self.decoder = _BusyDecoder()
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.pool = DecoderPool(1, module=self.decoder)  # type: ignore[arg-type]
        self.pool.workers = [_Worker(self.executor)]  # type: ignore[arg-type]

    async def open(self, params: StreamParams) -> OfflineStream:
        worker = self.pool.acquire()
        return OfflineStream(
            pool=self.pool,
            worker=worker,
            executor=self.executor,  # type: ignore[arg-type]
            key=uuid.uuid4().hex,
            worker_pid=0,
            params=params,
        )


class IdentifyingEngine:
    """language=auto: after END_OF_STREAM, the language identified, then a final."""

    name = "identifying"
    capabilities = Capabilities(
        languages=("en-US", "sv-SE"),
        encodings=("pcm",),
        min_sample_rate=8000,
        max_sample_rate=48000,
        identifies_language=True,
    )

    async def open(self, params: StreamParams):
        async def flush():
            if params.language == "auto":
                yield LanguageIdentified("sv-SE", 0.97)
            yield TranscriptEvent(text="hej hej", is_partial=False)

        return _Stream(flush)
